"""Where should *Place ROI at PET hot spot* look: the whole PET, or the slice the radiologist views?

Protocol ``benchmarks/protocols/hot_spot_search.json`` (frozen before the run). Per case the ROI
is the 41 %-of-SUVmax hot spot (:func:`DistillSegLib.metrics.baselines.hot_spot_mask`) grown by
the module's 50 mm, its hottest voxel looked for

* ``whole PET``: anywhere (the module before this protocol);
* ``viewed slice``: among the PET voxels the viewed axial plane crosses, the plane simulated as
  the radiologist's: through the CT slice where the reference tumour is largest (``largest``),
  and, reported only, at 25 % and 75 % of the tumour's axial extent.

The module's *Run* then segments it (:func:`DistillSegLib.demo.loop.run_in_roi`), with the
cross-validation fold models (role ``choose``: they take the decision) and the validation-case
models (role ``report``) of the protocol; Dice on the whole crop. Prints the tables, the paired
statistics against the whole-PET search and the decision; writes
``benchmarks/results/hot_spot_search.json`` (atomically, after every group)::

    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python benchmarks/hot_spot_search.py --threads 1
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from case_stats import case_statistics  # noqa: E402
from hot_spot_margin import (KINDS, TOLERANCE, arguments, group_models_and_cases, mean_of, pooled,  # noqa: E402
                             report, roles_of, tumour_inside, viewed_planes)

PROTOCOL = ROOT / "benchmarks" / "protocols" / "hot_spot_search.json"
RESULTS = ROOT / "benchmarks" / "results" / "hot_spot_search.json"
SEARCHES = ("whole PET", "slice largest", "slice 25 %", "slice 75 %")


def score_group(group: dict, margin: float, data: Path) -> dict:
    """``{case: {"tumour_in_roi": {search: fraction}, "dice": {kind: {search: Dice}}}}``."""
    from DistillSegLib.demo.loop import run_in_roi
    from DistillSegLib.metrics.baselines import hot_spot_mask
    from DistillSegLib.metrics.segmentation import dice
    from DistillSegLib.student.inference import roi_from_mask

    models, sources = group_models_and_cases(group, data)
    cases = {}
    for case_id in group["cases"]:
        started = time.perf_counter()
        case = sources[case_id].load()
        planes = {"whole PET": None, **viewed_planes(case.label)}
        rois = {name: roi_from_mask(hot_spot_mask(case.pet, plane=plane), margin) for name, plane in planes.items()}
        record = {"tumour_in_roi": {name: round(tumour_inside(case.label, roi), 4) for name, roi in rois.items()},
                  "dice": {kind: {name: round(float(dice(run_in_roi(model, case, roi).array > 0,
                                                         case.label.array > 0)), 4) for name, roi in rois.items()}
                           for kind, model in models.items()},
                  "seconds": round(time.perf_counter() - started, 1)}
        cases[case_id] = record
        print(f"  {case_id:<9}" + "".join(f"{record['tumour_in_roi'][s]:>8.2f}" for s in SEARCHES) + "  |"
              + "  |".join("".join(f"{record['dice'][k][s]:>8.3f}" for s in SEARCHES) for k in KINDS), flush=True)
    return cases


def per_seed(groups: dict, role: str, kind: str, search: str) -> dict[int, dict[str, float]]:
    """``{seed-like index: {case: Dice}}`` of a role's groups (:func:`hot_spot_margin.pooled`)."""
    return pooled(groups, [n for n, g in groups.items() if g["role"] == role], kind, search)


def decide(groups: dict) -> dict:
    """The protocol's S1 on the promptable fold models."""
    means = {s: mean_of(per_seed(groups, "choose", "promptable", s)) for s in SEARCHES}
    off_largest = (means["slice 25 %"] + means["slice 75 %"]) / 2
    adopt = means["slice largest"] >= means["whole PET"] + TOLERANCE and off_largest >= means["whole PET"] - TOLERANCE
    return {"S1": {"mean_dice": {s: round(m, 4) for s, m in means.items()},
                   "mean_dice_25_75": round(off_largest, 4), "adopt_viewed_slice": bool(adopt),
                   "verdict": ("search the viewed slice" if adopt else "keep the whole-PET search")
                   + f": promptable fold models over the held-out training cases, whole PET {means['whole PET']:.3f}, "
                     f"viewed slice at the largest tumour area {means['slice largest']:.3f}, at 25 %/75 % "
                     f"{off_largest:.3f}"}}


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, RESULTS, PROTOCOL, argv)

    import torch

    from DistillSegLib.atomic import write_json_atomic

    torch.set_num_threads(args.threads)
    protocol = json.loads(args.protocol.read_text())
    margin = float(protocol["margin_mm"])
    result = {"protocol": str(args.protocol.relative_to(ROOT)) if args.protocol.is_relative_to(ROOT) else str(args.protocol),
              "margin_mm": margin, "searches": list(SEARCHES), "threads": args.threads, "groups": {}}
    columns = "".join(f"{s:>8}" for s in ("whole", "largest", "25 %", "75 %"))
    for name, group in protocol["groups"].items():
        print(f"{name} ({group['role']}): tumour in ROI | " + " | ".join(f"{k} Dice" for k in KINDS)
              + f"\n  {'case':<9}{columns}  |{columns}  |{columns}", flush=True)
        result["groups"][name] = {"role": group["role"], "models": group["models"],
                                  "cases": score_group(group, margin, args.data)}
        write_json_atomic(args.out, result)
    result["decisions"] = decide(result["groups"])
    result["statistics"] = {role: {f"{kind} {s} - whole PET": case_statistics(per_seed(result["groups"], role, kind, s),
                                                                            per_seed(result["groups"], role, kind, "whole PET"))
                                   for kind in KINDS for s in SEARCHES[1:]} for role in roles_of(result["groups"])}
    report(result, SEARCHES)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
