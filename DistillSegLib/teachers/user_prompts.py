"""The radiologist's prompts: a 3D box and clicks in world space (RAS mm), and the previous mask.

Automatic prompts (:mod:`.prompts`) are derived from a probability map on the image's grid;
a radiologist's prompts are drawn in the viewer, in world coordinates, once for the study.
A :class:`UserPrompt` holds them in RAS millimetres (Slicer's and NIfTI's world frame) and
:meth:`UserPrompt.on_grid` is the one place where they are brought onto the grid of the
image a teacher sees (the CT, or the PET on its own native grid), as a :class:`GridPrompt`
in voxel indices of that grid. Everything a prompt can get wrong is refused there with
one message: a box or a click outside the image (for the PET: outside its field of view,
e.g. on a slice the PET does not cover), a click outside the box, an empty prompt.

Corrections: ``previous`` is the segment's current mask (a label map on any grid, the
voxels equal to ``segment``); with new clicks it asks a teacher to correct that segment
(SAM-Med3D's iterative refinement: previous logits as the mask prompt plus clicks).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import DistillSegError
from ..io.volume import Volume, apply_affine

# A point this close (mm) outside the box still counts as inside (rounding of typed values).
BOX_TOLERANCE_MM = 1e-3


def box_corners(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``(8, 3)`` corners of the axis-aligned box ``low``..``high``."""
    return np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])], float)


def format_mm(values) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in np.asarray(values, float)) + ")"


@dataclass(frozen=True)
class GridPrompt:
    """A :class:`UserPrompt` on one image's grid (voxel indices ``[i, j, k]`` of that grid).

    Attributes:
        shape: the grid's ``(I, J, K)``.
        box: ``(low, high)`` inclusive integer index corners of the box, clipped to the
            grid, or None. ``flat_axes`` lists the grid axes along which the drawn box had
            no extent (a box drawn on one slice).
        points: ``(N, 3)`` continuous voxel indices of the clicks.
        labels: ``(N,)`` 1 positive, 0 negative.
        previous: ``(I, J, K)`` bool mask of the segment being corrected, or None.
    """

    shape: tuple[int, int, int]
    box: tuple[np.ndarray, np.ndarray] | None = None
    flat_axes: tuple[int, ...] = ()
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    previous: np.ndarray | None = None

    @property
    def positive(self) -> np.ndarray:
        return self.points[self.labels == 1]

    def box_mask(self) -> np.ndarray | None:
        """Boolean ``(I, J, K)`` of the box (None without a box)."""
        if self.box is None:
            return None
        mask = np.zeros(self.shape, bool)
        low, high = self.box
        mask[low[0]:high[0] + 1, low[1]:high[1] + 1, low[2]:high[2] + 1] = True
        return mask

    def centre(self) -> np.ndarray:
        """Voxel index of the prompt's centre: the box's, else the previous mask's bounding
        box's, else the mean positive (or any) click."""
        if self.box is not None:
            return (self.box[0] + self.box[1]) / 2.0
        if self.previous is not None and self.previous.any():
            index = np.argwhere(self.previous)
            return (index.min(axis=0) + index.max(axis=0)) / 2.0
        chosen = self.positive if len(self.positive) else self.points
        return chosen.mean(axis=0)


@dataclass(frozen=True)
class UserPrompt:
    """A radiologist's prompt in RAS millimetres.

    Attributes:
        box: ``(low, high)`` RAS corners in mm (any two opposite corners are sorted), or None.
        points: ``(N, 3)`` click positions, RAS mm.
        labels: ``(N,)`` 1 for a positive click (part of the lesion), 0 for a negative one.
        previous: the current label map of the segment being corrected (any grid), or None.
        segment: the label value of that segment in ``previous``.
        source: free-form facts recorded in the provenance (e.g. the previous mask's path).
    """

    box: tuple[np.ndarray, np.ndarray] | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    previous: Volume | None = None
    segment: int = 1
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        points = np.asarray(self.points, float).reshape(-1, 3)
        labels = np.asarray(self.labels, np.int64).reshape(-1)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)
        if len(points) != len(labels):
            raise DistillSegError(f"{len(points)} prompt points but {len(labels)} labels")
        if not np.isin(labels, (0, 1)).all():
            raise DistillSegError("prompt point labels must be 1 (positive) or 0 (negative)")
        if self.box is not None:
            a, b = (np.asarray(c, float).reshape(3) for c in self.box)
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                raise DistillSegError("the prompt box has a non-finite coordinate")
            object.__setattr__(self, "box", (np.minimum(a, b), np.maximum(a, b)))
            low, high = self.box
            outside = np.any((points < low - BOX_TOLERANCE_MM) | (points > high + BOX_TOLERANCE_MM), axis=1)
            if outside.any():
                n = int(np.flatnonzero(outside)[0])
                raise DistillSegError(
                    f"prompt point {n + 1} at RAS {format_mm(points[n])} mm lies outside the prompt box "
                    f"RAS {format_mm(low)}..{format_mm(high)} mm")
        if not np.isfinite(points).all():
            raise DistillSegError("a prompt point has a non-finite coordinate")
        if self.box is None and self.previous is None and not (labels == 1).any():
            raise DistillSegError("a prompt needs a box, a positive click or a previous mask to correct")

    @property
    def is_correction(self) -> bool:
        return self.previous is not None

    def on_grid(self, image: Volume, modality: str) -> GridPrompt:
        """The prompt in voxel indices of ``image``'s grid (the grid the teacher sees).

        Raises:
            DistillSegError: the box or a click lies outside the image (for the PET: its
                field of view), or the previous mask is empty there and nothing else prompts.
        """
        shape = np.array(image.shape)
        to_index = np.linalg.inv(image.affine)
        g_low, g_high = image.world_bounds()
        where = (f"the {modality} image (RAS {format_mm(g_low)}..{format_mm(g_high)} mm"
                 + (", the PET's field of view)" if modality == "PET" else ")"))
        box, flat = None, ()
        if self.box is not None:
            index = apply_affine(to_index, box_corners(*self.box))
            first, last = index.min(axis=0), index.max(axis=0)
            if np.any(last < -0.5) or np.any(first > shape - 0.5):
                raise DistillSegError(
                    f"the prompt box RAS {format_mm(self.box[0])}..{format_mm(self.box[1])} mm lies outside {where}")
            # Voxels whose centres lie inside the box; a box thinner than a voxel keeps the nearest.
            low, high = np.ceil(first - 1e-6), np.floor(last + 1e-6)
            thin = high < low
            middle = np.round((first + last) / 2.0)
            low, high = np.where(thin, middle, low), np.where(thin, middle, high)
            box = (np.clip(low, 0, shape - 1).astype(int), np.clip(high, 0, shape - 1).astype(int))
            flat = tuple(int(a) for a in np.flatnonzero(last - first < 1e-6))
        points = apply_affine(to_index, self.points) if len(self.points) else np.zeros((0, 3))
        for n, index in enumerate(points):
            if np.any(index < -0.5) or np.any(index > shape - 0.5):
                raise DistillSegError(f"prompt point {n + 1} at RAS {format_mm(self.points[n])} mm lies outside {where}")
        previous = None
        if self.previous is not None:
            previous = segment_on_grid(self.previous, self.segment, image)
            if not previous.any() and box is None and not (self.labels == 1).any():
                raise DistillSegError(
                    f"the previous mask {self.previous.describe()} has no voxel of segment {self.segment} on the "
                    f"{modality} grid: nothing to correct (add a box or a positive click)")
        return GridPrompt(tuple(int(n) for n in shape), box, flat, np.clip(points, 0, shape - 1), self.labels, previous)

    def describe(self) -> dict:
        """JSON-ready record of the prompt (for the result's provenance)."""
        record: dict = {"kind": "correction" if self.is_correction else "user"}
        if self.box is not None:
            record["box_ras_mm"] = [round(float(v), 3) for v in np.concatenate(self.box)]
        if len(self.points):
            record["points_ras_mm"] = [[round(float(v), 3) for v in p] for p in self.points]
            record["point_labels"] = [int(v) for v in self.labels]
        if self.previous is not None:
            record["previous"] = {"segment": int(self.segment), "sha256": mask_digest(self.previous, self.segment),
                                  **({"path": self.previous.meta["path"]} if "path" in self.previous.meta else {})}
        record.update(self.source)
        return record


def segment_on_grid(label: Volume, segment: int, image: Volume) -> np.ndarray:
    """Boolean mask of ``label == segment`` on ``image``'s grid (nearest neighbour)."""
    from ..io.case import same_grid
    from ..io.resample import resample_to

    mask = label.with_array((np.asarray(label.array) == segment).astype(np.uint8))
    if not same_grid(mask, image):
        mask = resample_to(mask, image, "nearest", fill=0)
    return np.asarray(mask.array) > 0


def mask_digest(label: Volume, segment: int) -> str:
    """SHA-256 of a segment's voxels and grid (identifies the mask a correction started from)."""
    digest = hashlib.sha256(np.ascontiguousarray(np.asarray(label.array) == segment).tobytes())
    digest.update(np.round(label.affine, 6).tobytes())
    return digest.hexdigest()
