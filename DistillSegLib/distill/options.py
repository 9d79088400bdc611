"""Command-line options of the distillation strategies (``distillseg train``).

Kept free of heavy imports: ``distillseg --help`` builds every parser.
"""

from __future__ import annotations

import argparse

# ``--preset``'s choices; what each sets is in :mod:`.presets`, which builds on these options.
PRESETS = ("default", "paper")


def add_distillation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options read by the ``dualview``, ``knowsam`` and ``tskd`` strategies and ``--skd``."""
    group = parser.add_argument_group(
        "distillation (strategies dualview, knowsam, tskd; teachers default to the embedded LiteMedSAM)")
    add_preset_argument(group)
    group.add_argument("--skd", action="store_true",
                       help="add KnowSAM's SAM-induced KD (KL at T=10) to the strategy (knowsam has it built in)")
    group.add_argument("--teacher", metavar="NAME",
                       help="teacher of knowsam/tskd/--skd: litemedsam (default), sam")
    group.add_argument("--teacher-checkpoint", metavar="FILE", help="weights of --teacher (default: LiteMedSAM's own)")
    group.add_argument("--teacher-modality", choices=["CT", "PET", "both"],
                       help="image the teacher of knowsam/tskd/--skd sees (default: CT; tskd also takes both: "
                            "one teacher per modality, their mean)")
    group.add_argument("--teacher-tuning", choices=["decoder", "lora"],
                       help="tskd stage 1 / knowsam teacher tuning: prompt encoder + mask decoder + IoU head with "
                            "jittered and negative boxes (decoder, default; reuses the slice embeddings) or LoRA on "
                            "the image encoder (lora: re-encodes every slice)")
    group.add_argument("--ct-teacher", metavar="NAME",
                       help="dualview CT teacher: litemedsam (default) or sam-med3d (default with --ct-teacher-checkpoint)")
    group.add_argument("--ct-teacher-checkpoint", metavar="FILE", help="dualview CT teacher weights (sam_med3d_turbo.pth)")
    group.add_argument("--pet-teacher", metavar="NAME",
                       help="dualview PET teacher: litemedsam (default) or seganypet (default with --pet-teacher-checkpoint)")
    group.add_argument("--pet-teacher-checkpoint", metavar="FILE", help="dualview PET teacher weights (SegAnyPET)")
    group.add_argument("--prompt-from", choices=["best", "fused"],
                       help="knowsam: the network that prompts the teacher each round: the fusion head (fused, the "
                            "paper's) or whichever of U-Net, co-student and fusion is best on the labelled cases "
                            "(best, default: the untrained fusion of a warm U-Net and a fresh co-student left "
                            "most first-round prompts empty)")
    group.add_argument("--teacher-steps", type=int, metavar="N",
                       help="teacher fine-tuning steps: tskd stage 1 in total (default 200), knowsam per round (default 4)")
    group.add_argument("--temperature", type=float, metavar="T",
                       help="KL temperature (knowsam and --skd: 10; tskd: 2)")
    group.add_argument("--keep-fraction", type=float, metavar="F",
                       help="dualview: fraction of unlabelled patches kept by teacher agreement (default 0.5)")
    group.add_argument("--consistency", type=float, metavar="W",
                       help="dualview, selftrain: maximum weight of the ramped consistency loss (default 1.0; the paper 0.1)")
    group.add_argument("--rampup-fraction", type=float, metavar="F",
                       help="dualview, selftrain: the consistency weight ramps up over this fraction of the steps (default 0.25; the paper 1.0)")
    group.add_argument("--supervised-weight", type=float, metavar="W",
                       help="dualview, selftrain: weight of CE + Dice on the labelled patches (default 1.0; the paper 0.5)")
    group.add_argument("--selection", choices=["batch", "case", "none"],
                       help="dualview: which unlabelled patches count: the better-agreeing half of each batch (batch, "
                            "the paper's), all with cases ranked by teacher agreement each round (case), all (none, default)")
    group.add_argument("--low-agreement-weight", type=float, metavar="W",
                       help="dualview --selection case: weight of the cases outside the best-agreeing --keep-fraction")
    group.add_argument("--ignore-disagreement", action=argparse.BooleanOptionalAction, default=None,
                       help="dualview: voxels where the CT and PET teachers disagree do not count")
    group.add_argument("--confidence-weight", action=argparse.BooleanOptionalAction, default=None,
                       help="dualview: weight unlabelled voxels by the teachers' predicted IoU (LiteMedSAM's IoU head; "
                            "default on, the paper off); selftrain: by the student's own expected IoU of its slice")
    group.add_argument("--views", choices=["both", "CT", "PET"],
                       help="dualview: teachers on both views (default, the method) or one view only (the ablation: "
                            "what the second view adds)")
    group.add_argument("--pseudo-loss", dest="loss", choices=["dice", "dicece"],
                       help="dualview, selftrain: loss towards the pseudo-label: soft Dice (the paper's) or CE + soft Dice (dicece, default)")
    rounds = parser.add_argument_group("teacher rounds (every distillation strategy)")
    rounds.add_argument("--teacher-grid", choices=["native", "student"],
                        help="what grid the teachers see: each modality's own (native, default) or the student's")
    rounds.add_argument("--teacher-prompts", choices=["components", "slice"],
                        help="one box per 3D component of the student's mask and slice (components, default) or "
                             "one box per slice around all foreground (slice)")
    rounds.add_argument("--box-margin-mm", type=float, metavar="MM", help="margin around every box (default 5 mm)")
    rounds.add_argument("--box-refine", type=int, metavar="N",
                        help="box-refinement passes: the teacher's mask becomes a new box (default 0)")
    rounds.add_argument("--extend-slices", type=int, metavar="N",
                        help="slices offered past each end of a component while the teacher confirms (default 0)")
    rounds.add_argument("--confirm-components", type=float, metavar="S",
                        help="keep a component when its rating by the teachers (mean predicted IoU x agreement) "
                             "reaches S x the best component's (0: keep all, 1: only the best; default 0)")
    rounds.add_argument("--tune-teachers", type=int, metavar="STEPS",
                        help="tune each teacher's prompt encoder + mask decoder + IoU head on the labelled cases "
                             "first (jittered and negative boxes; embeddings reused), STEPS steps (dualview default 200, "
                             "tskd: --teacher-steps; others 0: off)")
    rounds.add_argument("--tune-seed", type=int, metavar="SEED", help="seed of the teacher tuning (default 0)")


def add_preset_argument(group) -> None:
    group.add_argument("--preset", choices=PRESETS, default=None,
                       help="paper: the strategy's paper configuration (dualview, knowsam, tskd; options given "
                            "explicitly still win); default: this project's defaults, which depart from the papers "
                            "(docs/methods.md)")
