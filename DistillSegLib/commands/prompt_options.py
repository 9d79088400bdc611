"""The radiologist's prompt options of ``distillseg predict`` (RAS mm), parsed in one place.

They prompt a teacher (``--teacher``) or a promptable student (``--model``).

    --prompt-box x0,y0,z0,x1,y1,z1        a 3D box (two opposite corners, RAS mm)
    --prompt-points "R,A,S,+;R,A,S,-"     clicks: '+' positive (lesion), '-' negative
    --prompt-mask PREVIOUS [--prompt-segment N]
                                          correct segment N (default 1) of a previous label map:
                                          the new clicks re-run the teacher with it as the
                                          mask prompt; only that segment is replaced
"""

from __future__ import annotations

import argparse

PROMPT_HELP = """\
Radiologist's prompts (--teacher, or --model of a promptable student; RAS mm, as Slicer shows them):
  --prompt-box x0,y0,z0,x1,y1,z1 segments inside a box. LiteMedSAM/SAM go slice by slice from
  the box's middle slice, each slice boxed by its neighbour's mask; SAM-Med3D/SegAnyPET take
  the box's centre as a click and keep the result inside the box.
  --prompt-points "R,A,S,+;R,A,S,-" adds positive (+) and negative (-) clicks (inside the box).
  --prompt-mask PREVIOUS corrects a previous result with new clicks (its segment
  --prompt-segment N, default 1, is replaced; its other segments are kept).
  A promptable student (trained with `distillseg train --promptable`) takes the same options
  without --teacher: it segments in 3D around the box (the box replaces --roi), clicks and the
  previous mask are input channels. A student that takes no prompts refuses them.
  Negative coordinates: write --prompt-box=-10,... or --prompt-points="-10,...".
"""


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("radiologist's prompts (with --teacher or a promptable --model; RAS mm)")
    group.add_argument("--prompt-box", metavar="BOX", help="x0,y0,z0,x1,y1,z1: a 3D box around the lesion")
    group.add_argument("--prompt-points", metavar="POINTS", help="'R,A,S,+;R,A,S,-': positive (+) and negative (-) clicks")
    group.add_argument("--prompt-mask", metavar="PREVIOUS", help="label map to correct with the clicks (mask prompt)")
    group.add_argument("--prompt-segment", type=int, default=1, metavar="N",
                       help="label value of the segment --prompt-mask corrects (default: 1)")


def has_user_prompt(args: argparse.Namespace) -> bool:
    return bool(args.prompt_box or args.prompt_points or args.prompt_mask)


def check_prompt_arguments(args: argparse.Namespace) -> None:
    """Refuse prompt options that cannot go together (before any file is read)."""
    from ..errors import DistillSegError

    if has_user_prompt(args) and not (args.teacher or args.model):
        raise DistillSegError("--prompt-box/--prompt-points/--prompt-mask prompt a teacher or a promptable student: "
                              "add --teacher NAME or --model MODEL")
    if has_user_prompt(args) and args.model and (args.roi or args.roi_from):
        raise DistillSegError("a prompted student segments around its prompt (the box is the region of interest): "
                              "drop --roi/--roi-from")
    if has_user_prompt(args) and args.prompt_from:
        raise DistillSegError("give either --prompt-from (automatic prompts) or the radiologist's "
                              "--prompt-box/--prompt-points/--prompt-mask, not both")
    if args.teacher and not (args.prompt_from or has_user_prompt(args)):
        raise DistillSegError("--teacher needs a prompt: --prompt-from MODEL|LABEL (automatic) or "
                              "--prompt-box/--prompt-points (the radiologist's)")
    if args.prompt_mask and not args.prompt_points and not args.prompt_box:
        raise DistillSegError("--prompt-mask corrects a result with clicks: add --prompt-points (or a --prompt-box)")
    if not 1 <= args.prompt_segment <= 65535:
        raise DistillSegError(f"--prompt-segment must be a label value from 1 to 65535 (0 is the background), "
                              f"got {args.prompt_segment}")
    if args.prompt_box:
        parse_box(args.prompt_box)
    if args.prompt_points:
        parse_points(args.prompt_points)


def parse_box(text: str):
    """``"x0,y0,z0,x1,y1,z1"`` -> ``(low, high)`` RAS corners in mm."""
    import numpy as np

    from ..errors import DistillSegError

    values = _numbers(text, 6, "--prompt-box must be six numbers x0,y0,z0,x1,y1,z1 in RAS mm")
    a, b = np.array(values[:3]), np.array(values[3:])
    low, high = np.minimum(a, b), np.maximum(a, b)
    if np.any(high - low <= 0):  # as --roi: a flat box holds no voxel, the result would be 0 mL
        raise DistillSegError(f"--prompt-box {text!r} has zero extent along an axis")
    return low, high


def parse_points(text: str):
    """``"R,A,S,+;R,A,S,-"`` -> ``(points (N, 3) RAS mm, labels (N,) 1/0)``."""
    import numpy as np

    from ..errors import DistillSegError

    points, labels = [], []
    for n, item in enumerate(part.strip() for part in text.split(";") if part.strip()):
        fields = [f.strip() for f in item.split(",")]
        sign = fields[-1] if fields else ""
        if len(fields) != 4 or sign not in ("+", "-", "1", "0"):
            raise DistillSegError(
                f"--prompt-points item {n + 1} {item!r} must be R,A,S,+ or R,A,S,- (RAS mm and a sign)")
        points.append(_numbers(",".join(fields[:3]), 3, f"--prompt-points item {n + 1} {item!r}: R,A,S must be numbers"))
        labels.append(1 if sign in ("+", "1") else 0)
    if not points:
        raise DistillSegError("--prompt-points holds no point: write 'R,A,S,+;R,A,S,-'")
    return np.array(points, float), np.array(labels, np.int64)


def _numbers(text: str, count: int, message: str) -> list[float]:
    import math

    from ..errors import DistillSegError

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise DistillSegError(f"{message}, got {text!r}")
    return values


def user_prompt_from_args(args: argparse.Namespace, case):
    """The :class:`~DistillSegLib.teachers.user_prompts.UserPrompt` of the options (None without any)."""
    from ..io.case import load_label
    from ..teachers.user_prompts import UserPrompt

    if not has_user_prompt(args):
        return None
    points, labels = parse_points(args.prompt_points) if args.prompt_points else (None, None)
    previous = load_label(args.prompt_mask, case.ct, case.pet) if args.prompt_mask else None
    kwargs = {} if points is None else {"points": points, "labels": labels}
    return UserPrompt(box=parse_box(args.prompt_box) if args.prompt_box else None, previous=previous,
                      segment=args.prompt_segment, **kwargs)
