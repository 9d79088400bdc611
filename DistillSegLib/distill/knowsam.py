"""KnowSAM: learnable-prompting SAM-induced knowledge distillation with two co-trained students.

Method (Huang, Zhou et al., "Learnable Prompting SAM-induced Knowledge Distillation for
Semi-supervised Medical Image Segmentation", IEEE TMI 2025, arXiv:2412.13742; code
taozh2017/KnowSAM ``trainer.py``, ``Model/model.py``, ``Model/prompt.py``):

* two students of different design (a U-Net and a V-Net there) learn from each other
  (multi-view co-training: BCE of each one's soft prediction towards the other's);
* a learned fusion of the two predictions (their ``Discriminator``: logits, entropy maps
  and the XOR "ambiguous area") is supervised on labelled data and becomes SAM's mask
  prompt;
* SAM (adapters in the image encoder + a learnable prompt module, ``Super_Prompt``) is
  fine-tuned on the labelled data with CE + Dice;
* SAM-induced KD: ``KL`` at temperature ``T = 10``, scaled by ``T^2``, from SAM's output
  into each student (weight 1), plus entropy minimisation (weight 0.9) and the ramped
  co-training consistency (``consistency 0.1 * sigmoid_rampup(., 200) * 10``, i.e. up to 1.0).
  Students: SGD lr 0.01, momentum 0.9, weight decay 1e-4; SAM: Adam lr 1e-4; poly decay.

Here the students are 3D (the main student and a MONAI SegResNet; MONAI's VNet has a fixed
width of 45.6 M parameters and needs sizes divisible by 16, far too heavy for a CPU
co-student), the teacher is a 2D SAM-style model run slice by slice on the case grid.

In the trainer — ``knowsam``: SAM-guided co-training of two students (KnowSAM, IEEE TMI 2025).

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

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..teachers.lora import add_lora, lora_parameters
from .losses import binary_entropy, foreground_probability, ramped_weight, two_class_logits
from .teaching import (DEFAULT_TEACHER, concatenate_slices, foreground_logits, labelled_slices, load_teacher,
                       make_prompt, mixed_batch, new_cache, student_foreground, teacher_round, tuned_teacher)
from .trainer import Strategy
from .tskd import finetune_teacher


@dataclass
class KnowSAMConfig:
    """KnowSAM hyper-parameters (defaults from taozh2017/KnowSAM, see module docstring).

    Attributes:
        temperature: KL temperature of SAM-induced distillation.
        kd_weight: weight of the KD term in each student's loss.
        entropy_weight: weight of entropy minimisation.
        consistency: maximum weight of the co-training consistency (0.1 x 10 in the code).
        rampup_fraction: ramp-up length as a fraction of the total steps (200 ramp "epochs"
            of ``max_iterations / 200`` iterations: the whole run).
        teacher_lr: learning rate of the teacher's LoRA and learnable prompt (Adam).
        second_student_filters: initial filters of the SegResNet co-student.
    """

    temperature: float = 10.0
    kd_weight: float = 1.0
    entropy_weight: float = 0.9
    consistency: float = 1.0
    rampup_fraction: float = 1.0
    teacher_lr: float = 1e-4
    second_student_filters: int = 8


def build_second_student(in_channels: int = 2, out_channels: int = 2, init_filters: int = 8,
                         levels: int = 4) -> nn.Module:
    """The co-student of a different design: MONAI SegResNet (residual blocks, group norm,
    additive skips; Myronenko, "3D MRI brain tumor segmentation using autoencoder
    regularization", BrainLes 2018).

    ``levels`` resolution levels (``levels - 1`` down-samplings, as many as the main
    U-Net's strides, so both accept the same patch sizes). With 4 levels and
    ``init_filters=8`` it has about 1.2 M parameters, the size of the default U-Net student.
    """
    from monai.networks.nets import SegResNet

    if not 1 <= levels <= 4:
        raise ValueError(f"levels must be 1..4, got {levels}")
    return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                     init_filters=init_filters, dropout_prob=None,
                     blocks_down=(1, 2, 2, 4)[:levels], blocks_up=(1, 1, 1)[: levels - 1])


class FusionHead(nn.Module):
    """Learned fusion of the two students' predictions (3D version of KnowSAM's ``Discriminator``).

    Inputs per voxel: both students' 2-class logits, their entropy maps and the XOR of their
    thresholded predictions (the "ambiguous area"). Output: ``(B, 2, *spatial)`` logits =
    the mean of the students' logits plus a learned correction whose last layer starts at
    zero, so an untrained head is plain averaging.
    """

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(7, hidden, kernel_size=3, padding=1),
            nn.InstanceNorm3d(hidden, affine=True),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(hidden, hidden, kernel_size=1),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.out = nn.Conv3d(hidden, 2, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
        la, lb = two_class_logits(logits_a), two_class_logits(logits_b)
        pa, pb = foreground_probability(la), foreground_probability(lb)
        ambiguous = ((pa > 0.5) ^ (pb > 0.5)).to(la.dtype)
        features = torch.cat([la, lb, binary_entropy(pa), binary_entropy(pb), ambiguous], dim=1)
        return 0.5 * (la + lb) + self.out(self.body(features))


class LearnablePrompt(nn.Module):
    """Prompt embeddings learned from SAM's image embedding (KnowSAM's ``Super_Prompt``).

    From an image embedding ``(B, C, h, w)`` (C = 256, h = w = 64 for SAM and LiteMedSAM):

    * ``sparse``: ``(B, num_tokens, C)`` tokens (KnowSAM predicts box-corner embeddings,
      2 tokens per box, with conv blocks, global pooling and an MLP);
    * ``dense``: ``(B, C, h, w)`` added to the prompt encoder's dense (mask) embedding; its
      last convolution starts at zero so an untrained module leaves the mask prompt as is.
    """

    def __init__(self, embed_dim: int = 256, hidden: int = 64, num_tokens: int = 2) -> None:
        super().__init__()
        self.embed_dim, self.num_tokens = embed_dim, num_tokens
        self.features = nn.Sequential(
            nn.Conv2d(embed_dim, hidden, kernel_size=3, padding=1),
            nn.GroupNorm(8, hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(8, hidden),
            nn.GELU(),
        )
        self.tokens = nn.Sequential(nn.Linear(hidden, hidden * 4), nn.GELU(), nn.Linear(hidden * 4, num_tokens * embed_dim))
        self.dense = nn.Sequential(
            nn.Conv2d(embed_dim, hidden, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(hidden, embed_dim, kernel_size=1),
        )
        nn.init.zeros_(self.dense[-1].weight)
        nn.init.zeros_(self.dense[-1].bias)

    def forward(self, image_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.features(image_embedding).mean(dim=(2, 3))
        sparse = self.tokens(pooled).view(-1, self.num_tokens, self.embed_dim)
        return sparse, self.dense(image_embedding)


def decode_with_prompts(sam: nn.Module, image_embedding: torch.Tensor, mask_logits: torch.Tensor | None = None,
                        boxes: torch.Tensor | None = None, prompt: LearnablePrompt | None = None,
                        with_iou: bool = False):
    """Run a SAM-style prompt encoder + mask decoder on precomputed image embeddings.

    Works with any model exposing ``prompt_encoder`` and ``mask_decoder`` with the
    ``segment_anything`` interface (SAM ViT-B/L/H, LiteMedSAM). The decoder runs one image
    at a time: segment-anything's ``MaskDecoder`` repeats the image embedding per prompt,
    so it takes one image per call.

    Args:
        sam: the teacher.
        image_embedding: ``(B, 256, h, w)`` from ``sam.image_encoder`` (64 x 64 for SAM
            and LiteMedSAM).
        mask_logits: optional ``(B, 1, 4h, 4w)`` mask prompt logits (see
            :func:`DistillSegLib.teachers.prompts.mask_prompt`).
        boxes: optional ``(B, 4)`` or ``(B, 1, 4)`` boxes ``x0, y0, x1, y1`` in input pixels.
        prompt: optional learnable prompt adding sparse tokens and a dense residual.

    Returns:
        ``(B, 1, 4h, 4w)`` low-resolution mask logits (256 x 256 for SAM and LiteMedSAM);
        with ``with_iou`` also the predicted IoU ``(B,)``.
    """
    if boxes is not None and boxes.ndim == 2:
        boxes = boxes[:, None, :]
    from ..teachers.slicewise import decode_slices

    learned = prompt(image_embedding) if prompt is not None else None
    return decode_slices(sam, image_embedding, boxes=boxes, masks=mask_logits, learned=learned, with_iou=with_iou)


@dataclass
class CoTrainingTerms:
    """KnowSAM's unsupervised terms for the two students (before weights)."""

    consistency: torch.Tensor
    entropy: torch.Tensor
    kd: torch.Tensor


def co_training_terms(logits_a: torch.Tensor, logits_b: torch.Tensor, teacher_logits: torch.Tensor | None,
                      temperature: float = 10.0, teacher_mask: torch.Tensor | None = None) -> CoTrainingTerms:
    """Cross consistency, entropy and SAM-induced KD for both students, summed over the two.

    Args:
        logits_a, logits_b: ``(B, C, *spatial)`` logits of the two students (C in {1, 2}).
        teacher_logits: ``(B, 1 or 2, *spatial)`` teacher logits cropped at the same place,
            or None (no KD).
        temperature: KL temperature.
        teacher_mask: optional voxel weights for the KD (where the teacher has an output).
    """
    from .losses import cross_consistency_loss, entropy_loss, kd_kl_loss

    pa, pb = foreground_probability(logits_a), foreground_probability(logits_b)
    consistency = cross_consistency_loss(pa, pb)
    entropy = entropy_loss(pa) + entropy_loss(pb)
    if teacher_logits is None:
        kd = torch.zeros((), device=logits_a.device)
    else:
        kd = (kd_kl_loss(logits_a, teacher_logits, temperature, teacher_mask)
              + kd_kl_loss(logits_b, teacher_logits, temperature, teacher_mask))
    return CoTrainingTerms(consistency=consistency, entropy=entropy, kd=kd)


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
        self.sam = tuned_teacher(base, prompt_module=self.prompt, suffix="knowsam", prompt_kinds=("box", "mask"),
                                 encoder=True)
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
        self.outputs = teacher_round(trainer, {"p_sam": (self.sam, self.modality)}, self.cache,
                                     foregrounds={c.case_id: fused[c.case_id] for c in trainer.unlabelled}).probability

    def teacher_probabilities(self) -> dict[str, dict[str, Any]]:
        return self.outputs

    def loss(self, trainer, step: int):
        from .losses import kd_kl_loss, probability_to_logits

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
