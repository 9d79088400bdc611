"""MuDuo: mutual distillation of two modality-specific SAM teachers (CT and PET).

Method (Mao, Wu et al., "Mutual Distillation of Dual-Foundation Models for Semi-Supervised
PET/CT Segmentation", MICCAI 2026, arXiv:2606.15611; code Wu-beining/MuDuo
``code_MuDuo/DualSAM_train_MT_3D.py``), per unlabelled sample of a batch:

1. the CT teacher (SAM-Med3D) is prompted with the student's prediction as a mask, the
   PET teacher (SegAnyPET) with K=3 points from a PET-only prompt network; each returns a
   foreground probability map ``P_CT``, ``P_PET``;
2. agreement = soft IoU ``sum(P_CT * P_PET) / (sum(P_CT + P_PET) - sum(P_CT * P_PET))``;
   samples whose PET prompt is empty get -1;
3. keep the better-agreeing half: ``k = max(1, floor(U * 0.5))`` samples by top-k IoU
   (README ablation: adaptive top-50% 46.9 Dice vs no filtering 44.6 vs fixed tau=0.5 45.8);
4. fuse with a random weight per sample ``a ~ U(0, 1)``: ``a * P_CT + (1 - a) * P_PET``,
   threshold at 0.5;
5. loss = 0.5 (CE + Dice) on labelled + ``lambda(t)`` soft Dice of the student towards the
   fused hard pseudo-label on the kept samples, ``lambda(t) = 0.1 * sigmoid_rampup``
   ramped over the whole run (``0.1 * sigmoid_rampup(iter // 150, 200)`` with 30000
   iterations in the official script, i.e. the ramp spans all iterations).

Optimiser in the paper's script: SGD lr 0.01, momentum 0.9, weight decay 1e-4, poly(0.9).
Reported (AutoPET organs, 5 labelled cases): Dice 46.9 (both teachers) vs 41.3 (SAM-Med3D
only) vs 38.9 (SegAnyPET only).

In the trainer — ``muduo``: mutual distillation of a CT teacher and a PET teacher (MuDuo, MICCAI 2026).

Teachers: LiteMedSAM on the CT view and on the PET view (embedded default, box prompts
from the student's prediction), or SAM-Med3D (CT, mask prompt) and SegAnyPET (PET, 3
points) when their checkpoints are given (``--ct-teacher-checkpoint``,
``--pet-teacher-checkpoint``). Pseudo-labels are refreshed in rounds
(:mod:`.teaching`); each step: labelled batch -> ``0.5 (CE + Dice)``; unlabelled batch
-> per-sample teacher IoU, keep the better-agreeing half, random fusion, threshold,
``lambda(t)`` soft Dice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from .losses import ramped_weight, soft_dice_loss
from .teaching import (DEFAULT_TEACHER, foreground_of, load_teacher, mixed_batch, new_cache, seeded_generator,
                       teacher_round)
from .trainer import Strategy


@dataclass
class MuDuoConfig:
    """MuDuo hyper-parameters (defaults: the official script, see module docstring).

    Attributes:
        keep_fraction: fraction of unlabelled samples per batch kept by teacher agreement.
        threshold: probability threshold of the fused pseudo-label.
        consistency: maximum weight of the consistency loss.
        rampup_fraction: ramp-up length as a fraction of the total training steps.
        supervised_weight: weight of (CE + Dice) on labelled samples.
        num_pet_points: points sampled for the PET teacher's prompt.
    """

    keep_fraction: float = 0.5
    threshold: float = 0.5
    consistency: float = 0.1
    rampup_fraction: float = 1.0
    supervised_weight: float = 0.5
    num_pet_points: int = 3

    def consistency_weight(self, step: int, total_steps: int) -> float:
        return ramped_weight(step, self.consistency, self.rampup_fraction * total_steps)


def teacher_agreement_iou(p_ct: torch.Tensor, p_pet: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Soft IoU between the two teachers' probability maps, per sample: shape ``(B,)``.

    ``p_ct``, ``p_pet``: ``(B, 1, *spatial)`` in [0, 1]. Two empty maps give 0 (as in the
    official code), so empty samples rank last.
    """
    dims = tuple(range(1, p_ct.ndim))
    intersection = (p_ct * p_pet).sum(dim=dims)
    union = (p_ct + p_pet).sum(dim=dims) - intersection
    return intersection / (union + eps)


def select_agreeing(iou: torch.Tensor, keep_fraction: float = 0.5, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``max(1, floor(B * keep_fraction))`` samples with the highest agreement.

    Args:
        iou: ``(B,)`` agreement per sample.
        keep_fraction: in (0, 1].
        valid: optional ``(B,)`` bool; invalid samples (no prompt) get IoU -1 and rank last.

    Returns:
        ``(k,)`` long tensor of sample indices, best first.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    scores = iou.detach().clone().float()
    if valid is not None:
        scores[~valid.bool()] = -1.0
    k = max(1, int(scores.numel() * keep_fraction))
    return torch.topk(scores, k).indices


def random_fusion(p_ct: torch.Tensor, p_pet: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``a * P_CT + (1 - a) * P_PET`` with ``a ~ U(0, 1)`` drawn per sample.

    Returns ``(fused (B, 1, *spatial), a (B,))``; ``generator`` makes the draw reproducible.
    """
    alpha = torch.rand(p_ct.shape[0], generator=generator, device="cpu").to(p_ct.device, p_ct.dtype)
    shape = (-1,) + (1,) * (p_ct.ndim - 1)
    fused = alpha.view(shape) * p_ct + (1.0 - alpha.view(shape)) * p_pet
    return fused, alpha


@dataclass
class MuDuoTerms:
    """What :func:`muduo_consistency` computed (for logging and tests)."""

    loss: torch.Tensor
    iou: torch.Tensor
    kept: torch.Tensor
    alpha: torch.Tensor
    pseudo_label: torch.Tensor


def muduo_consistency(student_probability: torch.Tensor, p_ct: torch.Tensor, p_pet: torch.Tensor,
                      config: MuDuoConfig = MuDuoConfig(), valid: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> MuDuoTerms:
    """MuDuo's unsupervised term on a batch of unlabelled patches (before the ramp weight).

    Args:
        student_probability: ``(B, 1, *spatial)`` student foreground probability (with grad).
        p_ct, p_pet: ``(B, 1, *spatial)`` teacher probabilities cropped at the same location.
        config: hyper-parameters.
        valid: optional ``(B,)`` bool, False where a teacher had no prompt.
        generator: RNG of the fusion weights.

    Returns:
        :class:`MuDuoTerms` with the mean soft Dice of the kept samples towards the fused
        hard pseudo-label (``pseudo_label`` holds all samples, ``kept`` the indices used).
    """
    iou = teacher_agreement_iou(p_ct, p_pet)
    kept = select_agreeing(iou, config.keep_fraction, valid)
    fused, alpha = random_fusion(p_ct, p_pet, generator)
    pseudo_label = (fused > config.threshold).to(student_probability.dtype)
    loss = soft_dice_loss(student_probability[kept], pseudo_label[kept]).mean()
    return MuDuoTerms(loss=loss, iou=iou, kept=kept, alpha=alpha, pseudo_label=pseudo_label)


class MuDuoStrategy(Strategy):
    name = "muduo"

    def __init__(self, config: MuDuoConfig | None = None, ct_teacher: str = DEFAULT_TEACHER,
                 pet_teacher: str = DEFAULT_TEACHER, ct_checkpoint: str | None = None,
                 pet_checkpoint: str | None = None, cache_dir: str | None = None) -> None:
        self.config = config or MuDuoConfig()
        self.ct_teacher_name, self.pet_teacher_name = ct_teacher, pet_teacher
        self.ct_checkpoint, self.pet_checkpoint = ct_checkpoint, pet_checkpoint
        self.cache = new_cache(cache_dir)
        self.outputs: dict[str, dict[str, Any]] = {}
        self.has_prompt: dict[str, bool] = {}

    @classmethod
    def from_args(cls, args) -> "MuDuoStrategy":
        ct_name = getattr(args, "ct_teacher", None) or ("sam-med3d" if getattr(args, "ct_teacher_checkpoint", None) else DEFAULT_TEACHER)
        pet_name = getattr(args, "pet_teacher", None) or ("seganypet" if getattr(args, "pet_teacher_checkpoint", None) else DEFAULT_TEACHER)
        config = MuDuoConfig(
            keep_fraction=getattr(args, "keep_fraction", None) or MuDuoConfig.keep_fraction,
            consistency=getattr(args, "consistency", None) or MuDuoConfig.consistency,
            rampup_fraction=getattr(args, "rampup_fraction", None) or MuDuoConfig.rampup_fraction,
        )
        return cls(config, ct_name, pet_name, getattr(args, "ct_teacher_checkpoint", None),
                   getattr(args, "pet_teacher_checkpoint", None))

    @property
    def teacher(self) -> str:  # recorded in the model file
        return f"CT: {self.ct_teacher_name}, PET: {self.pet_teacher_name}"

    def setup(self, trainer) -> None:
        device = str(trainer.device)
        self.teachers = {
            "p_ct": (load_teacher(self.ct_teacher_name, "CT", self.ct_checkpoint, device), "CT"),
            "p_pet": (load_teacher(self.pet_teacher_name, "PET", self.pet_checkpoint, device), "PET"),
        }

    def on_round_start(self, trainer, step: int) -> None:
        self.outputs, self.has_prompt = teacher_round(trainer, self.teachers, self.cache)

    def teacher_probabilities(self) -> dict[str, dict[str, Any]]:
        """The round's teacher outputs (``--skd`` distils from them)."""
        return self.outputs

    def loss(self, trainer, step: int):
        import torch

        image, label, locations, batch = mixed_batch(trainer, self.outputs)
        logits = trainer.model(image)
        supervised = trainer.supervised_loss(logits[: len(label)], label)
        student = foreground_of(logits[len(label):])
        valid = torch.tensor([self.has_prompt.get(loc.case_id, False) for loc in locations])
        terms = muduo_consistency(student, batch["p_ct"], batch["p_pet"], self.config, valid,
                                  seeded_generator(trainer))
        weight = self.config.consistency_weight(step, trainer.options.steps)
        loss = self.config.supervised_weight * supervised + weight * terms.loss
        return loss, {"supervised": float(supervised.detach()), "consistency": float(terms.loss.detach()), "weight": weight,
                      "teacher_iou": float(terms.iou.mean()), "alpha": float(terms.alpha.mean())}

    def metadata(self) -> dict[str, Any]:
        return {"method": "MuDuo (Mao, Wu et al., MICCAI 2026, arXiv:2606.15611)", **asdict(self.config),
                "ct_teacher": self.ct_teacher_name, "pet_teacher": self.pet_teacher_name}

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "config" in state:
            self.config = MuDuoConfig(**state["config"])
