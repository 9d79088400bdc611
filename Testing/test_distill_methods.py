"""The method-specific pieces of MuDuo, KnowSAM and TS-KD (DistillSegLib.distill).

The pure functions are checked on tensors whose right answer is known; the pieces that
need the real LiteMedSAM teacher (LoRA fine-tuning, prompted decoding) are exercised in
``test_distill_strategies.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from DistillSegLib.distill import knowsam, losses, muduo


def test_sigmoid_rampup_matches_laine_aila():
    assert losses.sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert losses.sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5.0 * 0.25))
    assert losses.sigmoid_rampup(100, 100) == 1.0
    assert losses.sigmoid_rampup(250, 100) == 1.0
    assert losses.sigmoid_rampup(7, 0) == 1.0
    assert losses.ramped_weight(0, 0.1, 10) == pytest.approx(0.1 * math.exp(-5.0))


def test_muduo_keeps_the_better_agreeing_half():
    torch.manual_seed(0)
    p_ct = torch.zeros(4, 1, 8, 8, 4)
    p_pet = torch.zeros(4, 1, 8, 8, 4)
    p_ct[:, :, 2:6, 2:6] = 1.0
    # Sample b's PET map is shifted by b voxels: agreement falls with b, except sample 3
    # which we make agree perfectly.
    for b, shift in enumerate([0, 2, 3, 0]):
        p_pet[b, :, 2 + shift:6 + shift, 2:6] = 1.0
    p_pet[3] = p_ct[3]
    iou = muduo.teacher_agreement_iou(p_ct, p_pet)
    assert iou[0] == pytest.approx(1.0, abs=1e-6) and iou[3] == pytest.approx(1.0, abs=1e-6)
    assert iou[1] < 1.0 and iou[2] < iou[1]
    kept = muduo.select_agreeing(iou, 0.5)
    assert sorted(kept.tolist()) == [0, 3]
    # An invalid sample (no prompt) is never kept even when it agrees.
    kept = muduo.select_agreeing(iou, 0.5, valid=torch.tensor([False, True, True, True]))
    assert sorted(kept.tolist()) == [1, 3]
    assert muduo.select_agreeing(iou[:1], 0.5).tolist() == [0]  # at least one sample
    with pytest.raises(ValueError):
        muduo.select_agreeing(iou, 0.0)


def test_muduo_fusion_weight_in_unit_interval_and_seeded():
    p_ct, p_pet = torch.full((64, 1, 2, 2, 2), 0.9), torch.full((64, 1, 2, 2, 2), 0.1)
    fused, alpha = muduo.random_fusion(p_ct, p_pet, torch.Generator().manual_seed(3))
    assert alpha.shape == (64,) and bool((alpha >= 0).all() and (alpha <= 1).all())
    assert alpha.std() > 0.1  # drawn per sample, not one weight for the batch
    torch.testing.assert_close(fused[:, 0, 0, 0, 0], alpha * 0.9 + (1 - alpha) * 0.1)
    _, again = muduo.random_fusion(p_ct, p_pet, torch.Generator().manual_seed(3))
    torch.testing.assert_close(alpha, again)
    # The consistency term uses the thresholded fusion of the kept samples only (the paper's selection).
    student = torch.rand(64, 1, 2, 2, 2, requires_grad=True)
    terms = muduo.muduo_consistency(student, p_ct, p_pet, muduo.MuDuoConfig(selection="batch"),
                                    generator=torch.Generator().manual_seed(3))
    assert len(terms.kept) == 32
    torch.testing.assert_close(terms.pseudo_label[:, 0, 0, 0, 0], (alpha * 0.8 + 0.1 > 0.5).float())
    terms.loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_kd_kl_is_zero_when_student_and_teacher_agree():
    logits = torch.randn(2, 1, 6, 6, 4) * 3
    for temperature in (1.0, 10.0):
        assert float(losses.kd_kl_loss(logits, logits, temperature)) == pytest.approx(0.0, abs=1e-6)
        # 1-channel and equivalent 2-channel logits are the same distribution.
        assert float(losses.kd_kl_loss(losses.two_class_logits(logits), logits, temperature)) == pytest.approx(0.0, abs=1e-6)
    within = logits.clamp(-6, 6)  # teachers give probabilities: logits within the clamp round-trip
    teacher = losses.probability_to_logits(torch.sigmoid(within))
    assert float(losses.kd_kl_loss(within, teacher, 10.0)) == pytest.approx(0.0, abs=1e-6)
    disagree = losses.kd_kl_loss(logits, -logits, 10.0)
    assert float(disagree) > 1e-3
    # T^2 scaling: for small logits the KL shrinks like 1/T^2, so the scaled loss stays put.
    small = torch.randn(2, 1, 6, 6, 4) * 0.1
    ratio = losses.kd_kl_loss(small, -small, 10.0) / losses.kd_kl_loss(small, -small, 5.0)
    assert float(ratio) == pytest.approx(1.0, rel=0.05)


def test_fusion_head_starts_as_average_and_prompt_as_identity():
    a, b = torch.randn(1, 2, 8, 8, 8), torch.randn(1, 2, 8, 8, 8)
    torch.testing.assert_close(knowsam.FusionHead()(a, b), 0.5 * (a + b))
    prompt = knowsam.LearnablePrompt()
    sparse, dense = prompt(torch.randn(2, 256, 64, 64))
    assert sparse.shape == (2, 2, 256) and dense.shape == (2, 256, 64, 64)
    assert float(dense.abs().max()) == 0.0
