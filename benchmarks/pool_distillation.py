"""Pool single-seed runs of ``benchmarks/distillation.py`` into one result, paired with a base run.

A frozen protocol may run each seed on its own (a seed at another ``--threads``, a seed added in a
later session). This joins those ``distillation.json`` files into one, and refuses what would
make the pooled file lie:

* runs with other settings (steps, warm-up, rounds, strategy options, split, scored cases);
* the same method and seed twice;
* with ``--paired-with BASE``: a seed whose supervised per-case Dice differs from the base run's
  by more than ``--tolerance`` (then the arms did not start from the same warm-up, and a paired
  comparison with the base file's arms would be wrong).

``--rename OLD=NEW`` renames an arm (and its ``+pp`` twin), e.g. ``dualview=dualview_ct_only`` for
an ablation that runs the dualview strategy with one option changed. A file that is already
pooled can be an input: its runs keep their names.

    python benchmarks/pool_distillation.py /tmp/abl/CT/seed*/distillation.json \\
        --rename dualview=dualview_ct_only --paired-with benchmarks/results/distillation_untouched_seeds012.json \\
        --note "..." --out benchmarks/results/distillation_untouched_dualview_ct_only.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DistillSegLib.atomic import write_json_atomic  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from case_stats import per_case_dice  # noqa: E402

FIXED_SETTINGS = ("steps", "warmup_steps", "refresh_every", "strategy_options")
FIXED_FIELDS = ("scored_on", "split", "protocol", "data")


def renamed(method: str, renames: Mapping[str, str]) -> str:
    """``method`` under ``renames``; ``X+pp`` follows ``X``."""
    base, plus, suffix = method.partition("+")
    return renames.get(base, base) + plus + suffix


def commands_of(result: Mapping[str, Any]) -> list[str]:
    if "commands" in result:
        return list(result["commands"])
    return [result["command"]] if result.get("command") else []


def supervised_mismatches(runs: Sequence[Mapping[str, Any]], base_runs: Sequence[Mapping[str, Any]],
                          tolerance: float) -> list[str]:
    """Where ``runs``' supervised per-case Dice differs from ``base_runs``' (same seed) by more
    than ``tolerance``, or the base has no such seed; empty when every seed pairs."""
    base = per_case_dice(base_runs, "supervised")
    problems = []
    for seed, cases in per_case_dice(runs, "supervised").items():
        if seed not in base:
            problems.append(f"seed {seed}: no supervised run in the base file")
            continue
        problems += [f"seed {seed}, {case}: supervised Dice {dice} vs base {base[seed].get(case)}"
                     for case, dice in cases.items()
                     if case not in base[seed] or abs(dice - base[seed][case]) > tolerance]
    return problems


def pool(results: Sequence[Mapping[str, Any]], renames: Mapping[str, str] | None = None,
         base: Mapping[str, Any] | None = None, tolerance: float = 1e-4) -> dict[str, Any]:
    """One ``distillation.json``-shaped result from ``results`` (each as read from its JSON).

    Raises ValueError when the settings differ, a method and seed occur twice, or (with ``base``)
    a seed's supervised arm does not repeat the base run's.
    """
    if not results:
        raise ValueError("nothing to pool")
    renames = dict(renames or {})
    first = results[0]
    def fixed(result):
        return ({k: result["settings"].get(k) for k in FIXED_SETTINGS}, {k: result.get(k) for k in FIXED_FIELDS})
    for index, result in enumerate(results[1:], start=1):
        if fixed(result) != fixed(first):
            raise ValueError(f"input {index} has other settings than input 0: {fixed(result)} != {fixed(first)}")
    runs, seen = [], set()
    for result in results:
        for run in result["runs"]:
            run = {**run, "method": renamed(run["method"], renames)}
            key = (run["method"], int(run["seed"]))
            if key in seen:
                if run["method"].startswith("supervised"):
                    continue  # each seed's run retrains supervised; the first copy stands (checked below)
                raise ValueError(f"{key[0]} seed {key[1]} is in more than one input")
            seen.add(key)
            runs.append(run)
    for result in results:
        duplicate = [r for r in result["runs"] if r["method"] == "supervised"]
        mismatch = supervised_mismatches(duplicate, [r for r in runs if r["method"] == "supervised"], tolerance)
        if mismatch:
            raise ValueError("the inputs' supervised arms differ for one seed: " + "; ".join(mismatch[:3]))
    if base is not None:
        mismatch = supervised_mismatches(runs, base["runs"], tolerance)
        if mismatch:
            raise ValueError("not paired with the base run: " + "; ".join(mismatch[:3]))
    seeds = sorted({int(r["seed"]) for r in runs})
    strategies = sorted({renamed(s, renames) for result in results for s in result["settings"]["strategies"]})
    load = [result.get("load_average_end") for result in results]
    return {"benchmark": "distillation", "device": first["device"],
            "load_average_end": max((x for x in load if isinstance(x, (int, float))), default=None),
            **{k: first.get(k) for k in FIXED_FIELDS},
            "cuts": first.get("cuts", []),
            "settings": {**{k: first["settings"].get(k) for k in FIXED_SETTINGS[:3]}, "seeds": seeds,
                         "strategies": strategies, "strategy_options": first["settings"].get("strategy_options", "")},
            "runs": sorted(runs, key=lambda r: (int(r["seed"]), r["method"])),
            "teacher_speed": first.get("teacher_speed", {}), "target": first.get("target"),
            "total_seconds": float(sum(result.get("total_seconds", 0.0) for result in results)),
            "seeds_finished": seeds,
            "commands": [c for result in results for c in commands_of(result)]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("inputs", nargs="+", help="distillation.json files (single seeds, or an earlier pool)")
    parser.add_argument("--out", required=True, help="the pooled JSON (written atomically)")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW", help="rename an arm")
    parser.add_argument("--paired-with", metavar="BASE", help="a result whose supervised arm every seed must repeat")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="per-case Dice tolerance of the pairing check")
    parser.add_argument("--note", default="", help="recorded as the result's note")
    args = parser.parse_args(argv)
    renames = {}
    for item in args.rename:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            parser.error(f"--rename wants OLD=NEW, got {item!r}")
        renames[old] = new
    try:
        results = [json.loads(Path(p).read_text()) for p in args.inputs]
        base = json.loads(Path(args.paired_with).read_text()) if args.paired_with else None
        pooled = pool(results, renames, base, args.tolerance)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.note:
        pooled["note"] = args.note
    write_json_atomic(Path(args.out), pooled)
    methods = sorted({r["method"] for r in pooled["runs"] if not r["method"].endswith("+pp")})
    for method in methods:
        by_seed = {int(r["seed"]): r["dice"] for r in pooled["runs"] if r["method"] == method}
        print(f"{method:<22}" + "".join(f"  seed {s}: {d:.3f}" for s, d in sorted(by_seed.items())))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
