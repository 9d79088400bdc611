"""Memory and speed of the 2D teacher's image encoder against its batch size (slices per batch).

LiteMedSAM encodes every axial slice a teacher round, a tuning run or a radiologist's box
needs; the slices go through the encoder in batches. Each batch size runs in a fresh process
(so one peak does not hide another) on the same real CT slices of one case, prepared as the
teacher prepares them, and reports seconds per slice (after one warm-up batch) and the
process's peak RSS (``ru_maxrss``) before and after encoding. Prints a table, writes JSON::

    .venv/bin/python benchmarks/encoder_batch.py --batch-sizes 16,8,4,2 --slices 32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data"))

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from DistillSegLib.io.case import load_case_folder
from DistillSegLib.teachers.litemedsam import load_litemedsam
batch, slices, threads, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
teacher = load_litemedsam(batch_size=batch)
stack = teacher.canonical_stack(load_case_folder(folder).ct, "CT")
first = max(0, len(stack) // 2 - slices // 2)
stack = stack[first:first + slices]
resized, _ = teacher.frame(stack.shape[1:])
images = teacher.preprocess_slices(stack, resized)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    teacher.model.image_encoder(images[:batch])
    start = time.perf_counter()
    for s in range(0, len(images), batch):
        teacher.model.image_encoder(images[s:s + batch])
    seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"batch_size": batch, "slices": len(images), "seconds_per_slice": seconds / len(images),
                  "rss_before_gib": before / 2 ** 20, "peak_rss_gib": peak / 2 ** 20}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="STS_019", help="sts-petct case whose middle CT slices are encoded")
    parser.add_argument("--batch-sizes", default="16,8,4,2")
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encoder_batch.json")
    args = parser.parse_args(argv)
    folder = DATA / "sts-petct" / args.case
    if not folder.is_dir():
        parser.error(f"case folder {folder} not found (set DISTILLSEG_DATA)")
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        out = subprocess.run([sys.executable, "-c", CHILD, str(batch), str(args.slices), str(args.threads), str(folder)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"batch {batch:>3}: {rows[-1]['seconds_per_slice']:.2f} s/slice, peak RSS {rows[-1]['peak_rss_gib']:.2f} GiB "
              f"({rows[-1]['peak_rss_gib'] - rows[-1]['rss_before_gib']:+.2f} while encoding)", flush=True)
    record = {"case": args.case, "threads": args.threads, "load_average": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    from DistillSegLib.atomic import write_json_atomic

    write_json_atomic(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
