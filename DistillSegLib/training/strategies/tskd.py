"""``tskd``: task-specific knowledge distillation (TS-KD, Liang et al. 2025, arXiv:2503.06976).

See :mod:`DistillSegLib.distill.tskd` for the method and its hyper-parameters.

* Stage 1 (once, at the first round; skipped on resume because the tuned LoRA weights are
  part of the checkpoint): LoRA fine-tuning of the teacher (LiteMedSAM by default) on the
  labelled cases' axial slices, box prompts from the ground truth, only LoRA parameters
  trained.
* Stage 2 (every step): supervised CE + Dice on labelled patches + distillation (KL at T,
  Dice towards the teacher's hard label) on the transfer set: unlabelled patches,
  augmented by the trainer, with the tuned teacher's output prompted by the student in
  rounds.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import torch

from ...distill.tskd import TSKDConfig, distillation_loss, finetune_teacher
from ...teachers.lora import add_lora, lora_parameters
from ..trainer import Strategy
from .teaching import (new_cache, DEFAULT_TEACHER, concatenate_slices, mixed_batch, foreground_logits,
                       labelled_slices, load_teacher, teacher_round, tuned_teacher)


class TSKDStrategy(Strategy):
    name = "tskd"

    def __init__(self, config: TSKDConfig | None = None, teacher: str = DEFAULT_TEACHER,
                 checkpoint: str | None = None, modality: str = "CT", cache_dir: str | None = None) -> None:
        self.config = config or TSKDConfig()
        self.teacher_name, self.checkpoint, self.modality = teacher, checkpoint, modality
        self.cache = new_cache(cache_dir)
        self.outputs: dict[str, dict[str, Any]] = {}
        self.tuned = False
        self.finetune_losses: list[float] = []
        self._restored: Mapping[str, torch.Tensor] | None = None

    @classmethod
    def from_args(cls, args) -> "TSKDStrategy":
        config = TSKDConfig()
        if getattr(args, "teacher_steps", None) is not None:
            config.finetune_steps = int(args.teacher_steps)
        if getattr(args, "temperature", None):
            config.temperature = float(args.temperature)
        return cls(config, getattr(args, "teacher", None) or DEFAULT_TEACHER,
                   getattr(args, "teacher_checkpoint", None), getattr(args, "teacher_modality", None) or "CT")

    @property
    def teacher(self) -> str:
        return f"{self.teacher_name} ({self.modality}) + LoRA r={self.config.lora_rank}"

    def setup(self, trainer) -> None:
        base = load_teacher(self.teacher_name, self.modality, self.checkpoint, str(trainer.device))
        self.tuned_teacher = tuned_teacher(base, suffix=f"lora{self.config.lora_rank}")
        add_lora(self.tuned_teacher, self.config.lora_rank, self.config.lora_alpha,
                 target_modules=self.config.lora_targets)
        if self._restored is not None:
            self.tuned_teacher.model.load_state_dict(dict(self._restored), strict=False)
        self.tuned_teacher.model.eval()
        self.tuned_teacher.refresh_digest()

    def finetune(self, trainer) -> list[float]:
        """Stage 1: LoRA fine-tuning on every labelled case (all ranks alike: same data, same seed)."""
        from ...teachers.prompts import Prompt

        teacher = self.tuned_teacher
        parts = [labelled_slices(teacher, case, trainer.config, Prompt(mask=(case.label > 0).astype("float32")),
                                 self.modality) for case in trainer.all_labelled]
        data = concatenate_slices(parts)
        if not data:
            trainer.progress.message("tskd: no labelled foreground slices; the teacher is not fine-tuned")
            return []
        generator = torch.Generator().manual_seed(trainer.options.seed)
        trainer.progress.message(f"tskd stage 1: LoRA fine-tuning on {len(data['images'])} labelled slices, "
                                 f"{self.config.finetune_steps} steps")

        def on_step(step: int, loss: float) -> None:
            trainer.progress.message(f"tskd stage 1: step {step}/{self.config.finetune_steps}, loss {loss:.4f}")
            trainer.cancel.check()

        losses = finetune_teacher(teacher.model, lora_parameters(teacher), data["images"], data["targets"],
                                  boxes=data["boxes"], steps=self.config.finetune_steps, lr=self.config.finetune_lr,
                                  batch_size=self.config.finetune_batch, generator=generator, on_step=on_step)
        teacher.model.eval()
        teacher.refresh_digest()
        return losses

    def on_round_start(self, trainer, step: int) -> None:
        if not self.tuned:
            self.finetune_losses = self.finetune(trainer)
            self.tuned = True
        self.outputs, _ = teacher_round(trainer, {"p_teacher": (self.tuned_teacher, self.modality)}, self.cache)

    def teacher_probabilities(self) -> dict[str, dict[str, Any]]:
        return self.outputs

    def loss(self, trainer, step: int):
        image, label, _, batch = mixed_batch(trainer, self.outputs)
        logits = trainer.model(image)
        supervised = trainer.supervised_loss(logits[: len(label)], label)
        distilled = distillation_loss(foreground_logits(logits[len(label):]), batch["p_teacher"], self.config)
        return supervised + distilled, {"supervised": float(supervised.detach()), "distillation": float(distilled.detach())}

    def metadata(self) -> dict[str, Any]:
        return {"method": "TS-KD (Liang et al. 2025, arXiv:2503.06976)", **asdict(self.config),
                "teacher": self.teacher_name, "teacher_modality": self.modality,
                "finetune_loss_first_last": self.finetune_losses[:1] + self.finetune_losses[-1:]}

    def state_dict(self) -> dict[str, Any]:
        lora = {k: v.detach().cpu() for k, v in self.tuned_teacher.model.state_dict().items() if "lora_" in k}
        return {"tuned": self.tuned, "lora": lora, "finetune_losses": list(self.finetune_losses)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tuned = bool(state.get("tuned", False))
        self.finetune_losses = [float(v) for v in state.get("finetune_losses", [])]
        if state.get("lora"):
            self._restored = state["lora"]
            if hasattr(self, "tuned_teacher"):
                self.tuned_teacher.model.load_state_dict(dict(state["lora"]), strict=False)
                self.tuned_teacher.refresh_digest()
