"""``--skd``: KnowSAM's SAM-induced knowledge distillation added to another strategy.

KnowSAM (Huang et al., IEEE TMI 2025, arXiv:2412.13742, Table "plug-in") shows its
SAM-induced KD term improving other semi-supervised methods. Here it wraps any strategy:
the wrapped strategy's loss plus ``weight * T^2 KL(teacher || student)`` at ``T = 10``
(taozh2017/KnowSAM ``trainer.py``: ``KDLoss(T=10)``, weight 1) on a batch of unlabelled
patches. The teacher outputs are the wrapped strategy's own (their mean, e.g. MuDuo's
CT and PET teachers) when it has teachers, otherwise LiteMedSAM on the CT view prompted
in rounds by the student (:mod:`.teaching`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .losses import kd_kl_loss, probability_to_logits
from .trainer import Strategy
from .teaching import new_cache, DEFAULT_TEACHER, crop_teacher_batch, foreground_logits, load_teacher, teacher_round


@dataclass
class SKDConfig:
    temperature: float = 10.0
    weight: float = 1.0


class SKDStrategy(Strategy):
    """``inner`` + SAM-induced KD."""

    def __init__(self, inner: Strategy, config: SKDConfig | None = None, teacher: str = DEFAULT_TEACHER,
                 checkpoint: str | None = None, modality: str = "CT", cache_dir: str | None = None) -> None:
        self.inner = inner
        self.config = config or SKDConfig()
        self.name = f"{inner.name}+skd"
        self.teacher_name, self.checkpoint, self.modality = teacher, checkpoint, modality
        self.cache = new_cache(cache_dir)
        self.targets: dict[str, np.ndarray] = {}
        self.own_teacher = None

    @property
    def teacher(self) -> str:
        return self.inner.teacher or f"{self.teacher_name} ({self.modality})"

    def setup(self, trainer) -> None:
        self.inner.setup(trainer)
        if not hasattr(self.inner, "teacher_probabilities"):
            self.own_teacher = load_teacher(self.teacher_name, self.modality, self.checkpoint, str(trainer.device))

    def extra_parameters(self):
        return self.inner.extra_parameters()

    def on_round_start(self, trainer, step: int) -> None:
        self.inner.on_round_start(trainer, step)
        if self.own_teacher is not None:
            outputs = teacher_round(trainer, {"p": (self.own_teacher, self.modality)}, self.cache).probability
        else:
            outputs = self.inner.teacher_probabilities()
        case_ids = next(iter(outputs.values())).keys() if outputs else []
        self.targets = {c: np.mean([o[c] for o in outputs.values()], axis=0).astype(np.float32) for c in case_ids}

    def loss(self, trainer, step: int):
        loss, logs = self.inner.loss(trainer, step)
        _, batch = crop_teacher_batch(trainer, {"p_skd": self.targets})
        student = foreground_logits(trainer.model(batch["image"]))
        kd = kd_kl_loss(student, probability_to_logits(batch["p_skd"]), self.config.temperature)
        return loss + self.config.weight * kd, {**logs, "skd": float(kd.detach())}

    def metadata(self) -> dict[str, Any]:
        return {**self.inner.metadata(), "skd": {"temperature": self.config.temperature, "weight": self.config.weight,
                                                 "source": "KnowSAM SAM-induced KD (arXiv:2412.13742)"}}

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state.get("inner", {}))


def with_skd(strategy: Strategy, args=None) -> Strategy:
    """``strategy`` with SAM-induced KD added (KnowSAM already has it: returned unchanged)."""
    if strategy.name == "knowsam":
        return strategy
    config = SKDConfig(temperature=float(getattr(args, "temperature", None) or SKDConfig.temperature))
    return SKDStrategy(strategy, config, getattr(args, "teacher", None) or DEFAULT_TEACHER,
                       getattr(args, "teacher_checkpoint", None), getattr(args, "teacher_modality", None) or "CT")
