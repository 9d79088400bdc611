"""The PET hot spot of *Place ROI at PET hot spot*: looked for on the viewed slice, grown in 3D
(real sts-petct cases)."""

from __future__ import annotations

import numpy as np
import pytest

from DistillSegLib.errors import DistillSegError
from DistillSegLib.io.volume import Volume, apply_affine
from DistillSegLib.metrics.baselines import NoHotSpotError, hot_spot_mask, voxels_on_plane


def tumour_share(hot: Volume, label: Volume) -> float:
    """Fraction of the hot spot's PET voxels whose centres fall inside the reference tumour."""
    centres = apply_affine(hot.affine, np.argwhere(hot.array > 0))
    index = np.rint(apply_affine(np.linalg.inv(label.affine), centres)).astype(int)
    inside = np.all((index >= 0) & (index < label.shape), axis=1)
    hits = np.asarray(label.array)[tuple(index[inside].T)] > 0
    return float(hits.sum() / len(centres))


def largest_slice_plane(label: Volume) -> tuple[np.ndarray, np.ndarray]:
    k = int(np.argmax((np.asarray(label.array) > 0).sum(axis=(0, 1))))
    return apply_affine(label.affine, np.array([[0.0, 0.0, k]]))[0], np.asarray(label.affine, float)[:3, 2]


def test_the_viewed_slice_finds_the_tumour_where_the_whole_pet_finds_an_organ(sts_001):
    case = sts_001
    # STS_001: the hottest voxel of the crop is not the tumour (SUV 24 at the crop's top slice
    # against the tumour's 7.7): the whole-volume search places the ROI on it.
    assert tumour_share(hot_spot_mask(case.pet), case.label) == 0.0
    on_slice = hot_spot_mask(case.pet, plane=largest_slice_plane(case.label))
    assert tumour_share(on_slice, case.label) > 0.5
    # The region grows in 3D from the slice, over more than the one PET slice it started on.
    assert np.count_nonzero((on_slice.array > 0).any(axis=(0, 1))) > 1


def test_a_plane_crosses_one_voxel_layer_whatever_its_position_or_slope(sts_001):
    pet = sts_001.pet
    k_between = 10.5  # halfway between two slice centres: both count (each within half a voxel)
    point = apply_affine(pet.affine, np.array([[0.0, 0.0, k_between]]))[0]
    axial = voxels_on_plane(pet, (point, pet.affine[:3, 2]))
    assert sorted(np.flatnonzero(axial.any(axis=(0, 1)))) == [10, 11]
    at_centre = apply_affine(pet.affine, np.array([[0.0, 0.0, 20.0]]))[0]
    assert list(np.flatnonzero(voxels_on_plane(pet, (at_centre, [0, 0, 1])).any(axis=(0, 1)))) == [20]
    oblique = voxels_on_plane(pet, (at_centre, [0.0, 1.0, 1.0]))
    assert oblique.any() and not oblique.all()


def test_a_slice_outside_the_pet_or_a_plane_without_normal_is_refused(sts_001):
    pet = sts_001.pet
    low, high = pet.world_bounds()
    with pytest.raises(NoHotSpotError, match="the viewed slice misses"):
        hot_spot_mask(pet, plane=(high + 100.0, [0, 0, 1]))
    with pytest.raises(DistillSegError, match="a plane is"):
        hot_spot_mask(pet, plane=((low + high) / 2, [0, 0, 0]))
