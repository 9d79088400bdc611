"""``--preset paper``: each distillation strategy as its paper configures it.

The defaults of ``dualview`` (MuDuo's method), ``knowsam`` and ``tskd`` depart from their papers (``docs/methods.md``
lists every departure and why). ``--preset paper`` sets the paper's value of every option
that has one; an option given explicitly on the command line still wins. What no option can
restore is listed in :data:`PAPER_CAVEATS` and printed when the preset is used.

Kept free of heavy imports: ``distillseg --help`` builds every parser.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from .options import PRESETS, add_distillation_arguments  # noqa: F401  (the option is defined with the others)

# The paper's settings as ``distillseg train`` options, by strategy (MuDuo: the official
# script, see DistillSegLib/distill/muduo.py; TS-KD: LoRA on the encoder; KnowSAM: the fused
# prediction prompts SAM, whose encoder is adapted).
PAPER_OPTIONS: dict[str, tuple[str, ...]] = {
    "dualview": ("--consistency", "0.1", "--rampup-fraction", "1.0", "--supervised-weight", "0.5",
              "--selection", "batch", "--no-confidence-weight", "--pseudo-loss", "dice", "--tune-teachers", "0",
              "--views", "both"),
    "tskd": ("--teacher-tuning", "lora"),
    "knowsam": ("--prompt-from", "fused", "--teacher-tuning", "lora"),
}

# What the preset cannot restore (printed with it).
PAPER_CAVEATS: dict[str, str] = {
    "dualview": ("the paper's teachers are SAM-Med3D (CT) and SegAnyPET (PET): give --ct-teacher-checkpoint and "
              "--pet-teacher-checkpoint, otherwise both views use the embedded LiteMedSAM with box prompts"),
    "tskd": "the paper's teacher is SAM; the embedded LiteMedSAM is used unless --teacher sam --teacher-checkpoint",
    "knowsam": ("the paper's students are a 2D U-Net and V-Net and its teacher SAM; here a 3D U-Net and SegResNet "
                "and the embedded LiteMedSAM unless --teacher sam --teacher-checkpoint"),
}
COMMON_CAVEAT = ("teachers answer in rounds of --refresh-every steps (the papers: every step); set --refresh-every 1 "
                 "for the papers' schedule (hours per 100 steps on a CPU)")


def apply_preset(args: argparse.Namespace, strategy: str) -> list[str]:
    """Fill ``args``' unset distillation options from ``--preset``; returns the caveats to show.

    Raises:
        DistillSegError: ``--preset paper`` for a strategy without a paper (``supervised``,
            ``selftrain``).
    """
    from ..errors import DistillSegError

    preset = getattr(args, "preset", None)
    if preset in (None, "default"):
        return []
    name = strategy.removesuffix("+skd")
    if name not in PAPER_OPTIONS:
        raise DistillSegError(f"--preset {preset}: strategy {strategy!r} has no paper configuration "
                              f"(presets exist for {', '.join(sorted(PAPER_OPTIONS))})")
    parser = argparse.ArgumentParser(add_help=False)
    add_distillation_arguments(parser)
    values = parser.parse_args(list(PAPER_OPTIONS[name]))
    for key, value in vars(values).items():
        if key != "preset" and value is not None and getattr(args, key, None) is None:
            setattr(args, key, value)
    caveats = [COMMON_CAVEAT]
    if not (name == "dualview" and getattr(args, "ct_teacher_checkpoint", None)
            and getattr(args, "pet_teacher_checkpoint", None)):
        caveats.insert(0, PAPER_CAVEATS[name])
    return caveats


def paper_options(strategy: str) -> Sequence[str]:
    """The options ``--preset paper`` sets for ``strategy`` (empty when it has none)."""
    return PAPER_OPTIONS.get(strategy, ())
