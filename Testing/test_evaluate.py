"""``distillseg evaluate`` scores every ground-truth case: a missing prediction is an empty mask
(Dice 0) and is named, so is a prediction without ground truth; one case id, one file."""

from __future__ import annotations

import json
import shutil

import pytest



@pytest.fixture()
def folders(sts_case_dir, tmp_path):
    """Ground truth of STS_001-003; predictions: STS_001 (perfect) and STS_005 (no ground truth)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for case_id in ("STS_001", "STS_002", "STS_003"):
        shutil.copy(sts_case_dir(case_id) / "CT_mask.nii.gz", gt / f"{case_id}.nii.gz")
    shutil.copy(sts_case_dir("STS_001") / "CT_mask.nii.gz", pred / "STS_001.nii.gz")
    shutil.copy(sts_case_dir("STS_005") / "CT_mask.nii.gz", pred / "STS_005.nii.gz")
    return pred, gt


def test_missing_predictions_count_as_empty_and_are_named(folders, cli):
    pred, gt = folders
    result = cli("evaluate", "--pred", pred, "--gt", gt, "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["mean"]["cases"] == 3
    assert [c["case_id"] for c in scores["cases"]] == ["STS_001", "STS_002", "STS_003"]
    assert [c["dice"] for c in scores["cases"]] == pytest.approx([1.0, 0.0, 0.0])
    assert scores["mean"]["dice"] == pytest.approx(1 / 3)
    assert scores["missing_predictions"] == ["STS_002", "STS_003"]
    assert scores["unmatched_predictions"] == ["STS_005"]
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: ") for line in warnings)
    assert "STS_002, STS_003" in warnings[0] and "Dice 0" in warnings[0] and "STS_005" in warnings[1]


def test_cases_selects_what_is_scored(folders, cli):
    pred, gt = folders
    result = cli("evaluate", "--pred", pred, "--gt", gt, "--cases", "STS_001", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["mean"]["cases"] == 1
    result = cli("evaluate", "--pred", pred, "--gt", gt, "--cases", "STS_009")
    assert result.returncode == 2 and "no ground truth for STS_009" in result.stderr


def test_two_files_for_one_case_are_an_error(folders, cli):
    pred, gt = folders
    shutil.copy(pred / "STS_001.nii.gz", pred / "STS_001.nii")
    result = cli("evaluate", "--pred", pred, "--gt", gt)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: two files for case STS_001 in {pred}: STS_001.nii and STS_001.nii.gz; keep one")
