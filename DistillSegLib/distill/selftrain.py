"""``selftrain``: the control of every distillation strategy -- the same schedule, no teacher.

Same trainer, rounds (every ``--refresh-every`` steps), mixed batches, loss family and
confidence weighting as :mod:`.muduo` at its defaults, but the pseudo-label of an
unlabelled case is the prompting student's own hard mask (foreground probability >=
``threshold``), not a foundation model's answer to it. Whatever a distillation strategy
gains over ``selftrain`` is what its teachers add; whatever ``selftrain`` gains over
``supervised`` is what the unlabelled images, the extra rounds and the loss add on their own.

Which network labels: the one that would prompt the teachers (:meth:`Trainer.prompting_network`):
the student itself by default, its EMA copy with ``--ema-decay`` (the mean teacher). The
student itself is the default because the distillation strategies prompt with it by default,
so the control differs from them in one thing only: who answers the prompt.

Confidence weighting mirrors MuDuo's (voxels weighted by the teachers' predicted IoU of their
slice; 1 where no component reached): each axial slice's voxels are weighted by the student's
own expected IoU of its hard mask on that slice, ``sum(p m) / sum(p + m - p m)`` with
``m = p >= threshold``; 1 on slices without foreground. A confident slice (probabilities near
0 or 1) weighs ~1, a hesitant one less.

Each round is audited like a teacher round (``pseudo_label_rounds`` in the model file): the
Dice of the pseudo-label against the unlabelled cases' held-out audit labels, where they
exist (training never reads them).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch

from .losses import pseudo_label_loss, ramped_weight
from .pseudo_labels import RoundOutputs
from .teaching import foreground_logits, student_foreground
from .trainer import Strategy


def _muduo_default(name: str):
    from .muduo import MuDuoConfig

    return getattr(MuDuoConfig(), name)


@dataclass
class SelfTrainConfig:
    """Hyper-parameters; the defaults are MuDuo's (:class:`.muduo.MuDuoConfig`), so the two
    differ only in where the pseudo-label comes from.

    Attributes:
        threshold: foreground probability threshold of the hard pseudo-label.
        consistency: maximum weight of the pseudo-label term.
        rampup_fraction: its sigmoid ramp-up length, as a fraction of the steps.
        supervised_weight: weight of (CE + Dice) on the labelled patches.
        confidence_weight: weight voxels by the student's expected IoU of their slice.
        loss: ``"dice"`` or ``"dicece"`` towards the pseudo-label.
    """

    threshold: float = _muduo_default("threshold")
    consistency: float = _muduo_default("consistency")
    rampup_fraction: float = _muduo_default("rampup_fraction")
    supervised_weight: float = _muduo_default("supervised_weight")
    confidence_weight: bool = _muduo_default("confidence_weight")
    loss: str = _muduo_default("loss")

    def __post_init__(self) -> None:
        if self.loss not in ("dice", "dicece"):
            raise ValueError(f"loss must be dice or dicece, got {self.loss!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")


# ``distillseg train`` options read into SelfTrainConfig (shared with muduo, see options.py).
SELFTRAIN_OPTIONS = ("consistency", "rampup_fraction", "supervised_weight", "confidence_weight", "loss")


def slice_confidence(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(I, J, K)`` weights: per axial slice (last axis), the expected soft IoU of the hard
    mask ``probability >= threshold`` under ``probability``; 1 on slices without foreground.

    Args:
        probability: ``(I, J, K)`` foreground probability in [0, 1].
    """
    p = np.asarray(probability, np.float32)
    mask = (p >= threshold).astype(np.float32)
    intersection = (p * mask).sum(axis=(0, 1))
    union = (p + mask - p * mask).sum(axis=(0, 1))
    per_slice = np.where(mask.any(axis=(0, 1)), intersection / np.maximum(union, 1e-8), 1.0).astype(np.float32)
    return np.broadcast_to(per_slice, p.shape).copy()


class SelfTrainStrategy(Strategy):
    """Self-training on the student's own hard pseudo-labels, refreshed in rounds."""

    name = "selftrain"
    teacher = None

    def __init__(self, config: SelfTrainConfig | None = None) -> None:
        self.config = config or SelfTrainConfig()
        self.pseudo: dict[str, np.ndarray] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.rounds: list[dict[str, Any]] = []

    @classmethod
    def from_args(cls, args) -> "SelfTrainStrategy":
        defaults = SelfTrainConfig()
        values = {name: (type(getattr(defaults, name))(value) if value is not None else getattr(defaults, name))
                  for name, value in ((n, getattr(args, n, None)) for n in SELFTRAIN_OPTIONS)}
        return cls(SelfTrainConfig(**values))

    def on_round_start(self, trainer, step: int) -> None:
        from .pseudo_labels import audit_round, describe_audit, evaluated_network_dice

        start = time.perf_counter()
        network = trainer.prompting_network()
        outputs = RoundOutputs()
        trainer.progress.start(f"self-training round at step {trainer.step + 1} (cases)", len(trainer.unlabelled))
        for index, case in enumerate(trainer.unlabelled):
            trainer.cancel.check()
            foreground = student_foreground(trainer, case, network)
            mask = foreground >= self.config.threshold
            outputs.student[case.case_id] = foreground
            outputs.has_prompt[case.case_id] = bool(mask.any())
            self.pseudo[case.case_id] = mask.astype(np.float32)
            self.weights[case.case_id] = (slice_confidence(foreground, self.config.threshold)
                                          if self.config.confidence_weight else np.ones(case.shape, np.float32))
            # The same patch bias as a teacher round: towards the pseudo-label's foreground.
            trainer.unlabelled_sampler.set_foreground(index, mask if mask.any() and not mask.all() else None)
            trainer.progress.update(index + 1)
        trainer.progress.close()
        outputs.seconds = time.perf_counter() - start
        record = audit_round(trainer.unlabelled, outputs, {c: m > 0 for c, m in self.pseudo.items()},
                             trainer.step + 1) or {"step": trainer.step + 1, "seconds": round(outputs.seconds, 1)}
        record.pop("components", None)
        if "mean" in record and network is not trainer.network:  # the EMA copy labelled: score the student too
            evaluated_network_dice(trainer, record)
        self.rounds.append(record)
        if "mean" in record:
            trainer.progress.message(describe_audit(record))

    def loss(self, trainer, step: int):
        labelled = trainer.labelled_batch()
        locations, batch = trainer.unlabelled_batch(extra={"pseudo": self.pseudo, "weight": self.weights})
        image = torch.cat([labelled["image"], batch["image"]]).to(trainer.device)
        label = labelled["label"].to(trainer.device)
        logits = trainer.model(image)
        supervised = trainer.supervised_loss(logits[: len(label)], label)
        student = foreground_logits(logits[len(label):])
        # A case whose student mask was empty teaches "background" as MuDuo's would not (no
        # prompt, no pseudo-label): it is left out, as MuDuo leaves out patches without a prompt.
        kept = [i for i, loc in enumerate(locations) if bool(self.pseudo[loc.case_id].any())] or list(range(len(locations)))
        kept_index = torch.tensor(kept)
        pseudo = (batch["pseudo"].to(trainer.device) >= 0.5).to(student.dtype)
        unsupervised = pseudo_label_loss(student[kept_index], pseudo[kept_index],
                                         batch["weight"].to(trainer.device)[kept_index], self.config.loss)
        weight = ramped_weight(step, self.config.consistency, self.config.rampup_fraction * trainer.options.steps)
        loss = self.config.supervised_weight * supervised + weight * unsupervised
        return loss, {"supervised": float(supervised.detach()), "consistency": float(unsupervised.detach()),
                      "weight": weight}

    def metadata(self) -> dict[str, Any]:
        return {"method": "self-training on the student's own hard pseudo-labels (no teacher)",
                **asdict(self.config), "pseudo_label_rounds": list(self.rounds)}

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "rounds": list(self.rounds)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "config" in state:
            self.config = SelfTrainConfig(**state["config"])
        self.rounds = list(state.get("rounds", []))
