"""Automatic prompts for the teachers, derived from a probability map or a mask.

These prompts come from the student's prediction (or from a label while fine-tuning); the
radiologist's own box and clicks are in :mod:`.user_prompts` and :mod:`.interactive`. A :class:`Prompt` holds that source map on the case grid
plus the settings that turn it into the prompt kinds a teacher understands:

* ``"box"``: one box per axial slice around the foreground of the slice, with a margin
  (MedSAM/LiteMedSAM style: the CVPR24 LiteMedSAM inference derives per-slice boxes from
  the 3D box prompt; here they come from the mask slice itself);
* ``"points"``: K positive and K negative points sampled (seeded) from confident regions:
  positives inside the eroded confident foreground, negatives in a band just outside it
  (the region where a teacher must decide where the boundary is);
* ``"mask"``: the probability map itself, resized to the teacher's mask-prompt resolution
  and given as logits (SAM's ``mask_inputs`` are low-resolution logits).

Everything here is plain NumPy/SciPy on arrays; the teachers call it on their own
(canonical, resampled) grids. :meth:`Prompt.digest` hashes the arrays and settings so that
the cache never reuses an output computed from another prompt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from ..errors import DistillSegError

PROMPT_KINDS = ("box", "points", "mask")
# Probability above which a voxel is "confidently foreground", below which "confidently
# background" when sampling points.
CONFIDENT_HIGH = 0.9
CONFIDENT_LOW = 0.1


@dataclass(frozen=True)
class Prompt:
    """An automatic prompt on the case grid.

    Attributes:
        mask: ``(I, J, K)`` foreground probabilities in [0, 1] (or a 0/1 mask) on the same
            grid as the CT/PET given to the teacher.
        kinds: which prompt kinds to derive (subset of ``PROMPT_KINDS``).
        box_margin: margin added around each box, in pixels of the slice (LiteMedSAM's
            reference figures in DESIGN.md use +2 px).
        n_positive, n_negative: points sampled per prompt (per slice for 2D teachers, per
            volume for 3D teachers).
        seed: seed of the point sampling (same seed, same points).
        threshold: probability at which ``mask`` counts as foreground for boxes.
        points: optional explicit ``(N, 3)`` voxel indices (i, j, k) on the case grid,
            replacing the sampled points; ``point_labels`` ``(N,)`` 1 positive / 0 negative.
    """

    mask: np.ndarray
    kinds: tuple[str, ...] = ("box",)
    box_margin: int = 2
    n_positive: int = 3
    n_negative: int = 3
    seed: int = 0
    threshold: float = 0.5
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mask.ndim != 3:
            raise DistillSegError(f"prompt mask must be 3D, got shape {self.mask.shape}")
        unknown = set(self.kinds) - set(PROMPT_KINDS)
        if unknown or not self.kinds:
            raise DistillSegError(f"unknown prompt kinds {sorted(unknown)}; choose from {PROMPT_KINDS}")
        if (self.points is None) != (self.point_labels is None):
            raise DistillSegError("explicit prompt points need point_labels (and vice versa)")

    @property
    def foreground(self) -> np.ndarray:
        """Boolean ``(I, J, K)`` foreground of the prompt map."""
        return np.asarray(self.mask) >= self.threshold

    def is_empty(self) -> bool:
        return not self.foreground.any()

    def with_mask(self, mask: np.ndarray) -> "Prompt":
        """The same settings on another map (e.g. after reorientation or resampling)."""
        return replace(self, mask=mask)

    def digest(self) -> str:
        """SHA-256 of the prompt arrays and settings (the cache key's prompt part)."""
        h = hashlib.sha256()
        mask = np.ascontiguousarray(self.mask, dtype=np.float32)
        h.update(str(mask.shape).encode())
        h.update(mask.tobytes())
        settings = {
            "kinds": list(self.kinds), "box_margin": self.box_margin, "n_positive": self.n_positive,
            "n_negative": self.n_negative, "seed": self.seed, "threshold": self.threshold,
            "extra": self.extra,
        }
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
        if self.points is not None:
            h.update(np.ascontiguousarray(self.points, dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(self.point_labels, dtype=np.int64).tobytes())
        return h.hexdigest()


def bounding_box(mask2d: np.ndarray, margin: int = 0) -> np.ndarray | None:
    """``[x0, y0, x1, y1]`` (column, row; inclusive pixel indices) of a 2D mask plus
    ``margin`` pixels, clipped to the image; None when the mask is empty.

    SAM's box convention: x is the column (width) axis, y the row axis.
    """
    rows = np.flatnonzero(mask2d.any(axis=1))
    cols = np.flatnonzero(mask2d.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask2d.shape
    return np.array([
        max(cols[0] - margin, 0), max(rows[0] - margin, 0),
        min(cols[-1] + margin, w - 1), min(rows[-1] + margin, h - 1),
    ], dtype=np.float32)


def slice_boxes(foreground: np.ndarray, margin: int = 2) -> dict[int, np.ndarray]:
    """Per-slice boxes of a ``(S, H, W)`` stack of 2D masks: ``{slice: [x0, y0, x1, y1]}``
    for every slice with foreground (pixel indices of the ``(H, W)`` slice)."""
    boxes = {}
    for s in np.flatnonzero(foreground.reshape(foreground.shape[0], -1).any(axis=1)):
        boxes[int(s)] = bounding_box(foreground[s], margin)
    return boxes


def sample_points(
    probability: np.ndarray,
    n_positive: int,
    n_negative: int,
    seed: int = 0,
    band: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """K positive and K negative points from the confident regions of a 2D or 3D map.

    Positives come from the confident foreground (p >= 0.9) eroded once when that leaves
    anything (points away from the uncertain rim); negatives from confident background
    (p <= 0.1) within ``band`` voxels of the foreground, falling back to any confident
    background. With no confident foreground, the single most probable voxel is the
    positive point.

    Returns:
        ``(coords, labels)``: ``(N, ndim)`` integer indices into ``probability`` and
        ``(N,)`` labels (1 positive, 0 negative); N <= n_positive + n_negative.
    """
    probability = np.asarray(probability, dtype=np.float32)
    rng = np.random.default_rng(seed)
    confident_fg = probability >= CONFIDENT_HIGH
    if not confident_fg.any():
        confident_fg = probability >= max(float(probability.max()), 1e-6) - 1e-6
        confident_fg &= probability > 0
    eroded = ndimage.binary_erosion(confident_fg)
    positives_from = eroded if eroded.any() else confident_fg
    background = probability <= CONFIDENT_LOW
    near = background & ndimage.binary_dilation(confident_fg, iterations=band) if confident_fg.any() else background
    negatives_from = near if near.any() else background

    def pick(region: np.ndarray, count: int) -> np.ndarray:
        candidates = np.argwhere(region)
        if count <= 0 or len(candidates) == 0:
            return np.zeros((0, probability.ndim), dtype=np.int64)
        chosen = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
        return candidates[np.sort(chosen)]

    pos, neg = pick(positives_from, n_positive), pick(negatives_from, n_negative)
    coords = np.concatenate([pos, neg]).astype(np.int64)
    labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    return coords, labels


def probability_to_logits(probability: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Logits of a probability map (clipped to [eps, 1-eps]): SAM's mask prompts are logits."""
    p = np.clip(np.asarray(probability, dtype=np.float32), eps, 1.0 - eps)
    return np.log(p / (1.0 - p)).astype(np.float32)


def mask_prompt(probability: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """The probability map resized (linear) to a teacher's mask-prompt resolution, as logits.

    ``probability`` is 2D ``(H, W)`` or 3D ``(D, H, W)``; ``size`` has the same length
    (e.g. 256x256 for SAM/LiteMedSAM's ``mask_input_size``, 32^3 for SAM-Med3D).
    """
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(probability, dtype=np.float32))[None, None]
    mode = "bilinear" if tensor.ndim == 4 else "trilinear"
    resized = F.interpolate(tensor, size=tuple(size), mode=mode, align_corners=False)[0, 0].numpy()
    return probability_to_logits(resized)
