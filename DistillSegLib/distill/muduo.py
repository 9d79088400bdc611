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

Teachers: LiteMedSAM on the CT (CT grid) and on the PET (its native grid) by default,
prompted per component of the student's mask (:mod:`.pseudo_labels`), their decoders
tuned on the labelled cases first (``--tune-teachers``, default 200 steps,
:mod:`DistillSegLib.teachers.tuning`; 0 keeps them as shipped); or SAM-Med3D (CT, mask prompt) and SegAnyPET
(PET, 3 points) when their checkpoints are given. Pseudo-labels are refreshed in rounds
(:mod:`.teaching`). Each step: labelled batch -> ``supervised_weight (CE + Dice)``;
unlabelled batch -> random fusion of the two teachers, threshold, ``lambda(t)`` x the
pseudo-label loss. Which unlabelled voxels count (so that a wrong teacher answer can be left out):

* ``selection="none"`` (default): every patch counts;
* ``selection="batch"``: the paper's rule, the better-agreeing half of each batch;
* ``selection="case"``: every patch counts; each round the cases are ranked by the
  teachers' agreement (soft IoU over the case) and those below the top ``keep_fraction``
  get ``low_agreement_weight``;
* ``ignore_disagreement``: voxels where the two teachers' masks differ get weight 0 (the
  random fusion would otherwise decide them by a coin);
* ``confidence_weight`` (default on): voxels are weighted by the teachers' predicted IoU
  of their slice (LiteMedSAM's IoU head).

Defaults that depart from the paper (the paper's: :data:`PAPER_OPTIONS`, ``--preset paper``;
every departure in ``docs/methods.md``): tuned teachers, every patch, confidence weights, CE +
Dice towards the pseudo-label, consistency weight 1.0 ramped over the first quarter,
labelled weight 1.0. They were adopted as the 4th configuration scored on the same 10
validation cases that report them (``benchmarks/results/distillation_muduo_weighted.json``,
lab notebook sections 3-6), after the paper's settings had scored +0.8 there: they are not
settings-blind, and at these defaults the method is closer to a dual-view TS-KD (two
decoder-tuned LiteMedSAM views, IoU-weighted CE + Dice) than to the paper's MuDuo
(SAM-Med3D + SegAnyPET, agreement selection, soft Dice at weight 0.1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch

from .losses import pseudo_label_loss, ramped_weight, weighted_soft_dice_loss
from .teaching import (DEFAULT_TEACHER, DistillationStrategy, TeachingSettings, foreground_logits, load_teacher,
                       mixed_batch, seeded_generator)


@dataclass
class MuDuoConfig:
    """MuDuo hyper-parameters (defaults: this project's, chosen while looking at validation
    scores; :data:`PAPER_OPTIONS` the official script's; see the module docstring).

    Attributes:
        keep_fraction: fraction of unlabelled samples (``selection="batch"``) or cases
            (``"case"``) ranked best by teacher agreement.
        threshold: probability threshold of the fused pseudo-label.
        consistency: maximum weight of the consistency loss.
        rampup_fraction: ramp-up length as a fraction of the total training steps.
        supervised_weight: weight of (CE + Dice) on labelled samples.
        num_pet_points: points sampled for the PET teacher's prompt.
        selection: ``"batch"`` (paper), ``"case"`` or ``"none"`` (every patch, equal weight).
        low_agreement_weight: weight of the cases outside the top ``keep_fraction`` (``"case"``).
        ignore_disagreement: weight 0 where the teachers' masks disagree.
        confidence_weight: voxel weight x the teachers' mean predicted IoU.
        loss: ``"dice"`` (paper: soft Dice) or ``"dicece"`` (CE + soft Dice).
        views: ``"both"`` (the method), ``"CT"`` or ``"PET"``: one teacher only, the
            ablation that says what the second view adds (the fusion of a view with itself
            is that view; agreement is 1).
    """

    keep_fraction: float = 0.5
    threshold: float = 0.5
    consistency: float = 1.0
    rampup_fraction: float = 0.25
    supervised_weight: float = 1.0
    num_pet_points: int = 3
    selection: str = "none"
    low_agreement_weight: float = 0.5
    ignore_disagreement: bool = False
    confidence_weight: bool = True
    loss: str = "dicece"
    views: str = "both"

    def __post_init__(self) -> None:
        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {', '.join(VIEWS)}, got {self.views!r}")
        if self.selection not in ("batch", "case", "none"):
            raise ValueError(f"selection must be batch, case or none, got {self.selection!r}")
        if self.loss not in ("dice", "dicece"):
            raise ValueError(f"loss must be dice or dicece, got {self.loss!r}")

    def consistency_weight(self, step: int, total_steps: int) -> float:
        return ramped_weight(step, self.consistency, self.rampup_fraction * total_steps)


# The official script's settings (module docstring) as ``distillseg train`` options; the
# defaults above depart from them where a paired benchmark showed it pays here (400 steps
# from a warm start instead of 30000 from scratch: the paper's weight 0.1 ramped over the
# whole run averages 0.04 against the labelled term's 0.5 over 400 steps: ~8 %).
from .presets import PAPER_OPTIONS as _PRESETS  # noqa: E402  (``--preset paper``)

PAPER_OPTIONS = _PRESETS["dualview"]
VIEWS = ("both", "CT", "PET")
# The random fusion is audited at these fusion weights: the midpoints of ten equal bins of
# U(0, 1), so the mean Dice over them is the expected Dice of the label trained on.
AUDIT_ALPHAS = tuple((np.arange(10) + 0.5) / 10)
# Decoder-tuning steps of both LiteMedSAM teachers before the first round (as TS-KD's stage 1).
MUDUO_TUNE_STEPS = 200


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


def case_agreement_weights(p_ct: Mapping[str, np.ndarray], p_pet: Mapping[str, np.ndarray],
                           keep_fraction: float, low_weight: float) -> dict[str, float]:
    """Per-case weights from the teachers' agreement over the whole case (``selection="case"``).

    Cases are ranked by soft IoU of the two teachers' probability maps; the best
    ``max(1, floor(n * keep_fraction))`` get 1, the others ``low_weight``.
    """
    iou = {c: float(teacher_agreement_iou(torch.from_numpy(p_ct[c])[None], torch.from_numpy(p_pet[c])[None])[0])
           for c in p_ct}
    ranked = sorted(iou, key=iou.get, reverse=True)
    top = set(ranked[: max(1, int(len(ranked) * keep_fraction))])
    return {c: 1.0 if c in top else float(low_weight) for c in iou}


def voxel_weights(p_ct: np.ndarray, p_pet: np.ndarray, c_ct: np.ndarray, c_pet: np.ndarray,
                  config: "MuDuoConfig", case_weight: float = 1.0) -> np.ndarray:
    """``(I, J, K)`` weights of one case's unlabelled voxels (module docstring, item 5)."""
    weight = np.full(p_ct.shape, case_weight, np.float32)
    if config.confidence_weight:
        weight *= 0.5 * (c_ct + c_pet)
    if config.ignore_disagreement:
        weight *= (p_ct >= 0.5) == (p_pet >= 0.5)
    return weight


@dataclass
class MuDuoTerms:
    """What :func:`muduo_consistency` computed (for logging and tests)."""

    loss: torch.Tensor
    iou: torch.Tensor
    kept: torch.Tensor
    alpha: torch.Tensor
    pseudo_label: torch.Tensor


def muduo_pseudo_labels(p_ct: torch.Tensor, p_pet: torch.Tensor, config: MuDuoConfig = MuDuoConfig(),
                        valid: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """``(iou, kept, alpha, pseudo_label)`` of a batch: agreement, the samples used (the
    better-agreeing half with ``selection="batch"``, else all valid ones), the fusion
    weights and the thresholded fused label ``(B, 1, *spatial)``."""
    iou = teacher_agreement_iou(p_ct, p_pet)
    if config.selection == "batch":
        kept = select_agreeing(iou, config.keep_fraction, valid)
    else:
        kept = torch.arange(p_ct.shape[0]) if valid is None or not valid.any() else torch.nonzero(valid).flatten()
    fused, alpha = random_fusion(p_ct, p_pet, generator)
    return iou, kept, alpha, (fused > config.threshold).to(p_ct.dtype)


def muduo_consistency(student_probability: torch.Tensor, p_ct: torch.Tensor, p_pet: torch.Tensor,
                      config: MuDuoConfig = MuDuoConfig(), valid: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, weight: torch.Tensor | None = None) -> MuDuoTerms:
    """MuDuo's unsupervised term on a batch of unlabelled patches (before the ramp weight).

    Args:
        student_probability: ``(B, 1, *spatial)`` student foreground probability (with grad).
        p_ct, p_pet: ``(B, 1, *spatial)`` teacher probabilities cropped at the same location.
        config: hyper-parameters.
        valid: optional ``(B,)`` bool, False where a teacher had no prompt.
        generator: RNG of the fusion weights.
        weight: optional ``(B, 1, *spatial)`` voxel weights.

    Returns:
        :class:`MuDuoTerms` with the mean soft Dice of the kept samples towards the fused
        hard pseudo-label (``pseudo_label`` holds all samples, ``kept`` the indices used).
    """
    iou, kept, alpha, pseudo_label = muduo_pseudo_labels(p_ct, p_pet, config, valid, generator)
    loss = weighted_soft_dice_loss(student_probability[kept], pseudo_label[kept],
                                   None if weight is None else weight[kept]).mean()
    return MuDuoTerms(loss=loss, iou=iou, kept=kept, alpha=alpha, pseudo_label=pseudo_label)


class MuDuoStrategy(DistillationStrategy):
    """``dualview``: MuDuo's dual-view distillation with this project's defaults (see the
    package docstring and ``docs/methods.md``); ``--preset paper`` restores the paper's."""

    name = "dualview"

    def __init__(self, config: MuDuoConfig | None = None, ct_teacher: str = DEFAULT_TEACHER,
                 pet_teacher: str = DEFAULT_TEACHER, ct_checkpoint: str | None = None,
                 pet_checkpoint: str | None = None, cache_dir: str | None = None,
                 teaching: TeachingSettings | None = None) -> None:
        super().__init__(teaching or TeachingSettings(tune_steps=MUDUO_TUNE_STEPS), cache_dir)
        self.config = config or MuDuoConfig()
        self.ct_teacher_name, self.pet_teacher_name = ct_teacher, pet_teacher
        self.ct_checkpoint, self.pet_checkpoint = ct_checkpoint, pet_checkpoint
        self.weights: dict[str, np.ndarray] = {}

    @classmethod
    def from_args(cls, args) -> "MuDuoStrategy":
        ct_name = getattr(args, "ct_teacher", None) or ("sam-med3d" if getattr(args, "ct_teacher_checkpoint", None) else DEFAULT_TEACHER)
        pet_name = getattr(args, "pet_teacher", None) or ("seganypet" if getattr(args, "pet_teacher_checkpoint", None) else DEFAULT_TEACHER)
        defaults = MuDuoConfig()
        config = MuDuoConfig(**{
            name: (type(getattr(defaults, name))(value) if value is not None else getattr(defaults, name))
            for name, value in ((n, getattr(args, n, None)) for n in MUDUO_OPTIONS)})
        return cls(config, ct_name, pet_name, getattr(args, "ct_teacher_checkpoint", None),
                   getattr(args, "pet_teacher_checkpoint", None),
                   teaching=TeachingSettings.from_args(args, tune_steps=MUDUO_TUNE_STEPS))

    @property
    def teacher(self) -> str:  # recorded in the model file
        return f"CT: {self.ct_teacher_name}, PET: {self.pet_teacher_name}"

    def setup(self, trainer) -> None:
        device = str(trainer.device)
        self.teachers = {}
        if self.config.views in ("both", "CT"):
            self.teachers["p_ct"] = (load_teacher(self.ct_teacher_name, "CT", self.ct_checkpoint, device), "CT")
        if self.config.views in ("both", "PET"):
            self.teachers["p_pet"] = (load_teacher(self.pet_teacher_name, "PET", self.pet_checkpoint, device), "PET")

    def on_round_start(self, trainer, step: int) -> None:
        self.teachers = self.tuned_teachers(trainer, self.teachers)
        outputs = self.run_round(trainer, self.teachers)
        for maps in (outputs.probability, outputs.confidence):  # one view: it stands for both
            maps.setdefault("p_ct", maps.get("p_pet"))
            maps.setdefault("p_pet", maps.get("p_ct"))
        p_ct, p_pet = outputs.probability["p_ct"], outputs.probability["p_pet"]
        c_ct, c_pet = outputs.confidence["p_ct"], outputs.confidence["p_pet"]
        case_weights = (case_agreement_weights(p_ct, p_pet, self.config.keep_fraction, self.config.low_agreement_weight)
                        if self.config.selection == "case" else {c: 1.0 for c in p_ct})
        self.weights = {c: voxel_weights(p_ct[c], p_pet[c], c_ct[c], c_pet[c], self.config, case_weights[c])
                        for c in p_ct}
        # Audit what is trained: the random fusion, at fusion weights spread over U(0, 1).
        self.audit(trainer, outputs, {c: [a * p_ct[c] + (1.0 - a) * p_pet[c] > self.config.threshold
                                          for a in AUDIT_ALPHAS]
                                      for c in p_ct if any(u.case_id == c and u.audit_label is not None
                                                           for u in trainer.unlabelled)})

    def loss(self, trainer, step: int):
        image, label, locations, batch = mixed_batch(trainer, {**self.outputs.probability, "weight": self.weights})
        logits = trainer.model(image)
        supervised = trainer.supervised_loss(logits[: len(label)], label)
        student = foreground_logits(logits[len(label):])
        valid = torch.tensor([self.outputs.has_prompt.get(loc.case_id, False) for loc in locations])
        iou, kept, alpha, pseudo = muduo_pseudo_labels(batch["p_ct"], batch["p_pet"], self.config, valid,
                                                       seeded_generator(trainer))
        unsupervised = pseudo_label_loss(student[kept], pseudo[kept], batch["weight"][kept], self.config.loss)
        weight = self.config.consistency_weight(step, trainer.options.steps)
        loss = self.config.supervised_weight * supervised + weight * unsupervised
        return loss, {"supervised": float(supervised.detach()), "consistency": float(unsupervised.detach()),
                      "weight": weight, "teacher_iou": float(iou.mean()), "alpha": float(alpha.mean())}

    def metadata(self) -> dict[str, Any]:
        return {"method": "MuDuo (Mao, Wu et al., MICCAI 2026, arXiv:2606.15611)", **asdict(self.config),
                "ct_teacher": self.ct_teacher_name, "pet_teacher": self.pet_teacher_name, **self.teaching_metadata()}

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), **self.teaching_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "config" in state:
            self.config = MuDuoConfig(**state["config"])
        self.load_teaching_state(state)


# ``distillseg train`` options read into MuDuoConfig (same names, see options.py).
MUDUO_OPTIONS = ("keep_fraction", "consistency", "rampup_fraction", "supervised_weight", "selection",
                 "low_agreement_weight", "ignore_disagreement", "confidence_weight", "loss", "views")
