"""Options and checks that several commands share (one definition, one wording)."""

from __future__ import annotations

import argparse
import math


def add_allow_implausible(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-implausible", action="store_true",
        help="accept a CT whose values do not look like HU or a PET whose values do not look like SUV "
             "(checked by default: air/fat and HU range for the CT; SUV >= 0 and <= 200 for the PET)")


def add_min_lesion_ml(parser: argparse.ArgumentParser) -> None:
    from ..metrics.lesions import DEFAULT_MIN_LESION_ML

    parser.add_argument(
        "--min-lesion-ml", type=non_negative_float, default=DEFAULT_MIN_LESION_ML, metavar="ML",
        help=f"leave lesions smaller than this out of the lesion table (default: {DEFAULT_MIN_LESION_ML}, "
             "one to two PET voxels; 0 keeps every component)")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _finite(text, lambda v: v >= 0, "a number >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _finite(text, lambda v: v > 0, "a number > 0")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _finite(text: str, ok, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def label_grid_name(label, case) -> str:
    """``"CT"`` or ``"PET"``: the grid a case's label map lies on."""
    from ..io.case import same_grid

    return "CT" if same_grid(label, case.ct) else "PET"
