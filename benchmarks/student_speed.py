"""The student's inference speed on a whole-body input and its accuracy, float32 vs the defaults.

Two settings of :func:`DistillSegLib.student.inference.sliding_window_probabilities`:

* ``fp32``: float32, 2 windows per batch (the settings before this benchmark);
* ``default``: the current defaults: 4 windows per batch, bf16 autocast where the CPU computes
  bfloat16 natively (AMX / AVX-512 BF16; float32 elsewhere), ``torch.inference_mode``.

Whole-body timing: the QIN-HEADNECK PET input of ``benchmarks/student_inference.py``
(228 x 228 x 338 at the student grid), in a fresh process per run (after the allocator
settings of ``DistillSegLib/allocator.py``), timing ``predict_case`` (preprocessing, sliding
window, result back on the CT grid), with 1 and 2 torch threads, ``--repeats`` times each;
the median is reported with the load average. Accuracy: Dice of both settings on the demo's
10 validation cases (``DistillSegLib/demo/split.py``) against the CT masks, with a student
trained on the demo's 5 labelled cases::

    distillseg train --data ../shared/data/sts-petct --labelled STS_001,STS_002,STS_003,STS_004,STS_005 \\
        --steps 600 --seed 0 --threads 1 --out supervised_600.pt
    .venv/bin/python benchmarks/student_speed.py --model supervised_600.pt
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data"))
SETTINGS = {"fp32": {"precision": "fp32", "batch_size": 2}, "default": {}}


def predict(model, case, setting: str):
    """``predict_case`` with one setting (same preprocessing and resampling)."""
    import time as _time

    from DistillSegLib.student.inference import Prediction, sliding_window_probabilities
    from DistillSegLib.student.preprocess import prepare_case, probabilities_to_ct_grid

    start = _time.perf_counter()
    prepared = prepare_case(case, model.config, with_label=False)
    probabilities = sliding_window_probabilities(model.network, prepared.image, model.config, "cpu", **SETTINGS[setting])
    label, foreground = probabilities_to_ct_grid(probabilities.numpy(), prepared, case.ct, None)
    return Prediction(label, foreground, None, _time.perf_counter() - start)


def time_whole_body(args) -> dict:
    """In the subprocess: one whole-body run; one JSON line."""
    import torch

    from DistillSegLib.allocator import tune_allocator
    from DistillSegLib.student.model_file import load_model
    from student_inference import whole_body_case

    tune_allocator()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    case = whole_body_case(model.config)
    before, load = resource.getrusage(resource.RUSAGE_SELF), os.getloadavg()[0]
    prediction = predict(model, case, args.one)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"setting": args.one, "threads": args.threads, "seconds": round(prediction.seconds, 2),
            "user_s": round(after.ru_utime - before.ru_utime, 2), "sys_s": round(after.ru_stime - before.ru_stime, 2),
            "minor_faults": after.ru_minflt - before.ru_minflt, "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
            "foreground_ml": round(float((prediction.label.array > 0).sum() * case.ct.voxel_volume_ml), 1),
            "load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2)}


def validation_dice(model_path: str, threads: int) -> dict:
    import numpy as np
    import torch

    from DistillSegLib.demo.split import VALIDATION_CASES
    from DistillSegLib.io.case import load_case_folder
    from DistillSegLib.student.model_file import load_model

    torch.set_num_threads(threads)
    model = load_model(model_path)
    rows = []
    for case_id in VALIDATION_CASES:
        case = load_case_folder(DATA / "sts-petct" / case_id)
        truth = case.label_on_ct.array > 0
        row = {"case": case_id}
        for setting in SETTINGS:
            prediction = predict(model, case, setting)
            predicted = prediction.label.array > 0
            row[setting] = round(2.0 * float((predicted & truth).sum()) / float(predicted.sum() + truth.sum()), 4)
            row[f"{setting}_seconds"] = round(prediction.seconds, 2)
        print(f"{case_id}  Dice fp32 {row['fp32']:.4f}  default {row['default']:.4f}  "
              f"({row['fp32_seconds']:.1f} s / {row['default_seconds']:.1f} s)", flush=True)
        rows.append(row)
    mean = {s: round(float(np.mean([r[s] for r in rows])), 4) for s in SETTINGS}
    return {"cases": rows, "mean": mean, "mean_difference": round(mean["default"] - mean["fp32"], 4),
            "max_abs_case_difference": round(max(abs(r["default"] - r["fp32"]) for r in rows), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a student trained on sts-petct (see above)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="torch threads to time the whole-body input with")
    parser.add_argument("--skip-dice", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "student_speed.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.threads = int(args.threads)
        print(json.dumps(time_whole_body(args)))
        return 0
    from DistillSegLib.precision import cpu_computes_bf16

    report: dict = {"model": args.model, "cpu_count": os.cpu_count(), "cpu_bf16": cpu_computes_bf16(),
                    "settings": {k: v or "defaults" for k, v in SETTINGS.items()}, "whole_body": []}
    for threads in [int(t) for t in args.threads.split(",")]:
        for setting in SETTINGS:
            runs = []
            for _ in range(args.repeats):
                command = [sys.executable, __file__, "--one", setting, "--model", args.model, "--threads", str(threads)]
                result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                if result.returncode != 0:
                    raise SystemExit(f"{setting}: {result.stderr.strip().splitlines()[-1:]}")
                runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
            row = {"setting": setting, "threads": threads, "median_seconds": statistics.median(r["seconds"] for r in runs),
                   "runs": runs}
            report["whole_body"].append(row)
            print(f"whole body  {setting:8s} {threads} thread(s): median {row['median_seconds']:6.1f} s "
                  f"(runs {[r['seconds'] for r in runs]}, load {[r['load_average_before'] for r in runs]}, "
                  f"peak RSS {max(r['peak_rss_mb'] for r in runs):.0f} MB)", flush=True)
    if not args.skip_dice:
        report["validation_dice"] = validation_dice(args.model, 1)
        dice = report["validation_dice"]
        print(f"validation Dice (10 cases): fp32 {dice['mean']['fp32']:.4f}, default {dice['mean']['default']:.4f}, "
              f"difference {dice['mean_difference']:+.4f} (largest per case {dice['max_abs_case_difference']:.4f})")
    report["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
