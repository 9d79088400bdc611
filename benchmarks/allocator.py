"""Kernel time and page faults of DistillSeg's heavy workloads with and without the allocator settings.

``DistillSegLib/allocator.py`` raises glibc's mmap and trim thresholds when a ``distillseg``
process starts. Each workload runs under ``/usr/bin/time -v`` (wall, user, sys, peak RSS,
minor page faults) with the settings (the default) and without them
(``DISTILLSEG_MALLOC_TUNING=0``: glibc's defaults), alternating, ``--repeats`` times; medians
are reported with the load average. Workloads (one torch thread, empty caches):

* ``litemedsam-embed``: LiteMedSAM's encoder on every CT slice of STS_019, 16 slices per
  batch (the teachers' batch size): the path that made 15.4 M page faults in the demo;
* ``litemedsam-predict``: ``predict --teacher litemedsam --prompt-from`` its CT mask (encoder
  and decoder on the tumour's slices, CT);
* ``train``: 40 steps of the supervised student on STS_001-005;
* ``student-predict``: the student on STS_044 (the largest crop).

    .venv/bin/python benchmarks/allocator.py --model supervised_600.pt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data"))
FIELDS = {
    "user_s": r"User time \(seconds\): ([\d.]+)",
    "sys_s": r"System time \(seconds\): ([\d.]+)",
    "wall": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
    "peak_rss_mb": r"Maximum resident set size \(kbytes\): (\d+)",
    "minor_faults": r"Minor \(reclaiming a frame\) page faults: (\d+)",
}


def workloads(model: str, work: Path) -> dict[str, list[str]]:
    sts = DATA / "sts-petct"
    case = ["--ct", str(sts / "STS_019" / "CT_image.nii.gz"), "--pet", str(sts / "STS_019" / "PET_image.nii.gz")]
    return {
        "litemedsam-embed": ["embed", "--teacher", "litemedsam", *case, "--modality", "CT", "--batch-size", "16"],
        "litemedsam-predict": ["predict", "--teacher", "litemedsam", "--prompt-from", str(sts / "STS_019" / "CT_mask.nii.gz"),
                               *case, "--out", str(work / "teacher.nii.gz")],
        "train": ["train", "--data", str(sts), "--labelled", "STS_001,STS_002,STS_003,STS_004,STS_005", "--steps", "40",
                  "--val-every", "1000", "--checkpoint-every", "1000", "--device", "cpu", "--out", str(work / "s.pt")],
        "student-predict": ["predict", "--model", model, "--ct", str(sts / "STS_044" / "CT_image.nii.gz"),
                            "--pet", str(sts / "STS_044" / "PET_image.nii.gz"), "--roi", "all",
                            "--out", str(work / "student.nii.gz")],
    }


def measure(argv: list[str], tuned: bool, work: Path) -> dict:
    cache = tempfile.mkdtemp(dir=work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({"DISTILLSEG_CACHE": cache, "DISTILLSEG_EMBEDDING_CACHE": "0",
                "DISTILLSEG_MALLOC_TUNING": "1" if tuned else "0",
                "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])})
    load = os.getloadavg()[0]
    result = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "DistillSegLib", *argv, "--threads", "1"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {result.stderr.strip().splitlines()[-3:]}")
    row = {"tuned": tuned, "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2)}
    for name, pattern in FIELDS.items():
        value = re.search(pattern, result.stderr).group(1)
        if name == "wall":
            parts = [float(p) for p in value.split(":")]
            row["wall_s"] = round(sum(p * 60 ** (len(parts) - 1 - i) for i, p in enumerate(parts)), 2)
        elif name == "peak_rss_mb":
            row[name] = round(int(value) / 1024, 1)
        else:
            row[name] = float(value) if "." in value else int(value)
    row["cpu_s"] = round(row["user_s"] + row["sys_s"], 2)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a student model (for student-predict)")
    parser.add_argument("--workloads", default="litemedsam-embed,litemedsam-predict,train,student-predict")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "allocator.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="distillseg-allocator-"))
    commands = workloads(args.model, work)
    report: dict = {"cpu_count": os.cpu_count(), "threads": 1, "results": {}}
    print(f"{'workload':20s} {'settings':9s} {'wall s':>7s} {'user s':>7s} {'sys s':>7s} {'RSS MB':>7s} {'minor faults':>13s}")
    for name in args.workloads.split(","):
        runs = [measure(commands[name], tuned, work) for _ in range(args.repeats) for tuned in (False, True)]
        summary = {}
        for tuned in (False, True):
            mine = [r for r in runs if r["tuned"] == tuned]
            med = {k: statistics.median(r[k] for r in mine) for k in ("wall_s", "user_s", "sys_s", "cpu_s", "peak_rss_mb", "minor_faults")}
            summary["tuned" if tuned else "glibc_defaults"] = med
            print(f"{name:20s} {'tuned' if tuned else 'defaults':9s} {med['wall_s']:7.1f} {med['user_s']:7.1f} "
                  f"{med['sys_s']:7.1f} {med['peak_rss_mb']:7.0f} {med['minor_faults']:13.0f}  "
                  f"(load {[r['load_average_before'] for r in mine]})", flush=True)
        report["results"][name] = {"runs": runs, "median": summary, "command": ["distillseg", *commands[name], "--threads", "1"]}
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
