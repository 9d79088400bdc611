"""benchmarks/pool_distillation.py: single-seed distillation runs pooled, paired with a base run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pool_distillation  # noqa: E402


def single_seed(seed: int, supervised: float, arm: float, options: str = "--views CT") -> dict:
    runs = []
    for method, dice in (("supervised", supervised), ("dualview", arm)):
        per_case = {"c1": dice, "c2": dice - 0.1}
        runs.append({"method": method, "seed": seed, "dice": dice - 0.05, "per_case_dice": per_case})
        runs.append({"method": method + "+pp", "seed": seed, "dice": dice - 0.05, "per_case_dice": per_case})
    return {"benchmark": "distillation", "device": "CPU", "load_average_end": 1.0, "data": "d",
            "scored_on": "untouched", "split": {"seed": 2015}, "protocol": {"steps": 1200},
            "settings": {"steps": 600, "warmup_steps": 200, "refresh_every": 200, "seeds": [seed],
                         "strategies": ["dualview"], "strategy_options": options},
            "runs": runs, "total_seconds": 10.0, "seeds_finished": [seed], "command": f"run seed {seed}"}


def base_file() -> dict:
    base = single_seed(0, 0.6, 0.7, options="")
    base["runs"] += single_seed(1, 0.5, 0.7, options="")["runs"]
    return base


def test_seeds_pool_renamed_and_paired_with_the_base_run():
    pooled = pool_distillation.pool([single_seed(0, 0.6, 0.65), single_seed(1, 0.5, 0.66)],
                                    {"dualview": "dualview_ct_only"}, base_file())
    methods = {(r["method"], r["seed"]) for r in pooled["runs"]}
    assert ("dualview_ct_only", 1) in methods and ("dualview_ct_only+pp", 0) in methods
    assert not any(m.startswith("dualview+") or m == "dualview" for m, _ in methods)
    assert pooled["seeds_finished"] == [0, 1] and pooled["settings"]["strategies"] == ["dualview_ct_only"]
    assert pooled["commands"] == ["run seed 0", "run seed 1"]
    again = pool_distillation.pool([pooled, single_seed(2, 0.4, 0.5)], base=None)  # an earlier pool as input
    assert again["seeds_finished"] == [0, 1, 2]


def test_an_unpaired_seed_other_settings_or_a_repeated_seed_are_refused():
    with pytest.raises(ValueError, match="not paired.*seed 1, c1"):
        pool_distillation.pool([single_seed(0, 0.6, 0.65), single_seed(1, 0.52, 0.66)], base=base_file())
    with pytest.raises(ValueError, match="no supervised run in the base"):
        pool_distillation.pool([single_seed(2, 0.6, 0.65)], base=base_file())
    with pytest.raises(ValueError, match="other settings"):
        pool_distillation.pool([single_seed(0, 0.6, 0.65), single_seed(1, 0.5, 0.66, options="--views PET")])
    with pytest.raises(ValueError, match="more than one input"):
        pool_distillation.pool([single_seed(0, 0.6, 0.65), single_seed(0, 0.6, 0.65)])


def test_the_command_writes_nothing_when_it_refuses(tmp_path, capsys):
    inputs = []
    for seed, supervised in ((0, 0.6), (1, 0.52)):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(json.dumps(single_seed(seed, supervised, 0.65)))
        inputs.append(str(path))
    base = tmp_path / "base.json"
    base.write_text(json.dumps(base_file()))
    out = tmp_path / "pooled.json"
    assert pool_distillation.main(inputs + ["--paired-with", str(base), "--out", str(out)]) == 2
    assert "not paired" in capsys.readouterr().err and not out.exists()
    assert pool_distillation.main(inputs[:1] + ["--paired-with", str(base), "--out", str(out),
                                                "--rename", "dualview=ct_only"]) == 0
    assert {r["method"] for r in json.loads(out.read_text())["runs"]} == {"supervised", "supervised+pp", "ct_only", "ct_only+pp"}
