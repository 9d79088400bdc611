"""``python -m DistillSegWeb`` (what ``distillseg web`` runs): serve the workflow in a browser.

Bad input ends as in the engine: one ``error: ...`` line on stderr and exit status 2, before
anything listens on the network.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from .access import access_token, address, is_local

DEVICES = ("auto", "cpu", "cuda")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillseg web", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


DESCRIPTION = """\
The DistillSeg workflow in a browser (trame-slicer, on the Slicer module's own logic): load a
CT and a PET (SUV, shown over the CT), place the region of interest at the PET hot spot, Run the
student, read the lesion table (MTV, SUVmax, SUVmean, SUVpeak, TLG), Save the segmentation as
NIfTI on the CT grid, Add to training set, Distil a new student.

Listens on 127.0.0.1 only unless --host says otherwise; any other host needs the access token
printed at start ($DISTILLSEG_WEB_TOKEN, at least 16 characters, or a random one).
Needs the web extra: pip install 'distillseg[web]'. Not for clinical use.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``distillseg web`` (also used by the engine's sub-command for its --help)."""
    parser.add_argument("--ct", metavar="PATH", help="CT image file or DICOM folder to open at start")
    parser.add_argument("--pet", metavar="PATH", help="PET image file or DICOM folder (SUV; DICOM is converted)")
    parser.add_argument("--out", metavar="FOLDER", default="distillseg-output",
                        help="where Save writes segmentations (default: %(default)s)")
    parser.add_argument("--models", metavar="FOLDER",
                        help="your students: Distil writes here, Run offers them (default: $DISTILLSEG_MODELS "
                             "or ~/.distillseg/models)")
    parser.add_argument("--training-set", metavar="FOLDER", help="nnU-Net training set for Add to training set and Distil")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="device for Run and Distil (default: auto)")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads of the engine and of Distil (default: 0 = all cores)")


def check(args: argparse.Namespace) -> str | None:
    """The first problem with the options, as the text of an ``error:`` line (or ``None``)."""
    if bool(args.ct) != bool(args.pet):
        return "give both --ct and --pet, or neither (then load a study in the page)"
    for option, value in (("--ct", args.ct), ("--pet", args.pet)):
        if value and not Path(value).exists():
            return f"{option}: not found: {value}"
    if not 0 <= args.port <= 65535:
        return f"--port must be 0..65535 (got {args.port})"
    if args.threads < 0:
        return f"--threads must be 0 or more (got {args.threads})"
    if args.training_set and Path(args.training_set).exists() and not Path(args.training_set).is_dir():
        return f"--training-set is not a folder: {args.training_set}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check(args)
    try:
        token = access_token(args.host)
    except ValueError as exc:
        problem = problem or str(exc)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # headless: no X server needed
    sys.argv = sys.argv[:1]  # trame parses sys.argv too: it must see only what start() gives it
    try:
        from .app import WebApp
        from .workflow import Settings
    except ImportError as exc:
        print(f"error: the web front end needs the web extra ({exc.name or exc}): pip install 'distillseg[web]'",
              file=sys.stderr)
        return 2
    from DistillSegModuleLib import Catalogue
    from DistillSegModuleLib.Logic import LogicError

    settings = Settings(out=Path(args.out).resolve(),
                        models=Path(args.models).resolve() if args.models else Catalogue.defaultModelsFolder(),
                        trainingSet=Path(args.training_set).resolve() if args.training_set else None,
                        device=args.device, threads=args.threads)
    app = WebApp(settings, token=token)
    if args.ct:
        try:
            app.load(args.ct, args.pet)
        except LogicError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    where = "this machine only" if is_local(args.host) else "the network: the token is required"
    print(f"DistillSeg web on {where}: open {address(args.host, args.port, token)}", flush=True)
    app.start(args.host, args.port)
    return 0
