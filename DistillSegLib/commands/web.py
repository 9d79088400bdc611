"""``distillseg web``: hand over to the browser front end (``DistillSegWeb``, beside the engine).

The engine never imports the front end, trame or slicer (``Testing/test_layering.py``): this
command finds the front end's folder and runs ``python -m DistillSegWeb`` with the same
interpreter and the same arguments, and returns its exit status.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..errors import DistillSegError

HELP = "the DistillSeg workflow in a browser (trame-slicer; needs the web extra)"
DESCRIPTION = """\
Serve the DistillSeg workflow in a browser, on the 3D Slicer module's own logic: load a CT
and a PET (SUV over the CT), place the region of interest at the PET hot spot, Run the
student (warm engine), the lesion table, Save the segmentation as NIfTI on the CT grid into
--out, Add to training set, Distil a new student.

Listens on 127.0.0.1 only by default; any other --host needs the access token printed at
start (or $DISTILLSEG_WEB_TOKEN, 16 characters or more). Needs the web extra
(pip install 'distillseg[web]': trame-slicer, which brings slicer-core) and a source checkout
(the front end, DistillSegWeb/, lives beside the engine and the Slicer module).

example:
  distillseg web --ct STS_001/CT_image.nii.gz --pet STS_001/PET_image.nii.gz \\
                 --out segmentations --training-set my-training-set
"""

FRONT_END = "DistillSegWeb"
ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", metavar="PATH", help="CT image file or DICOM folder to open at start")
    parser.add_argument("--pet", metavar="PATH", help="PET image file or DICOM folder (SUV; DICOM is converted)")
    parser.add_argument("--out", metavar="FOLDER", help="where Save writes segmentations (default: distillseg-output)")
    parser.add_argument("--models", metavar="FOLDER", help="your students (default: $DISTILLSEG_MODELS or ~/.distillseg/models)")
    parser.add_argument("--training-set", metavar="FOLDER", help="nnU-Net training set for Add to training set and Distil")
    parser.add_argument("--host", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, help="port (default: 8080)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device for Run and Distil (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads of the engine and of Distil (default: all)")


def front_end_arguments(args: argparse.Namespace) -> list[str]:
    """The options given, as ``python -m DistillSegWeb`` arguments (unset ones left to its defaults)."""
    argv: list[str] = []
    for name in ("ct", "pet", "out", "models", "training_set", "host", "port", "device", "threads"):
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def front_end_folder() -> Path:
    """The folder holding ``DistillSegWeb`` (the source checkout's root).

    Raises:
        DistillSegError: the front end or its extra is not installed here.
    """
    if not (ROOT / FRONT_END / "__main__.py").is_file():
        raise DistillSegError(f"the web front end is not at {ROOT / FRONT_END}: it ships with the source checkout "
                              "(git clone, then pip install -e '.[web]')")
    if importlib.util.find_spec("trame_slicer") is None:
        raise DistillSegError("the web front end needs the web extra (trame-slicer): pip install -e '.[web]'")
    return ROOT


def run(args: argparse.Namespace) -> int:
    root = front_end_folder()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    try:
        return subprocess.call([sys.executable, "-m", FRONT_END, *front_end_arguments(args)], env=env)
    except KeyboardInterrupt:  # Ctrl-C reached the front end too: it stops on its own
        return 130
