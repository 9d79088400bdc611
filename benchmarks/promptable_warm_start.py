"""The promptable student started from the prompt-free recipe, against the recipe from scratch.

Protocol ``benchmarks/protocols/promptable_warm_start.json`` (frozen before the runs). Three
arms per seed, each trained on the 20 cases outside the demo's validation split and scored on
the 10 validation cases:

* ``free``: the prompt-free recipe (``bundled_student.py --stages heldout``);
* ``scratch``: the promptable recipe from scratch (``--promptable``);
* ``warm``: the promptable recipe started from ``free``'s weights, its prompt channels
  weighted zero (``--promptable --from-prompt-free``).

With ``--folds`` the folders are the folds of one seed's cross-validation (protocol
``benchmarks/protocols/promptable_student_by_training_cv.json``): their held-out cases are
pooled, and that protocol's two decisions are taken.

This script runs nothing: it reads each seed's folder (``free.json``, ``scratch.json``,
``warm.json`` from ``bundled_student.py --results``; ``interactive_scratch.json`` and
``interactive_warm.json`` from ``interactive.py --walks ''``; the ``*_margin.json`` of the
margin stage), prints the table, the paired case statistics (``benchmarks/case_stats.py``)
and the protocol's decision, and writes ``benchmarks/results/promptable_warm_start.json``::

    .venv/bin/python benchmarks/promptable_warm_start.py /work/cache/t21w/seed0 /work/cache/t21w/seed1
    .venv/bin/python benchmarks/promptable_warm_start.py --folds /work/cache/t21cv/foldA /work/cache/t21cv/foldB \
        --out benchmarks/results/promptable_student_by_training_cv.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from case_stats import case_statistics, describe  # noqa: E402

PROTOCOL = ROOT / "benchmarks" / "protocols" / "promptable_warm_start.json"
CV_PROTOCOL = ROOT / "benchmarks" / "protocols" / "promptable_student_by_training_cv.json"
RESULTS = ROOT / "benchmarks" / "results" / "promptable_warm_start.json"
PROMPTABLE_ARMS = ("scratch", "warm")
PROMPTS = ("box", "box+1 clicks", "box+2 clicks", "box+3 clicks")
RUNS = {"10.0": "run ROI+10 mm", "50.0": "run ROI+50 mm"}  # the module's Run in the label's box + margin
TOLERANCE = 0.010  # the protocols' decision rules, in Dice


def only_record(path: Path) -> dict:
    """The one ``steps_*`` record of a ``bundled_student.py --results`` file."""
    records = json.loads(path.read_text())
    if len(records) != 1:
        raise SystemExit(f"error: {path} holds {len(records)} recipes, expected one")
    return next(iter(records.values()))


def seed_of(record: dict) -> int:
    return int(record["recipe"]["seed"])


def read_seed(folder: Path) -> tuple[int, dict]:
    """``(seed, {arm: {"no prompt": {case: Dice}, "box": {...}, ..., "seconds": ..., "margin": ...}})``."""
    arms, seeds = {}, set()
    for arm in ("free", *PROMPTABLE_ARMS):
        record = only_record(folder / f"{arm}.json")
        seeds.add(seed_of(record))
        heldout = record["heldout"]
        arms[arm] = {"no prompt": {c["case_id"]: float(c["dice"]) for c in heldout["cases"]},
                     "train_seconds_wall": heldout["train_seconds_wall"], "command": heldout["command"]}
        margin_file = folder / f"{arm}_margin.json"
        margin = only_record(margin_file).get("roi_margin") if margin_file.is_file() else record.get("roi_margin")
        if margin is not None:
            arms[arm]["margin"] = margin
            for key, measure in RUNS.items():
                arms[arm][measure] = {c: float(d[key]) for c, d in margin["cases"].items()}
    for arm in PROMPTABLE_ARMS:
        scored = json.loads((folder / f"interactive_{arm}.json").read_text())
        if not scored["promptable"].endswith(str(Path(arms[arm]["command"].split("--out ", 1)[1].split()[0]))):
            raise SystemExit(f"error: {folder}/interactive_{arm}.json scored {scored['promptable']}, "
                             f"not the {arm} model of {folder}")
        rows = {r["case"]: r["promptable"] for r in scored["rows"]}
        arms[arm]["box"] = {c: float(p["box"]) for c, p in rows.items()}
        for k in range(1, 4):
            arms[arm][f"box+{k} clicks"] = {c: float(p["clicks"][k - 1]["dice"]) for c, p in rows.items()}
        arms[arm]["seconds"] = {key: scored["mean"]["promptable"][key]
                                for key in ("seconds_box", "seconds_click", "seconds_max")}
    if len(seeds) != 1:
        raise SystemExit(f"error: {folder} mixes seeds {sorted(seeds)}")
    return seeds.pop(), arms


def pool_folds(folds: list[tuple[int, dict]]) -> tuple[int, dict]:
    """One seed's cross-validation folds as one run over all their held-out cases."""
    seeds = {seed for seed, _ in folds}
    if len(seeds) != 1:
        raise SystemExit(f"error: the folds were trained with different seeds {sorted(seeds)}")
    pooled: dict = {}
    for _, arms in folds:
        for arm, values in arms.items():
            into = pooled.setdefault(arm, {})
            for key, value in values.items():
                if isinstance(value, dict) and key not in ("seconds", "margin"):
                    if set(into.get(key, {})) & set(value):
                        raise SystemExit(f"error: the folds share held-out cases ({arm} {key})")
                    into.setdefault(key, {}).update(value)
                else:
                    into.setdefault(key, []).append(value)  # per fold
    return seeds.pop(), pooled


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def measures_of(values: dict) -> list[str]:
    """The per-case measures an arm has, in table order."""
    return [m for m in ("no prompt", *PROMPTS, *RUNS.values()) if m in values]


def summarise(runs: dict[int, dict], cross_validation: bool = False) -> dict:
    """Means per arm and seed, paired statistics, the protocol's decision."""
    seeds = sorted(runs)
    cases = sorted(runs[seeds[0]]["free"]["no prompt"])
    for seed in seeds:  # a case left out of one arm's mean would compare different cases
        for arm, values in runs[seed].items():
            for measure in measures_of(values):
                if sorted(values[measure]) != cases:
                    raise SystemExit(f"error: seed {seed} {arm} {measure} scored {sorted(values[measure])}, "
                                     f"not the cases {cases}")
    table = {arm: {measure: {str(s): mean(runs[s][arm][measure].values()) for s in seeds}
                   for measure in measures_of(runs[seeds[0]][arm])}
             for arm in ("free", *PROMPTABLE_ARMS)}
    for arm in table:
        for measure in table[arm]:
            table[arm][measure]["mean"] = mean(table[arm][measure][str(s)] for s in seeds)

    def per_seed(arm: str, measure: str) -> dict[int, dict[str, float]]:
        return {s: runs[s][arm][measure] for s in seeds}

    statistics = {}
    for measure in measures_of(runs[seeds[0]]["free"]):
        for arm in PROMPTABLE_ARMS:
            statistics[f"{arm} - free, {measure}"] = case_statistics(per_seed(arm, measure), per_seed("free", measure))
    for measure in measures_of(runs[seeds[0]]["warm"]):
        statistics[f"warm - scratch, {measure}"] = case_statistics(per_seed("warm", measure), per_seed("scratch", measure))
    decision = cv_decision(table) if cross_validation else warm_start_decision(table)
    extras = {arm: {str(s): {key: runs[s][arm].get(key) for key in ("seconds", "margin", "train_seconds_wall")}
                    for s in seeds} for arm in runs[seeds[0]]}
    protocol = CV_PROTOCOL if cross_validation else PROTOCOL
    return {"protocol": str(protocol.relative_to(ROOT)), "seeds": seeds, "cases": cases, "mean_dice": table,
            "statistics": statistics, "decision": decision, "per_arm_seed": extras,
            "per_case": {str(s): runs[s] for s in seeds}}


def warm_start_decision(table: dict) -> dict:
    """The rule of ``promptable_warm_start.json`` (validation cases, seeds pooled)."""
    prompt_free_kept = table["warm"]["no prompt"]["mean"] >= table["free"]["no prompt"]["mean"] - TOLERANCE
    box_kept = table["warm"]["box"]["mean"] >= table["scratch"]["box"]["mean"] - TOLERANCE
    return {"rule": json.loads(PROTOCOL.read_text())["decision_rule"],
            "a_prompt_free_within_1_point": prompt_free_kept, "b_box_within_1_point_of_scratch": box_kept,
            "bundled_becomes_promptable": prompt_free_kept and box_kept}


def module_score(table: dict, arm: str) -> float:
    """Mean Dice of a promptable arm over its module uses: one box, box + 3 clicks, Run in ROI + 10 / + 50 mm."""
    return mean(table[arm][m]["mean"] for m in ("box", "box+3 clicks", *RUNS.values()))


def cv_decision(table: dict) -> dict:
    """The rules D2 (the default) then D1 (the optional promptable student) of the cross-validation protocol."""
    def kept(measure: str) -> bool:
        return table["warm"][measure]["mean"] >= table["free"][measure]["mean"] - TOLERANCE

    d2 = {"prompt_free_within_1_point": kept("no prompt"), "run_roi_50_within_1_point": kept(RUNS["50.0"]),
          "run_roi_10_within_1_point": kept(RUNS["10.0"])}
    default_promptable = all(d2.values())
    scores = {arm: module_score(table, arm) for arm in PROMPTABLE_ARMS}
    return {"rules": json.loads(CV_PROTOCOL.read_text())["decision_rules"], "D2": d2,
            "default_becomes_promptable": default_promptable, "module_score": scores,
            "promptable_student": None if default_promptable else ("warm" if scores["warm"] > scores["scratch"]
                                                                   else "scratch")}


def print_table(summary: dict) -> None:
    seeds = summary["seeds"]
    print(f"{'arm':<9}{'measure':<15}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>9}")
    for arm, measures in summary["mean_dice"].items():
        for measure, values in measures.items():
            print(f"{arm:<9}{measure:<15}" + "".join(f"{values[str(s)]:>9.3f}" for s in seeds) + f"{values['mean']:>9.3f}")
    for name, stats in summary["statistics"].items():
        arm, rest = name.split(" - ", 1)
        print(describe(arm, rest, stats))
    print("decision:", {k: v for k, v in summary["decision"].items() if k not in ("rule", "rules")})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="one folder per seed (bundled_student.py --work)")
    parser.add_argument("--folds", action="store_true",
                        help="the folders are the folds of one seed's cross-validation on the training cases")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.folds:
        runs = dict([pool_folds([read_seed(folder) for folder in args.folders])])
    else:
        runs = dict(read_seed(folder) for folder in args.folders)
        if len(runs) != len(args.folders):
            raise SystemExit("error: two folders hold the same seed")
    summary = summarise(runs, cross_validation=args.folds)
    print_table(summary)
    from DistillSegLib.atomic import write_json_atomic

    write_json_atomic(args.out, summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
