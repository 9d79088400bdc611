"""``selftrain``: the distillation schedule with the student's own pseudo-labels, no teacher.

Real sts-petct cases cropped to a few slices around the tumour, a tiny student warmed up by
a few supervised steps (so that its own mask, the pseudo-label, is not empty).
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from DistillSegLib.distill.trainer import Trainer, TrainingOptions
from DistillSegLib.student.config import StudentConfig

CONFIG = StudentConfig(patch_size=(16, 16, 8), channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


def cropped(case, in_plane: int = 40, slices: int = 8):
    centre = np.argwhere(case.label_on_ct.array > 0).mean(axis=0).astype(int)
    start = np.maximum(centre - np.array([in_plane // 2, in_plane // 2, slices // 2]), 0)
    return tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, (in_plane, in_plane, slices)))


@pytest.fixture(scope="module")
def cases(sts_dir):
    from DistillSegLib.io.case import load_case_folder
    from DistillSegLib.student.preprocess import prepare_case

    labelled = load_case_folder(sts_dir / "STS_001")
    unlabelled = load_case_folder(sts_dir / "STS_002")
    return (prepare_case(labelled, CONFIG, box=cropped(labelled)),
            prepare_case(unlabelled, CONFIG, box=cropped(unlabelled), with_label=False, audit=True))


@pytest.fixture(scope="module")
def warm(cases):
    from DistillSegLib.distill.supervised import SupervisedStrategy

    options = TrainingOptions(steps=15, batch_size=2, learning_rate=2e-2, val_every=1000, checkpoint_every=1000)
    trainer = Trainer(CONFIG, options, SupervisedStrategy(), [cases[0]])
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def test_slice_confidence_is_the_expected_iou_of_each_slice():
    from DistillSegLib.distill.selftrain import slice_confidence

    p = np.zeros((4, 4, 3), np.float32)
    p[:2, :2, 0] = 1.0          # certain slice: 1
    p[:2, :2, 1] = 0.6          # hesitant slice: 4 x 0.6 / 4 = 0.6
    p[2:, 2:, 1] = 0.4          # below threshold, adds to the union: 2.4 / (4 + 1.6)
    weight = slice_confidence(p)
    assert weight.shape == p.shape
    assert weight[..., 0].min() == pytest.approx(1.0)
    assert weight[0, 0, 1] == pytest.approx(2.4 / 5.6, abs=1e-5)
    assert weight[..., 2].min() == 1.0  # no foreground: trusted background, as MuDuo's


def test_selftrain_learns_from_the_students_own_mask_with_muduos_loss(cases, warm):
    from DistillSegLib.distill import get_strategy_class
    from DistillSegLib.distill.muduo import MuDuoConfig
    from DistillSegLib.distill.options import add_distillation_arguments
    from DistillSegLib.distill.selftrain import SelfTrainConfig, SelfTrainStrategy

    parser = argparse.ArgumentParser()
    add_distillation_arguments(parser)
    strategy = get_strategy_class("selftrain").from_args(parser.parse_args([]))
    assert isinstance(strategy, SelfTrainStrategy) and strategy.teacher is None
    muduo = MuDuoConfig()  # same loss family, weights and confidence weighting as MuDuo's defaults
    assert (strategy.config.loss, strategy.config.consistency, strategy.config.rampup_fraction,
            strategy.config.supervised_weight, strategy.config.confidence_weight) == \
        (muduo.loss, muduo.consistency, muduo.rampup_fraction, muduo.supervised_weight, muduo.confidence_weight)
    assert get_strategy_class("selftrain").from_args(parser.parse_args(["--consistency", "0.3"])).config.consistency == 0.3

    labelled, unlabelled = cases
    options = TrainingOptions(steps=3, batch_size=2, seed=1, val_every=1000, checkpoint_every=1000, refresh_every=2)
    trainer = Trainer(CONFIG, options, strategy, [labelled], [unlabelled], init_weights=warm)
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    seen = {}
    original = strategy.on_round_start

    def spy(trainer_, step):  # the pseudo-label is the student's own mask at the round's start
        seen[step] = (trainer_.predict(unlabelled)[1:].sum(0) >= 0.5)
        original(trainer_, step)

    strategy.on_round_start = spy
    result = trainer.train()
    assert sorted(seen) == [1, 3]  # rounds at step 1 and 1 + refresh_every
    np.testing.assert_array_equal(strategy.pseudo[unlabelled.case_id] > 0, seen[3])
    assert seen[1].any(), "the warmed-up student should segment something"
    assert any(not torch.equal(before[k], v) for k, v in trainer.network.state_dict().items())
    assert np.isfinite(result.losses).all()
    rounds = result.metadata["strategy_settings"]["pseudo_label_rounds"]
    assert [r["step"] for r in rounds] == [1, 3]
    # audited against the held-out label: the pseudo-label is the student's mask
    assert rounds[0]["mean"]["pseudo_label"] == pytest.approx(rounds[0]["mean"]["student"], abs=1e-4)
    # a checkpoint round-trip keeps the rounds and the configuration
    restored = SelfTrainStrategy()
    restored.load_state_dict(strategy.state_dict())
    assert restored.rounds == strategy.rounds and restored.config == SelfTrainConfig()


def test_with_an_ema_copy_labelling_the_audit_also_scores_the_evaluated_student(cases, warm):
    from DistillSegLib.distill.selftrain import SelfTrainStrategy

    labelled, unlabelled = cases
    options = TrainingOptions(steps=2, batch_size=2, seed=1, val_every=1000, checkpoint_every=1000,
                              refresh_every=1, ema_decay=0.5)
    strategy = SelfTrainStrategy()
    trainer = Trainer(CONFIG, options, strategy, [labelled], [unlabelled], init_weights=warm)
    trainer.train()
    second = strategy.rounds[1]
    assert "evaluated" in second["mean"] and "student" in second["mean"]  # the EMA labelled, the student is saved
    assert 0.0 <= second["mean"]["evaluated"] <= 1.0
