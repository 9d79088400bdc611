"""Command-line options of the distillation strategies (``distillseg train``).

Kept free of heavy imports: ``distillseg --help`` builds every parser.
"""

from __future__ import annotations

import argparse


def add_distillation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options read by the ``muduo``, ``knowsam`` and ``tskd`` strategies and ``--skd``."""
    group = parser.add_argument_group(
        "distillation (strategies muduo, knowsam, tskd; teachers default to the embedded LiteMedSAM)")
    group.add_argument("--skd", action="store_true",
                       help="add KnowSAM's SAM-induced KD (KL at T=10) to the strategy (knowsam has it built in)")
    group.add_argument("--teacher", metavar="NAME",
                       help="teacher of knowsam/tskd/--skd: litemedsam (default), sam")
    group.add_argument("--teacher-checkpoint", metavar="FILE", help="weights of --teacher (default: LiteMedSAM's own)")
    group.add_argument("--teacher-modality", choices=["CT", "PET"], help="image the single teacher sees (default: CT)")
    group.add_argument("--ct-teacher", metavar="NAME",
                       help="muduo CT teacher: litemedsam (default) or sam-med3d (default with --ct-teacher-checkpoint)")
    group.add_argument("--ct-teacher-checkpoint", metavar="FILE", help="muduo CT teacher weights (sam_med3d_turbo.pth)")
    group.add_argument("--pet-teacher", metavar="NAME",
                       help="muduo PET teacher: litemedsam (default) or seganypet (default with --pet-teacher-checkpoint)")
    group.add_argument("--pet-teacher-checkpoint", metavar="FILE", help="muduo PET teacher weights (SegAnyPET)")
    group.add_argument("--teacher-steps", type=int, metavar="N",
                       help="teacher fine-tuning steps: tskd stage 1 in total (default 20), knowsam per round (default 4)")
    group.add_argument("--temperature", type=float, metavar="T",
                       help="KL temperature (knowsam and --skd: 10; tskd: 2)")
    group.add_argument("--keep-fraction", type=float, metavar="F",
                       help="muduo: fraction of unlabelled patches kept by teacher agreement (default 0.5)")
    group.add_argument("--consistency", type=float, metavar="W",
                       help="muduo: maximum weight of the ramped consistency loss (default 0.1)")
    group.add_argument("--rampup-fraction", type=float, metavar="F",
                       help="muduo: the consistency weight ramps up over this fraction of the steps (default 1.0)")
