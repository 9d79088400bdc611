"""Resampling volumes onto other grids through their world geometry (SimpleITK).

Arrays are never paired by index: a PET is brought onto the CT grid through both
affines, linear for images and nearest-neighbour for labels, 0 outside the source's
field of view. A mask that must keep its volume on a coarser or finer grid (a lesion
brought onto the PET grid for its SUV figures, an ROI drawn on the PET made a training
label on the CT grid) follows the partial-volume rule of :func:`mask_to_grid`.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import DistillSegError
from .volume import Volume, volume_from_sitk, volume_to_sitk

Interpolation = Literal["linear", "nearest", "bspline"]
_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def covered_fraction(a: Volume, b: Volume) -> float:
    """Fraction of ``a``'s voxel centres that lie inside ``b``'s field of view (its voxel edges).

    Exact, through both affines (any rotation): along every row of ``a`` (fixed ``j, k``) the
    centres inside ``b`` form one interval of ``i``, found from the three pairs of planes
    that bound ``b``. A rotated PET whose axis-aligned box meets the CT's may hold none of
    its voxels; a box test would call them overlapping.
    """
    to_b = np.linalg.inv(b.affine) @ a.affine  # a's index -> b's index
    ni, nj, nk = a.shape
    j, k = np.meshgrid(np.arange(nj, dtype=float), np.arange(nk, dtype=float), indexing="ij")
    low = np.full(j.shape, 0.0)
    high = np.full(j.shape, ni - 1.0)
    for axis, size in enumerate(b.shape):
        slope = to_b[axis, 0]
        start = to_b[axis, 1] * j + to_b[axis, 2] * k + to_b[axis, 3]  # b's index at i = 0
        lo_edge, hi_edge = -0.5 - start, size - 0.5 - start  # slope * i must lie in [lo_edge, hi_edge]
        if abs(slope) < 1e-12:
            outside = (lo_edge > 0) | (hi_edge < 0)
            high = np.where(outside, -1.0, high)
            continue
        first, last = np.minimum(lo_edge / slope, hi_edge / slope), np.maximum(lo_edge / slope, hi_edge / slope)
        low, high = np.maximum(low, first), np.minimum(high, last)
    count = np.clip(np.floor(high + 1e-9) - np.ceil(low - 1e-9) + 1, 0, None)
    return float(count.sum() / (ni * nj * nk))


def overlap_fraction(a: Volume, b: Volume) -> float:
    """Fraction of the smaller axis-aligned physical extent that the two volumes share."""
    a_lo, a_hi = a.world_bounds()
    b_lo, b_hi = b.world_bounds()
    inter = np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None).prod()
    smaller = min((a_hi - a_lo).prod(), (b_hi - b_lo).prod())
    return float(inter / smaller) if smaller > 0 else 0.0


def require_overlap(a: Volume, b: Volume, what: str = "CT and PET") -> None:
    """Raise a clear error when neither volume holds a voxel centre inside the other's field of view.

    Real voxel overlap (:func:`covered_fraction`), not axis-aligned boxes: a rotated PET
    whose box meets the CT's but whose voxels cover none of the CT is refused.
    """
    if overlap_fraction(a, b) <= 0.0 or (covered_fraction(a, b) <= 0.0 and covered_fraction(b, a) <= 0.0):
        a_lo, a_hi = a.world_bounds()
        b_lo, b_hi = b.world_bounds()
        raise DistillSegError(
            f"{what} do not overlap in space (no voxel of either lies inside the other): {a.describe()} spans RAS {np.round(a_lo, 1).tolist()}"
            f"..{np.round(a_hi, 1).tolist()} mm, {b.describe()} spans {np.round(b_lo, 1).tolist()}"
            f"..{np.round(b_hi, 1).tolist()} mm"
        )


def resample_to(
    volume: Volume,
    reference: Volume,
    interpolation: Interpolation = "linear",
    fill: float = 0.0,
) -> Volume:
    """Resample ``volume`` onto the grid (shape and affine) of ``reference``.

    Returns a new Volume with ``reference``'s geometry, ``volume``'s meta and dtype
    (float32 for interpolated images). Voxels outside ``volume``'s field of view get
    ``fill``.
    """
    require_overlap(reference, volume, "the two volumes")
    source = volume_to_sitk(_as_float_or_label(volume, interpolation))
    target = volume_to_sitk(Volume(np.zeros((1, 1, 1), np.uint8), reference.affine))
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(target.GetOrigin())
    resampler.SetOutputDirection(target.GetDirection())
    resampler.SetOutputSpacing(target.GetSpacing())
    resampler.SetSize([int(n) for n in reference.shape])
    resampler.SetInterpolator(_INTERPOLATORS[interpolation])
    resampler.SetDefaultPixelValue(float(fill))
    resampler.SetOutputPixelType(source.GetPixelID())
    out = volume_from_sitk(resampler.Execute(source))
    return Volume(out.array, reference.affine.copy(), dict(volume.meta))


# IBSI reference manual, "Partial volume effects in the ROI mask" (E8H9): a mask is
# interpolated trilinearly and a voxel belongs to it when the result is >= delta; "a common
# choice for the partial volume threshold is delta = 0.5" (Zwanenburg et al., Radiology
# 2020;295:328-338; https://ibsi.readthedocs.io/en/latest/02_Image_processing.html).
PARTIAL_VOLUME_THRESHOLD = 0.5


def mask_to_grid(mask: Volume, reference: Volume, threshold: float = PARTIAL_VOLUME_THRESHOLD) -> Volume:
    """A 0/1 mask brought onto ``reference``'s grid by the IBSI partial-volume rule.

    The binary mask (non-zero = inside) is interpolated trilinearly at the centre of every
    ``reference`` voxel, and the voxel belongs to the mask when that value is at least
    ``threshold`` (IBSI E8H9, delta = 0.5). Beyond its own grid the mask is 0.

    Returns:
        uint8 0/1 Volume with ``reference``'s shape and affine and ``mask``'s meta.
    """
    binary = (mask.array > 0)
    if reference.shape == mask.shape and np.allclose(reference.affine, mask.affine, atol=1e-3):
        return Volume(binary.astype(np.uint8), reference.affine.copy(), dict(mask.meta))
    # One voxel of zeros all round: ITK would hold the edge value over the outer half voxel.
    padded = np.pad(binary.astype(np.float32), 1)
    affine = mask.affine.copy()
    affine[:3, 3] -= mask.affine[:3, :3] @ np.ones(3)
    fraction = resample_to(Volume(padded, affine, mask.meta), reference, "linear", fill=0.0)
    return Volume((fraction.array >= threshold).astype(np.uint8), reference.affine.copy(), dict(mask.meta))


def resample_to_spacing(
    volume: Volume,
    spacing: Sequence[float],
    interpolation: Interpolation = "linear",
    fill: float = 0.0,
) -> Volume:
    """Resample onto a grid with the same orientation and extent but another voxel size (mm)."""
    spacing = np.asarray(spacing, dtype=float)
    old_spacing = np.asarray(volume.spacing)
    extent = np.asarray(volume.shape) * old_spacing
    shape = np.maximum(np.round(extent / spacing).astype(int), 1)
    directions = volume.affine[:3, :3] / old_spacing
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    # Keep the outer edge of the first voxel where it was: centre moves by half a voxel change.
    first_edge = volume.affine[:3, 3] - directions @ (old_spacing / 2)
    affine[:3, 3] = first_edge + directions @ (spacing / 2)
    reference = Volume(np.zeros(tuple(shape), np.uint8), affine)
    return resample_to(volume, reference, interpolation, fill)


def _as_float_or_label(volume: Volume, interpolation: Interpolation) -> Volume:
    if interpolation == "nearest":
        array = volume.array
        if array.dtype == bool:
            array = array.astype(np.uint8)
        return Volume(array, volume.affine, volume.meta)
    return Volume(volume.array.astype(np.float32, copy=False), volume.affine, volume.meta)
