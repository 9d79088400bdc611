"""How far around the PET hot spot should *Place ROI at PET hot spot* put the region of interest?

Protocol ``benchmarks/protocols/hot_spot_margin_cv.json`` (frozen before the run). For each
case the ROI is placed as the module places it (:func:`DistillSegLib.metrics.baselines.hot_spot_mask`:
the connected 41 %-of-SUVmax region holding the hottest PET voxel, whole PET searched, or with a
protocol's ``search`` on a viewed plane of :func:`viewed_planes`; its bounding box grown by the
margin) and the module's *Run* segments it
(:func:`DistillSegLib.demo.loop.run_in_roi`: a promptable student gets the ROI as its box, a
prompt-free one segments inside it). Dice is scored against the reference on the whole crop.

The groups with role ``choose`` are the fold models of a cross-validation on the 20 training
cases; their held-out cases take the protocol's decisions. The ``report`` groups (the 10
validation cases, models trained on the 20 training cases, two seeds) report only.

Prints a table per group, the paired statistics against 50 mm and the decisions; writes
``benchmarks/results/hot_spot_margin.json`` (atomically, after every group)::

    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python benchmarks/hot_spot_margin.py --threads 1
    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python benchmarks/hot_spot_margin.py --threads 1 \
        --protocol benchmarks/protocols/hot_spot_margin_on_viewed_slice.json \
        --out benchmarks/results/hot_spot_margin_on_viewed_slice.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from case_stats import case_statistics, describe  # noqa: E402

PROTOCOL = ROOT / "benchmarks" / "protocols" / "hot_spot_margin_cv.json"
RESULTS = ROOT / "benchmarks" / "results" / "hot_spot_margin.json"
TOLERANCE = 0.010  # the protocol's decision rules, in Dice
TODAY_MM = 50.0  # the margin the module uses before this protocol
KINDS = ("promptable", "prompt-free")


def tumour_inside(label, roi) -> float:
    """Fraction of the reference tumour's voxels whose centres lie inside the RAS box ``roi``."""
    from DistillSegLib.metrics.baselines import roi_mask_on_grid

    tumour = np.asarray(label.array) > 0
    return float((tumour & roi_mask_on_grid(label, roi)).sum() / max(int(tumour.sum()), 1))


def viewed_planes(label) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{search: (point, normal)}`` RAS mm: axial planes (the CT grid's third axis) through the
    tumour's largest slice and at 25 % / 75 % of its extent along that axis."""
    from DistillSegLib.io.volume import apply_affine

    area = (np.asarray(label.array) > 0).sum(axis=(0, 1))
    slices = np.flatnonzero(area)
    first, last = int(slices[0]), int(slices[-1])
    chosen = {"slice largest": int(np.argmax(area)),
              "slice 25 %": first + int(round(0.25 * (last - first))),
              "slice 75 %": first + int(round(0.75 * (last - first)))}
    normal = np.asarray(label.affine, float)[:3, 2]
    return {name: (apply_affine(label.affine, np.array([[0.0, 0.0, k]]))[0], normal) for name, k in chosen.items()}


def group_models_and_cases(group: dict, data: Path) -> tuple[dict, dict]:
    """``({kind: StudentModel}, {case_id: CaseSource})`` of a protocol group, each model checked to
    be of its kind and every case present."""
    from DistillSegLib.io.dataset import find_cases
    from DistillSegLib.student.model_file import load_model

    models = {kind: load_model(Path(group["models"][kind])) for kind in KINDS}
    for kind, model in models.items():
        if model.takes_prompts != (kind == "promptable"):
            raise SystemExit(f"error: {group['models'][kind]} is not a {kind} student")
    sources = {c.case_id: c for c in find_cases(data)}
    missing = [c for c in group["cases"] if c not in sources]
    if missing:
        raise SystemExit(f"error: cases {missing} are not in {data}")
    return models, sources


def arguments(doc: str, results: Path, protocol: Path, argv: list[str] | None) -> argparse.Namespace:
    """The options both hot-spot benchmarks take."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", type=Path, default=protocol)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data")) / "sts-petct",
                        help="the sts-petct cases (default: $DISTILLSEG_DATA/sts-petct, or ../shared/data/sts-petct)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--out", type=Path, default=results, help=f"results JSON (default: {results.relative_to(ROOT)})")
    return parser.parse_args(argv)


def score_group(group: dict, margins: list[float], data: Path, search: str | None = None) -> dict:
    """``{case: {"tumour_in_roi": {margin: fraction}, "dice": {kind: {margin: Dice}}, "seconds": s}}``;
    ``search``: a plane of :func:`viewed_planes` the hot spot is looked for on, or ``None`` (whole PET)."""
    from DistillSegLib.demo.loop import run_in_roi
    from DistillSegLib.metrics.baselines import hot_spot_mask
    from DistillSegLib.metrics.segmentation import dice
    from DistillSegLib.student.inference import roi_from_mask

    models, sources = group_models_and_cases(group, data)
    cases = {}
    for case_id in group["cases"]:
        started = time.perf_counter()
        case = sources[case_id].load()
        hot = hot_spot_mask(case.pet, plane=None if search is None else viewed_planes(case.label)[search])
        rois = {m: roi_from_mask(hot, m) for m in margins}
        record = {"tumour_in_roi": {str(m): round(tumour_inside(case.label, rois[m]), 4) for m in margins},
                  "dice": {kind: {str(m): round(float(dice(run_in_roi(model, case, rois[m]).array > 0,
                                                           case.label.array > 0)), 4) for m in margins}
                           for kind, model in models.items()}}
        record["seconds"] = round(time.perf_counter() - started, 1)
        cases[case_id] = record
        print(f"  {case_id:<9}" + "".join(f"{record['tumour_in_roi'][str(m)]:>7.2f}" for m in margins) + "  |"
              + "  |".join("".join(f"{record['dice'][k][str(m)]:>7.3f}" for m in margins) for k in KINDS), flush=True)
    return cases


def header(margins: list[float]) -> str:
    per = "".join(f"{m:>5.0f}mm" for m in margins)
    return f"  {'case':<9}{per}  |{per}  |{per}\n  {'':<9}{'tumour in ROI':^{7 * len(margins)}}  |" + "  |".join(
        f"{k + ' Dice':^{7 * len(margins)}}" for k in KINDS)


def pooled(groups: dict, names: list[str], kind: str, column: float | str) -> dict[int, dict[str, float]]:
    """``{seed-like index: {case: Dice}}`` of ``kind`` in one column (a margin, or a search):
    folds pool into one seed (their cases differ); report groups with the same cases are seeds."""
    out: dict[int, dict[str, float]] = {}
    for name in names:
        cases = groups[name]["cases"]
        index = 0 if groups[name]["role"] == "choose" else names.index(name)
        out.setdefault(index, {}).update({c: r["dice"][kind][str(column)] for c, r in cases.items()})
    return out


def roles_of(groups: dict) -> list[str]:
    """The roles the groups have, ``choose`` first (a partial protocol may lack one)."""
    return [role for role in ("choose", "report") if any(g["role"] == role for g in groups.values())]


def mean_of(seeds: dict[int, dict[str, float]]) -> float:
    return float(np.mean([d for cases in seeds.values() for d in cases.values()]))


def decide(groups: dict, margins: list[float]) -> dict:
    """The protocol's H1 (promptable) and H2 (prompt-free) on the ``choose`` groups."""
    names = [n for n, g in groups.items() if g["role"] == "choose"]
    decisions = {}
    for rule, kind in (("H1", "promptable"), ("H2", "prompt-free")):
        means = {m: mean_of(pooled(groups, names, kind, m)) for m in margins}
        best = max(margins, key=lambda m: (round(means[m], 6), m))  # ties to the larger margin
        chosen = best if means[best] >= means[TODAY_MM] + TOLERANCE else TODAY_MM
        decisions[rule] = {"kind": kind, "mean_dice_by_margin": {str(m): round(means[m], 4) for m in margins},
                           "n_cases": len(next(iter(pooled(groups, names, kind, TODAY_MM).values()))),
                           "best_mm": best, "chosen_mm": chosen,
                           "verdict": (f"{kind} students: {chosen:.0f} mm (mean Dice {means[chosen]:.3f} against "
                                       f"{means[TODAY_MM]:.3f} at {TODAY_MM:.0f} mm over the held-out training cases)")}
    return decisions


def statistics(groups: dict, role: str, margins: list[float]) -> dict:
    """Paired differences against 50 mm, per kind and margin, over a role's groups."""
    names = [n for n, g in groups.items() if g["role"] == role]
    out = {}
    for kind in KINDS:
        base = pooled(groups, names, kind, TODAY_MM)
        for m in margins:
            if m != TODAY_MM:
                out[f"{kind} {m:.0f} mm - {TODAY_MM:.0f} mm"] = case_statistics(pooled(groups, names, kind, m), base)
    return out


def report(result: dict, columns: Sequence, label: Callable[[Any], str] = str) -> None:
    """Print each role's mean Dice per kind and column (a margin or a search), its paired
    comparisons and the decisions."""
    for role in roles_of(result["groups"]):
        names = [n for n, g in result["groups"].items() if g["role"] == role]
        print(f"\n{role}: mean Dice")
        for kind in KINDS:
            print(f"  {kind:<12}" + "".join(f"  {label(column)}: {mean_of(pooled(result['groups'], names, kind, column)):.3f}"
                                            for column in columns))
        for name, stats in result["statistics"][role].items():
            arm, base = name.split(" - ")
            print("  " + describe(arm, base, stats))
    print()
    for rule, decision in result["decisions"].items():
        print(f"{rule}: {decision['verdict']}")


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, RESULTS, PROTOCOL, argv)

    import torch

    from DistillSegLib.atomic import write_json_atomic

    torch.set_num_threads(args.threads)
    protocol = json.loads(args.protocol.read_text())
    margins = [float(m) for m in protocol["margins_mm"]]
    search = protocol.get("search")  # a viewed plane of viewed_planes(), or the whole PET
    if TODAY_MM not in margins:
        raise SystemExit(f"error: the protocol's margins {margins} must include today's {TODAY_MM:.0f} mm")
    result = {"protocol": str(args.protocol.relative_to(ROOT)) if args.protocol.is_relative_to(ROOT) else str(args.protocol),
              "margins_mm": margins, "search": search or "whole PET", "threads": args.threads, "groups": {}}
    for name, group in protocol["groups"].items():
        print(f"{name} ({group['role']}):\n{header(margins)}", flush=True)
        result["groups"][name] = {"role": group["role"], "models": group["models"],
                                  "cases": score_group(group, margins, args.data, search)}
        write_json_atomic(args.out, result)
    result["decisions"] = decide(result["groups"], margins)
    result["statistics"] = {role: statistics(result["groups"], role, margins) for role in roles_of(result["groups"])}
    report(result, margins, lambda margin: f"{margin:.0f} mm")
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
