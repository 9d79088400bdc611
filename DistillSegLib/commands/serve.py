"""``distillseg serve``: the warm engine (jobs as JSON lines on stdin, progress and results on stdout)."""

from __future__ import annotations

import argparse

HELP = "run as a warm engine: jobs (predict, embed, ...) as JSON lines on stdin, progress on stdout"
DESCRIPTION = """\
Stay up and run `distillseg` commands as jobs, one at a time, with torch, MONAI, the
models and the teachers' slice embeddings kept in memory between jobs: the 3D Slicer
module starts one in the background, so that a Run or a click is answered in seconds.

stdin, one JSON object per line:
  {"job": "1", "argv": ["predict", "--model", "m.pt", "--ct", "CT.nii.gz", "--pet", "PET.nii.gz", "--roi", "all", "--out", "x.nii.gz"]}
  {"job": "2", "argv": ["embed", "--ct", "CT.nii.gz", "--pet", "PET.nii.gz"], "background": true}
  {"cancel": "1"}
  {"shutdown": true}
stdout: {"event": "ready"}, then per job "started", the command's --json-progress lines
(with "job"), and {"job": ..., "event": "finished", "exit_code": 0|2|130|1, "message": ...}.
Jobs: predict, embed, info, teachers, evaluate. A background job gives way to any other
job and resumes after it. The engine ends on {"shutdown": true}, at the end of stdin or on
SIGTERM; a client whose cancel is not answered within 10 s kills and restarts it. The full
protocol is in DistillSegLib/engine/protocol.py.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="CPU threads for torch between jobs (default: 0 = all cores)")


def run(args: argparse.Namespace) -> int:
    from ..engine.server import serve

    return serve(threads=args.threads)
