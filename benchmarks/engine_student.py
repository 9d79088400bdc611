"""A student Run through the warm engine, end to end: first and later Runs on sts-petct crops.

Three ways, each timed from the caller's side (wall clock):

* ``logic-engine``: the Slicer module's Logic on a real MRML scene (slicer-core) with the
  :class:`EngineRunner` (``DistillSeg/DistillSegModuleLib/EngineRunner.py``): from
  ``startSegmentation`` (volumes exported from the scene, the job, the label map imported
  into a segmentation node with its lesion table) to ``onFinished``;
* ``client-engine``: :class:`DistillSegLib.engine.client.EngineClient` alone: from
  ``submit`` of the ``predict`` job to its ``finished`` line (inputs already on disk);
* ``logic-subprocess``: the Logic with today's ``SubprocessRunner`` (a new engine process
  per Run), for reference.

The engine's start (imports of torch and MONAI, reported by its ``ready`` line) is timed
separately; the "first Run" is the first job after ``ready``. Every Run uses the case's
tumour mask plus 10 mm as its ROI. The load average is recorded beside every Run::

    .venv/bin/python benchmarks/engine_student.py --model supervised_600.pt
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "DistillSeg"))
DATA = Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_CASES = "STS_006,STS_008,STS_012,STS_014,STS_044"


def engine_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def roi_text(case_id: str) -> str:
    from DistillSegLib.io.volume import read_image
    from DistillSegLib.student.inference import roi_from_mask

    low, high = roi_from_mask(read_image(DATA / "sts-petct" / case_id / "CT_mask.nii.gz"), 10.0)
    return ",".join(f"{v:.2f}" for v in [*low, *high])


def time_client(model: str, cases: list[str], threads: int, out: Path) -> dict:
    from DistillSegLib.engine.client import EngineClient

    started = time.perf_counter()
    client = EngineClient(engine_args=["--threads", str(threads)], env=engine_env())
    ready = client.wait_ready(timeout=600)
    start_seconds = time.perf_counter() - started
    runs = []
    try:
        for n, case_id in enumerate(cases * 2):
            folder = DATA / "sts-petct" / case_id
            argv = ["predict", "--model", model, "--ct", str(folder / "CT_image.nii.gz"),
                    "--pet", str(folder / "PET_image.nii.gz"), f"--roi={roi_text(case_id)}",
                    "--out", str(out / f"{case_id}.nii.gz"), "--stats", str(out / f"{case_id}.json")]
            load, begin = os.getloadavg()[0], time.perf_counter()
            result = client.wait(client.submit(argv), timeout=600)
            if not result.ok:
                raise SystemExit(f"{case_id}: {result.message}")
            runs.append({"run": n + 1, "case": case_id, "seconds": round(time.perf_counter() - begin, 3),
                         "engine_seconds": result.seconds, "load_average": round(load, 2)})
            print(f"client-engine    run {n + 1:2d} {case_id}  {runs[-1]['seconds']:6.2f} s  (load {load:.1f})", flush=True)
    finally:
        client.shutdown()
    return {"engine_start_seconds": round(start_seconds, 2), "engine_ready": ready, "runs": runs}


def time_logic(model: str, cases: list[str], runner, label: str) -> list[dict]:
    import numpy as np
    import slicer

    from DistillSegModuleLib.Logic import SceneLogic

    runs = []
    for n, case_id in enumerate(cases):
        scene = slicer.vtkMRMLScene()
        logic = SceneLogic(scene, runner, python=sys.executable)
        folder = DATA / "sts-petct" / case_id
        ct, pet = logic.loadStudy(folder / "CT_image.nii.gz", folder / "PET_image.nii.gz")
        low_high = np.array([float(v) for v in roi_text(case_id).split(",")])
        roi = slicer.vtkMRMLMarkupsROINode()
        scene.AddNode(roi)
        roi.SetXYZ(*((low_high[:3] + low_high[3:]) / 2))
        roi.SetRadiusXYZ(*((low_high[3:] - low_high[:3]) / 2))
        ended = []
        load, begin = os.getloadavg()[0], time.perf_counter()
        logic.startSegmentation(ct, pet, model, roi, "cpu", onFinished=ended.append)
        runner.wait(600)
        seconds = time.perf_counter() - begin
        if not ended or not ended[0].ok:
            raise SystemExit(f"{label} {case_id}: {ended[0].message if ended else 'no result'}")
        runs.append({"run": n + 1, "case": case_id, "seconds": round(seconds, 3), "load_average": round(load, 2),
                     "lesions": len(ended[0].statistics or [])})
        print(f"{label:16s} run {n + 1:2d} {case_id}  {seconds:6.2f} s  (load {load:.1f})", flush=True)
    return runs


def summary(runs: list[dict]) -> dict:
    later = [r["seconds"] for r in runs[1:]]
    return {"first_seconds": runs[0]["seconds"], "later_median_seconds": round(statistics.median(later), 3) if later else None,
            "later_max_seconds": max(later) if later else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--threads", type=int, default=1, help="the engine's torch threads (1 on a busy machine)")
    parser.add_argument("--work", default="/tmp/distillseg-engine-student")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_student.json"))
    args = parser.parse_args()
    cases = args.cases.split(",")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    from DistillSegModuleLib.EngineRunner import EngineRunner
    from DistillSegModuleLib.ProcessRunner import SubprocessRunner

    report: dict = {"model": args.model, "threads": args.threads, "cpu_count": os.cpu_count(),
                    "load_average_start": os.getloadavg()}
    client = time_client(args.model, cases, args.threads, work)
    report["client_engine"] = {**client, **summary(client["runs"])}
    started = time.perf_counter()
    runner = EngineRunner(engine_args=["--threads", str(args.threads)])
    runner.warmUp(sys.executable, engine_env())
    runner.client.wait_ready(600)
    engine_start = time.perf_counter() - started
    try:
        logic_runs = time_logic(args.model, cases * 2, runner, "logic-engine")
    finally:
        runner.shutdown()
    report["logic_engine"] = {"engine_start_seconds": round(engine_start, 2), "runs": logic_runs, **summary(logic_runs)}
    sub_runs = time_logic(args.model, cases[:3], SubprocessRunner(), "logic-subprocess")
    report["logic_subprocess"] = {"runs": sub_runs, "median_seconds": statistics.median(r["seconds"] for r in sub_runs)}
    report["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    for key in ("client_engine", "logic_engine"):
        row = report[key]
        print(f"{key:16s} engine start {row['engine_start_seconds']:.1f} s, first Run {row['first_seconds']:.2f} s, "
              f"later Runs median {row['later_median_seconds']:.2f} s (max {row['later_max_seconds']:.2f} s)")
    print(f"logic-subprocess median {report['logic_subprocess']['median_seconds']:.2f} s per Run; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
