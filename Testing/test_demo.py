"""``distillseg demo``: the fixed split, the SUV-threshold baseline, and a report that agrees
with a separate ``distillseg evaluate`` of the saved predictions (real sts-petct cases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from DistillSegLib import cli
from DistillSegLib.metrics.baselines import SUVMAX_FRACTION, suv_threshold_segmentation
from DistillSegLib.io.case import load_case_folder
from DistillSegLib.io.dataset import find_cases
from DistillSegLib.demo.loop import pool_order
from DistillSegLib.demo.split import (LABELLED_CASES, QUICK_UNLABELLED_CASES, QUICK_VALIDATION_CASES,
                                      UNLABELLED_CASES, VALIDATION_CASES, sts_split)
from DistillSegLib.errors import DistillSegError
from DistillSegLib.student.inference import roi_from_mask
from DistillSegLib.metrics.segmentation import dice

ROOT = Path(__file__).resolve().parents[1]


def test_split_is_the_documented_one(sts_dir):
    split = sts_split([c.case_id for c in find_cases(sts_dir)])
    assert split.labelled == LABELLED_CASES == tuple(f"STS_00{i}" for i in range(1, 6))
    assert split.validation == VALIDATION_CASES and split.unlabelled == UNLABELLED_CASES
    everything = split.labelled + split.validation + split.unlabelled
    assert len(everything) == len(set(everything)) == 30
    small = split.subset(max_validation=3, max_unlabelled=2)
    assert small.validation == VALIDATION_CASES[:3] and small.unlabelled == UNLABELLED_CASES[:2]
    quick = split.restrict(QUICK_VALIDATION_CASES, QUICK_UNLABELLED_CASES)  # --quick: fixed cases of each role
    assert (quick.labelled, quick.validation, quick.unlabelled) == (LABELLED_CASES, QUICK_VALIDATION_CASES,
                                                                    QUICK_UNLABELLED_CASES)
    with pytest.raises(DistillSegError, match="STS_025 not among the split's validation cases"):
        split.restrict(validation=("STS_025",))
    assert sts_split(list(everything), seed=1).validation != VALIDATION_CASES  # the seed matters
    with pytest.raises(DistillSegError, match="STS_001"):
        sts_split([c for c in everything if c != "STS_001"])
    # scoring on the pool cases a cut run does not use: never the unlabelled or validation ones
    untouched = split.subset(max_unlabelled=6).scored_on_untouched(split)
    assert untouched.validation == UNLABELLED_CASES[6:] and untouched.unlabelled == UNLABELLED_CASES[:6]
    assert not set(untouched.validation) & set(VALIDATION_CASES + LABELLED_CASES)
    with pytest.raises(DistillSegError, match="no untouched cases"):
        split.scored_on_untouched(split)
    # a cross-validation fold on the labelled cases: the held-out one is scored, the others train
    fold = split.subset(max_unlabelled=6).holding_out("STS_003")
    assert fold.labelled == ("STS_001", "STS_002", "STS_004", "STS_005") and fold.validation == ("STS_003",)
    assert fold.unlabelled == UNLABELLED_CASES[:6]
    with pytest.raises(DistillSegError, match="STS_019 is not one of the labelled cases"):
        split.holding_out("STS_019")


def test_suv_threshold_is_41_percent_of_suvmax_and_finds_the_tumour(sts_case_dir):
    case = load_case_folder(sts_case_dir("STS_003"))
    result = suv_threshold_segmentation(case)
    pet = case.pet_on_ct.array
    assert result.suv_max == pytest.approx(float(pet.max()))
    assert result.threshold == pytest.approx(SUVMAX_FRACTION * result.suv_max)
    assert SUVMAX_FRACTION == 0.41
    mask = result.mask.array > 0
    np.testing.assert_array_equal(mask, pet >= result.threshold)
    assert result.mask.shape == case.ct.shape and np.allclose(result.mask.affine, case.ct.affine)
    gt = case.label_on_ct.array > 0
    assert dice(mask, gt) > 0.6  # a wrong grid, threshold or orientation scores near 0
    # With an ROI box, SUVmax and the mask come from inside the box only.
    roi = roi_from_mask(case.label_on_ct, margin_mm=5.0)
    boxed = suv_threshold_segmentation(case, roi=roi)
    assert boxed.suv_max <= result.suv_max + 1e-6
    assert not (boxed.mask.array.astype(bool) & ~_inside(case.ct, roi)).any()
    assert dice(boxed.mask.array > 0, gt) > 0.6
    with pytest.raises(DistillSegError, match="fraction"):
        suv_threshold_segmentation(case, fraction=1.5)


def _inside(grid, roi) -> np.ndarray:
    from DistillSegLib.io.volume import apply_affine

    world = apply_affine(grid.affine, np.indices(grid.shape).reshape(3, -1).T)
    return np.all((world >= roi[0]) & (world <= roi[1]), axis=1).reshape(grid.shape)


def test_demo_report_equals_a_separate_evaluate(sts_dir, tmp_path, capsys):
    """The tiny override run (1 step, 1 validation case, no teacher: LiteMedSAM takes minutes
    per case on this CPU) writes a report whose numbers `distillseg evaluate` reproduces; with
    `--loop`, a refinement-loop section (one round of one case, from the supervised student)."""
    out = tmp_path / "demo"
    # In-process through the CLI entry point (the subprocess's imports would double the time).
    status = cli.main(["demo", "--data", str(sts_dir), "--out", str(out), "--steps", "1", "--strategies", "",
                       "--max-val-cases", "1", "--max-unlabelled-cases", "0", "--no-teacher", "--val-every", "1000",
                       "--loop", "--loop-rounds", "1", "--loop-round-size", "1", "--loop-steps", "1",
                       "--json-progress"])
    assert status == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {"load", "suv41", "train", "evaluate"} <= {line["stage"] for line in lines}
    assert lines[-1]["stage"] == "done"

    report = json.loads((out / "report.json").read_text())
    assert report["split"]["validation_used"] == [VALIDATION_CASES[0]]
    assert set(report["methods"]) == {"suv41", "supervised"}
    for method, summary in report["methods"].items():
        assert cli.main(["evaluate", "--pred", str(out / "predictions" / method), "--gt", str(out / "labels"),
                         "--json"]) == 0
        evaluated = json.loads(capsys.readouterr().out)
        assert report["evaluation"][method] == evaluated
        assert summary["dice"] == evaluated["mean"]["dice"]
        assert report["per_case_dice"][method] == {c["case_id"]: c["dice"] for c in evaluated["cases"]}
    assert report["methods"]["suv41"]["dice"] > 0.3  # STS_028: the threshold finds the tumour
    history = report["training_history"]["supervised"]
    assert [h["step"] for h in history] == [1] and np.isfinite(history[0]["loss"])

    markdown = (out / "report.md").read_text()
    assert f"| {report['methods']['suv41']['dice']:.3f} |" in markdown
    assert "DOI 10.7937/K9/TCIA.2015.7GO2GSKS" in markdown and "CC BY 3.0" in markdown
    for name in ("overlays", "dice", "training_curves", "refinement_loop"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    loop = report["loop"]["records"][0]
    assert loop["rounds"][0]["model"] == str(out / "models" / "supervised.pt")  # the loop starts from the demo's student
    assert loop["rounds"][1]["new_cases"] == list(pool_order(UNLABELLED_CASES, 0)[:1])  # the whole pool, seeded order
    assert loop["rounds"][1]["validation"]["per_case_dice"].keys() == {VALIDATION_CASES[0]}
    assert "## Refinement loop (`--loop`)" in markdown and report["loop"]["table"] in markdown


def test_demo_without_data_is_one_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "DistillSegLib", "demo", "--data", str(tmp_path / "nowhere"), "--out",
         str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: sts-petct data not found") and "Traceback" not in result.stderr


def test_distillation_options_reach_the_strategy_and_bad_ones_are_named():
    from DistillSegLib.demo.run import DISTILLATION_OPTIONS, QUICK_SETTINGS, strategy_instance

    strategy = strategy_instance("dualview", ("--consistency", "0.5", "--rampup-fraction", "0.25"))
    assert (strategy.config.consistency, strategy.config.rampup_fraction) == (0.5, 0.25)
    defaults = strategy_instance("dualview")
    assert (defaults.config.consistency, defaults.config.selection, defaults.teaching.tune_steps) == (1.0, "none", 200)
    assert strategy_instance("dualview", QUICK_SETTINGS.strategy_options).teaching.tune_steps == 0  # the demo's budget
    from DistillSegLib.distill.muduo import PAPER_OPTIONS, MuDuoConfig

    paper = strategy_instance("dualview", PAPER_OPTIONS)  # the official script's settings, one option list away
    assert paper.config == MuDuoConfig(consistency=0.1, rampup_fraction=1.0, supervised_weight=0.5, selection="batch",
                                       confidence_weight=False, loss="dice")
    assert paper.teaching.tune_steps == 0
    assert QUICK_SETTINGS.strategy_options == DISTILLATION_OPTIONS
    with pytest.raises(DistillSegError, match="--consistncy"):
        strategy_instance("dualview", ("--consistncy", "1"))


def test_the_benchmark_refuses_a_bad_option_before_training(tmp_path):
    """A misspelt option used to surface only after the supervised arm had trained."""
    from DistillSegLib.demo.run import check_strategies

    with pytest.raises(DistillSegError, match="unknown --loss dicece"):
        check_strategies(["dualview"], ("--loss", "dicece"))
    with pytest.raises(DistillSegError, match="invalid choice: 'bogus'"):
        check_strategies(["tskd"], ("--selection", "bogus"))
    with pytest.raises(DistillSegError, match="unknown distillation strategy supervised"):
        check_strategies(["supervised"])
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distillation.py"), "--out", str(tmp_path / "bench"),
         "--strategies", "dualview", "--strategy-options", "--loss dicece"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    assert "unknown --loss dicece" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bench").exists()


def test_quick_settings_leave_the_teacher_evaluation_to_the_full_run():
    import argparse

    from DistillSegLib.commands.demo import add_arguments
    from DistillSegLib.demo.run import FULL_SETTINGS, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    quick = settings_from_args(parser.parse_args(["--quick"]))
    assert not quick.teacher and quick.validation_cases == QUICK_VALIDATION_CASES
    assert settings_from_args(parser.parse_args(["--quick", "--max-teacher-cases", "1"])).teacher
    full = settings_from_args(parser.parse_args([]))
    assert full == FULL_SETTINGS and full.teacher and full.max_teacher_cases == 2
    assert not full.loop and settings_from_args(parser.parse_args(["--loop"])).loop  # the loop is opt-in
