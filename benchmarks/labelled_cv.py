"""Cross-validation on the labelled cases: join the folds of two candidate settings and decide.

Each fold is one run of ``benchmarks/distillation.py --score-on labelled-fold --hold-out CASE``
(one labelled case scored, the others trained on). A candidate's cross-validated score is the
mean raw-mask Dice of its arm over the held-out cases. Both candidates of a fold start from the
same warm-up, so their supervised arms must agree (to ``--tolerance``); a fold where they do not
is refused, not averaged.

A candidate already scored in an earlier cross-validation can be given by that result instead
(``NAME=benchmarks/results/OTHER_cv.json``, NAME being its incumbent or challenger there): its
per-fold arm and supervised Dice are reused as they were scored, and its arm must be the one asked.

The decision rule is the protocol's: the challenger replaces the incumbent when its mean is at
least ``--min-gain`` Dice points higher and it is ahead in at least ``--min-folds`` folds.

    python benchmarks/labelled_cv.py --arm dualview \\
        --incumbent both=/tmp/cv/both/STS_00*/distillation.json \\
        --challenger pet_only=/tmp/cv/pet_only/STS_00*/distillation.json \\
        --protocol benchmarks/protocols/views_by_labelled_cv.json --out benchmarks/results/views_by_labelled_cv.json
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DistillSegLib.atomic import write_json_atomic  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import case_stats  # noqa: E402


def fold_scores(results: Sequence[Mapping[str, Any]], arm: str) -> dict[str, dict[str, float]]:
    """``{held-out case: {"arm": Dice, "supervised": Dice}}`` from single-fold, single-seed results.

    Raises ValueError when a result scores more than one case, lacks the arm, or a case repeats.
    """
    folds: dict[str, dict[str, float]] = {}
    for result in results:
        scored = result["split"]["validation_used"]
        if len(scored) != 1 or not str(result.get("scored_on", "")).startswith("labelled-fold"):
            raise ValueError(f"not a labelled-fold run: scored on {result.get('scored_on')!r}, cases {scored}")
        case = scored[0]
        if case in result["split"]["labelled"]:
            raise ValueError(f"{case} is scored and trained on")
        if case in folds:
            raise ValueError(f"fold {case} given twice")
        by_method = {r["method"]: r for r in result["runs"] if "per_case_dice" in r}
        if arm not in by_method or "supervised" not in by_method:
            raise ValueError(f"fold {case}: no {arm!r} or supervised run")
        folds[case] = {"arm": float(by_method[arm]["per_case_dice"][case]),
                       "supervised": float(by_method["supervised"]["per_case_dice"][case])}
    return folds


def decide(incumbent: Mapping[str, Mapping[str, float]], challenger: Mapping[str, Mapping[str, float]],
           min_gain_points: float = 1.0, min_folds_ahead: int = 3, tolerance: float = 1e-4) -> dict[str, Any]:
    """Compare two candidates over the same folds; the challenger wins only by the rule."""
    if set(incumbent) != set(challenger):
        raise ValueError(f"the candidates have other folds: {sorted(incumbent)} != {sorted(challenger)}")
    cases = sorted(incumbent)
    for case in cases:
        if abs(incumbent[case]["supervised"] - challenger[case]["supervised"]) > tolerance:
            raise ValueError(f"fold {case}: the supervised arms differ ({incumbent[case]['supervised']} vs "
                             f"{challenger[case]['supervised']}), so the candidates did not share a warm-up")
    stats = case_stats.case_statistics({0: {c: challenger[c]["arm"] for c in cases}},
                                       {0: {c: incumbent[c]["arm"] for c in cases}})
    differences, gain = stats["per_case_points"], stats["mean_points"]
    ahead = stats["cases_positive"]
    def mean(candidate, key="arm"):
        return sum(candidate[c][key] for c in cases) / len(cases)
    return {"folds": cases, "mean_dice": {"incumbent": mean(incumbent), "challenger": mean(challenger),
                                          "supervised": mean(incumbent, "supervised")},
            "per_fold_dice": {c: {"incumbent": incumbent[c]["arm"], "challenger": challenger[c]["arm"],
                                  "supervised": incumbent[c]["supervised"]} for c in cases},
            "challenger_minus_incumbent_points": gain, "per_fold_points": differences, "folds_ahead": ahead,
            "rule": f"challenger wins if its mean is >= {min_gain_points} points higher and it is ahead in "
                    f">= {min_folds_ahead} of {len(cases)} folds",
            "min_gain_points": min_gain_points, "min_folds_ahead": min_folds_ahead,
            "challenger_wins": gain >= min_gain_points and ahead >= min_folds_ahead, "case_stats": stats}


def folds_from_earlier_cv(result: Mapping[str, Any], name: str, arm: str) -> dict[str, dict[str, float]]:
    """One candidate's folds from an earlier ``labelled_cv`` result, as :func:`fold_scores` gives them.

    ``name`` is the candidate's name there (its incumbent or challenger); its arm must be ``arm``.
    """
    roles = {result["incumbent"]: ("incumbent", result["arm"]),
             result["challenger"]: ("challenger", result["challenger_arm"])}
    if name not in roles:
        raise ValueError(f"{name!r} is neither candidate of that cross-validation ({sorted(roles)})")
    role, stored_arm = roles[name]
    if stored_arm != arm:
        raise ValueError(f"{name!r} trained {stored_arm!r} there, not {arm!r}")
    return {case: {"arm": float(row[role]), "supervised": float(row["supervised"])}
            for case, row in result["per_fold_dice"].items()}


def read_candidate(spec: str, arm: str) -> tuple[str, dict[str, dict[str, float]], dict[str, Any]]:
    """``NAME=GLOB`` -> the name, its folds and where they came from (device, load, commands).

    GLOB matches the folds' distillation.json files, or is one earlier ``labelled_cv`` result.
    """
    name, sep, pattern = spec.partition("=")
    paths = sorted(glob.glob(pattern))
    if not sep or not name or not paths:
        raise ValueError(f"{spec!r}: want NAME=GLOB matching distillation.json files or a labelled_cv result")
    results = [json.loads(Path(p).read_text()) for p in paths]
    if len(results) == 1 and results[0].get("benchmark") == "labelled_cv":
        earlier = results[0]
        commands = [c for c in earlier["commands"] if f"/{name}/" in c]
        return name, folds_from_earlier_cv(earlier, name, arm), {
            "device": earlier["device"], "load_average_end": earlier["load_average_end"],
            "commands": commands, "reused_from": paths[0]}
    return name, fold_scores(results, arm), {
        "device": results[0]["device"], "load_average_end": max(r["load_average_end"] for r in results),
        "commands": [r["command"] for r in results if r.get("command")]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--arm", default="dualview", help="the method both candidates train (default dualview)")
    parser.add_argument("--challenger-arm", help="the challenger's method, where it differs (e.g. the incumbent "
                        "selftrain, the challenger dualview)")
    parser.add_argument("--incumbent", required=True, metavar="NAME=GLOB", help="the current default's folds")
    parser.add_argument("--challenger", required=True, metavar="NAME=GLOB", help="the other setting's folds")
    parser.add_argument("--min-gain", type=float, default=1.0, help="Dice points the challenger must gain (default 1)")
    parser.add_argument("--min-folds", type=int, default=3, help="folds the challenger must lead (default 3)")
    parser.add_argument("--protocol", help="the protocol file, recorded in the result")
    parser.add_argument("--out", required=True, help="the result JSON (written atomically)")
    args = parser.parse_args(argv)
    try:
        incumbent_name, incumbent, incumbent_source = read_candidate(args.incumbent, args.arm)
        challenger_name, challenger, challenger_source = read_candidate(args.challenger,
                                                                        args.challenger_arm or args.arm)
        result = decide(incumbent, challenger, args.min_gain, args.min_folds)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = {"benchmark": "labelled_cv", "date": time.strftime("%Y-%m-%d"), "arm": args.arm,
              "challenger_arm": args.challenger_arm or args.arm,
              "incumbent": incumbent_name, "challenger": challenger_name, "protocol": args.protocol,
              "scored_on": "labelled cases, one held out per fold", "device": (
                  challenger_source["device"] if challenger_source["device"] == incumbent_source["device"] else
                  f"incumbent: {incumbent_source['device']}; challenger: {challenger_source['device']}"),
              "load_average_end": max(incumbent_source["load_average_end"], challenger_source["load_average_end"]),
              "commands": incumbent_source["commands"] + challenger_source["commands"],
              **{f"{role}_reused_from": source["reused_from"] for role, source in
                 (("incumbent", incumbent_source), ("challenger", challenger_source)) if "reused_from" in source},
              **result}
    write_json_atomic(Path(args.out), result)
    print(f"{'fold':<10}{'supervised':>12}{incumbent_name:>12}{challenger_name:>12}{'points':>9}")
    for case in result["folds"]:
        row = result["per_fold_dice"][case]
        print(f"{case:<10}{row['supervised']:>12.3f}{row['incumbent']:>12.3f}{row['challenger']:>12.3f}"
              f"{result['per_fold_points'][case]:>+9.1f}")
    means = result["mean_dice"]
    print(f"{'mean':<10}{means['supervised']:>12.3f}{means['incumbent']:>12.3f}{means['challenger']:>12.3f}"
          f"{result['challenger_minus_incumbent_points']:>+9.1f}")
    low, high = result["case_stats"]["bootstrap_ci95"]
    print(f"challenger - incumbent over folds: 95 % bootstrap over cases {low:+.1f} .. {high:+.1f} points")
    print(f"{result['rule']}: {'the challenger wins' if result['challenger_wins'] else 'the incumbent stays'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
