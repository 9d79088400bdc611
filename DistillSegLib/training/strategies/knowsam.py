"""``knowsam``: SAM-guided co-training of two students (KnowSAM, IEEE TMI 2025).

See :mod:`DistillSegLib.distill.knowsam` for the method, hyper-parameters and sources.

* Students: the trainer's U-Net and a MONAI SegResNet (a different design), plus a
  learned fusion head; all three are trained by the trainer's optimiser.
* Teacher: LiteMedSAM (default) with LoRA on its image encoder and a learnable prompt
  module (sparse tokens + dense residual), prompted with the students' *fused*
  prediction as mask (and its per-slice box, which the box-trained LiteMedSAM needs).
* Each round: fused whole-volume prediction of the two students; a few Adam steps of the
  teacher's LoRA + prompt on the labelled slices (CE + Dice, KnowSAM's ``sam_sup_loss``);
  the tuned teacher's output on every unlabelled case.
* Each step: CE + Dice of both students and of the fusion on labelled patches;
  co-training consistency (ramped), entropy and SAM-induced KD (KL at T = 10) on
  unlabelled patches.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

import torch

from ...distill.knowsam import (FusionHead, KnowSAMConfig, LearnablePrompt, build_second_student,
                                co_training_terms)
from ...distill.losses import ramped_weight
from ...distill.tskd import finetune_teacher
from ...teachers.lora import add_lora, lora_parameters
from ..trainer import Strategy
from .teaching import (new_cache, DEFAULT_TEACHER, concatenate_slices, mixed_batch, foreground_logits,
                       labelled_slices, load_teacher, make_prompt, student_foreground, teacher_round,
                       tuned_teacher)


class FusedStudents(torch.nn.Module):
    """The two students and their fusion as one network (whole-volume inference)."""

    def __init__(self, first: torch.nn.Module, second: torch.nn.Module, fusion: torch.nn.Module) -> None:
        super().__init__()
        self.first, self.second, self.fusion = first, second, fusion

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.first(image), self.second(image))


class KnowSAMStrategy(Strategy):
    name = "knowsam"

    def __init__(self, config: KnowSAMConfig | None = None, teacher: str = DEFAULT_TEACHER,
                 checkpoint: str | None = None, modality: str = "CT", teacher_steps: int = 4,
                 lora_rank: int = 4, teacher_batch: int = 4, cache_dir: str | None = None) -> None:
        self.config = config or KnowSAMConfig()
        self.teacher_name, self.checkpoint, self.modality = teacher, checkpoint, modality
        self.teacher_steps, self.lora_rank, self.teacher_batch = teacher_steps, lora_rank, teacher_batch
        self.cache = new_cache(cache_dir)
        self.outputs: dict[str, dict[str, Any]] = {}
        self._restored: Mapping[str, Any] | None = None

    @classmethod
    def from_args(cls, args) -> "KnowSAMStrategy":
        config = KnowSAMConfig()
        if getattr(args, "temperature", None):
            config.temperature = float(args.temperature)
        steps = getattr(args, "teacher_steps", None)
        return cls(config, getattr(args, "teacher", None) or DEFAULT_TEACHER, getattr(args, "teacher_checkpoint", None),
                   getattr(args, "teacher_modality", None) or "CT", 4 if steps is None else int(steps))

    @property
    def teacher(self) -> str:
        return f"{self.teacher_name} ({self.modality}) + LoRA + learnable prompt"

    def setup(self, trainer) -> None:
        config = trainer.config
        self.second = build_second_student(config.in_channels, config.num_classes,
                                           self.config.second_student_filters,
                                           levels=len(config.strides) + 1).to(trainer.device)
        self.fusion = FusionHead().to(trainer.device)
        self.second_model, self.fusion_model = trainer.wrap(self.second), trainer.wrap(self.fusion)
        base = load_teacher(self.teacher_name, self.modality, self.checkpoint, str(trainer.device))
        self.prompt = LearnablePrompt()
        self.sam = tuned_teacher(base, prompt_module=self.prompt, suffix="knowsam", prompt_kinds=("box", "mask"))
        add_lora(self.sam, self.lora_rank, 2 * self.lora_rank)
        if self._restored is not None:
            self._load_teacher_state(self._restored)
        self.sam.model.eval()
        self.sam.refresh_digest()
        self.teacher_parameters = lora_parameters(self.sam) + list(self.prompt.parameters())
        # KnowSAM trains SAM with Adam at lr 1e-4 (taozh2017/KnowSAM trainer.py).
        self.teacher_optimizer = torch.optim.Adam(self.teacher_parameters, lr=self.config.teacher_lr)

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.second.parameters()) + list(self.fusion.parameters())

    def fused_network(self, trainer) -> torch.nn.Module:
        return FusedStudents(trainer.network, self.second, self.fusion)

    def tune_teacher(self, trainer, fused: Mapping[str, Any]) -> list[float]:
        """KnowSAM's SAM supervision: the teacher, prompted by the fused prediction, learns the labels."""
        if self.teacher_steps <= 0:
            return []
        parts = [labelled_slices(self.sam, case, trainer.config, make_prompt(fused[case.case_id], self.sam), self.modality)
                 for case in trainer.all_labelled]
        data = concatenate_slices(parts)
        if not data:
            return []
        generator = torch.Generator().manual_seed(trainer.options.seed + trainer.step)
        losses = finetune_teacher(self.sam.model, self.teacher_parameters, data["images"], data["targets"],
                                  boxes=data["boxes"], mask_logits=data["masks"], prompt=self.prompt,
                                  steps=self.teacher_steps, batch_size=self.teacher_batch, optimizer=self.teacher_optimizer,
                                  generator=generator, on_step=lambda s, l: trainer.cancel.check())
        self.sam.model.eval()
        self.sam.refresh_digest()
        return losses

    def on_round_start(self, trainer, step: int) -> None:
        network = self.fused_network(trainer)
        fused = {case.case_id: student_foreground(trainer, case, network)
                 for case in list(trainer.all_labelled) + list(trainer.unlabelled)}
        self.teacher_losses = self.tune_teacher(trainer, fused)
        self.outputs, _ = teacher_round(trainer, {"p_sam": (self.sam, self.modality)}, self.cache,
                                        foregrounds={c.case_id: fused[c.case_id] for c in trainer.unlabelled})

    def teacher_probabilities(self) -> dict[str, dict[str, Any]]:
        return self.outputs

    def loss(self, trainer, step: int):
        from ...distill.losses import kd_kl_loss, probability_to_logits

        image, label, _, batch = mixed_batch(trainer, self.outputs)
        n = len(label)
        la, lb = trainer.model(image), self.second_model(image)
        lf = self.fusion_model(la[:n], lb[:n])
        supervised = 0.5 * (trainer.supervised_loss(la[:n], label) + trainer.supervised_loss(lb[:n], label)) \
            + trainer.supervised_loss(lf, label)
        fa, fb = foreground_logits(la), foreground_logits(lb)
        terms = co_training_terms(fa, fb, None, self.config.temperature)
        teacher = probability_to_logits(batch["p_sam"])
        kd = kd_kl_loss(fa[n:], teacher, self.config.temperature) + kd_kl_loss(fb[n:], teacher, self.config.temperature)
        weight = ramped_weight(step, self.config.consistency, self.config.rampup_fraction * trainer.options.steps)
        unsupervised = self.config.kd_weight * kd + self.config.entropy_weight * terms.entropy \
            + weight * terms.consistency
        loss = supervised + 0.5 * unsupervised
        return loss, {"supervised": float(supervised.detach()), "kd": float(kd.detach()), "entropy": float(terms.entropy.detach()),
                      "consistency": float(terms.consistency.detach()), "weight": weight}

    def metadata(self) -> dict[str, Any]:
        return {"method": "KnowSAM (Huang et al., IEEE TMI 2025, arXiv:2412.13742)", **asdict(self.config),
                "teacher": self.teacher_name, "teacher_modality": self.modality,
                "teacher_steps_per_round": self.teacher_steps, "lora_rank": self.lora_rank,
                "second_student": "MONAI SegResNet"}

    def state_dict(self) -> dict[str, Any]:
        return {
            "second": {k: v.detach().cpu() for k, v in self.second.state_dict().items()},
            "fusion": {k: v.detach().cpu() for k, v in self.fusion.state_dict().items()},
            "prompt": {k: v.detach().cpu() for k, v in self.prompt.state_dict().items()},
            "lora": {k: v.detach().cpu() for k, v in self.sam.model.state_dict().items() if "lora_" in k},
            "teacher_optimizer": self.teacher_optimizer.state_dict(),
        }

    def _load_teacher_state(self, state: Mapping[str, Any]) -> None:
        self.second.load_state_dict(dict(state["second"]))
        self.fusion.load_state_dict(dict(state["fusion"]))
        self.prompt.load_state_dict(dict(state["prompt"]))
        self.sam.model.load_state_dict(dict(state["lora"]), strict=False)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        if hasattr(self, "sam"):
            self._load_teacher_state(state)
            self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])
            self.sam.refresh_digest()
        else:
            self._restored = state
