"""The classic PET baseline every result is compared with: 41% of SUVmax inside the ROI.

A fixed-threshold isocontour at 41% of the lesion's SUVmax is the EANM procedure
guideline's recommended way to delineate a metabolic tumour volume (Boellaard R, et al.
"FDG PET/CT: EANM procedure guidelines for tumour imaging: version 2.0", Eur J Nucl Med
Mol Imaging 42:328-354 (2015), section "Metabolic tumour volume"), and the usual floor
that learned PET segmentations are reported against.

The segmentation is computed on the CT grid (the grid of every DistillSeg label map):
the PET is resampled there with :attr:`Case.pet_on_ct` (linear), SUVmax is the maximum
of that resampled PET inside the region of interest, and every ROI voxel with
``SUV >= fraction * SUVmax`` is foreground. For the ``sts-petct`` crops the ROI is the
whole crop; elsewhere an RAS box restricts it (the ``--roi`` convention of ``predict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..io.case import Case
from ..errors import DistillSegError
from ..io.volume import Volume

# Boellaard et al. 2015 (EJNMMI 42:328), EANM guideline v2.0: 41% of SUVmax.
SUVMAX_FRACTION = 0.41

RoiBox = tuple[Sequence[float], Sequence[float]]


@dataclass(frozen=True)
class SuvThresholdResult:
    """Output of :func:`suv_threshold_segmentation`.

    Attributes:
        mask: uint8 label map (1 = tumour) on the CT grid, CT affine.
        suv_max: SUVmax (g/mL) of the PET on the CT grid inside the ROI.
        threshold: the SUV cut-off applied, ``fraction * suv_max``.
        fraction: the fraction of SUVmax used.
    """

    mask: Volume
    suv_max: float
    threshold: float
    fraction: float


def index_linear(shape: Sequence[int], coefficients: Sequence[float], offset: float) -> np.ndarray:
    """``(I, J, K)`` float array of ``c0 i + c1 j + c2 k + offset`` over the voxel indices of
    ``shape`` (a world coordinate, or a distance along a direction), built by broadcasting
    instead of an ``(N, 3)`` table of indices."""
    i, j, k = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return coefficients[0] * i + coefficients[1] * j + coefficients[2] * k + offset


def roi_mask_on_grid(reference: Volume, roi: RoiBox | None) -> np.ndarray:
    """Boolean ``(I, J, K)`` mask of the voxels of ``reference`` whose centres lie in an RAS box.

    Args:
        reference: the grid (its shape and affine).
        roi: ``(min_xyz, max_xyz)`` in RAS mm, or ``None`` for the whole grid.

    Raises:
        DistillSegError: the box is malformed or contains no voxel centre of the grid.
    """
    if roi is None:
        return np.ones(reference.shape, dtype=bool)
    lo, hi = (np.asarray(v, dtype=float) for v in roi)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(hi < lo):
        raise DistillSegError(f"ROI must be (min x,y,z), (max x,y,z) in RAS mm with min <= max, got {roi}")
    affine = np.asarray(reference.affine, float)
    inside = np.ones(reference.shape, dtype=bool)
    for axis in range(3):  # one world coordinate at a time: a whole-body grid holds tens of millions of voxels
        coordinate = index_linear(reference.shape, affine[axis, :3], affine[axis, 3])
        inside &= (coordinate >= lo[axis]) & (coordinate <= hi[axis])
    if not inside.any():
        raise DistillSegError(f"ROI {lo.tolist()}..{hi.tolist()} mm contains no voxel of {reference.describe()}")
    return inside


def suv_threshold_segmentation(
    case: Case,
    fraction: float = SUVMAX_FRACTION,
    roi: RoiBox | None = None,
) -> SuvThresholdResult:
    """Segment the tumour as the ROI voxels at or above ``fraction`` of SUVmax.

    Args:
        case: a PET/CT case; only its PET (resampled onto the CT grid) is used.
        fraction: fraction of SUVmax, in (0, 1]; 0.41 per the EANM guideline.
        roi: RAS box ``(min_xyz, max_xyz)`` in mm; ``None`` = the whole CT grid (right
            for the crops of ``sts-petct``, wrong for a whole-body study, where the
            bladder or brain would hold SUVmax).

    Raises:
        DistillSegError: bad fraction, empty ROI, or no positive SUV inside the ROI.
    """
    if not 0.0 < fraction <= 1.0:
        raise DistillSegError(f"SUVmax fraction must be in (0, 1], got {fraction}")
    pet = case.pet_on_ct
    inside = roi_mask_on_grid(pet, roi)
    suv_max = float(pet.array[inside].max())
    if suv_max <= 0.0:
        raise DistillSegError(f"case {case.case_id}: no positive SUV inside the ROI, nothing to threshold")
    threshold = fraction * suv_max
    mask = (inside & (pet.array >= threshold)).astype(np.uint8)
    label = Volume(mask, case.ct.affine.copy(), {"label_names": {1: "tumour"}, "method": "suv41"})
    return SuvThresholdResult(label, suv_max, threshold, fraction)


class NoHotSpotError(DistillSegError):
    """No PET voxel in the region searched, or no uptake there: nowhere to place a hot spot."""


Plane = tuple[Sequence[float], Sequence[float]]  # (a point on it, its normal), RAS mm


def voxels_on_plane(grid: Volume, plane: Plane) -> np.ndarray:
    """Boolean ``(I, J, K)`` mask of the voxels of ``grid`` that ``plane`` crosses: those whose
    centre lies within half a voxel of it along its normal (at least one voxel layer wherever
    the plane meets the grid, whatever the slice spacing or the plane's orientation)."""
    point, normal = (np.asarray(v, dtype=float) for v in plane)
    length = float(np.linalg.norm(normal))
    if point.shape != (3,) or normal.shape != (3,) or length == 0.0:
        raise DistillSegError(f"a plane is (a point x,y,z), (a normal x,y,z) in RAS mm, got {plane}")
    normal = normal / length
    affine = np.asarray(grid.affine, float)
    step = normal @ affine[:3, :3]  # mm along the normal per voxel step on each index axis
    distance = index_linear(grid.shape, step, float((affine[:3, 3] - point) @ normal))
    return np.abs(distance) <= 0.5 * float(np.abs(step).sum())


def hot_spot_mask(pet: Volume, search: RoiBox | None = None, plane: Plane | None = None,
                  fraction: float = SUVMAX_FRACTION) -> Volume:
    """The PET hot spot: the connected region at or above ``fraction`` of SUVmax that holds the
    hottest voxel inside ``search`` and on ``plane`` (the module's *Place ROI at PET hot spot*).

    Looking on the viewed plane finds the lesion the radiologist is looking at; the hottest
    voxel of the whole volume is often elsewhere (another structure at the crop's edge, 60-100 mm
    from the tumour, on 8 of the 30 sts-petct cases: ``benchmarks/results/hot_spot_margin.json``).

    Args:
        pet: PET volume in SUV, ``(I, J, K)`` on its own grid.
        search: RAS box ``(min_xyz, max_xyz)`` mm where the hot spot is looked for and may grow
            (in Slicer: the view's in-plane bounds, unbounded along its normal), or ``None``
            for the whole PET.
        plane: ``(point, normal)`` RAS mm: the hottest voxel is looked for among the voxels
            this plane crosses (the viewed slice); the region then grows in 3D. ``None``: the
            hottest voxel anywhere in ``search``.
        fraction: fraction of SUVmax, 0.41 per the EANM guideline.

    Returns:
        uint8 mask on the PET's grid (1 = the hot spot).

    Raises:
        NoHotSpotError: no PET voxel inside ``search`` (and on ``plane``), or no positive SUV there.
        DistillSegError: a malformed ``plane``.
    """
    from scipy import ndimage

    on_plane = voxels_on_plane(pet, plane) if plane is not None else None  # a malformed plane: its own error
    try:
        inside = roi_mask_on_grid(pet, search)
    except DistillSegError as exc:
        raise NoHotSpotError(f"no PET voxel in the region searched for a hot spot: {exc}") from exc
    looked_at = inside if on_plane is None else inside & on_plane
    if not looked_at.any():
        raise NoHotSpotError(f"no PET voxel in the region searched for a hot spot: the viewed slice misses "
                             f"{pet.describe()}")
    values = np.asarray(pet.array, float)
    peak = np.unravel_index(int(np.argmax(np.where(looked_at, values, -np.inf))), values.shape)
    if not values[peak] > 0:
        raise NoHotSpotError(f"the PET {pet.describe()} has no uptake in the region searched")
    regions, _ = ndimage.label(inside & (values >= fraction * values[peak]))
    return Volume((regions == regions[peak]).astype(np.uint8), pet.affine.copy())
