"""The refinement loop's bookkeeping (``DistillSegLib/demo/loop.py``): the seeded order of the pool,
rounds of ``round_size`` cases, no validation case ever added, each Distil starting from the
previous student, the effort measured with the student that segmented the case, continuing a
stopped run; on a tiny real run (one labelled case, a pool of two, one validation case, a few
training steps). Its accuracy and speed are measured by ``benchmarks/refinement_loop.py``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from DistillSegLib.demo.loop import (ARMS, DISTILLATION, ROI_MARGIN_MM, SUPERVISED, EngineWorkbench, LoopSettings,
                                     format_table, plan_rounds, pool_order, reference_label, run_loop, segment,
                                     summarise)
from DistillSegLib.demo.split import LABELLED_CASES, UNLABELLED_CASES, VALIDATION_CASES, DemoSplit, sts_split
from DistillSegLib.errors import DistillSegError
from DistillSegLib.io.dataset import find_cases
from DistillSegLib.metrics.correction import correction_effort
from DistillSegLib.student.model_file import load_model, read_payload

ROOT = Path(__file__).resolve().parents[1]
# Roles as in the demo split (STS_002 labelled, STS_019 validation, the others unlabelled).
TINY = DemoSplit(labelled=("STS_002",), validation=("STS_019",), unlabelled=("STS_025", "STS_008"), seed=0)
TINY_SETTINGS = LoopSettings(round_size=1, rounds=2, initial_steps=2, round_steps=1, scratch_arms=(),
                             strategy="dualview", strategy_options=("--consistency", "0.5", "--tune-teachers", "0"),
                             refresh_every=1)
SEED = 3


def test_the_pool_comes_in_a_seeded_order_in_rounds_of_its_size():
    split = sts_split(list(LABELLED_CASES + VALIDATION_CASES + UNLABELLED_CASES))
    plan = plan_rounds(split, 0, 5, 3)
    assert [len(r) for r in plan] == [5, 5, 5]
    used = [c for r in plan for c in r]
    assert sorted(used) == sorted(UNLABELLED_CASES)  # each pool case once, nothing else
    assert plan == plan_rounds(split, 0, 5, 3) and plan_rounds(split, 0, 5, 2) == plan[:2]
    assert plan_rounds(split, 1, 5, 3) != plan  # the seed decides the order
    assert pool_order(list(reversed(UNLABELLED_CASES)), 0) == pool_order(UNLABELLED_CASES, 0)
    with pytest.raises(DistillSegError, match="15 cases: 4 rounds of 5 need 20"):
        plan_rounds(split, 0, 5, 4)  # validation cases are never taken to fill a round
    leaky = DemoSplit(split.labelled, split.validation, split.unlabelled + ("STS_028",), split.seed)
    with pytest.raises(DistillSegError, match="STS_028"):
        plan_rounds(leaky, 0, 1, 1)


def test_settings_are_checked():
    with pytest.raises(DistillSegError, match="round-size"):
        LoopSettings(round_size=0)
    with pytest.raises(DistillSegError, match="distillation strategy"):
        LoopSettings(strategy="supervised")
    with pytest.raises(DistillSegError, match="unknown arm"):
        LoopSettings(scratch_arms=("teacher",))


class InProcessWorkbench(EngineWorkbench):
    """The engine workbench with each Distil run in this process through the `distillseg` entry
    point (the same `train` arguments, without an interpreter start-up per round), recording them.
    The distillation strategy's teacher rounds are left out (LiteMedSAM costs minutes on a CPU;
    the strategies are tested in test_distill_strategies.py): a dualview Distil trains supervised."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    def run_train(self, arguments):
        from DistillSegLib.cli import main

        self.calls.append(list(arguments))
        arguments = list(arguments)
        arguments[arguments.index("--strategy") + 1] = SUPERVISED
        return main(["train", *arguments]), ""


@pytest.fixture(scope="module")
def tiny_loop(sts_dir, tmp_path_factory, torch_one_thread):
    out = tmp_path_factory.mktemp("loop")
    workbench = InProcessWorkbench()
    records = run_loop(workbench, sts_dir, TINY, [SEED], ARMS, TINY_SETTINGS, out)
    return out, workbench, {r["arm"]: r for r in records}


def test_rounds_add_the_planned_cases_and_never_a_validation_case(tiny_loop):
    out, _, records = tiny_loop
    plan = plan_rounds(TINY, SEED, 1, 2)
    for arm, record in records.items():
        assert [r["round"] for r in record["rounds"]] == [0, 1, 2]
        for number, round_record in enumerate(record["rounds"]):
            expected = list(TINY.labelled) + [c for r in plan[:number] for c in r]
            assert round_record["labelled"] == expected
            assert round_record["new_cases"] == (list(plan[number - 1]) if number else [])
            trained_on = read_payload(round_record["model"])["metadata"]["training_cases"]
            assert trained_on["labelled"] == sorted(record["training_set_ids"][c] for c in expected)
        dataset = out / f"seed{SEED}" / arm / "training-set"
        in_training_set = {c.case_id for c in find_cases(dataset)}
        assert "STS_019" not in in_training_set and "STS_019" not in record["training_set_ids"]
        labelled = {c.case_id for c in find_cases(dataset) if c.labelled}
        assert labelled == {"STS_002", *plan[0], *plan[1]}


def test_each_round_starts_from_the_previous_student(tiny_loop):
    out, _, records = tiny_loop
    initial = out / f"seed{SEED}" / "initial" / "student.pt"
    for arm, record in records.items():
        models = [Path(r["model"]) for r in record["rounds"]]
        assert models[0] == (initial if arm == SUPERVISED else out / f"seed{SEED}" / arm / "round0.pt")
        starts = [initial] + models[:-1] if arm == DISTILLATION else models[:-1]
        trained = record["rounds"] if arm == DISTILLATION else record["rounds"][1:]
        for round_record, start in zip(trained, starts):
            assert Path(round_record["init"]) == start
            metadata = read_payload(round_record["model"])["metadata"]
            assert metadata["init_from"]["weights_sha256"] == read_payload(start)["metadata"]["weights_sha256"]
            assert round_record["predicted_by"] in (None, str(start))


def test_the_distillation_arm_learns_from_the_pool_not_yet_corrected(tiny_loop):
    _, workbench, records = tiny_loop
    rounds = records[DISTILLATION]["rounds"]
    assert [r["strategy"] for r in rounds] == ["dualview", "dualview", SUPERVISED]  # the pool is used up in round 2
    assert [len(r["unlabelled"]) for r in rounds] == [2, 1, 0] and "no unlabelled study left" in rounds[2]["note"]
    distil_calls = [c for c in workbench.calls if "round" in Path(c[c.index("--out") + 1]).name
                    and f"/{DISTILLATION}/" in c[c.index("--out") + 1]]
    assert [c[c.index("--strategy") + 1] for c in distil_calls] == ["dualview", "dualview", SUPERVISED]
    for call in distil_calls[:2]:
        assert call[call.index("--unlabelled") + 1] == "rest"  # the module's Distil: the training set's studies
        assert call[call.index("--consistency") + 1] == "0.5" and call[call.index("--refresh-every") + 1] == "1"
    assert "--unlabelled" not in distil_calls[2]
    assert all("--unlabelled" not in c for c in workbench.calls if f"/{SUPERVISED}/" in c[c.index("--out") + 1])


def test_the_effort_is_that_of_the_student_that_segmented_the_case(sts_dir, tiny_loop):
    _, _, records = tiny_loop
    case = next(c for c in find_cases(sts_dir) if c.case_id == records[SUPERVISED]["rounds"][2]["new_cases"][0]).load()
    round_record = records[SUPERVISED]["rounds"][2]
    again = correction_effort(segment(load_model(round_record["predicted_by"]), case, ROI_MARGIN_MM),
                              reference_label(case)).to_dict()
    assert round_record["effort"][case.case_id] == pytest.approx(again)
    assert again["slices_touched"] > 0 and 0.0 <= again["drawn_fraction"] <= 1.0
    validation = round_record["validation"]
    assert 0.0 <= validation["dice"] <= 1.0 and set(validation["effort"]) == {"STS_019"}
    assert validation["effort_mean"]["edited_ml"] == pytest.approx(validation["effort"]["STS_019"]["edited_ml"])


def test_a_stopped_run_continues_and_from_scratch_comparisons_are_added(sts_dir, tiny_loop):
    out, _, records = tiny_loop
    models = {Path(r["model"]): Path(r["model"]).stat().st_mtime_ns for r in records[SUPERVISED]["rounds"]}
    again = InProcessWorkbench()
    with_scratch = replace(TINY_SETTINGS, scratch_arms=(SUPERVISED,))
    record = run_loop(again, sts_dir, TINY, [SEED], [SUPERVISED], with_scratch, out)[0]
    assert {p: p.stat().st_mtime_ns for p in models} == models  # finished rounds are kept, not retrained
    assert [Path(c[c.index("--out") + 1]).name for c in again.calls] == ["scratch1.pt", "scratch2.pt"]
    for round_record in record["rounds"][1:]:
        scratch = round_record["scratch"]
        assert scratch["init"] is None and scratch["steps"] == TINY_SETTINGS.initial_steps
        assert sorted(scratch["training_cases"]["labelled"]) == sorted(round_record["labelled"])
    assert record["rounds"][0]["scratch"] == {"same_as_loop": True}
    saved = json.loads((out / f"seed{SEED}" / SUPERVISED / "loop.json").read_text())
    assert saved["rounds"][2]["scratch"]["validation"]["dice"] == record["rounds"][2]["scratch"]["validation"]["dice"]
    with pytest.raises(DistillSegError, match="other settings"):
        run_loop(again, sts_dir, TINY, [SEED], [SUPERVISED], replace(TINY_SETTINGS, round_steps=2), out)


def test_summary_table_and_figure(tiny_loop, tmp_path):
    from DistillSegLib.demo.figures import plot_refinement_loop

    _, _, records = tiny_loop
    summary = summarise(list(records.values()))
    rows = summary["arms"][SUPERVISED]
    assert [r["labelled_cases"] for r in rows] == [1, 2, 3] and rows[0]["effort_ml"] is None
    first, last = rows[1]["effort_ml"], rows[2]["effort_ml"]
    target = summary["targets"][SUPERVISED]
    assert target["effort_fall_first_to_last_round"] == pytest.approx(1 - last / first)
    assert target["last_validation_dice"] == rows[2]["validation_dice"]
    assert target["distil_time_target_met"] is (target["longest_round_distil_seconds"] <= 600)
    assert len(format_table(summary).splitlines()) == 2 + 3 + 3
    png = plot_refinement_loop(summary, tmp_path / "loop.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_benchmark_drives_the_module_scene_logic(sts_dir, tmp_path):
    """benchmarks/refinement_loop.py's SceneWorkbench: the module's Run, correction, Add to
    training set and Distil on a slicer-core scene agree with the engine path."""
    pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML scene")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "DistillSeg"))
    from refinement_loop import SceneWorkbench

    from DistillSegModuleLib import Pet
    from DistillSegModuleLib.Catalogue import bundledStudent

    assert ROI_MARGIN_MM == Pet.ROI_MARGIN_MM  # the simulated radiologist's ROI is the module's
    split = DemoSplit(labelled=("STS_002",), validation=("STS_019",), unlabelled=("STS_025",), seed=0)
    settings = LoopSettings(round_size=1, rounds=1, initial_steps=1, round_steps=1, scratch_arms=())
    workbench = SceneWorkbench()
    try:  # starts from the bundled student: its segmentation is a real one to correct
        record = run_loop(workbench, sts_dir, split, [0], [SUPERVISED], settings, tmp_path,
                          initial_model=bundledStudent())[0]
    finally:
        workbench.close()
    assert record["rounds"][1]["predicted_by"] == str(bundledStudent())
    ids = record["training_set_ids"]
    assert set(ids) == {"STS_002", "STS_025"} and all(v.startswith("DS_") for v in ids.values())
    assert record["rounds"][1]["effort"]["STS_025"]["drawn_fraction"] < 0.5  # a trained student's segmentation
    dataset = {c.case_id: c for c in find_cases(tmp_path / "seed0" / SUPERVISED / "training-set")}
    assert set(dataset) == set(ids.values()) and all(c.labelled for c in dataset.values())
    case = next(c for c in find_cases(sts_dir) if c.case_id == "STS_025").load()
    corrected = dataset[ids["STS_025"]].load()
    assert (corrected.label.array > 0).sum() == (reference_label(case).array > 0).sum()  # corrected to the reference
    engine = correction_effort(segment(load_model(record["rounds"][1]["predicted_by"]), case, ROI_MARGIN_MM),
                               reference_label(case)).to_dict()
    assert record["rounds"][1]["effort"]["STS_025"] == pytest.approx(engine, rel=0.02, abs=0.5)
    assert read_payload(record["rounds"][1]["model"])["metadata"]["training_cases"]["labelled"] == sorted(ids.values())


def test_a_cancelled_distil_stops_its_engine_process_and_writes_no_model(tmp_path):
    from DistillSegLib.errors import CancelledError
    from DistillSegLib.progress import CancelToken

    cancel = CancelToken()
    cancel.cancel("stopped by SIGTERM")
    workbench = EngineWorkbench(cancel=cancel)
    with pytest.raises(CancelledError, match="SIGTERM"):
        workbench.distil(tmp_path / "training-set", SUPERVISED, tmp_path / "student.pt", None, 1, [])
    assert not (tmp_path / "student.pt").exists()
