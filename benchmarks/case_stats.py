"""Case-level statistics of a paired benchmark: what a gain is worth over the cases.

Three seeds on the same ten cases say how much training noise moves a mean, not how much
the choice of cases does. These statistics treat the validation case as the unit:

* a two-stage bootstrap over cases x seeds: draw cases with replacement, then for each drawn
  case draw seeds with replacement, average; 95 % percentile interval of that mean;
* the median over cases of the seed-averaged per-case gain;
* the leave-one-case-out range: the smallest and largest mean gain with one case left out
  (a gain carried by one case shows here);
* a t interval over the seed-averaged per-case gains (n_cases - 1 degrees of freedom).

Input: the ``runs`` of ``benchmarks/distillation.py``'s JSON (``per_case_dice`` per method and
seed). Gains are in Dice points (100 x Dice difference).

    python benchmarks/case_stats.py benchmarks/results/distillation_muduo_weighted.json:muduo
    python benchmarks/case_stats.py A.json:dualview:selftrain:B.json --out stats.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def per_case_dice(runs: Sequence[Mapping[str, Any]], method: str) -> dict[int, dict[str, float]]:
    """``{seed: {case_id: Dice}}`` of ``method`` in a benchmark's ``runs``."""
    return {int(r["seed"]): {str(c): float(d) for c, d in r["per_case_dice"].items()}
            for r in runs if r.get("method") == method and r.get("per_case_dice")}


def paired_gains(arm: Mapping[int, Mapping[str, float]], baseline: Mapping[int, Mapping[str, float]]
                 ) -> tuple[np.ndarray, list[str], list[int]]:
    """``(gains, cases, seeds)``: ``gains[i, j]`` = 100 x (arm - baseline) Dice on case i, seed j,
    over the seeds both have and the cases every one of those seeds scored."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        raise ValueError("no seed in common between the two arms")
    cases = sorted(set.intersection(*(set(arm[s]) & set(baseline[s]) for s in seeds)))
    if not cases:
        raise ValueError("no case in common between the two arms")
    gains = np.array([[100.0 * (arm[s][c] - baseline[s][c]) for s in seeds] for c in cases])
    return gains, cases, seeds


def case_seed_bootstrap(gains: np.ndarray, draws: int = 10000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``gains`` ``(cases, seeds)`` under a two-stage
    bootstrap: cases drawn with replacement, then seeds with replacement within each drawn case."""
    gains = np.asarray(gains, float)
    n_cases, n_seeds = gains.shape
    rng = np.random.default_rng(seed)
    cases = rng.integers(0, n_cases, size=(draws, n_cases))
    seeds = rng.integers(0, n_seeds, size=(draws, n_cases, n_seeds))
    means = gains[cases[..., None], seeds].mean(axis=(1, 2))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def leave_one_case_out(gains: np.ndarray) -> tuple[float, float]:
    """Smallest and largest mean gain with one case left out (``gains``: ``(cases, seeds)``)."""
    per_case = np.asarray(gains, float).mean(axis=1)
    if per_case.size < 2:
        return float(per_case.mean()), float(per_case.mean())
    loo = (per_case.sum() - per_case) / (per_case.size - 1)
    return float(loo.min()), float(loo.max())


def t_interval_over_cases(gains: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """t interval of the mean of the seed-averaged per-case gains (n_cases - 1 df)."""
    from scipy import stats

    per_case = np.asarray(gains, float).mean(axis=1)
    if per_case.size < 2:
        return None
    half = float(stats.t.ppf(0.5 + level / 2, per_case.size - 1) * per_case.std(ddof=1) / np.sqrt(per_case.size))
    return float(per_case.mean() - half), float(per_case.mean() + half)


def case_statistics(arm: Mapping[int, Mapping[str, float]], baseline: Mapping[int, Mapping[str, float]],
                    draws: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Every statistic of the module docstring for ``arm`` minus ``baseline`` (Dice points)."""
    gains, cases, seeds = paired_gains(arm, baseline)
    per_case = gains.mean(axis=1)
    largest = int(np.argmax(np.abs(per_case)))
    return {
        "seeds": seeds, "cases": cases, "n_cases": len(cases), "n_seeds": len(seeds),
        "mean_points": float(gains.mean()),
        "bootstrap_ci95": list(case_seed_bootstrap(gains, draws, seed)),
        "bootstrap": f"{draws} draws (seed {seed}): cases with replacement, then seeds within each case",
        "median_case_points": float(np.median(per_case)),
        "leave_one_case_out_range": list(leave_one_case_out(gains)),
        "t_ci95_over_cases": (lambda ci: None if ci is None else list(ci))(t_interval_over_cases(gains)),
        "per_case_points": {c: round(float(g), 3) for c, g in zip(cases, per_case)},
        "per_seed_points": {str(s): float(gains[:, j].mean()) for j, s in enumerate(seeds)},
        "largest_case": {"case": cases[largest], "points": float(per_case[largest]),
                         "share_of_mean_points": float(per_case[largest] / len(cases))},
        "cases_positive": int((per_case > 0).sum()),
    }


def describe(name: str, baseline: str, stats: Mapping[str, Any]) -> str:
    """One line for a table."""
    lo, hi = stats["bootstrap_ci95"]
    loo = stats["leave_one_case_out_range"]
    return (f"{name} - {baseline}: {stats['mean_points']:+.1f} points over {stats['n_cases']} cases x "
            f"{stats['n_seeds']} seeds (case x seed bootstrap 95% {lo:+.1f} .. {hi:+.1f}; median case "
            f"{stats['median_case_points']:+.1f}; leave-one-case-out {loo[0]:+.1f} .. {loo[1]:+.1f}; "
            f"{stats['cases_positive']}/{stats['n_cases']} cases gain)")


def load_runs(files: str) -> list[dict]:
    """The ``runs`` of one JSON, or of several (comma-separated: seeds run in separate
    processes); a method and seed found twice must agree on every case, else ValueError."""
    runs, seen = [], {}
    for file in files.split(","):
        for run in json.loads(Path(file).read_text())["runs"]:
            key = (run.get("method"), run.get("seed"))
            if key in seen and run.get("per_case_dice"):
                if seen[key] != run["per_case_dice"]:
                    raise ValueError(f"{key[0]} seed {key[1]} differs between the files {files}")
                continue
            if run.get("per_case_dice"):
                seen[key] = run["per_case_dice"]
            runs.append(run)
    return runs


def compare(spec: str, draws: int = 10000) -> dict[str, Any]:
    """One comparison ``FILE:ARM[:BASELINE[:BASELINE_FILE]]`` (baseline default ``supervised``
    from the same file): the statistics, with where the numbers came from."""
    parts = spec.split(":")
    file, arm = parts[0], parts[1]
    baseline = parts[2] if len(parts) > 2 and parts[2] else "supervised"
    base_file = parts[3] if len(parts) > 3 else file
    runs = load_runs(file)
    base_runs = runs if base_file == file else load_runs(base_file)
    stats = case_statistics(per_case_dice(runs, arm), per_case_dice(base_runs, baseline), draws)
    return {"arm": arm, "arm_file": file, "baseline": baseline, "baseline_file": base_file, **stats}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("comparisons", nargs="+", metavar="FILE:ARM[:BASELINE[:BASELINE_FILE]]",
                        help="a benchmarks/distillation.py JSON (or several, comma-separated), the arm, the baseline (default supervised) and the "
                             "JSON it comes from (default the same; same protocol and seeds)")
    parser.add_argument("--draws", type=int, default=10000)
    parser.add_argument("--out", help="write every comparison to this JSON")
    args = parser.parse_args(argv)
    results = [compare(spec, args.draws) for spec in args.comparisons]
    for result in results:
        print(describe(result["arm"], result["baseline"], result) + f"  [{result['arm_file']}]")
    if args.out:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from DistillSegLib.atomic import write_json_atomic

        write_json_atomic(Path(args.out), {"benchmark": "case_stats", "command": " ".join([sys.executable, *sys.argv]),
                                           "comparisons": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
