"""``distillseg demo``: train, distil, evaluate and report on the real sts-petct cases."""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "the README's main command: supervised vs distilled student vs teacher vs SUV threshold, with a report"
DESCRIPTION = """\
Run DistillSeg end to end on the 30 real sts-petct PET/CT cases and write a report.

Fixed split (seed 2015, see DistillSegLib/demo/split.py): STS_001-005 labelled, 10
validation cases, the other 15 unlabelled. On it, with one training seed: the classic
SUV threshold (41% of SUVmax), a supervised student, a student distilled with knowsam (the
default strategy) from the embedded LiteMedSAM teacher, and the LiteMedSAM teacher itself
prompted with boxes from the distilled student (and, as an upper bound, from the ground
truth). Writes OUT/report.md, report.json, figures/*.png, predictions/<method>/,
labels/ and models/. `distillseg evaluate --pred OUT/predictions/<method> --gt
OUT/labels` reproduces the report's numbers.

The teacher is the slow part (LiteMedSAM: seconds per slice on a CPU), so the distilled
student (warm-started from the supervised one at step 200 of 600) uses the first 4
unlabelled cases in one teacher round, and the teacher itself runs on the first 3
validation cases. --quick (3 validation cases, 1 unlabelled, 120 steps, teacher on 1 case, no
upper bound) took 6 min on 2 CPU cores with knowsam; the full demo about 40 min.

example:
  distillseg demo --data ../shared/data/sts-petct --out demo-output --quick
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR",
                        help="the sts-petct folder (default: $DISTILLSEG_DATA/sts-petct or ../shared/data/sts-petct)")
    parser.add_argument("--out", default="demo-output", metavar="DIR", help="output folder (default: demo-output)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (about 6 min on 2 CPU cores)")
    parser.add_argument("--json-progress", action="store_true", help="JSON progress lines on stdout")
    advanced = parser.add_argument_group("advanced overrides (replace single settings of the full or --quick run)")
    advanced.add_argument("--steps", type=int, help="training steps of every student")
    advanced.add_argument("--strategies", metavar="NAMES",
                          help="comma-separated distillation strategies trained beside supervised (default: knowsam; "
                               "dualview, tskd and selftrain are the others)")
    advanced.add_argument("--strategy-options", metavar="OPTIONS",
                          help="extra `distillseg train` options of the distilled students, e.g. \"--consistency 1.0\"")
    advanced.add_argument("--warmup-steps", type=int, metavar="N",
                          help="distilled students start from the supervised one after N steps")
    advanced.add_argument("--max-teacher-cases", type=int, metavar="N", help="the teacher is evaluated on N validation cases (full run: 2; --quick: off unless given)")
    advanced.add_argument("--seed", type=int, help="training seed (default 0; the split's seed is fixed)")
    advanced.add_argument("--max-val-cases", type=int, metavar="N", help="first N validation cases of the split")
    advanced.add_argument("--max-unlabelled-cases", type=int, metavar="N", help="first N unlabelled cases")
    advanced.add_argument("--refresh-every", type=int, metavar="N", help="teacher round length in steps")
    advanced.add_argument("--val-every", type=int, metavar="N", help="validation Dice for the curves every N steps")
    advanced.add_argument("--no-upper-bound", action="store_true", help="skip the teacher with ground-truth boxes")
    parser.add_argument("--loop", action="store_true",
                        help="add the annotation-refinement loop to the report (supervised arm, 3 rounds of 5 "
                             "corrected cases; --quick: 2 of 2): minutes more")
    advanced.add_argument("--loop-rounds", type=int, metavar="N", help="--loop: rounds (full run 3, --quick 2)")
    advanced.add_argument("--loop-round-size", type=int, metavar="N", help="--loop: cases per round (5; --quick 2)")
    advanced.add_argument("--loop-steps", type=int, metavar="N", help="--loop: steps per Distil (200; --quick 30)")
    advanced.add_argument("--no-teacher", action="store_true",
                          help="skip the teacher evaluation (smoke tests; the speed ratio is then not measured)")


def run(args: argparse.Namespace) -> int:
    from ..demo.run import run_demo, settings_from_args
    from ..progress import CancelToken, Progress

    settings = settings_from_args(args)
    progress = Progress(json_lines=args.json_progress)
    cancel = CancelToken()
    command = "distillseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with cancel.on_signals():
        report = run_demo(args.out, args.data, settings, progress, cancel, command=command)
    if not args.json_progress:
        print(f"wrote {args.out}/report.md ({report['total_seconds']:.0f} s)")
        for name, method in report["methods"].items():
            dice = method["dice"]
            print(f"  {name:<28} Dice {dice:.3f}" if dice is not None else f"  {name:<28} Dice n/a")
    return 0
