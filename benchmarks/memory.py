"""Peak memory and wall time of DistillSeg's heaviest work: can a 16 GB laptop running Slicer afford it?

Each workload runs as its own ``distillseg`` process (one torch thread, an empty teacher
cache of its own unless ``--cache``), and the whole process tree is sampled with psutil
every ``--interval`` seconds: the peak of the tree's summed RSS, the peak of the largest
single process, the CPU seconds (user + system) and the wall time. The machine's load
average is recorded at the start and end of each run and averaged over the samples (other
work on a shared machine slows a run down: the CPU seconds are the steadier figure).
``--code DIR`` measures another checkout of the engine (``PYTHONPATH=DIR``): the same
command before and after a change.

Workloads (the demo split of ``DistillSegLib/demo/split.py``: labelled STS_001-005 and its
15-case unlabelled pool):

* ``box``: ``predict --teacher litemedsam --prompt-box`` around STS_019's tumour (the
  radiologist's box; the slice walk of the interactive teacher);
* ``dualview``, ``tskd``: the Slicer module's *Distil* (``distil_arguments``, default steps and
  round length) with that strategy on the 5 labelled cases and the 15-case pool;
* ``demo-quick``, ``demo``: ``distillseg demo --quick`` and the full ``distillseg demo``.

A run longer than ``--time-limit`` is stopped and recorded as unfinished, with the figures
up to then (so is one that ends with a signal, e.g. the system's out-of-memory killer:
``returncode`` -9). Memory figures are in GiB (2^30 bytes), like ``free -g``. Results are merged into ``benchmarks/results/memory.json`` under ``--label``.

    nice -n 10 .venv/bin/python benchmarks/memory.py --label after --workloads dualview
    nice -n 10 .venv/bin/python benchmarks/memory.py --label before --code /work/main --workloads dualview
    .venv/bin/python benchmarks/memory.py --summarise
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results" / "memory.json"
WORKLOADS = ("box", "dualview", "tskd", "demo-quick", "demo")
GB = 2 ** 30


def demo_split(code: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(labelled, unlabelled) case ids of the demo split, as the code under test defines it."""
    script = ("import json, os; from DistillSegLib.demo.split import sts_split; "
              f"ids = sorted(d for d in os.listdir({str(DATA / 'sts-petct')!r}) if d.startswith('STS_')); "
              "s = sts_split(ids); print(json.dumps([s.labelled, s.unlabelled]))")
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(code)}, cwd=str(code),
                         check=True, capture_output=True, text=True).stdout
    labelled, unlabelled = json.loads(out.strip().splitlines()[-1])
    return tuple(labelled), tuple(unlabelled)


def tumour_box_ras(case: Path) -> str:
    """``x0,y0,z0,x1,y1,z1`` (RAS mm) around the case's reference mask, 5 mm margin."""
    import nibabel as nib
    import numpy as np

    mask = nib.load(str(case / "CT_mask.nii.gz"))
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    corners = np.array([[a, b, c] for a in (ijk[:, 0].min(), ijk[:, 0].max()) for b in (ijk[:, 1].min(), ijk[:, 1].max())
                        for c in (ijk[:, 2].min(), ijk[:, 2].max())], float)
    ras = nib.affines.apply_affine(mask.affine, corners)
    low, high = ras.min(0) - 5, ras.max(0) + 5
    return ",".join(f"{v:.1f}" for v in (*low, *high))


def command(workload: str, code: Path, work: Path, steps: int | None) -> list[str]:
    """The ``distillseg`` arguments of one workload."""
    sts = DATA / "sts-petct"
    if workload == "box":
        case = sts / "STS_019"
        return ["predict", "--teacher", "litemedsam", f"--prompt-box={tumour_box_ras(case)}",
                "--ct", str(case / "CT_image.nii.gz"), "--pet", str(case / "PET_image.nii.gz"),
                "--out", str(work / "box.nii.gz"), "--threads", "1", "--json-progress"]
    if workload in ("dualview", "tskd"):
        labelled, unlabelled = demo_split(code)
        arguments = ["train", "--data", str(sts), "--strategy", workload, "--out", str(work / f"{workload}.pt"),
                     "--json-progress", "--labelled", ",".join(labelled), "--unlabelled", ",".join(unlabelled),
                     "--threads", "1", "--device", "cpu"]
        return arguments + (["--steps", str(steps)] if steps else [])
    if workload in ("demo", "demo-quick"):
        return ["demo", "--data", str(sts), "--out", str(work / "demo"), "--json-progress",
                *(["--quick"] if workload == "demo-quick" else []), *(["--steps", str(steps)] if steps else [])]
    raise SystemExit(f"error: unknown workload {workload!r}: choose from {', '.join(WORKLOADS)}")


def tree(process) -> list:
    import psutil

    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


class StageClock:
    """When each progress stage of the ``--json-progress`` log was first and last seen
    (seconds from the start, to the sampling interval): a teacher round's or a tuning's
    own wall time."""

    def __init__(self, log: Path, start: float) -> None:
        self.log, self.start, self.offset = log, start, 0
        self.seen: dict[str, list[float]] = {}

    def read(self) -> None:
        try:
            with open(self.log, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offset += len(complete)
        now = round(time.perf_counter() - self.start, 1)
        for line in complete.decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            stage = record.get("stage") if isinstance(record, dict) else None
            if isinstance(stage, str) and stage != "message":
                self.seen.setdefault(stage, [now, now])[1] = now

    def stages(self) -> dict[str, dict[str, float]]:
        return {stage: {"first_s": first, "last_s": last, "seconds": round(last - first, 1)}
                for stage, (first, last) in self.seen.items()}


def run(argv: list[str], code: Path, cache: Path, log: Path, time_limit: float, interval: float) -> dict[str, Any]:
    """Run ``python -m DistillSegLib argv`` and sample its process tree; the figures."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(code), "DISTILLSEG_CACHE": str(cache),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cache.mkdir(parents=True, exist_ok=True)
    start_load = os.getloadavg()
    start = time.perf_counter()
    with open(log, "w") as out:
        # cwd: ``python -m`` puts the working folder first on sys.path, before PYTHONPATH
        child = subprocess.Popen([sys.executable, "-m", "DistillSegLib", *argv], env=env, stdout=out, cwd=str(code),
                                 stderr=subprocess.STDOUT, start_new_session=True)
        root = psutil.Process(child.pid)
        peak_tree = peak_single = 0
        loads, cpu = [], {}
        clock = StageClock(log, start)
        finished = True
        while child.poll() is None:
            clock.read()
            if time.perf_counter() - start > time_limit:
                finished = False
                for p in reversed(tree(root)):
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                child.wait()
                break
            total = 0
            for p in tree(root):
                try:
                    rss = p.memory_info().rss
                    times = p.cpu_times()
                except psutil.Error:
                    continue
                total += rss
                peak_single = max(peak_single, rss)
                cpu[p.pid] = times.user + times.system
            peak_tree = max(peak_tree, total)
            loads.append(os.getloadavg()[0])
            time.sleep(interval)
    wall = time.perf_counter() - start
    clock.read()
    lines = log.read_text(errors="replace").splitlines()
    messages = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("stage") == "message":
            messages.append(record.get("message"))
    return {
        "finished": finished and child.returncode >= 0, "returncode": child.returncode, "wall_s": round(wall, 1),
        "cpu_s": round(sum(cpu.values()), 1), "peak_tree_rss_gb": round(peak_tree / GB, 3),
        "peak_process_rss_gb": round(peak_single / GB, 3),
        "load_start": round(start_load[0], 2), "load_end": round(os.getloadavg()[0], 2),
        "load_mean": round(sum(loads) / len(loads), 2) if loads else None, "cpu_count": os.cpu_count(),
        "memory_messages": [m for m in messages if m and m.startswith("memory after")],
        "stages": clock.stages(),
        "tail": lines[-5:],
    }


def summarise(results: dict[str, Any]) -> None:
    print(f"{'label':8} {'workload':11} {'done':5} {'wall min':>9} {'cpu min':>8} {'peak GB':>8} {'load':>5}")
    for label, runs in results.items():
        for name, r in runs.items():
            if "wall_s" not in r:  # a run recorded by hand (see its note)
                continue
            print(f"{label:8} {name:11} {str(r['finished']):5} {r['wall_s'] / 60:9.1f} {r['cpu_s'] / 60:8.1f} "
                  f"{r['peak_tree_rss_gb']:8.2f} {r['load_mean'] or 0:5.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="box,dualview,tskd,demo-quick",
                        help=f"comma-separated, from {', '.join(WORKLOADS)}")
    parser.add_argument("--label", default="after", help="key of this measurement in the JSON (before/after)")
    parser.add_argument("--code", default=str(ROOT), help="engine checkout to measure (PYTHONPATH)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the command's own)")
    parser.add_argument("--time-limit", type=float, default=3 * 3600, help="seconds before a run is stopped")
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval (s)")
    parser.add_argument("--cache", default=None, help="teacher cache folder (default: an empty one per run)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--summarise", action="store_true", help="print the table of the JSON and stop")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    if args.summarise:
        summarise(results)
        return 0
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        print(f"error: unknown workload(s) {', '.join(unknown)}: choose from {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    code = Path(args.code).resolve()
    for name in names:
        work = Path(tempfile.mkdtemp(prefix=f"distillseg-memory-{name}-"))
        try:
            cache = Path(args.cache) if args.cache else work / "cache"
            argv_ = command(name, code, work, args.steps)
            figures = run(argv_, code, cache, work / "stdout.jsonl", args.time_limit, args.interval)
            figures.update({"command": "distillseg " + " ".join(argv_), "code": str(code),
                            "steps": args.steps, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results = json.loads(out.read_text()) if out.exists() else {}
        results.setdefault(args.label, {})[name] = figures
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(tmp, out)
        print(f"{args.label} {name}: finished={figures['finished']} wall {figures['wall_s'] / 60:.1f} min, "
              f"cpu {figures['cpu_s'] / 60:.1f} min, peak {figures['peak_tree_rss_gb']:.2f} GB "
              f"(largest process {figures['peak_process_rss_gb']:.2f} GB), load {figures['load_mean']}", flush=True)
    summarise({args.label: results.get(args.label, {})})
    return 0


if __name__ == "__main__":
    sys.exit(main())
