"""Accuracy of the interactive path, used as a radiologist would: one box, then corrective clicks.

On the demo's 10 validation cases (``DistillSegLib/demo/split.py``), for the CT and the PET:

* ``student``: the supervised student trained on the demo's 5 labelled cases (the model the
  interactive path would replace), on the crop (``--roi all``, as the demo);
* ``box``: LiteMedSAM from ONE 3D box 10% larger than the tumour (its CT mask's bounding box,
  each extent x 1.1 about its centre: a hand-drawn ROI), slice by slice from the box's middle
  slice (``DistillSegLib/teachers/interactive.py``);
* ``box + k clicks`` (k = 1..3): the previous result corrected by a simulated click, as in
  SAM-Med3D's evaluation (uni-medical/SAM-Med3D, commit f3de1fa, ``utils/infer_utils.py``
  ``random_sample_next_click(method="ritm")``): of the false-negative and false-positive
  regions, the one with the larger Euclidean distance transform gets the click, at a voxel
  chosen (seeded) among those deeper than half that maximum; positive for a missed region,
  negative for a false one. The distance is in mm (the CT grid is 0.98 x 0.98 x 3.27 mm;
  SAM-Med3D's grid is isotropic);
* ``gt slice boxes``: LiteMedSAM with a box per slice from the ground truth (+2 px), the
  upper bound the demo reports.

Dice on the CT grid against the CT mask (the demo's convention; the PET results are brought
from the PET's own grid). Slice embeddings come from ``$DISTILLSEG_CACHE`` when present
(computed and stored otherwise); timings are recorded but this is an accuracy benchmark::

    DISTILLSEG_CACHE=/work/cache DISTILLSEG_EMBEDDING_DISK_GB=40 \\
        .venv/bin/python benchmarks/interactive.py --model supervised_600.pt --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data"))
CLICKS = 3


def box_around(mask, grow: float = 0.10) -> tuple[np.ndarray, np.ndarray]:
    """RAS corners (mm) of a mask's bounding box (voxel edges), each extent x (1 + grow) about its centre."""
    from DistillSegLib.io.volume import apply_affine

    index = np.argwhere(np.asarray(mask.array) > 0)
    low, high = index.min(axis=0) - 0.5, index.max(axis=0) + 0.5
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    world = apply_affine(mask.affine, corners)
    a, b = world.min(axis=0), world.max(axis=0)
    centre, half = (a + b) / 2.0, (b - a) / 2.0 * (1.0 + grow)
    return centre - half, centre + half


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def simulated_click(prediction, truth, seed: int = 0) -> tuple[np.ndarray, bool]:
    """SAM-Med3D's 'ritm' click (see the module docstring): ``(RAS point in mm, positive)``."""
    from scipy import ndimage

    from DistillSegLib.io.volume import apply_affine

    predicted, true = np.asarray(prediction.array) > 0, np.asarray(truth.array) > 0
    regions = {True: true & ~predicted, False: predicted & ~true}
    depth = {}
    for positive, region in regions.items():
        depth[positive] = (ndimage.distance_transform_edt(np.pad(region, 1), sampling=truth.spacing)[1:-1, 1:-1, 1:-1]
                           if region.any() else np.zeros(region.shape))
    positive = bool(depth[True].max() > depth[False].max())
    deepest = depth[positive]
    candidates = np.argwhere(deepest > deepest.max() / 2.0)
    index = candidates[np.random.default_rng(seed).integers(len(candidates))]
    return apply_affine(truth.affine, index[None].astype(float))[0], positive


def text_box(low, high) -> str:
    return ",".join(f"{v:.3f}" for v in [*low, *high])


def text_points(points, positives) -> str:
    return ";".join(",".join(f"{v:.3f}" for v in p) + ("," + ("+" if s else "-")) for p, s in zip(points, positives))


def run_case(case_id: str, student, threads: int) -> list[dict]:
    from DistillSegLib.io.case import load_case_folder
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.teachers.interactive import prepare_interactive, segment_interactively
    from DistillSegLib.teachers.run import segment_with_teacher
    from DistillSegLib.teachers.user_prompts import UserPrompt

    case = load_case_folder(DATA / "sts-petct" / case_id)
    truth = case.label_on_ct
    true = truth.array > 0
    box = box_around(truth)
    student_dice = dice(predict_case(student, case, roi="all", device="cpu").label.array > 0, true)
    rows = []
    for modality in ("CT", "PET"):
        row = {"case": case_id, "modality": modality, "student": round(student_dice, 4), "clicks": []}
        begin = time.perf_counter()
        request = prepare_interactive(case, "litemedsam", None, UserPrompt(box=box), modality)
        result, _ = segment_interactively(request)
        row["box_seconds"] = round(time.perf_counter() - begin, 2)
        row["box_slices"] = result.slices
        row["box"] = round(dice(result.label.array > 0, true), 4)
        points, positives = [], []
        for n in range(CLICKS):
            point, positive = simulated_click(result.label, truth, seed=n)
            points.append(point)
            positives.append(positive)
            prompt = UserPrompt(box=box, points=[point], labels=[int(positive)], previous=result.label)
            begin = time.perf_counter()
            result, _ = segment_interactively(prepare_interactive(case, "litemedsam", None, prompt, modality))
            row["clicks"].append({"positive": positive, "ras_mm": [round(float(v), 2) for v in point],
                                  "dice": round(dice(result.label.array > 0, true), 4), "slices": result.slices,
                                  "seconds": round(time.perf_counter() - begin, 2)})
        label, _ = segment_with_teacher(case, "litemedsam", None, truth, modality, cache=False)
        row["gt_slice_boxes"] = round(dice(label.array > 0, true), 4)
        row["load_average"] = round(os.getloadavg()[0], 2)
        print(f"{case_id} {modality:3s} student {row['student']:.3f}  box {row['box']:.3f}  clicks "
              + " ".join(f"{c['dice']:.3f}{'+' if c['positive'] else '-'}" for c in row["clicks"])
              + f"  gt-slice boxes {row['gt_slice_boxes']:.3f}  ({row['box_seconds']:.0f} s, {row['box_slices']} slices)",
              flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> dict:
    summary = {}
    for modality in ("CT", "PET"):
        part = [r for r in rows if r["modality"] == modality]
        if not part:
            continue
        summary[modality] = {
            "cases": len(part), "student": round(float(np.mean([r["student"] for r in part])), 4),
            "box": round(float(np.mean([r["box"] for r in part])), 4),
            **{f"box+{k + 1} clicks": round(float(np.mean([r["clicks"][k]["dice"] for r in part])), 4)
               for k in range(CLICKS)},
            "gt_slice_boxes": round(float(np.mean([r["gt_slice_boxes"] for r in part])), 4),
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="supervised student trained on STS_001-005 (see the README)")
    parser.add_argument("--cases", default=None, help="case ids (default: the demo's 10 validation cases)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "interactive.json"))
    args = parser.parse_args()

    import torch

    from DistillSegLib.allocator import tune_allocator
    from DistillSegLib.atomic import write_json_atomic
    from DistillSegLib.demo.split import VALIDATION_CASES
    from DistillSegLib.student.model_file import load_model

    tune_allocator()
    torch.set_num_threads(args.threads)
    student = load_model(args.model)
    cases = args.cases.split(",") if args.cases else list(VALIDATION_CASES)
    report = {"model": args.model, "threads": args.threads, "clicks": CLICKS, "box_grow": 0.10,
              "load_average_start": os.getloadavg(), "rows": []}
    for case_id in cases:
        report["rows"].extend(run_case(case_id, student, args.threads))
        report["mean"] = table(report["rows"])
        write_json_atomic(args.out, report)
    print(f"{'':4s} {'cases':>5s} {'student':>8s} {'box':>7s} " + " ".join(f"{'+' + str(k + 1) + ' click':>9s}" for k in range(CLICKS))
          + f" {'gt boxes':>9s}")
    for modality, row in report["mean"].items():
        print(f"{modality:4s} {row['cases']:5d} {row['student']:8.3f} {row['box']:7.3f} "
              + " ".join(f"{row[f'box+{k + 1} clicks']:9.3f}" for k in range(CLICKS)) + f" {row['gt_slice_boxes']:9.3f}")
    report["load_average_end"] = os.getloadavg()
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
