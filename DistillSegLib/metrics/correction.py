"""Correction effort: what a radiologist changes to turn a segmentation into the reference.

The figures of the annotation-refinement loop (``DistillSegLib/demo/loop.py``,
``benchmarks/refinement_loop.py``), per case, on the grid both label maps share (the CT
grid in the Slicer module, where the Segment Editor works):

* ``added_ml``: reference voxels the segmentation missed, which must be drawn (mL);
* ``removed_ml``: segmented voxels outside the reference, which must be erased (mL);
* ``edited_ml``: the two together;
* ``drawn_fraction``: ``added / reference`` volume: 1.0 means the tumour had to be drawn
  from scratch, 0.0 that nothing was missing (``None`` when the reference is empty);
* ``slices_touched``: axial slices holding at least one changed voxel: the slices a
  radiologist stops at and edits.

Foreground is any non-zero label (one tumour class). The axial slices are those of the
index axis that runs closest to the patient's superior direction (``k`` in the sts-petct
files, whatever the file's orientation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import DistillSegError
from ..io.volume import Volume

GRID_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class CorrectionEffort:
    """The effort of one correction (see the module docstring for each figure)."""

    added_ml: float
    removed_ml: float
    reference_ml: float
    drawn_fraction: float | None
    slices_touched: int

    @property
    def edited_ml(self) -> float:
        return self.added_ml + self.removed_ml

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "edited_ml": self.edited_ml}


def axial_axis(affine: np.ndarray) -> int:
    """Index axis (0, 1 or 2) whose direction is closest to superior-inferior (RAS ``S``)."""
    directions = np.asarray(affine, float)[:3, :3]
    return int(np.argmax(np.abs(directions[2]) / np.linalg.norm(directions, axis=0)))


def correction_effort(segmentation: Volume, reference: Volume) -> CorrectionEffort:
    """The effort of correcting ``segmentation`` to ``reference`` (two label maps on one grid).

    Raises:
        DistillSegError: the two label maps are not on the same grid (shape and affine).
    """
    if segmentation.shape != reference.shape or not np.allclose(segmentation.affine, reference.affine,
                                                                 atol=GRID_TOLERANCE_MM):
        raise DistillSegError(f"segmentation {segmentation.describe()} (shape {segmentation.shape}) and reference "
                              f"{reference.describe()} (shape {reference.shape}) are not on one grid")
    drawn = (reference.array > 0) & ~(segmentation.array > 0)
    erased = (segmentation.array > 0) & ~(reference.array > 0)
    voxel_ml = reference.voxel_volume_ml
    reference_voxels = int(np.count_nonzero(reference.array))
    axis = axial_axis(reference.affine)
    other_axes = tuple(a for a in range(3) if a != axis)
    return CorrectionEffort(
        added_ml=float(np.count_nonzero(drawn) * voxel_ml),
        removed_ml=float(np.count_nonzero(erased) * voxel_ml),
        reference_ml=float(reference_voxels * voxel_ml),
        drawn_fraction=float(np.count_nonzero(drawn) / reference_voxels) if reference_voxels else None,
        slices_touched=int(np.count_nonzero((drawn | erased).any(axis=other_axes))),
    )


def mean_effort(efforts: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per-case means of :meth:`CorrectionEffort.to_dict` records (undefined fractions left out)."""
    keys = ("added_ml", "removed_ml", "edited_ml", "reference_ml", "drawn_fraction", "slices_touched")

    def mean(key: str) -> float | None:
        values = [e[key] for e in efforts if e.get(key) is not None]
        return float(np.mean(values)) if values else None

    return {key: mean(key) for key in keys} | {"cases": len(efforts)}
