"""The distillation pieces as pure functions: weighted pseudo-label losses, MuDuo's
per-case agreement weights, KnowSAM's entropy-guided mix-up, the round audit, the paired
statistics of the benchmark, post-processing and the EMA prompting student."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from DistillSegLib.distill import knowsam, losses, muduo
from DistillSegLib.distill.pseudo_labels import RoundOutputs, RoundSettings, audit_round, confirmed_components
from DistillSegLib.student.config import StudentConfig
from DistillSegLib.student.preprocess import PreparedCase


def test_weighted_losses_ignore_zero_weight_voxels_and_reduce_to_plain_ones():
    torch.manual_seed(0)
    probability = torch.rand(2, 1, 4, 4, 2)
    target = (torch.rand(2, 1, 4, 4, 2) > 0.5).float()
    ones = torch.ones_like(target)
    torch.testing.assert_close(losses.weighted_soft_dice_loss(probability, target, ones),
                               losses.soft_dice_loss(probability, target))
    # Voxels with weight 0 change nothing, whatever the target says there.
    weight = ones.clone()
    weight[:, :, :2] = 0
    flipped = target.clone()
    flipped[:, :, :2] = 1 - flipped[:, :, :2]
    torch.testing.assert_close(losses.weighted_soft_dice_loss(probability, target, weight),
                               losses.weighted_soft_dice_loss(probability, flipped, weight))
    logits = torch.randn(2, 1, 4, 4, 2)
    torch.testing.assert_close(losses.weighted_cross_entropy(logits, target, weight),
                               losses.weighted_cross_entropy(logits, flipped, weight))
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(losses.weighted_cross_entropy(logits, target), plain)
    both = losses.pseudo_label_loss(logits, target, None, "dicece")
    dice = losses.pseudo_label_loss(logits, target, None, "dice")
    torch.testing.assert_close(both - dice, plain)
    with pytest.raises(ValueError):
        losses.pseudo_label_loss(logits, target, None, "focal")


def test_muduo_case_selection_weights_cases_by_teacher_agreement():
    square = np.zeros((6, 6, 2), np.float32)
    square[1:5, 1:5] = 1
    shifted = np.roll(square, 2, axis=0)
    p_ct = {"a": square, "b": square, "c": square, "d": square}
    p_pet = {"a": square, "b": shifted, "c": np.roll(square, 1, axis=0), "d": np.zeros_like(square)}
    weights = muduo.case_agreement_weights(p_ct, p_pet, keep_fraction=0.5, low_weight=0.25)
    assert weights == {"a": 1.0, "c": 1.0, "b": 0.25, "d": 0.25}
    config = muduo.MuDuoConfig(selection="case", ignore_disagreement=True, confidence_weight=True)
    confidence = np.full_like(square, 0.8)
    voxel = muduo.voxel_weights(square, shifted, confidence, confidence, config, case_weight=0.5)
    disagree = (square >= 0.5) != (shifted >= 0.5)
    assert np.all(voxel[disagree] == 0) and np.allclose(voxel[~disagree], 0.4)
    with pytest.raises(ValueError):
        muduo.MuDuoConfig(selection="random")
    # Without batch selection every valid sample is used.
    p = torch.rand(4, 1, 3, 3, 2)
    _, kept, _, _ = muduo.muduo_pseudo_labels(p, p, muduo.MuDuoConfig(selection="none"),
                                              valid=torch.tensor([True, False, True, True]))
    assert kept.tolist() == [0, 2, 3]


def test_knowsam_mix_up_swaps_the_most_confident_cells():
    probability = torch.full((1, 1, 8, 8, 4), 0.5)
    probability[..., :4, :4, :2] = 0.999  # one confident cell of a 2 x 2 x 2 grid
    cells = knowsam.entropy_cells(probability, (2, 2, 2), top_k=1)
    assert cells.shape == probability.shape
    assert cells[..., :4, :4, :2].min() == 1 and cells.sum() == 4 * 4 * 2
    labelled, unlabelled = torch.zeros(1, 2, 8, 8, 4), torch.ones(1, 2, 8, 8, 4)
    label, pseudo = torch.zeros(1, 1, 8, 8, 4), torch.ones(1, 1, 8, 8, 4)
    nothing = torch.zeros_like(cells)
    images, labels = knowsam.mix_pairs(labelled, unlabelled, label, pseudo, nothing, cells)
    # mixed labelled (no confident cell): itself; mixed unlabelled: labelled content in its cell
    assert images[0].sum() == 0 and labels[0].sum() == 0
    torch.testing.assert_close(images[1, :1], 1 - cells[0])
    torch.testing.assert_close(labels[1], 1 - cells[0])


def prepared(case_id: str, audit: np.ndarray | None) -> PreparedCase:
    shape = (6, 6, 3)
    return PreparedCase(case_id, np.zeros((2, *shape), np.float32), None, np.eye(4), shape, audit_label=audit)


def test_audit_scores_student_teachers_and_pseudo_label_against_held_out_labels():
    truth = np.zeros((6, 6, 3), np.uint8)
    truth[1:4, 1:4] = 1
    half = truth.astype(np.float32)
    half[1:4, 1:4, 2] = 0  # two of three slices
    outputs = RoundOutputs(probability={"p_ct": {"a": truth.astype(np.float32)}, "p_pet": {"a": half}},
                           student={"a": half}, has_prompt={"a": True})
    audit = audit_round([prepared("a", truth), prepared("b", None)], outputs, {"a": truth > 0}, step=7)
    assert audit["step"] == 7 and list(audit["cases"]) == ["a"]  # no held-out label: not scored
    assert audit["mean"]["p_ct"] == 1.0 and audit["mean"]["pseudo_label"] == 1.0
    assert audit["mean"]["student"] == pytest.approx(2 * 18 / (18 + 27), abs=1e-4)
    assert audit_round([prepared("b", None)], outputs, {}, step=1) is None


def test_components_are_kept_when_the_teachers_confirm_them():
    summaries = [
        {"label": 1, "teachers": {"p_ct": {"mean_iou": 0.9, "agreement": 0.9}, "p_pet": {"mean_iou": 0.9, "agreement": 0.8}}},
        {"label": 2, "teachers": {"p_ct": {"mean_iou": 0.5, "agreement": 0.2}, "p_pet": {"mean_iou": 0.9, "agreement": 0.1}}},
    ]
    assert confirmed_components(summaries, 0.5) == {1}  # 0.095 < 0.5 x 0.765
    assert confirmed_components(summaries, 0.1) == {1, 2}  # 0.095 >= 0.1 x 0.765
    assert confirmed_components(summaries, 0.0) == {1, 2}
    assert confirmed_components(summaries, 1.0) == {1}  # the best-rated one always stays
    assert summaries[0]["score"] == pytest.approx((0.81 + 0.72) / 2, abs=1e-4)
    with pytest.raises(Exception):
        RoundSettings(grid="case")


def test_postprocessing_keeps_confident_components_and_the_largest():
    from DistillSegLib.student.postprocess import keep_confident_components

    mask = np.zeros((10, 10, 4), bool)
    mask[0:4, 0:4] = True      # large, unsure (0.6): kept as the largest
    mask[6:8, 6:8, 0:2] = True  # small, sure (0.95): kept
    mask[6:8, 0:2, 2:4] = True  # small, unsure (0.55): dropped
    probability = np.where(mask, 0.6, 0.0).astype(np.float32)
    probability[6:8, 6:8, 0:2] = 0.95
    probability[6:8, 0:2, 2:4] = 0.55
    kept = keep_confident_components(mask, probability, 0.8)
    assert kept[0:4, 0:4].all() and kept[6:8, 6:8, 0:2].all() and not kept[6:8, 0:2, 2:4].any()
    assert keep_confident_components(np.zeros_like(mask), probability).sum() == 0


def test_paired_differences_give_per_seed_gains_and_a_t_interval():
    spec = importlib.util.spec_from_file_location("bench", __file__.replace("Testing/test_distill_pseudo_labels.py",
                                                                             "benchmarks/distillation.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = [{"method": m, "seed": s, "dice": d, "hd95_mm": h}
            for m, s, d, h in [("supervised", 0, 0.60, 40.0), ("muduo", 0, 0.64, 38.0),
                               ("supervised", 1, 0.70, 30.0), ("muduo", 1, 0.72, 31.0),
                               ("supervised", 2, 0.65, 35.0), ("muduo", 2, 0.71, 33.0), ("muduo", 3, 0.9, 1.0)]]
    paired = bench.paired_differences(runs, "muduo")
    assert paired["seeds"] == [0, 1, 2]  # seed 3 has no supervised partner
    np.testing.assert_allclose(paired["dice_points"], [4.0, 2.0, 6.0])
    assert paired["dice"]["mean"] == pytest.approx(4.0)
    half = 4.302653 * 2.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert paired["dice"]["ci95"] == pytest.approx([4.0 - half, 4.0 + half], rel=1e-4)
    assert paired["hd95"]["mean"] == pytest.approx(-1.0) and paired["every_seed_positive"]


def test_ema_student_prompts_the_teachers(sts_001, torch_one_thread):
    from DistillSegLib.distill.supervised import SupervisedStrategy
    from DistillSegLib.distill.trainer import Trainer, TrainingOptions
    from DistillSegLib.student.preprocess import prepare_case

    config = StudentConfig(patch_size=(16, 16, 8), channels=(4, 8), strides=(2,), num_res_units=1)
    case = prepare_case(sts_001, config)
    options = TrainingOptions(steps=3, batch_size=1, val_every=100, checkpoint_every=100, ema_decay=0.5)
    trainer = Trainer(config, options, SupervisedStrategy(), [case])
    first = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.train()
    ema = trainer.prompting_network().state_dict()
    now = trainer.network.state_dict()
    name = next(k for k, v in now.items() if v.is_floating_point() and not torch.equal(v, first[k]))
    assert not torch.equal(ema[name], now[name])  # the average lags behind the student
    plain = Trainer(config, TrainingOptions(steps=1), SupervisedStrategy(), [case])
    assert plain.prompting_network() is plain.network
