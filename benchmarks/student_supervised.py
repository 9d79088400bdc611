"""Supervised student on 5 labelled sts-petct cases, evaluated on the other cases.

Split (fixed, documented; never tuned on the reported cases):
  labelled   STS_001..STS_005 (the first five ids)
  validation STS_006, STS_008 (monitoring during training only)
  test       every other case of ../shared/data/sts-petct (23 cases), reported here.

Trains with ``distillseg train`` (so the measured time is the command's), predicts each
test case with ``--roi all`` semantics (the inputs are crops), scores with the same code
as ``distillseg evaluate``; prints a table and writes JSON.

    .venv/bin/python benchmarks/student_supervised.py --steps 400 --out benchmarks/results/student_supervised
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
sys.path.insert(0, str(ROOT))

LABELLED = ["STS_001", "STS_002", "STS_003", "STS_004", "STS_005"]
VALIDATION = ["STS_006", "STS_008"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("DISTILLSEG_DATA", str(ROOT.parent / "shared" / "data")) + "/sts-petct")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "student_supervised"))
    parser.add_argument("--train-args", default="", help="extra arguments for distillseg train (quoted)")
    args = parser.parse_args()

    from DistillSegLib.commands.evaluate import evaluate_folders, format_table
    from DistillSegLib.io.dataset import find_cases
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.student.model_file import load_model
    from DistillSegLib.io.volume import write_image
    import torch

    if "--threads" in args.train_args:
        torch.set_num_threads(int(args.train_args.split("--threads")[1].split()[0]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "student.pt"
    command = [sys.executable, "-m", "DistillSegLib", "train", "--data", args.data,
               "--labelled", ",".join(LABELLED), "--val", ",".join(VALIDATION),
               "--steps", str(args.steps), "--seed", str(args.seed), "--out", str(model_path),
               *args.train_args.split()]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    train_seconds = time.perf_counter() - start

    model = load_model(model_path)
    test = [c for c in find_cases(args.data) if c.case_id not in LABELLED + VALIDATION]
    pred_dir = out / "predictions"
    predict_seconds = []
    for source in test:
        case = source.load()
        prediction = predict_case(model, case, roi="all", device="cpu")
        predict_seconds.append(prediction.seconds)
        write_image(prediction.label, pred_dir / f"{source.case_id}.nii.gz")
    result = evaluate_folders(pred_dir, Path(args.data), [c.case_id for c in test])
    print(format_table(result))
    summary = {
        "command": " ".join(command),
        "split": {"labelled": LABELLED, "validation": VALIDATION, "test": [c.case_id for c in test]},
        "train_seconds_wall": round(train_seconds, 1),
        "model_training_seconds": model.metadata.get("training_seconds"),
        "parameters": model.metadata.get("parameters"),
        "validation_metrics": model.metadata.get("validation_metrics"),
        "predict_seconds_mean": round(sum(predict_seconds) / len(predict_seconds), 2),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "mean": result["mean"],
        "cases": result["cases"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"mean Dice {result['mean']['dice']:.3f} on {len(test)} test cases; training {train_seconds:.0f} s "
          f"(wall, incl. loading); {model.metadata.get('parameters')} parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
