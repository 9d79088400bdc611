"""Task-specific tuning of a slice-wise teacher's prompt encoder, mask decoder and IoU head.

TS-KD's first stage (Liang et al. 2025, arXiv:2503.06976) fine-tunes the foundation model
on the few labelled images before distilling it. Tuning the image encoder (LoRA,
:mod:`.lora`) makes every slice embedding stale, which on a CPU costs ~3 s per slice and
round; here only what runs after the encoder is tuned, so the
embeddings of the untuned teacher stay valid (:attr:`SamSliceTeacher.encoder_sha256`
does not change) and a tuning step costs only the decoder.

What the decoder learns from the labelled slices (each modality on its own grid):

* **jittered boxes** around a tumour component or all tumour on a slice (centre shifted
  and sides scaled at random, a margin added), as the student's boxes are: too large,
  too small, off-centre. The target is every tumour component the box touches, whole, so
  the teacher learns to complete a tumour that a box only partly covers;
* **negative boxes** whose answer is an empty mask: the tumour's box carried to the
  tumour-free slices just past its ends (where LiteMedSAM fills 83-134 % of the box, issue
  13), and boxes on tumour-free tissue of the slices around it (the student's false
  positives);
* **the IoU head** (SAM's mask-quality prediction) learns the IoU of its mask with the
  target (1 for an empty answer to a negative box), so it can serve as a confidence.

Loss per sample: BCE + soft Dice (MedSAM's loss; Dice on positive samples only, where it is
defined) on the decoder's logits in the model's padded input frame, plus the mean squared
error of the predicted IoU (as SAM trains its IoU head).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from ..io.volume import Volume
from .prompts import bounding_box
from .slicewise import SamSliceTeacher, SliceSession


@dataclass(frozen=True)
class DecoderTuningConfig:
    """Settings of decoder-only tuning.

    Attributes:
        steps, batch_size, lr, weight_decay: AdamW optimisation.
        margin_mm: box margin (as the automatic prompts use).
        jitter: standard deviation of the box centre shift, as a fraction of its size.
        scale: range of the random scale of each box side.
        negative_fraction: fraction of samples with a negative box (half past the tumour's
            ends, half on tumour-free tissue).
        end_slices: tumour-free slices past each end used for negatives.
        iou_weight: weight of the IoU head's squared error.
    """

    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4
    margin_mm: float = 5.0
    jitter: float = 0.1
    scale: tuple[float, float] = (0.8, 1.3)
    negative_fraction: float = 0.3
    end_slices: int = 4
    iou_weight: float = 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "scale": list(self.scale)}


@dataclass
class LabelledImage:
    """One labelled image in a teacher's canonical frame (what tuning samples from).

    Attributes:
        session: the image as the teacher sees it.
        truth: ``(K, H, W)`` bool tumour mask.
        parts: ``(K, H, W)`` int 2D connected components of ``truth`` per slice.
        tumour_slices: slices with tumour; ``end_slices``: tumour-free slices just past
            the tumour's ends; ``near_slices``: every slice within reach of the tumour.
        margin: box margin in pixels.
    """

    session: SliceSession
    truth: np.ndarray
    parts: np.ndarray
    tumour_slices: np.ndarray
    end_slices: np.ndarray
    near_slices: np.ndarray
    margin: int


def labelled_image(teacher: SamSliceTeacher, image: Volume, label: np.ndarray, modality: str,
                   config: DecoderTuningConfig = DecoderTuningConfig()) -> LabelledImage:
    """Prepare one labelled image (``label`` ``(I, J, K)`` on ``image``'s grid)."""
    from .auto_prompt import margin_pixels

    session = SliceSession(teacher, image, modality)
    truth = session.to_canonical(np.asarray(label) > 0)
    parts = np.zeros(truth.shape, np.int32)
    for k in range(truth.shape[0]):
        parts[k] = ndimage.label(truth[k], structure=np.ones((3, 3)))[0]
    tumour = np.flatnonzero(truth.any(axis=(1, 2)))
    reach = config.end_slices
    if len(tumour):
        first, last = int(tumour.min()), int(tumour.max())
        candidates = list(range(first - reach, first)) + list(range(last + 1, last + 1 + reach))
        ends = np.array([k for k in candidates if 0 <= k < truth.shape[0] and not truth[k].any()], int)
        near = np.arange(max(first - 2 * reach, 0), min(last + 2 * reach + 1, truth.shape[0]))
    else:
        ends, near = np.zeros(0, int), np.arange(truth.shape[0])
    return LabelledImage(session, truth, parts, tumour, ends, near, margin_pixels(session, config.margin_mm))


def jittered(box: np.ndarray, rng: np.random.Generator, config: DecoderTuningConfig, margin: int,
             shape: tuple[int, int]) -> np.ndarray:
    """A tight box moved, rescaled and given a margin, clipped to the ``(H, W)`` slice."""
    x0, y0, x1, y1 = box
    size = np.array([x1 - x0 + 1, y1 - y0 + 1], float)
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + rng.normal(0, config.jitter, 2) * size
    half = size * rng.uniform(*config.scale, 2) / 2 + margin
    low = np.maximum(centre - half, 0)
    high = np.minimum(centre + half, [shape[1] - 1, shape[0] - 1])
    high = np.maximum(high, low + 1)
    return np.array([low[0], low[1], high[0], high[1]], np.float32)


def touched_parts(image: LabelledImage, k: int, box: np.ndarray) -> np.ndarray:
    """The tumour components of slice ``k`` that the box touches, whole: ``(H, W)`` bool."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = np.unique(image.parts[k, y0:y1 + 1, x0:x1 + 1])
    return np.isin(image.parts[k], inside[inside > 0])


def sample_prompt(image: LabelledImage, rng: np.random.Generator,
                  config: DecoderTuningConfig) -> tuple[int, np.ndarray, np.ndarray]:
    """One training sample ``(slice, box, target (H, W) bool)`` (see the module docstring)."""
    shape = image.truth.shape[1:]
    kind = rng.uniform()
    if kind < config.negative_fraction / 2 and len(image.end_slices):
        k = int(rng.choice(image.end_slices))
        nearest = image.tumour_slices[np.argmin(np.abs(image.tumour_slices - k))]
        box = jittered(bounding_box(image.truth[nearest]), rng, config, image.margin, shape)
        return k, box, np.zeros(shape, bool)
    if kind < config.negative_fraction:
        negative = _tissue_box(image, rng, config)
        if negative is not None:
            return negative
    if not len(image.tumour_slices):
        raise ValueError("a labelled image without tumour gives no positive samples")
    k = int(rng.choice(image.tumour_slices))
    parts = [p for p in range(1, int(image.parts[k].max()) + 1)]
    target = image.parts[k] == rng.choice(parts) if rng.uniform() < 0.5 else image.truth[k]
    box = jittered(bounding_box(target), rng, config, image.margin, shape)
    return k, box, touched_parts(image, k, box)


def _tissue_box(image: LabelledImage, rng: np.random.Generator, config: DecoderTuningConfig):
    """A tumour-sized box on tumour-free tissue near the tumour, or None."""
    shape = image.truth.shape[1:]
    for _ in range(10):
        k = int(rng.choice(image.near_slices))
        reference = image.truth[rng.choice(image.tumour_slices)] if len(image.tumour_slices) else None
        tight = bounding_box(reference) if reference is not None else np.array([0, 0, shape[1] // 4, shape[0] // 4])
        w, h = tight[2] - tight[0] + 1, tight[3] - tight[1] + 1
        if w >= shape[1] - 2 or h >= shape[0] - 2:
            return None
        x0, y0 = rng.integers(0, shape[1] - w), rng.integers(0, shape[0] - h)
        box = jittered(np.array([x0, y0, x0 + w - 1, y0 + h - 1], np.float32), rng, config, image.margin, shape)
        if not touched_parts(image, k, box).any() and image.session.stack[k].std() > 0.02:
            return k, box, np.zeros(shape, bool)
    return None


def decoder_parameters(teacher: SamSliceTeacher) -> list:
    """The prompt encoder's and mask decoder's parameters (IoU head included)."""
    return list(teacher.model.prompt_encoder.parameters()) + list(teacher.model.mask_decoder.parameters())


def module_digest(*modules) -> str:
    """Short SHA-256 of the modules' tensors (names and bytes)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def tunable_copy(base: SamSliceTeacher, suffix: str = "tuned") -> SamSliceTeacher:
    """A private copy of ``base`` whose decoder may be tuned; the image encoder is frozen and
    keeps its embedding key (so the stored embeddings of ``base`` are reused)."""
    teacher = copy.copy(base)
    teacher.model = copy.deepcopy(base.model)
    teacher.name = f"{base.name}+{suffix}"
    teacher.base_weights_sha256 = base.weights_sha256
    for parameter in teacher.model.parameters():
        parameter.requires_grad = False
    for parameter in decoder_parameters(teacher):
        parameter.requires_grad = True
    refresh_digest(teacher)
    return teacher


def refresh_digest(teacher: SamSliceTeacher, *extra) -> str:
    """``weights_sha256`` = the encoder's key + a digest of the decoder (and ``extra`` modules,
    e.g. a learnable prompt): cached outputs of other decoder weights are never reused."""
    teacher.weights_sha256 = (f"{teacher.encoder_sha256}+decoder:"
                              f"{module_digest(teacher.model.prompt_encoder, teacher.model.mask_decoder, *extra)}")
    return teacher.weights_sha256


def tuning_loss(logits, iou_prediction, targets, positive, iou_weight: float = 1.0):
    """``(loss, measured IoU)`` for decoder logits and predicted IoU against 0/1 targets.

    Args:
        logits: ``(B, 1, s, s)`` low-resolution decoder logits, upsampled (bilinear) to the
            targets' ``(B, 1, S, S)`` padded input frame when smaller (SAM: 256 -> 1024).
        iou_prediction: ``(B,)``; positive: ``(B,)`` bool, samples whose target has tumour.
    """
    import torch
    import torch.nn.functional as F

    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=tuple(targets.shape[-2:]), mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    probability = torch.sigmoid(logits)
    dims = (1, 2, 3)
    dice = 1 - (2 * (probability * targets).sum(dims) + 1e-5) / ((probability ** 2).sum(dims) + targets.sum(dims) + 1e-5)
    dice = dice[positive].mean() if positive.any() else torch.zeros((), device=logits.device)
    with torch.no_grad():
        predicted = probability > 0.5
        truth = targets > 0.5
        union = (predicted | truth).sum(dims).float()
        measured = torch.where(union > 0, (predicted & truth).sum(dims).float() / union.clamp_min(1), torch.ones_like(union))
    iou_loss = F.mse_loss(iou_prediction.float(), measured)
    return bce + dice + iou_weight * iou_loss, measured


def optimiser_step(optimizer, loss) -> float:
    """One step of ``optimizer`` on ``loss``; returns the loss as a float."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def tune_decoder(teacher: SamSliceTeacher, images: Sequence[LabelledImage],
                 config: DecoderTuningConfig = DecoderTuningConfig(), seed: int = 0,
                 parameters: Sequence | None = None, decode: Callable | None = None,
                 on_step: Callable[[int, float], None] | None = None, optimizer=None) -> list[float]:
    """Tune the decoder of ``teacher`` (made by :func:`tunable_copy`) on labelled images.

    Args:
        teacher: the teacher; its model is changed in place, its digest refreshed.
        images: from :func:`labelled_image`, every modality with the teacher's modality.
        parameters: what to optimise (default: :func:`decoder_parameters`).
        decode: ``decode(embeddings, boxes) -> (logits, iou)`` (default: the teacher's own;
            KnowSAM passes one with its learnable prompt).
        on_step: ``callable(step, loss)`` after every step (progress, cancel).
        optimizer: an optimiser to continue with (KnowSAM tunes its teacher a little every
            round with one Adam); default a fresh AdamW over ``parameters``.

    Returns:
        the loss of every step.
    """
    import torch

    images = [image for image in images if len(image.tumour_slices)]
    if not images or config.steps <= 0:
        return []
    parameters = list(parameters) if parameters is not None else decoder_parameters(teacher)
    optimizer = optimizer or torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    decode = decode or (lambda embeddings, boxes: teacher.decode(embeddings, boxes=boxes, with_iou=True))
    rng = np.random.default_rng(seed)
    losses = []
    was_training = teacher.model.training
    teacher.model.eval()  # no dropout/batch statistics to move: only the weights learn
    try:
        for step in range(config.steps):
            samples = [(image, *sample_prompt(image, rng, config))
                       for image in (images[int(i)] for i in rng.integers(len(images), size=config.batch_size))]
            embeddings = torch.cat([image.session.embeddings([k]) for image, k, _, _ in samples]).to(teacher.device)
            boxes = torch.cat([image.session.model_boxes(box[None]) for image, _, box, _ in samples]).to(teacher.device)
            targets = torch.cat([image.session.padded(target[None]) for image, _, _, target in samples]).to(teacher.device)
            logits, iou = decode(embeddings, boxes)
            positive = torch.tensor([bool(target.any()) for _, _, _, target in samples], device=teacher.device)
            loss, _ = tuning_loss(logits, iou, targets, positive, config.iou_weight)
            losses.append(optimiser_step(optimizer, loss))
            if on_step is not None:
                on_step(step + 1, losses[-1])
    finally:
        teacher.model.train(was_training)
    refresh_digest(teacher)
    return losses
