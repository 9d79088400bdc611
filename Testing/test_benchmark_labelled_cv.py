"""benchmarks/labelled_cv.py: two candidate settings over labelled-case folds, and the decision rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import labelled_cv  # noqa: E402

LABELLED = ["STS_001", "STS_002", "STS_003", "STS_004", "STS_005"]


def fold(case: str, arm: float, supervised: float = 0.6) -> dict:
    return {"scored_on": f"labelled-fold ({case} held out)", "device": "CPU", "load_average_end": 1.0,
            "command": f"fold {case}",
            "split": {"labelled": [c for c in LABELLED if c != case], "validation_used": [case]},
            "runs": [{"method": "supervised", "seed": 0, "per_case_dice": {case: supervised}},
                     {"method": "dualview", "seed": 0, "per_case_dice": {case: arm}},
                     {"method": "dualview+pp", "seed": 0, "per_case_dice": {case: 0.0}}]}


def scores(values: list[float], supervised: list[float] | None = None) -> dict:
    supervised = supervised or [0.6] * len(values)
    return labelled_cv.fold_scores([fold(c, v, s) for c, v, s in zip(LABELLED, values, supervised)], "dualview")


def test_the_challenger_needs_the_mean_gain_and_enough_folds():
    incumbent = scores([0.70, 0.70, 0.70, 0.70, 0.70])
    carried_by_one = labelled_cv.decide(incumbent, scores([0.80, 0.69, 0.69, 0.69, 0.69]))
    assert carried_by_one["challenger_minus_incumbent_points"] == pytest.approx(1.2)
    assert carried_by_one["folds_ahead"] == 1 and not carried_by_one["challenger_wins"]
    small = labelled_cv.decide(incumbent, scores([0.705] * 5))
    assert small["folds_ahead"] == 5 and not small["challenger_wins"]  # 0.5 points: below the 1-point bar
    wins = labelled_cv.decide(incumbent, scores([0.72, 0.72, 0.72, 0.69, 0.70]))
    assert wins["challenger_wins"] and wins["per_fold_points"]["STS_004"] == pytest.approx(-1.0)


def test_folds_that_do_not_pair_or_are_not_folds_are_refused():
    with pytest.raises(ValueError, match="STS_002: the supervised arms differ"):
        labelled_cv.decide(scores([0.7] * 5), scores([0.7] * 5, [0.6, 0.61, 0.6, 0.6, 0.6]))
    with pytest.raises(ValueError, match="other folds"):
        labelled_cv.decide(scores([0.7] * 5), scores([0.7] * 4))
    untouched = fold("STS_001", 0.7)
    untouched["scored_on"] = "untouched"
    with pytest.raises(ValueError, match="not a labelled-fold run"):
        labelled_cv.fold_scores([untouched], "dualview")
    with pytest.raises(ValueError, match="given twice"):
        labelled_cv.fold_scores([fold("STS_001", 0.7), fold("STS_001", 0.7)], "dualview")
    leaked = fold("STS_001", 0.7)
    leaked["split"]["labelled"].append("STS_001")
    with pytest.raises(ValueError, match="scored and trained on"):
        labelled_cv.fold_scores([leaked], "dualview")


def test_the_command_writes_the_decision(tmp_path, capsys):
    for name, values in (("both", [0.7] * 5), ("pet", [0.74, 0.72, 0.71, 0.69, 0.70])):
        for case, value in zip(LABELLED, values):
            (tmp_path / name / case).mkdir(parents=True)
            (tmp_path / name / case / "distillation.json").write_text(json.dumps(fold(case, value)))
    out = tmp_path / "cv.json"
    assert labelled_cv.main(["--incumbent", f"both={tmp_path}/both/*/distillation.json",
                             "--challenger", f"pet={tmp_path}/pet/*/distillation.json", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["challenger_wins"] and result["folds_ahead"] == 3 and len(result["commands"]) == 10
    assert "the challenger wins" in capsys.readouterr().out
    assert labelled_cv.main(["--incumbent", f"both={tmp_path}/none/*.json", "--challenger", "x=y",
                             "--out", str(tmp_path / "no.json")]) == 2
    assert not (tmp_path / "no.json").exists()


def test_two_different_methods_compare_over_the_same_folds():
    selftrain = [{**fold(c, 0.7), "runs": [{"method": "supervised", "seed": 0, "per_case_dice": {c: 0.6}},
                                           {"method": "selftrain", "seed": 0, "per_case_dice": {c: 0.7}}]}
                 for c in LABELLED]
    dualview = [fold(c, 0.75) for c in LABELLED]
    result = labelled_cv.decide(labelled_cv.fold_scores(selftrain, "selftrain"),
                                labelled_cv.fold_scores(dualview, "dualview"), min_gain_points=2.0)
    assert result["challenger_minus_incumbent_points"] == pytest.approx(5.0) and result["challenger_wins"]
    with pytest.raises(ValueError, match="no 'dualview' or supervised run"):
        labelled_cv.fold_scores(selftrain, "dualview")


def test_a_candidate_comes_from_an_earlier_cross_validation(tmp_path):
    for name, values in (("both", [0.7] * 5), ("pet", [0.74, 0.72, 0.71, 0.69, 0.70]),
                         ("new", [0.8, 0.8, 0.6, 0.8, 0.8])):
        for case, value in zip(LABELLED, values):
            (tmp_path / name / case).mkdir(parents=True)
            (tmp_path / name / case / "distillation.json").write_text(json.dumps(fold(case, value)))
    earlier = tmp_path / "earlier.json"
    assert labelled_cv.main(["--incumbent", f"both={tmp_path}/both/*/distillation.json",
                             "--challenger", f"pet={tmp_path}/pet/*/distillation.json", "--out", str(earlier)]) == 0
    out = tmp_path / "cv.json"
    assert labelled_cv.main(["--incumbent", f"pet={earlier}", "--challenger", f"new={tmp_path}/new/*/distillation.json",
                             "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["per_fold_dice"]["STS_001"]["incumbent"] == pytest.approx(0.74)
    assert result["challenger_minus_incumbent_points"] == pytest.approx(4.8) and result["folds_ahead"] == 4
    assert result["incumbent_reused_from"] == str(earlier) and len(result["commands"]) == 5
    assert labelled_cv.main(["--incumbent", f"other={earlier}", "--challenger", f"new={tmp_path}/new/*/distillation.json",
                             "--out", str(tmp_path / "no.json")]) == 2
    assert labelled_cv.main(["--arm", "selftrain", "--incumbent", f"both={earlier}",
                             "--challenger", f"new={tmp_path}/new/*/distillation.json",
                             "--out", str(tmp_path / "no.json")]) == 2
    assert not (tmp_path / "no.json").exists()
