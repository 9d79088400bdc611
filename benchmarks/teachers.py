"""Benchmark the teachers on the shared sts-petct cases: Dice and seconds per case.

For every available teacher and each modality (CT, PET; each on its own grid, the output
resampled onto the CT grid to be scored), the teacher is prompted

* from the ground-truth mask (per-slice boxes with a 2 px margin for 2D teachers): the
  upper bound of what the teacher can give as pseudo-labels;
* optionally (``--student MODEL``) from a student's prediction (``distillseg predict``),
  which is how DistillSeg prompts teachers during distillation; the student's own Dice
  and seconds per case are reported beside it.

Prints a table and writes JSON (updated after every case, so an interrupted run keeps
what it measured). Example::

    .venv/bin/python benchmarks/teachers.py --cases STS_001-STS_010 --out benchmarks/results/teachers.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DistillSegLib.atomic import write_json_atomic  # noqa: E402
from DistillSegLib.io.case import load_case_folder  # noqa: E402
from DistillSegLib.teachers.registry import REGISTRY, load_teacher  # noqa: E402
from DistillSegLib.teachers.run import teacher_on_case  # noqa: E402
from DistillSegLib.io.volume import read_image  # noqa: E402


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """3D Dice of two binary masks (MONAI's DiceMetric, empty-vs-empty counts as 1)."""
    import torch
    from monai.metrics import compute_dice

    y_pred = torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.float32))[None, None]
    return float(compute_dice(y_pred, y, include_background=True, ignore_empty=False)[0, 0])


def parse_cases(spec: str, data: Path) -> list[str]:
    """``STS_001-STS_010`` or ``STS_001,STS_004`` or ``all``."""
    available = sorted(p.name for p in data.iterdir() if (p / "CT_image.nii.gz").exists())
    if spec == "all":
        return available
    if "-" in spec and "," not in spec:
        first, last = spec.split("-")
        return [c for c in available if first <= c <= last]
    return spec.split(",")


def run_student(model: Path, case_dir: Path, workdir: Path) -> tuple[np.ndarray, float]:
    """Student label on the CT grid through ``distillseg predict`` and its wall time (s)."""
    out = workdir / f"{case_dir.name}_student.nii.gz"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "DistillSegLib", "predict", "--model", str(model),
         "--ct", str(case_dir / "CT_image.nii.gz"), "--pet", str(case_dir / "PET_image.nii.gz"),
         "--out", str(out), "--roi", "all"],
        check=True, cwd=ROOT, capture_output=True, text=True,
    )
    return read_image(out).array > 0, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sts-petct")
    parser.add_argument("--cases", default="STS_001-STS_010")
    parser.add_argument("--teachers", default="available", help="comma list, or 'available'")
    parser.add_argument("--modalities", default="CT,PET")
    parser.add_argument("--student", type=Path, help="student model file: also prompt from its prediction")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "teachers.json")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n, i in REGISTRY.items() if i.weights_present()] if args.teachers == "available" else args.teachers.split(",")
    modalities = args.modalities.split(",")
    cases = parse_cases(args.cases, args.data)
    teachers = {(n, m): load_teacher(n, modality=m) for n in names for m in modalities}
    rows: list[dict] = []
    report = {"cases": cases, "teachers": names, "modalities": modalities, "threads": torch.get_num_threads(),
              "student": str(args.student) if args.student else None, "rows": rows}
    with tempfile.TemporaryDirectory() as tmp:
        for case_id in cases:
            case = load_case_folder(args.data / case_id)
            truth = case.label_on_ct.array > 0
            prompts = {"ground truth": truth}
            if args.student:
                student_mask, seconds = run_student(args.student, args.data / case_id, Path(tmp))
                rows.append({"case": case_id, "teacher": "student", "modality": "CT+PET", "prompt": "-",
                             "dice": dice(student_mask, truth), "seconds": seconds})
                prompts["student"] = student_mask
            for (name, modality), teacher in teachers.items():
                for source, mask in prompts.items():
                    if not mask.any():
                        rows.append({"case": case_id, "teacher": name, "modality": modality, "prompt": source,
                                     "dice": 0.0, "seconds": 0.0, "note": "empty prompt"})
                        continue
                    start = time.perf_counter()
                    prompt = case.ct.with_array(mask.astype(np.uint8))
                    probability = teacher_on_case(teacher, case, prompt, modality, ("box",))
                    seconds = time.perf_counter() - start
                    rows.append({"case": case_id, "teacher": name, "modality": modality, "prompt": source,
                                 "dice": dice(probability >= 0.5, truth), "seconds": seconds,
                                 "prompt_slices": int(mask.any(axis=(0, 1)).sum())})
                    print(f"{case_id} {name:10s} {modality:4s} prompt={source:12s} dice={rows[-1]['dice']:.3f} "
                          f"{seconds:6.1f} s", flush=True)
            write_json_atomic(args.out, report)
    summary = summarise(rows)
    report["summary"] = summary
    write_json_atomic(args.out, report)
    print(format_table(summary))
    print(f"wrote {args.out}")
    return 0


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["teacher"], row["modality"], row["prompt"]), []).append(row)
    return [
        {"teacher": t, "modality": m, "prompt": p, "cases": len(g),
         "dice_mean": float(np.mean([r["dice"] for r in g])), "dice_min": float(np.min([r["dice"] for r in g])),
         "dice_max": float(np.max([r["dice"] for r in g])), "seconds_per_case": float(np.mean([r["seconds"] for r in g]))}
        for (t, m, p), g in groups.items()
    ]


def format_table(summary: list[dict]) -> str:
    lines = [f"{'teacher':10s} {'modality':8s} {'prompt':12s} {'n':>3s} {'Dice mean':>9s} {'min':>6s} {'max':>6s} {'s/case':>7s}"]
    for s in summary:
        lines.append(f"{s['teacher']:10s} {s['modality']:8s} {s['prompt']:12s} {s['cases']:3d} {s['dice_mean']:9.3f} "
                     f"{s['dice_min']:6.3f} {s['dice_max']:6.3f} {s['seconds_per_case']:7.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
