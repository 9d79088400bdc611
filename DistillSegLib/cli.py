"""``distillseg`` command line: one sub-command per module in :mod:`DistillSegLib.commands`.

Each command module defines ``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text),
``add_arguments(parser)`` and ``run(args) -> int``; heavy imports (torch, MONAI) happen
inside ``run`` so that ``--help`` stays instant.

Bad input raises :class:`DistillSegError`; here it becomes one line ``error: ...`` on
stderr and exit status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from typing import Sequence

from . import __version__
from .errors import CancelledError, DistillSegError

COMMANDS = ["info", "convert", "train", "predict", "evaluate", "demo", "teachers"]

EPILOG = """\
Inputs: NIfTI/NRRD/MHA files or DICOM series folders (CT in HU; PET in BQML is converted
to SUVbw, GML is used as is). World coordinates are RAS as in Slicer.
Not for clinical use.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillseg",
        description="PET/CT segmentation with a small 3D student distilled from segmentation "
        "foundation models (LiteMedSAM, SAM, SAM-Med3D, SegAnyPET).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"distillseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__package__}.commands.{name}")
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except CancelledError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except DistillSegError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled: interrupted by the user", file=sys.stderr)
        return 130
