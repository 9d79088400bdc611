"""benchmarks/case_stats.py: case-level statistics of a paired benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import case_stats  # noqa: E402


def runs_of(method: str, table: dict[int, dict[str, float]]) -> list[dict]:
    return [{"method": method, "seed": s, "per_case_dice": cases} for s, cases in table.items()]


def test_one_case_carrying_the_gain_shows_in_the_median_and_leave_one_out():
    cases = [f"c{i}" for i in range(10)]
    base = {s: {c: 0.6 for c in cases} for s in (0, 1, 2)}
    arm = {s: {c: 0.61 for c in cases} for s in (0, 1, 2)}
    for s in arm:
        arm[s]["c9"] = 0.81  # +21 points on one case, +1 on the others
    runs = runs_of("muduo", arm) + runs_of("supervised", base)
    stats = case_stats.case_statistics(case_stats.per_case_dice(runs, "muduo"),
                                       case_stats.per_case_dice(runs, "supervised"), draws=2000)
    assert stats["mean_points"] == pytest.approx(3.0)
    assert stats["median_case_points"] == pytest.approx(1.0)
    assert stats["leave_one_case_out_range"] == pytest.approx([1.0, 3.0 + 2.0 / 9.0])
    assert stats["largest_case"]["case"] == "c9" and stats["largest_case"]["share_of_mean_points"] == pytest.approx(2.1)
    low, high = stats["bootstrap_ci95"]
    assert 1.0 <= low < 3.0 < high <= 21.0  # draws without c9 give +1; with it several times, more
    assert stats["cases_positive"] == 10 and stats["n_seeds"] == 3


def test_bootstrap_resamples_seeds_within_cases_and_is_reproducible():
    rng = np.random.default_rng(3)
    gains = rng.normal(2.0, 1.0, size=(10, 1)) + rng.normal(0.0, 4.0, size=(10, 5))  # seed noise >> case noise
    one_stage = case_stats.case_seed_bootstrap(gains.mean(axis=1, keepdims=True), draws=4000)
    two_stage = case_stats.case_seed_bootstrap(gains, draws=4000)
    assert two_stage == case_stats.case_seed_bootstrap(gains, draws=4000)
    assert two_stage[1] - two_stage[0] > one_stage[1] - one_stage[0]  # the seed noise widens it
    constant = np.full((6, 3), 1.5)
    assert case_stats.case_seed_bootstrap(constant, draws=500) == pytest.approx((1.5, 1.5))


def test_only_shared_seeds_and_cases_are_paired():
    arm = {0: {"a": 0.7, "b": 0.8}, 1: {"a": 0.7, "b": 0.8}, 2: {"a": 0.9, "b": 0.9}}
    base = {0: {"a": 0.6, "b": 0.6, "c": 0.1}, 1: {"a": 0.6, "b": 0.6}}
    gains, cases, seeds = case_stats.paired_gains(arm, base)
    assert seeds == [0, 1] and cases == ["a", "b"]
    np.testing.assert_allclose(gains, [[10, 10], [20, 20]])
    with pytest.raises(ValueError, match="no seed"):
        case_stats.paired_gains({5: {"a": 1.0}}, base)


def test_recorded_muduo_figures_match_the_published_ones(tmp_path):
    """The published MuDuo run: +5.4 points, median case +3.2, t over cases +0.1 .. +10.7."""
    import json

    runs = json.loads((ROOT / "benchmarks" / "results" / "distillation_muduo_weighted.json").read_text())["runs"]
    stats = case_stats.case_statistics(case_stats.per_case_dice(runs, "muduo"),
                                       case_stats.per_case_dice(runs, "supervised"), draws=2000)
    assert stats["mean_points"] == pytest.approx(5.40, abs=0.01)
    assert stats["median_case_points"] == pytest.approx(3.2, abs=0.05)
    assert stats["t_ci95_over_cases"] == pytest.approx([0.1, 10.7], abs=0.05)


def test_runs_of_several_files_are_joined_and_must_agree(tmp_path):
    import json

    a = [{"method": "supervised", "seed": 0, "per_case_dice": {"x": 0.5}},
         {"method": "selftrain", "seed": 0, "per_case_dice": {"x": 0.6}}]
    b = [{"method": "supervised", "seed": 0, "per_case_dice": {"x": 0.5}},
         {"method": "supervised", "seed": 1, "per_case_dice": {"x": 0.4}}]
    (tmp_path / "a.json").write_text(json.dumps({"runs": a}))
    (tmp_path / "b.json").write_text(json.dumps({"runs": b}))
    runs = case_stats.load_runs(f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}")
    assert sorted((r["method"], r["seed"]) for r in runs) == [("selftrain", 0), ("supervised", 0), ("supervised", 1)]
    b[0]["per_case_dice"]["x"] = 0.51  # the same seed scored differently: not the same protocol
    (tmp_path / "b.json").write_text(json.dumps({"runs": b}))
    with pytest.raises(ValueError, match="differs"):
        case_stats.load_runs(f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}")
