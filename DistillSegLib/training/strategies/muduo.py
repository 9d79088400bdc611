"""``muduo``: mutual distillation of a CT teacher and a PET teacher (MuDuo, MICCAI 2026).

See :mod:`DistillSegLib.distill.muduo` for the method, its hyper-parameters and sources.
Teachers: LiteMedSAM on the CT view and on the PET view (embedded default, box prompts
from the student's prediction), or SAM-Med3D (CT, mask prompt) and SegAnyPET (PET, 3
points) when their checkpoints are given (``--ct-teacher-checkpoint``,
``--pet-teacher-checkpoint``). Pseudo-labels are refreshed in rounds
(:mod:`.teaching`); each step: labelled batch -> ``0.5 (CE + Dice)``; unlabelled batch
-> per-sample teacher IoU, keep the better-agreeing half, random fusion, threshold,
``lambda(t)`` soft Dice.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

from ...distill.muduo import MuDuoConfig, muduo_consistency
from ..trainer import Strategy
from .teaching import (new_cache, DEFAULT_TEACHER, foreground_of, mixed_batch, load_teacher,
                       seeded_generator, teacher_round)


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
