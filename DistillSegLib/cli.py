"""``distillseg`` command line: one sub-command per module in :mod:`DistillSegLib.commands`.

Each command module defines ``HELP`` (one line), ``DESCRIPTION`` (the ``--help`` text),
``add_arguments(parser)`` and ``run(args) -> int``; heavy imports (torch, MONAI) happen
inside ``run`` so that ``--help`` stays instant.

Every failure ends with one line on stderr, after any progress bar has been ended:

* bad input (:class:`DistillSegError`, a wrong option, a file that cannot be read or
  written): ``error: ...`` and exit status 2;
* cancellation (Ctrl-C, SIGTERM): ``cancelled: ...`` and exit status 130;
* anything else is a bug: ``error: internal error ...`` and exit status 1.

``--debug`` shows the traceback as well, and lets the libraries' own warnings (numpy,
torch, pydicom, highdicom, nibabel, MONAI) through, which are otherwise kept off stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
import warnings
from typing import NoReturn, Sequence

from . import __version__
from .errors import CancelledError, DistillSegError
from .progress import ProgressAwareHandler, close_all, write_line

COMMANDS = ["info", "convert", "stats", "train", "predict", "evaluate", "demo", "teachers", "embed", "serve", "web"]

EPILOG = """\
Inputs: NIfTI/NRRD/MHA files or DICOM series folders (CT in HU; PET in BQML is converted
to SUVbw, GML is used as is). World coordinates are RAS as in Slicer.
Bad input ends with exit status 2 and one line `error: ...` (--debug shows the traceback).
Not for clinical use.
"""


class Parser(argparse.ArgumentParser):
    """argparse with the engine's error rule: one ``error:`` line and exit status 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        write_line(f"error: {message} (see `{self.prog} --help`)")
        raise SystemExit(2)


def build_parser(parser_class: type[argparse.ArgumentParser] = Parser) -> argparse.ArgumentParser:
    """The ``distillseg`` parser (the warm engine builds one whose errors raise instead of exiting)."""
    parser = parser_class(
        prog="distillseg",
        description="PET/CT segmentation with a small 3D student distilled from segmentation "
        "foundation models (LiteMedSAM, SAM, SAM-Med3D, SegAnyPET).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"distillseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks, debug logging and library warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=parser_class)
    for name in COMMANDS:
        module = importlib.import_module(f"{__package__}.commands.{name}")
        command = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: without it, the sub-command's default would undo `distillseg --debug COMMAND`.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


class _OwnWarningsOnly(logging.Filter):
    """DistillSeg's own warnings pass; the libraries' only from ERROR up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] == __package__ or record.levelno >= logging.ERROR


def configure_output(debug: bool) -> None:
    """Logging to stderr above any progress bar; library warnings only with ``--debug``."""
    handler = ProgressAwareHandler()
    if debug:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_LowerCaseLevel())
        handler.addFilter(_OwnWarningsOnly())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, ProgressAwareHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


class _LowerCaseLevel(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def describe_os_error(exc: OSError) -> str:
    """``cannot write /x/y: Permission denied``-style text for a file-system error."""
    if exc.filename is None:
        return str(exc)
    reason = exc.strerror or type(exc).__name__
    return f"{exc.filename}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    from .allocator import tune_allocator

    tune_allocator()  # before any large array exists (see allocator.py)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a wrong option (its one error line is written)
        return exc.code if isinstance(exc.code, int) else 2
    configure_output(args.debug)
    try:
        if args.debug:
            return int(args.run(args) or 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy, torch, pydicom, highdicom, nibabel, MONAI
            return int(args.run(args) or 0)
    except CancelledError as exc:
        return _fail(args, f"cancelled: {exc}", 130)
    except DistillSegError as exc:
        return _fail(args, f"error: {exc}", 2)
    except BrokenPipeError:  # the reader of stdout went away (`distillseg ... | head`): nothing to say
        sys.stdout = open(os.devnull, "w")
        return 141
    except OSError as exc:  # a file that cannot be read or written: bad input, not a bug
        return _fail(args, f"error: {describe_os_error(exc)}", 2)
    except KeyboardInterrupt:
        return _fail(args, "cancelled: interrupted by the user", 130)
    except Exception as exc:  # a bug: still one line (the traceback with --debug)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _fail(args, f"error: internal error ({type(exc).__name__}{': ' + reason if reason else ''}); "
                           "this is a bug, run with --debug for the traceback", 1)


def _fail(args: argparse.Namespace, line: str, code: int) -> int:
    close_all()
    if args.debug:
        traceback.print_exc()
    write_line(line)
    return code
