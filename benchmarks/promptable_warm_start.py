"""The promptable student started from the prompt-free recipe, against the recipe from scratch.

Protocol ``benchmarks/protocols/promptable_warm_start.json`` (frozen before the runs). Three
arms per seed, each trained on the 20 cases outside the demo's validation split and scored on
the 10 validation cases:

* ``free``: the prompt-free recipe (``bundled_student.py --stages heldout``);
* ``scratch``: the promptable recipe from scratch (``--promptable``);
* ``warm``: the promptable recipe started from ``free``'s weights, its prompt channels
  weighted zero (``--promptable --from-prompt-free``).

This script runs nothing: it reads each seed's folder (``free.json``, ``scratch.json``,
``warm.json`` from ``bundled_student.py --results``; ``interactive_scratch.json`` and
``interactive_warm.json`` from ``interactive.py --walks ''``; the ``*_margin.json`` of the
margin stage), prints the table, the paired case statistics (``benchmarks/case_stats.py``)
and the protocol's decision, and writes ``benchmarks/results/promptable_warm_start.json``::

    .venv/bin/python benchmarks/promptable_warm_start.py /work/cache/t21w/seed0 /work/cache/t21w/seed1
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
RESULTS = ROOT / "benchmarks" / "results" / "promptable_warm_start.json"
PROMPTABLE_ARMS = ("scratch", "warm")
PROMPTS = ("box", "box+1 clicks", "box+2 clicks", "box+3 clicks")
TOLERANCE = 0.010  # the protocol's decision rule, in Dice


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
        if margin_file.is_file():
            arms[arm]["margin"] = only_record(margin_file)["roi_margin"]
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


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def summarise(runs: dict[int, dict]) -> dict:
    """Means per arm and seed, paired statistics, the decision."""
    seeds = sorted(runs)
    cases = sorted(runs[seeds[0]]["free"]["no prompt"])
    for seed in seeds:  # a case left out of one arm's mean would compare different cases
        for arm, values in runs[seed].items():
            for measure in ("no prompt", *(PROMPTS if arm != "free" else ())):
                if sorted(values[measure]) != cases:
                    raise SystemExit(f"error: seed {seed} {arm} {measure} scored {sorted(values[measure])}, "
                                     f"not the cases {cases}")
    table = {arm: {measure: {str(s): mean(runs[s][arm][measure].values()) for s in seeds}
                   for measure in ("no prompt", *(PROMPTS if arm != "free" else ()))}
             for arm in ("free", *PROMPTABLE_ARMS)}
    for arm in table:
        for measure in table[arm]:
            table[arm][measure]["mean"] = mean(table[arm][measure][str(s)] for s in seeds)

    def per_seed(arm: str, measure: str) -> dict[int, dict[str, float]]:
        return {s: runs[s][arm][measure] for s in seeds}

    statistics = {"warm - free, no prompt": case_statistics(per_seed("warm", "no prompt"), per_seed("free", "no prompt")),
                  "scratch - free, no prompt": case_statistics(per_seed("scratch", "no prompt"),
                                                               per_seed("free", "no prompt"))}
    for measure in ("no prompt", *PROMPTS):
        statistics[f"warm - scratch, {measure}"] = case_statistics(per_seed("warm", measure), per_seed("scratch", measure))
    prompt_free_kept = table["warm"]["no prompt"]["mean"] >= table["free"]["no prompt"]["mean"] - TOLERANCE
    box_kept = table["warm"]["box"]["mean"] >= table["scratch"]["box"]["mean"] - TOLERANCE
    decision = {
        "rule": json.loads(PROTOCOL.read_text())["decision_rule"],
        "a_prompt_free_within_1_point": prompt_free_kept, "b_box_within_1_point_of_scratch": box_kept,
        "bundled_becomes_promptable": prompt_free_kept and box_kept,
    }
    extras = {arm: {str(s): {key: runs[s][arm].get(key) for key in ("seconds", "margin", "train_seconds_wall")}
                    for s in seeds} for arm in runs[seeds[0]]}
    return {"protocol": str(PROTOCOL.relative_to(ROOT)), "seeds": seeds, "cases": cases, "mean_dice": table,
            "statistics": statistics, "decision": decision, "per_arm_seed": extras,
            "per_case": {str(s): runs[s] for s in seeds}}


def print_table(summary: dict) -> None:
    seeds = summary["seeds"]
    print(f"{'arm':<9}{'measure':<15}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds) + f"{'mean':>9}")
    for arm, measures in summary["mean_dice"].items():
        for measure, values in measures.items():
            print(f"{arm:<9}{measure:<15}" + "".join(f"{values[str(s)]:>9.3f}" for s in seeds) + f"{values['mean']:>9.3f}")
    for name, stats in summary["statistics"].items():
        arm, rest = name.split(" - ", 1)
        print(describe(arm, rest, stats))
    print("decision:", {k: v for k, v in summary["decision"].items() if k != "rule"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="one folder per seed (bundled_student.py --work)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = dict(read_seed(folder) for folder in args.folders)
    if len(runs) != len(args.folders):
        raise SystemExit("error: two folders hold the same seed")
    summary = summarise(runs)
    print_table(summary)
    from DistillSegLib.atomic import write_json_atomic

    write_json_atomic(args.out, summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
