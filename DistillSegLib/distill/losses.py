"""Losses and schedules shared by the distillation methods.

Shapes: ``(B, C, *spatial)`` logits or probabilities; binary segmentation uses either
one foreground channel or two channels (background, foreground). Probabilities are in
[0, 1]; losses are scalars unless stated otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-6


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(current / rampup_length, 0, 1)``.

    The consistency ramp-up of Laine & Aila, "Temporal Ensembling for Semi-Supervised
    Learning" (ICLR 2017, arXiv:1610.02242) and Tarvainen & Valpola, "Mean teachers..."
    (NeurIPS 2017); the same function is ``sigmoid_rampup`` in SSL4MIS ``utils/ramps.py``,
    taozh2017/KnowSAM ``trainer.py`` and Wu-beining/MuDuo ``code_MuDuo/utils/ramps.py``.
    A length of 0 means no ramp-up (weight 1).
    """
    if rampup_length <= 0:
        return 1.0
    t = min(max(float(current), 0.0), float(rampup_length)) / float(rampup_length)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def ramped_weight(step: int, max_weight: float, rampup_steps: float) -> float:
    """``max_weight * sigmoid_rampup(step, rampup_steps)``: the unsupervised loss weight."""
    return float(max_weight) * sigmoid_rampup(step, rampup_steps)


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 1, *spatial)`` foreground probability from 1-channel (sigmoid) or 2-channel (softmax) logits."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    if logits.shape[1] == 2:
        return torch.softmax(logits, dim=1)[:, 1:2]
    raise ValueError(f"expected 1 or 2 channels for binary segmentation, got {logits.shape[1]}")


def two_class_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 2, *spatial)`` logits whose softmax equals the binary prediction of ``logits``.

    A 1-channel logit ``l`` becomes ``(0, l)``: ``softmax((0, l))[1] = sigmoid(l)``.
    """
    if logits.shape[1] == 2:
        return logits
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    raise ValueError(f"expected 1 or 2 channels for binary segmentation, got {logits.shape[1]}")


def probability_to_logits(probability: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Inverse sigmoid of a foreground probability map (clamped to ``[eps, 1 - eps]``).

    Teachers return probabilities; the KL of SAM-induced distillation needs their logits.
    """
    p = probability.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def soft_dice_loss(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Per-sample soft Dice loss ``1 - (2|P.T| + s) / (|P| + |T| + s)``, shape ``(B,)``.

    As ``dice_loss_1`` in Wu-beining/MuDuo ``code_MuDuo/DualSAM_train_MT_3D.py`` (the
    consistency loss towards the fused pseudo-label). ``probability`` and ``target`` are
    ``(B, 1, *spatial)``.
    """
    dims = tuple(range(1, probability.ndim))
    intersection = (probability * target).sum(dim=dims)
    union = probability.sum(dim=dims) + target.sum(dim=dims)
    return 1.0 - (2.0 * intersection + smooth) / (union + smooth)


def kd_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 10.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton's distillation loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, mean over voxels.

    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531);
    KnowSAM's ``KDLoss(T=10)`` (taozh2017/KnowSAM ``utils/losses.py``, ``trainer.py``) applies
    it voxel-wise with ``reduction="batchmean"`` over the flattened voxels, i.e. the mean
    per-voxel KL. The ``T^2`` factor keeps gradient magnitudes comparable across ``T``.
    The loss is exactly 0 when student and teacher predict the same distribution.

    Args:
        student_logits, teacher_logits: ``(B, C, *spatial)`` with C in {1, 2} (binary
            logits are expanded with :func:`two_class_logits`); the teacher is not
            differentiated.
        temperature: softening temperature ``T`` (KnowSAM: 10).
        mask: optional ``(B, 1, *spatial)`` 0/1 voxel weights (e.g. the teacher's field of view).
    """
    s = two_class_logits(student_logits) / temperature
    t = two_class_logits(teacher_logits.detach()) / temperature
    log_p_s = F.log_softmax(s, dim=1)
    log_p_t = F.log_softmax(t, dim=1)
    per_voxel = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1, keepdim=True)
    if mask is not None:
        per_voxel = per_voxel * mask
        denominator = mask.sum().clamp_min(1.0)
    else:
        denominator = torch.tensor(float(per_voxel.numel()), device=per_voxel.device)
    return per_voxel.sum() / denominator * temperature**2


def cross_consistency_loss(probability_a: torch.Tensor, probability_b: torch.Tensor) -> torch.Tensor:
    """Each student learns from the other's (detached) foreground probability: BCE both ways.

    KnowSAM's multi-view co-training term (``loss_diff1``/``loss_diff2`` in taozh2017/KnowSAM
    ``utils/losses.py``: BCE of one network's soft prediction towards the other's, detached),
    summed over the two directions. Inputs ``(B, 1, *spatial)`` in [0, 1].
    """
    a = probability_a.clamp(1e-7, 1 - 1e-7)
    b = probability_b.clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(a, b.detach()) + F.binary_cross_entropy(b, a.detach())


def binary_entropy(probability: torch.Tensor) -> torch.Tensor:
    """Voxel-wise binary entropy in nats, same shape as ``probability``."""
    p = probability.clamp(EPS, 1 - EPS)
    return -(p * torch.log(p) + (1 - p) * torch.log(1 - p))


def entropy_loss(probability: torch.Tensor) -> torch.Tensor:
    """Mean entropy normalised by ``log 2`` (KnowSAM ``Trainer.entropy_loss``, weight 0.9 there)."""
    return binary_entropy(probability).mean() / math.log(2.0)


def weighted_soft_dice_loss(probability: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                            smooth: float = 1e-5) -> torch.Tensor:
    """Per-sample soft Dice loss with voxel weights, shape ``(B,)``.

    ``1 - (2 sum(w p t) + s) / (sum(w p) + sum(w t) + s)``; weight 0 leaves a voxel out
    (e.g. where two teachers disagree), weight 1 everywhere is :func:`soft_dice_loss`.
    All inputs ``(B, 1, *spatial)``.
    """
    if weight is None:
        return soft_dice_loss(probability, target, smooth)
    dims = tuple(range(1, probability.ndim))
    intersection = (weight * probability * target).sum(dim=dims)
    union = (weight * probability).sum(dim=dims) + (weight * target).sum(dim=dims)
    return 1.0 - (2.0 * intersection + smooth) / (union + smooth)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Voxel-weighted binary cross-entropy of ``(B, C, *spatial)`` logits (C in {1, 2}) towards
    a ``(B, 1, *spatial)`` 0/1 target: ``sum(w CE) / sum(w)`` (0 when every weight is 0)."""
    log_p = F.log_softmax(two_class_logits(logits), dim=1)
    per_voxel = -(target * log_p[:, 1:2] + (1.0 - target) * log_p[:, 0:1])
    if weight is None:
        return per_voxel.mean()
    return (weight * per_voxel).sum() / weight.sum().clamp_min(EPS)


def pseudo_label_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                      kind: str = "dice") -> torch.Tensor:
    """The unsupervised term towards a hard pseudo-label, averaged over the batch.

    ``kind``: ``"dice"`` -- soft Dice only (MuDuo's consistency term, ``dice_loss_1`` in
    Wu-beining/MuDuo); ``"dicece"`` -- cross-entropy + soft Dice, the supervised loss of the
    labelled patches (self-training on the pseudo-label, as KnowSAM's mixed
    ``unsup_mixed_loss``: CE + Dice towards the fused pseudo-label). ``weight``: voxel
    weights (confidence, 0 = ignored).
    """
    if kind not in ("dice", "dicece"):
        raise ValueError(f"unknown pseudo-label loss {kind!r}: dice or dicece")
    probability = foreground_probability(two_class_logits(logits))
    dice = weighted_soft_dice_loss(probability, target, weight).mean()
    if kind == "dice":
        return dice
    return dice + weighted_cross_entropy(logits, target, weight)
