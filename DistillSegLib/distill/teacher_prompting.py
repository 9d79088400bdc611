"""How every distillation strategy asks a teacher: the pieces the methods share.

The student's foreground becomes a prompt (:func:`make_prompt`), a teacher answers through
the disk cache (:func:`cached_teacher_output`), a SAM-style teacher decodes precomputed slice
embeddings with boxes, masks or a learnable prompt (:func:`decode_with_prompts`), and a
teacher is fine-tuned on labelled slices (:func:`finetune_teacher`: TS-KD's stage 1 and
KnowSAM's teacher tuning). They live here, below the method files (``knowsam``, ``tskd``,
``muduo``...) and the round machinery (:mod:`.pseudo_labels`, :mod:`.teaching`), so that
every one of those imports downwards and none imports another method.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..io.volume import Volume
from ..student.preprocess import PreparedCase
from ..teachers.tuning import optimiser_step


def student_foreground(trainer, case: PreparedCase, network: torch.nn.Module | None = None) -> np.ndarray:
    """``(I, J, K)`` probability of any foreground class (1 - P(background)) of a student."""
    probabilities = trainer.predict(case, network)
    return (1.0 - probabilities[0]).astype(np.float32)


def load_teacher(name: str, modality: str, checkpoint: str | None = None, device: str = "cpu"):
    """A teacher by registry name (:mod:`DistillSegLib.teachers.registry`: ``litemedsam``,
    ``sam``, ``sam-med3d``, ``seganypet``); LiteMedSAM is moved to ``device``."""
    if name.lower() == "litemedsam":
        from ..teachers.litemedsam import load_litemedsam

        return load_litemedsam(checkpoint, modality=modality, device=device)
    from ..teachers.registry import load_teacher as load_registered

    return load_registered(name, checkpoint=checkpoint, modality=modality)


def new_cache(root=None):
    """The teachers' disk cache (``$DISTILLSEG_CACHE`` or ``~/.cache/distillseg/teachers``):
    outputs keyed by teacher weights (LoRA included), case, modality and prompt."""
    from ..teachers.cache import TeacherCache

    return TeacherCache(root)


def cached_teacher_output(cache, teacher, case_id: str, image: Volume, prompt, modality: str) -> np.ndarray:
    """``teacher.predict`` through the teachers' disk cache (:mod:`DistillSegLib.teachers.cache`)."""
    from ..teachers.cache import cached_predict

    return np.asarray(cached_predict(teacher, image, prompt, modality, case_id=case_id, cache=cache), np.float32)


def make_prompt(foreground: np.ndarray, teacher, n_points: int = 3, seed: int = 0):
    """The prompt a teacher gets from a student's foreground probability map.

    Box prompts (per axial slice, +2 px) for box-prompted teachers (LiteMedSAM); for
    3D teachers the map itself as mask prompt plus ``n_points`` positive points (MuDuo's
    K=3) where they take them.
    """
    from ..teachers.prompts import Prompt

    kinds = tuple(k for k in ("box", "mask", "points") if k in teacher.prompt_kinds)
    if getattr(teacher, "dims", 2) == 3 and "box" in kinds and len(kinds) > 1:
        kinds = tuple(k for k in kinds if k != "box")
    return Prompt(mask=foreground, kinds=kinds or ("box",), n_positive=n_points, n_negative=0, seed=seed)


def decode_with_prompts(sam: nn.Module, image_embedding: torch.Tensor, mask_logits: torch.Tensor | None = None,
                        boxes: torch.Tensor | None = None, prompt: nn.Module | None = None,
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
        prompt: optional learnable prompt (KnowSAM's ``LearnablePrompt``) adding sparse tokens and a dense residual.

    Returns:
        ``(B, 1, 4h, 4w)`` low-resolution mask logits (256 x 256 for SAM and LiteMedSAM);
        with ``with_iou`` also the predicted IoU ``(B,)``.
    """
    if boxes is not None and boxes.ndim == 2:
        boxes = boxes[:, None, :]
    from ..teachers.slicewise import decode_slices

    learned = prompt(image_embedding) if prompt is not None else None
    return decode_slices(sam, image_embedding, boxes=boxes, masks=mask_logits, learned=learned, with_iou=with_iou)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + BCE on logits ``(B, 1, H, W)`` against a 0/1 target of the same shape (MedSAM's loss)."""
    from monai.losses import DiceLoss

    dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")
    return dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)


def prompted_logits(sam: nn.Module, images: torch.Tensor, boxes: torch.Tensor | None = None,
                    mask_logits: torch.Tensor | None = None, prompt: nn.Module | None = None) -> torch.Tensor:
    """Teacher logits at input resolution ``(B, 1, H, W)`` (differentiable).

    ``images`` ``(B, 3, H, W)`` already preprocessed for the model; ``boxes`` ``(B, 4)`` or
    ``(B, 1, 4)`` in input pixels; ``mask_logits`` ``(B, 1, M, M)`` at the prompt encoder's
    mask resolution; ``prompt`` an optional learnable prompt (KnowSAM).
    """
    embedding = sam.image_encoder(images)
    low_res = decode_with_prompts(sam, embedding, mask_logits=mask_logits, boxes=boxes, prompt=prompt)
    return F.interpolate(low_res, size=images.shape[-2:], mode="bilinear", align_corners=False)


def finetune_teacher(sam: nn.Module, parameters: Sequence[nn.Parameter], images: torch.Tensor,
                     targets: torch.Tensor, boxes: torch.Tensor | None = None,
                     mask_logits: torch.Tensor | None = None, prompt: nn.Module | None = None,
                     steps: int = 20, lr: float = 1e-3, batch_size: int = 4,
                     optimizer: torch.optim.Optimizer | None = None,
                     generator: torch.Generator | None = None, on_step=None) -> list[float]:
    """Fine-tune ``parameters`` of a SAM-style teacher on labelled slices (Dice + BCE).

    TS-KD's stage 1 passes the LoRA parameters and ground-truth boxes; KnowSAM passes the
    LoRA and learnable-prompt parameters with the students' fused mask as prompt.

    Args:
        sam: the teacher (``image_encoder``, ``prompt_encoder``, ``mask_decoder``).
        parameters: what to optimise (everything else is left as it is).
        images: ``(N, 3, H, W)`` preprocessed labelled slices.
        targets: ``(N, 1, H, W)`` 0/1 ground truth in the same frame.
        boxes, mask_logits, prompt: prompts, as in :func:`prompted_logits` (first dim N).
        steps, lr, batch_size: AdamW steps on random batches of slices.
        optimizer: reuse an optimiser across calls (rounds) instead of a fresh AdamW.
        generator: RNG of the batch sampling.
        on_step: optional ``callable(step, loss)``.

    Returns:
        the loss of every step.
    """
    parameters = list(parameters)
    if not parameters:
        raise ValueError("nothing to fine-tune: no parameters given (add LoRA adapters first)")
    optimizer = optimizer or torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    # Eval mode throughout: the frozen backbone keeps its normalisation statistics
    # (TinyViT's BatchNorm running means would otherwise move) and LoRA has no dropout.
    was_training = sam.training
    sam.eval()
    losses = []
    try:
        for step in range(steps):
            index = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=generator)
            logits = prompted_logits(
                sam, images[index],
                None if boxes is None else boxes[index],
                None if mask_logits is None else mask_logits[index],
                prompt,
            )
            losses.append(optimiser_step(optimizer, segmentation_loss(logits, targets[index].float())))
            if on_step is not None:
                on_step(step + 1, losses[-1])
    finally:
        sam.train(was_training)
    return losses
