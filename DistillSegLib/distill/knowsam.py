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
  learned fusion head; all three are trained by the trainer's optimiser. When the U-Net
  starts from a warm start (``--init``, the benchmark's supervised warm-up), the SegResNet
  is first trained alone on the labelled patches for ``co_student_warmup`` steps, so that
  the two students start on an equal footing (co-training a trained with an untrained
  network mostly teaches the trained one noise).
* Teacher: LiteMedSAM (default) with a learnable prompt module (sparse tokens + dense
  residual); tuned each round for ``teacher_steps`` Adam steps on the labelled slices
  (KnowSAM's ``sam_sup_loss``, one Adam across rounds as the paper's one optimiser).
  ``teacher_tuning="decoder"`` (default): prompt encoder, mask decoder and IoU head with
  jittered and negative boxes (:mod:`DistillSegLib.teachers.tuning`), reusing the stored
  slice embeddings; ``"lora"``: adapters on the image encoder (the paper's adapters;
  every slice re-encoded). Prompted by the students' *fused* prediction, per component
  (:mod:`.pseudo_labels`), on the unlabelled and on the labelled cases.
* Each step (taozh2017/KnowSAM ``trainer.py``, ``Trainer.train``): each student's loss =
  CE + Dice on labelled patches + SAM-induced KD (KL at T = 10) on *all* patches + 0.9 x
  entropy + ramped co-training consistency; plus CE + Dice of the fusion on labelled
  patches; total ``(U-Net + SegResNet) / 2 + fusion``. After ``mixed_after`` of the
  steps, the entropy-guided mix-up stage (``Trainer.mix_up``): in each pair of labelled
  and unlabelled patches the ``mix_top_k`` most confident cells (lowest fused entropy,
  on a ``mix_grid`` of the patch) of one are pasted into the other, the label following
  (ground truth / the teacher's pseudo-label), and the students learn the mixed pairs too.

Departures (CPU): the teacher answers in rounds (``--refresh-every``), not per step; it is
tuned ``teacher_steps`` per round instead of one step per student step; its prompt is the
fused map's per-component boxes (LiteMedSAM is box-trained) plus the learnable prompt,
not the learned boxes + mask of the paper's SAM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from ..teachers.lora import add_lora, lora_parameters
from .losses import binary_entropy, foreground_probability, ramped_weight, two_class_logits
from .teaching import (DEFAULT_TEACHER, DistillationStrategy, TeachingSettings, concatenate_slices,
                       foreground_logits, labelled_slices, load_teacher, make_prompt, student_foreground, tuned_teacher)
from .teacher_prompting import finetune_teacher


PROMPT_SOURCES = ("best", "fused")


def labelled_dice(trainer, network: torch.nn.Module, cases) -> float:
    """Mean Dice of ``network``'s foreground (>= 0.5) against the training labels of ``cases``."""
    from .pseudo_labels import dice_score

    scores = []
    for case in cases:
        trainer.cancel.check()
        valid = tuple(slice(0, n) for n in case.valid_shape)
        foreground = student_foreground(trainer, case, network)
        scores.append(dice_score(foreground[valid] >= 0.5, case.label[valid] > 0))
    return float(np.mean(scores)) if scores else float("nan")


def best_prompting_network(trainer, candidates: Mapping[str, torch.nn.Module], cases) -> tuple[str, dict[str, float]]:
    """``(name, {name: labelled Dice})``: the candidate with the best Dice on the labelled
    ``cases`` (ties: the first listed)."""
    scores = {name: round(labelled_dice(trainer, network, cases), 4) for name, network in candidates.items()}
    return max(scores, key=lambda n: (scores[n], -list(scores).index(n))), scores


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
        teacher_lr: learning rate of the teacher's tuned weights and learnable prompt (Adam).
        teacher_tuning: ``"decoder"`` or ``"lora"`` (module docstring).
        teacher_steps: teacher tuning steps per round.
        teacher_batch: slices per teacher tuning step.
        lora_rank: rank of the encoder adapters (``"lora"``).
        second_student_filters: initial filters of the SegResNet co-student.
        co_student_warmup: supervised steps of the SegResNet alone before the first round
            when the U-Net is warm-started (0: none).
        mixed_after: fraction of the steps after which the mix-up stage runs
            (``mixed_iterations`` 12000 of ``max_iterations`` 50000 in ``train_semi_SAM.py``).
        mix_grid: cells of a patch along each axis for the mix-up (4 x 4 in 2D there).
        mix_top_k: cells exchanged per patch (``top_k=5`` there).
        prompt_from: which network prompts the teacher each round: ``"fused"`` (the paper's:
            the fusion head's output) or ``"best"`` (default): whichever of the U-Net, the
            co-student and the fusion scores the best Dice on the labelled cases (training
            labels only). The fusion head starts as the plain mean of the two students'
            logits; next to a warm-started U-Net, the co-student is still background-biased
            at the first round, and the mean of their logits left 4 of 6 unlabelled cases
            without any foreground -- without a prompt -- in the benchmark
            (``benchmarks/results/distillation_knowsam_seed0.json``: prompting Dice 0.223 at
            the first round, 2 of 6 cases still empty at the second, against 0.645 for the
            same warm-up U-Net alone).
    """

    temperature: float = 10.0
    kd_weight: float = 1.0
    entropy_weight: float = 0.9
    consistency: float = 1.0
    rampup_fraction: float = 1.0
    teacher_lr: float = 1e-4
    teacher_tuning: str = "decoder"
    teacher_steps: int = 25
    teacher_batch: int = 4
    lora_rank: int = 4
    second_student_filters: int = 8
    co_student_warmup: int = 200
    mixed_after: float = 0.24
    mix_grid: tuple[int, int, int] = (4, 4, 2)
    mix_top_k: int = 5
    prompt_from: str = "best"

    def __post_init__(self) -> None:
        if self.prompt_from not in PROMPT_SOURCES:
            raise ValueError(f"KnowSAM prompt_from must be one of {', '.join(PROMPT_SOURCES)}, got {self.prompt_from!r}")
        if self.teacher_tuning not in ("decoder", "lora"):
            raise ValueError(f"KnowSAM teacher tuning must be decoder or lora, got {self.teacher_tuning!r}")


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


def entropy_cells(probability: torch.Tensor, grid: tuple[int, int, int], top_k: int) -> torch.Tensor:
    """``(B, 1, *spatial)`` 0/1 masks of the ``top_k`` cells of lowest mean binary entropy of
    ``probability`` (``(B, 1, *spatial)`` foreground) on a ``grid`` of each patch
    (KnowSAM's ``mix_up``: ``AdaptiveAvgPool`` of the entropy map, ``topk(largest=False)``)."""
    import torch.nn.functional as F

    pooled = F.adaptive_avg_pool3d(binary_entropy(probability.detach()), grid).flatten(1)
    chosen = torch.topk(pooled, min(top_k, pooled.shape[1]), largest=False).indices
    cells = torch.zeros_like(pooled).scatter_(1, chosen, 1.0).view(-1, 1, *grid)
    return F.interpolate(cells, size=tuple(probability.shape[2:]), mode="nearest")


def mix_pairs(labelled: torch.Tensor, unlabelled: torch.Tensor, label: torch.Tensor, pseudo: torch.Tensor,
              cells_labelled: torch.Tensor, cells_unlabelled: torch.Tensor):
    """KnowSAM's entropy-guided mix-up of ``n`` labelled with ``n`` unlabelled patches.

    The unlabelled patch gets the labelled patch's content (and ground truth) in its own
    most confident cells; the labelled patch gets the unlabelled one's (and its
    pseudo-label) in *its* most confident cells. Returns ``(images (2n, C, ...), labels
    (2n, 1, ...))``: mixed labelled first, then mixed unlabelled.
    """
    mixed_unlabelled = labelled * cells_unlabelled + unlabelled * (1 - cells_unlabelled)
    label_unlabelled = label * cells_unlabelled + pseudo * (1 - cells_unlabelled)
    mixed_labelled = unlabelled * cells_labelled + labelled * (1 - cells_labelled)
    label_labelled = pseudo * cells_labelled + label * (1 - cells_labelled)
    return torch.cat([mixed_labelled, mixed_unlabelled]), torch.cat([label_labelled, label_unlabelled])


class KnowSAMStrategy(DistillationStrategy):
    name = "knowsam"

    def __init__(self, config: KnowSAMConfig | None = None, teacher: str = DEFAULT_TEACHER,
                 checkpoint: str | None = None, modality: str = "CT", cache_dir: str | None = None,
                 teaching: TeachingSettings | None = None) -> None:
        from dataclasses import replace

        super().__init__(replace(teaching or TeachingSettings(), tune_steps=0), cache_dir)  # tuned here, per round
        self.config = config or KnowSAMConfig()
        self.teacher_name, self.checkpoint, self.modality = teacher, checkpoint, modality
        self.labelled_outputs: dict[str, Any] = {}
        self.teacher_losses: list[float] = []
        self.co_student_warm = False
        self._restored: Mapping[str, Any] | None = None
        self._images = None
        self.prompt_choices: list[dict[str, Any]] = []

    @classmethod
    def from_args(cls, args) -> "KnowSAMStrategy":
        config = KnowSAMConfig()
        if getattr(args, "temperature", None):
            config.temperature = float(args.temperature)
        if getattr(args, "teacher_steps", None) is not None:
            config.teacher_steps = int(args.teacher_steps)
        if getattr(args, "teacher_tuning", None):
            config.teacher_tuning = args.teacher_tuning
        if getattr(args, "prompt_from", None):
            config.prompt_from = args.prompt_from
        return cls(config, getattr(args, "teacher", None) or DEFAULT_TEACHER, getattr(args, "teacher_checkpoint", None),
                   getattr(args, "teacher_modality", None) or "CT", teaching=TeachingSettings.from_args(args))

    @property
    def teacher(self) -> str:
        tuned = "tuned decoder" if self.config.teacher_tuning == "decoder" else "LoRA"
        return f"{self.teacher_name} ({self.modality}) + {tuned} + learnable prompt"

    def setup(self, trainer) -> None:
        from ..teachers.tuning import decoder_parameters

        config = trainer.config
        self.second = build_second_student(config.in_channels, config.num_classes,
                                           self.config.second_student_filters,
                                           levels=len(config.strides) + 1).to(trainer.device)
        self.fusion = FusionHead().to(trainer.device)
        self.second_model, self.fusion_model = trainer.wrap(self.second), trainer.wrap(self.fusion)
        base = load_teacher(self.teacher_name, self.modality, self.checkpoint, str(trainer.device))
        self.prompt = LearnablePrompt()
        lora = self.config.teacher_tuning == "lora"
        self.sam = tuned_teacher(base, prompt_module=self.prompt, suffix="knowsam", prompt_kinds=("box", "mask"),
                                 encoder=lora)
        if lora:
            add_lora(self.sam, self.config.lora_rank, 2 * self.config.lora_rank)
            tuned = lora_parameters(self.sam)
        else:
            tuned = decoder_parameters(self.sam)
        for parameter in tuned:
            parameter.requires_grad = True
        self.co_student_warm = self.co_student_warm or not trainer.warm_started
        if self._restored is not None:
            self._load_teacher_state(self._restored)
        self.sam.model.eval()
        self.sam.refresh_digest()
        self.teacher_parameters = tuned + list(self.prompt.parameters())
        # KnowSAM trains SAM with Adam at lr 1e-4 (taozh2017/KnowSAM trainer.py).
        self.teacher_optimizer = torch.optim.Adam(self.teacher_parameters, lr=self.config.teacher_lr)
        if self._restored is not None and "teacher_optimizer" in self._restored:
            self.teacher_optimizer.load_state_dict(self._restored["teacher_optimizer"])

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.second.parameters()) + list(self.fusion.parameters())

    def fused_network(self, trainer) -> torch.nn.Module:
        return FusedStudents(trainer.network, self.second, self.fusion)

    def warm_co_student(self, trainer) -> None:
        """Supervised steps of the SegResNet alone (own AdamW and schedule, own RNG), so that
        it joins a warm-started U-Net trained too."""
        from .patches import make_batch

        steps = self.config.co_student_warmup
        trainer.progress.message(f"knowsam: warming the SegResNet co-student up, {steps} supervised steps")
        optimizer = torch.optim.AdamW(self.second.parameters(), lr=trainer.options.learning_rate,
                                      weight_decay=trainer.options.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(1.0 - s / steps, 0.0) ** 0.9)
        rng = np.random.default_rng([trainer.options.seed, 17])
        self.second.train()
        for _ in range(steps):
            trainer.cancel.check()
            locations = trainer.labelled_sampler.sample(rng, trainer.options.batch_size)
            batch = make_batch(trainer.labelled, locations, rng)
            loss = trainer.supervised_loss(self.second(batch["image"].to(trainer.device)), batch["label"].to(trainer.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

    def tune_teacher(self, trainer) -> list[float]:
        """KnowSAM's SAM supervision on the labelled slices, ``teacher_steps`` per round."""
        if self.config.teacher_steps <= 0:
            return []
        if self.config.teacher_tuning == "lora":
            return self._tune_lora(trainer)
        from ..teachers.tuning import DecoderTuningConfig, labelled_image, tune_decoder
        from .pseudo_labels import teacher_image, teacher_label

        if self._images is None:
            self._images = []
            for case in trainer.all_labelled:
                image = teacher_image(case, trainer.config, self.modality, self.teaching.round.grid)
                self._images.append(labelled_image(self.sam, image, teacher_label(case, image), self.modality))
        config = DecoderTuningConfig(steps=self.config.teacher_steps, batch_size=self.config.teacher_batch,
                                     lr=self.config.teacher_lr)
        losses = tune_decoder(self.sam, self._images, config, seed=trainer.options.seed + trainer.step,
                              parameters=self.teacher_parameters, optimizer=self.teacher_optimizer,
                              decode=lambda embeddings, boxes: self.sam.decode(embeddings, boxes=boxes, with_iou=True),
                              on_step=lambda s, l: trainer.cancel.check())
        self.sam.refresh_digest()
        return losses

    def _tune_lora(self, trainer) -> list[float]:
        network = self.fused_network(trainer)
        fused = {case.case_id: student_foreground(trainer, case, network) for case in trainer.all_labelled}
        parts = [labelled_slices(self.sam, case, trainer.config, make_prompt(fused[case.case_id], self.sam),
                                 self.modality, self.teaching.round.grid) for case in trainer.all_labelled]
        data = concatenate_slices(parts)
        if not data:
            return []
        generator = torch.Generator().manual_seed(trainer.options.seed + trainer.step)
        losses = finetune_teacher(self.sam.model, self.teacher_parameters, data["images"], data["targets"],
                                  boxes=data["boxes"], mask_logits=data["masks"], prompt=self.prompt,
                                  steps=self.config.teacher_steps, batch_size=self.config.teacher_batch,
                                  optimizer=self.teacher_optimizer, generator=generator,
                                  on_step=lambda s, l: trainer.cancel.check())
        self.sam.model.eval()
        self.sam.refresh_digest()
        return losses

    def on_round_start(self, trainer, step: int) -> None:
        if not self.co_student_warm and self.config.co_student_warmup > 0:
            self.warm_co_student(trainer)
        self.co_student_warm = True
        self.teacher_losses = self.tune_teacher(trainer)
        network = self.prompting_network(trainer)
        teachers = {"p_sam": (self.sam, self.modality)}
        outputs = self.run_round(trainer, teachers, network=network)
        self.labelled_outputs = run_labelled_round(trainer, teachers, self.cache, self.teaching.round, network)
        self.audit(trainer, outputs, {c: p >= 0.5 for c, p in outputs.probability["p_sam"].items()}, network)

    def prompting_network(self, trainer) -> torch.nn.Module:
        """The network that prompts the teacher this round (``KnowSAMConfig.prompt_from``); the
        choice and the candidates' labelled Dice are kept in ``prompt_choices``."""
        fused = self.fused_network(trainer)
        if self.config.prompt_from == "fused":
            return fused
        candidates = {"fused": fused, "unet": trainer.prompting_network(), "co-student": self.second}
        chosen, scores = best_prompting_network(trainer, candidates, trainer.labelled)
        self.prompt_choices.append({"step": trainer.step + 1, "chosen": chosen, "labelled_dice": scores})
        trainer.progress.message(f"knowsam: the {chosen} network prompts the teacher (labelled Dice "
                                 + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()) + ")")
        return candidates[chosen]

    def run_round(self, trainer, teachers, foregrounds=None, network=None):
        from .pseudo_labels import run_round

        self.outputs = run_round(trainer, teachers, self.cache, self.teaching.round, foregrounds, network=network)
        return self.outputs

    def loss(self, trainer, step: int):
        from .losses import probability_to_logits, pseudo_label_loss

        labelled = trainer.labelled_batch(extra={"p_sam": self.labelled_outputs})
        _, unlabelled = trainer.unlabelled_batch(extra=self.outputs.probability)
        device = trainer.device
        image = torch.cat([labelled["image"], unlabelled["image"]]).to(device)
        label = labelled["label"].to(device)
        p_sam = torch.cat([labelled["p_sam"], unlabelled["p_sam"]]).to(device)
        n = len(label)
        la, lb = trainer.model(image), self.second_model(image)
        lf = self.fusion_model(la, lb)
        fa, fb = foreground_logits(la), foreground_logits(lb)
        # Each student: CE + Dice (labelled) + KD + 0.9 entropy + ramped consistency (all
        # patches); the terms below are summed over the two students, hence the 1/2.
        terms = co_training_terms(fa, fb, probability_to_logits(p_sam), self.config.temperature)
        weight = ramped_weight(step, self.config.consistency, self.config.rampup_fraction * trainer.options.steps)
        supervised = trainer.supervised_loss(la[:n], label) + trainer.supervised_loss(lb[:n], label)
        fusion = trainer.supervised_loss(lf[:n], label)
        loss = 0.5 * (supervised + self.config.kd_weight * terms.kd + self.config.entropy_weight * terms.entropy
                      + weight * terms.consistency) + fusion
        logs = {"supervised": float(fusion.detach()), "kd": float(terms.kd.detach()),
                "entropy": float(terms.entropy.detach()), "consistency": float(terms.consistency.detach()),
                "weight": weight}
        if step > self.config.mixed_after * trainer.options.steps:
            fused = foreground_probability(lf.detach())
            cells_l = entropy_cells(fused[:n], self.config.mix_grid, self.config.mix_top_k)
            cells_u = entropy_cells(fused[n:], self.config.mix_grid, self.config.mix_top_k)
            pseudo = (p_sam[n:] >= 0.5).float()
            mixed, mixed_label = mix_pairs(image[:n], image[n:], label.float(), pseudo, cells_l, cells_u)
            ma, mb = trainer.model(mixed), self.second_model(mixed)
            mf = self.fusion_model(ma, mb)
            fused_mix = (foreground_probability(mf.detach()) >= 0.5).float()
            mixed_terms = co_training_terms(foreground_logits(ma), foreground_logits(mb), None)
            target = mixed_label.round().long()
            unsupervised = (pseudo_label_loss(foreground_logits(ma[n:]), fused_mix[n:], kind="dicece")
                            + pseudo_label_loss(foreground_logits(mb[n:]), fused_mix[n:], kind="dicece"))
            mixed_loss = (trainer.supervised_loss(ma, target) + trainer.supervised_loss(mb, target)
                          + self.config.entropy_weight * mixed_terms.entropy
                          + weight * (mixed_terms.consistency + unsupervised))
            loss = loss + 0.5 * mixed_loss + trainer.supervised_loss(mf, target)
            logs["mixed"] = float(mixed_loss.detach())
        return loss, logs

    def metadata(self) -> dict[str, Any]:
        return {"method": "KnowSAM (Huang et al., IEEE TMI 2025, arXiv:2412.13742)",
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()},
                "teacher": self.teacher_name, "teacher_modality": self.modality,
                "second_student": "MONAI SegResNet", "prompt_choices": list(self.prompt_choices),
                **self.teaching_metadata()}

    def state_dict(self) -> dict[str, Any]:
        tuned = {k: v.detach().cpu() for k, v in self.sam.model.state_dict().items()
                 if "lora_" in k or k.startswith(("prompt_encoder.", "mask_decoder."))}
        return {
            "second": {k: v.detach().cpu() for k, v in self.second.state_dict().items()},
            "fusion": {k: v.detach().cpu() for k, v in self.fusion.state_dict().items()},
            "prompt": {k: v.detach().cpu() for k, v in self.prompt.state_dict().items()},
            "teacher": tuned,
            "teacher_optimizer": self.teacher_optimizer.state_dict(),
            "co_student_warm": self.co_student_warm,
            "prompt_choices": list(self.prompt_choices),
            **self.teaching_state(),
        }

    def _load_teacher_state(self, state: Mapping[str, Any]) -> None:
        self.second.load_state_dict(dict(state["second"]))
        self.fusion.load_state_dict(dict(state["fusion"]))
        self.prompt.load_state_dict(dict(state["prompt"]))
        self.sam.model.load_state_dict(dict(state["teacher"]), strict=False)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.co_student_warm = bool(state.get("co_student_warm", True))
        self.prompt_choices = list(state.get("prompt_choices", []))
        self.load_teaching_state(state)
        if hasattr(self, "sam"):
            self._load_teacher_state(state)
            self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])
            self.sam.refresh_digest()
        else:
            self._restored = state


def run_labelled_round(trainer, teachers, cache, settings, network) -> dict[str, np.ndarray]:
    """The teacher's answers on the labelled cases (KnowSAM distils from SAM on every patch,
    labelled ones included), prompted by ``network``."""
    from .pseudo_labels import run_round

    outputs = run_round(trainer, teachers, cache, settings, network=network, cases=trainer.labelled)
    return next(iter(outputs.probability.values()))
