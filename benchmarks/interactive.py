"""Accuracy of the interactive path, used as a radiologist would: one box, then corrective clicks.

On the demo's 10 validation cases (``DistillSegLib/demo/split.py``), side by side in one run:

* ``student``: an automatic (prompt-free) student (``--model``), on the crop (``--roi all``,
  as the demo);
* ``promptable`` (``--promptable MODEL``): a promptable student (``distillseg train
  --promptable``) without any prompt (``automatic``, on the crop), from ONE 10%-grown box, and
  with 1..3 simulated clicks, each re-running it with all clicks so far and its previous mask
  (:func:`DistillSegLib.student.prompt_inference.predict_with_prompt`), with the seconds of
  each interaction (model and study already loaded: the warm engine's situation);
* ``box``: LiteMedSAM from ONE 3D box 10% larger than the tumour (its CT mask's bounding box,
  each extent x 1.1 about its centre: a hand-drawn ROI), slice by slice from the box's middle
  slice (``DistillSegLib/teachers/interactive.py``);
  ``--walks none,edge,ellipsoid`` runs it with each rule for the walk's slice boxes
  (``DistillSegLib.teachers.interactive.WALK_FLOOR``: "none" is the walk before any floor,
  "edge" the default); ``--walks ""`` skips LiteMedSAM;
* ``box + k clicks`` (k = 1..``--clicks``): the previous result corrected by a simulated
  click. ``--click-rule deepest`` (default): the deepest voxel (Euclidean distance in mm) of
  the largest connected error region, positive in a miss, negative in a false positive
  (``DistillSegLib.distill.prompt_simulation.next_click``, the rule the promptable student
  was trained with). ``--click-rule ritm``: SAM-Med3D's evaluation (uni-medical/SAM-Med3D,
  commit f3de1fa, ``utils/infer_utils.py`` ``random_sample_next_click(method="ritm")``): of
  the false-negative and false-positive regions, the one with the larger distance transform
  gets the click, at a voxel chosen (seeded) among those deeper than half that maximum (the
  rule of the runs before the promptable student);
* ``gt slice boxes``: LiteMedSAM with a box per slice from the ground truth (+2 px), the
  upper bound the demo reports.

Dice on the CT grid against the CT mask (the demo's convention; the PET results are brought
from the PET's own grid). Slice embeddings come from ``$DISTILLSEG_CACHE`` when present
(computed and stored otherwise); timings are recorded but this is an accuracy benchmark::

    DISTILLSEG_CACHE=/work/cache DISTILLSEG_EMBEDDING_DISK_GB=40 \\
        .venv/bin/python benchmarks/interactive.py --model supervised_600.pt --threads 1

    # the promptable student beside the automatic one and LiteMedSAM before/after the walk's floor
    .venv/bin/python benchmarks/interactive.py --model heldout.pt --promptable promptable.pt \\
        --modalities CT --walks none,edge,ellipsoid --teacher-clicks 0 --no-gt-boxes
"""

from __future__ import annotations

import argparse
import json
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


def student_click(prediction, truth) -> tuple[np.ndarray, bool] | None:
    """The deepest voxel of the largest error region, in RAS mm (see the module docstring)."""
    from DistillSegLib.distill.prompt_simulation import next_click
    from DistillSegLib.io.volume import apply_affine

    click = next_click(np.asarray(prediction.array) > 0, np.asarray(truth.array) > 0, truth.spacing)
    if click is None:
        return None
    return apply_affine(truth.affine, click[0][None])[0], click[1]


def make_click(prediction, truth, rule: str, seed: int) -> tuple[np.ndarray, bool] | None:
    return student_click(prediction, truth) if rule == "deepest" else simulated_click(prediction, truth, seed)


def run_promptable(case, box, truth, model, clicks: int, rule: str) -> dict:
    """The promptable student: automatic, one box, then ``clicks`` corrections (all clicks kept)."""
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.student.prompt_inference import predict_with_prompt
    from DistillSegLib.teachers.user_prompts import UserPrompt

    true = truth.array > 0
    begin = time.perf_counter()
    automatic = predict_case(model, case, roi="all", device="cpu")
    row = {"automatic": round(dice(automatic.label.array > 0, true), 4),
           "automatic_seconds": round(time.perf_counter() - begin, 3)}
    begin = time.perf_counter()
    result = predict_with_prompt(model, case, UserPrompt(box=box))
    row["box_seconds"] = round(time.perf_counter() - begin, 3)
    row["box"] = round(dice(result.label.array > 0, true), 4)
    points, positives, row["clicks"] = [], [], []
    for n in range(clicks):
        click = make_click(result.label, truth, rule, n)
        if click is None:  # nothing left to correct: the answer stands
            row["clicks"].append({**row["clicks"][-1], "seconds": 0.0} if row["clicks"] else
                                 {"dice": row["box"], "seconds": 0.0, "positive": None})
            continue
        points.append(click[0])
        positives.append(int(click[1]))
        prompt = UserPrompt(box=box, points=points, labels=positives, previous=result.label)
        begin = time.perf_counter()
        result = predict_with_prompt(model, case, prompt)
        row["clicks"].append({"positive": bool(click[1]), "ras_mm": [round(float(v), 2) for v in click[0]],
                              "dice": round(dice(result.label.array > 0, true), 4),
                              "seconds": round(time.perf_counter() - begin, 3)})
    return row


def run_teacher(case, box, truth, modality: str, clicks: int, rule: str, walk: str) -> dict:
    """LiteMedSAM from the box (walk rule ``walk``), then ``clicks`` corrections."""
    from DistillSegLib.teachers import interactive
    from DistillSegLib.teachers.interactive import prepare_interactive, segment_interactively
    from DistillSegLib.teachers.user_prompts import UserPrompt

    true = truth.array > 0
    default, interactive.WALK_FLOOR = interactive.WALK_FLOOR, walk
    try:
        return _run_teacher(case, box, truth, true, modality, clicks, rule, walk)
    finally:
        interactive.WALK_FLOOR = default


def _run_teacher(case, box, truth, true, modality: str, clicks: int, rule: str, walk: str) -> dict:
    from DistillSegLib.teachers.interactive import prepare_interactive, segment_interactively
    from DistillSegLib.teachers.user_prompts import UserPrompt

    row: dict = {"walk": walk, "clicks": []}
    begin = time.perf_counter()
    result, _ = segment_interactively(prepare_interactive(case, "litemedsam", None, UserPrompt(box=box), modality))
    row["box_seconds"] = round(time.perf_counter() - begin, 2)
    row["box_slices"] = result.slices
    row["box"] = round(dice(result.label.array > 0, true), 4)
    for n in range(clicks):
        click = make_click(result.label, truth, rule, n)
        if click is None:
            row["clicks"].append({"dice": row["clicks"][-1]["dice"] if row["clicks"] else row["box"], "seconds": 0.0})
            continue
        prompt = UserPrompt(box=box, points=[click[0]], labels=[int(click[1])], previous=result.label)
        begin = time.perf_counter()
        result, _ = segment_interactively(prepare_interactive(case, "litemedsam", None, prompt, modality))
        row["clicks"].append({"positive": bool(click[1]), "ras_mm": [round(float(v), 2) for v in click[0]],
                              "dice": round(dice(result.label.array > 0, true), 4), "slices": result.slices,
                              "seconds": round(time.perf_counter() - begin, 2)})
    return row


def run_case(case_id: str, args, student, promptable) -> dict:
    from DistillSegLib.io.case import load_case_folder
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.teachers.run import segment_with_teacher

    # A case id, or a case folder (e.g. STS_009 converted from DICOM by `distillseg convert`).
    case = load_case_folder(Path(case_id) if "/" in case_id else DATA / "sts-petct" / case_id)
    case_id = Path(case_id).name
    truth = case.label_on_ct
    true = truth.array > 0
    box = box_around(truth)
    row: dict = {"case": case_id, "tumour_ml": round(float(true.sum() * case.ct.voxel_volume_ml), 1),
                 "box_ras_mm": [round(float(v), 3) for v in np.concatenate(box)]}
    if student is not None:
        row["student"] = round(dice(predict_case(student, case, roi="all", device="cpu").label.array > 0, true), 4)
    if promptable is not None:
        row["promptable"] = run_promptable(case, box, truth, promptable, args.clicks, args.click_rule)
        p = row["promptable"]
        print(f"{case_id} promptable: automatic {p['automatic']:.3f}  box {p['box']:.3f} ({p['box_seconds']:.2f} s)  "
              "clicks " + " ".join(f"{c['dice']:.3f} ({c['seconds']:.2f} s)" for c in p["clicks"]), flush=True)
    row["litemedsam"] = {}
    for modality in args.modalities:
        for walk in args.walks:
            teacher = run_teacher(case, box, truth, modality, args.teacher_clicks, args.click_rule, walk)
            row["litemedsam"][f"{modality}/{walk}"] = teacher
            print(f"{case_id} LiteMedSAM {modality} walk {walk}: box {teacher['box']:.3f} ({teacher['box_seconds']:.0f} s, "
                  f"{teacher['box_slices']} slices)  clicks " + " ".join(f"{c['dice']:.3f}" for c in teacher["clicks"]),
                  flush=True)
        if args.gt_boxes:
            label, _ = segment_with_teacher(case, "litemedsam", None, truth, modality, cache=False)
            row["litemedsam"][f"{modality}/gt_slice_boxes"] = round(dice(label.array > 0, true), 4)
    row["load_average"] = round(os.getloadavg()[0], 2)
    return row


def mean(values) -> float:
    return round(float(np.mean(list(values))), 4)


def table(rows: list[dict]) -> dict:
    """Means over the cases of every arm (Dice) and of the student's seconds per interaction."""
    summary: dict = {"cases": len(rows)}
    if rows and "student" in rows[0]:
        summary["student"] = mean(r["student"] for r in rows)
    if rows and "promptable" in rows[0]:
        part = [r["promptable"] for r in rows]
        clicks = len(part[0]["clicks"])
        summary["promptable"] = {
            "automatic": mean(p["automatic"] for p in part), "box": mean(p["box"] for p in part),
            **{f"box+{k + 1} clicks": mean(p["clicks"][k]["dice"] for p in part) for k in range(clicks)},
            "seconds_box": mean(p["box_seconds"] for p in part),
            "seconds_click": mean(c["seconds"] for p in part for c in p["clicks"] if c["seconds"] > 0)
            if any(c["seconds"] > 0 for p in part for c in p["clicks"]) else None,
            "seconds_max": max([p["box_seconds"] for p in part] + [c["seconds"] for p in part for c in p["clicks"]]),
            "cases_below_0.6_box": sum(p["box"] < 0.6 for p in part),
        }
    for key in (rows[0]["litemedsam"] if rows else {}):
        part = [r["litemedsam"][key] for r in rows if key in r["litemedsam"]]
        if key.endswith("gt_slice_boxes"):
            summary[f"litemedsam {key}"] = mean(part)
            continue
        clicks = len(part[0]["clicks"])
        summary[f"litemedsam {key}"] = {
            "box": mean(p["box"] for p in part),
            **{f"box+{k + 1} clicks": mean(p["clicks"][k]["dice"] for p in part) for k in range(clicks)},
            "seconds_box": mean(p["box_seconds"] for p in part), "cases_below_0.6_box": sum(p["box"] < 0.6 for p in part),
            "cases": len(part),
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="automatic (prompt-free) student, e.g. trained on STS_001-005 (see the README)")
    parser.add_argument("--promptable", help="promptable student (distillseg train --promptable)")
    parser.add_argument("--cases", default=None,
                        help="case ids or case folders (default: the demo's 10 validation cases)")
    parser.add_argument("--modalities", default="CT,PET", help="images LiteMedSAM sees (default: CT,PET)")
    parser.add_argument("--walks", default="edge",
                        help="LiteMedSAM walk rules to run, comma-separated: none, edge, ellipsoid (default: edge, "
                             "the default rule; empty: no LiteMedSAM)")
    parser.add_argument("--clicks", type=int, default=CLICKS, help="clicks of the promptable student (default 3)")
    parser.add_argument("--teacher-clicks", type=int, default=CLICKS, help="clicks of LiteMedSAM (default 3)")
    parser.add_argument("--click-rule", choices=["deepest", "ritm"], default="deepest")
    parser.add_argument("--no-gt-boxes", dest="gt_boxes", action="store_false",
                        help="skip LiteMedSAM with ground-truth boxes on every slice")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "interactive.json"))
    args = parser.parse_args()
    args.modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    args.walks = [w.strip() for w in args.walks.split(",") if w.strip()]
    if not args.walks:
        args.modalities, args.gt_boxes = [], False

    import torch

    from DistillSegLib.allocator import tune_allocator
    from DistillSegLib.atomic import write_json_atomic
    from DistillSegLib.demo.split import VALIDATION_CASES
    from DistillSegLib.student.model_file import load_model

    tune_allocator()
    torch.set_num_threads(args.threads)
    student = load_model(args.model) if args.model else None
    promptable = load_model(args.promptable) if args.promptable else None
    if promptable is not None and not promptable.takes_prompts:
        raise SystemExit(f"error: --promptable {args.promptable} takes no prompts")
    cases = args.cases.split(",") if args.cases else list(VALIDATION_CASES)
    report = {"model": args.model, "promptable": args.promptable, "threads": args.threads, "clicks": args.clicks,
              "teacher_clicks": args.teacher_clicks, "click_rule": args.click_rule, "box_grow": 0.10,
              "walks": args.walks, "modalities": args.modalities, "cpu_count": os.cpu_count(),
              "load_average_start": os.getloadavg(), "rows": []}
    for case_id in cases:
        report["rows"].append(run_case(case_id, args, student, promptable))
        report["mean"] = table(report["rows"])
        write_json_atomic(args.out, report)
    report["load_average_end"] = os.getloadavg()
    write_json_atomic(args.out, report)
    print(json.dumps(report["mean"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
