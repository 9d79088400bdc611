"""The radiologist's prompts: RAS mm -> each image's own grid, in one place, and the bad input it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from DistillSegLib.commands.prompt_options import parse_box, parse_points
from DistillSegLib.errors import DistillSegError
from DistillSegLib.io.volume import Volume, apply_affine
from DistillSegLib.teachers.base import Reorientation
from DistillSegLib.teachers.interactive import CanonicalIndex, SliceClick, agree, cut_box
from DistillSegLib.teachers.user_prompts import UserPrompt


def world(volume: Volume, index) -> np.ndarray:
    return apply_affine(volume.affine, np.asarray(index, float).reshape(-1, 3))


def test_box_and_points_land_on_each_grid(sts_001):
    ct, pet = sts_001.ct, sts_001.pet
    low, high = world(ct, [40, 50, 10])[0], world(ct, [80, 90, 20])[0]
    click = world(ct, [60, 70, 15])[0]
    prompt = UserPrompt(box=(low, high), points=[click], labels=[1])
    on_ct = prompt.on_grid(ct, "CT")
    box_low, box_high = on_ct.box
    # corners are voxel centres, so the box covers exactly those voxels (in whatever axis order)
    np.testing.assert_array_equal(np.sort([box_low, box_high], axis=0), [[40, 50, 10], [80, 90, 20]])
    np.testing.assert_allclose(on_ct.points[0], [60, 70, 15], atol=1e-6)
    on_pet = prompt.on_grid(pet, "PET")  # the same world positions on the PET's own (coarser) grid
    np.testing.assert_allclose(world(pet, on_pet.points)[0], click, atol=1e-6)
    pet_box = on_pet.box_mask()
    inside = world(pet, np.argwhere(pet_box))
    assert inside.min(axis=0).round(3).tolist() >= np.minimum(low, high).round(3).tolist()
    assert inside.max(axis=0).round(3).tolist() <= np.maximum(low, high).round(3).tolist()


def test_a_box_drawn_on_one_slice_keeps_that_slice_and_is_flat(sts_001):
    ct = sts_001.ct
    low, high = world(ct, [40, 50, 12])[0], world(ct, [80, 90, 12])[0]
    on_ct = UserPrompt(box=(low, high)).on_grid(ct, "CT")
    assert on_ct.box[0][2] == on_ct.box[1][2] == 12
    assert on_ct.flat_axes == (2,)


def test_bad_prompts_are_refused_with_one_clear_message(sts_001):
    ct, pet = sts_001.ct, sts_001.pet
    lo, hi = ct.world_bounds()
    with pytest.raises(DistillSegError, match="lies outside the CT image"):
        UserPrompt(box=(hi + 10, hi + 50)).on_grid(ct, "CT")
    with pytest.raises(DistillSegError, match="point 1 .* lies outside the CT image"):
        UserPrompt(points=[hi + 5], labels=[1]).on_grid(ct, "CT")
    with pytest.raises(DistillSegError, match="point 2 .* lies outside the prompt box"):
        UserPrompt(box=(lo + 5, lo + 20), points=[lo + 10, hi - 5], labels=[1, 0])
    with pytest.raises(DistillSegError, match="needs a box, a positive click or a previous mask"):
        UserPrompt(points=[lo + 10], labels=[0])
    with pytest.raises(DistillSegError, match="1 \\(positive\\) or 0"):
        UserPrompt(points=[lo + 10], labels=[2])
    # a click on a slice the PET does not cover: the PET cut to its lower half
    half = pet.shape[2] // 2
    lower_pet = Volume(pet.array[:, :, :half], pet.affine)
    top_click = world(pet, [pet.shape[0] // 2, pet.shape[1] // 2, pet.shape[2] - 2])[0]
    prompt = UserPrompt(points=[top_click], labels=[1])
    prompt.on_grid(ct, "CT")  # inside the CT
    with pytest.raises(DistillSegError, match="outside the PET image .*field of view"):
        prompt.on_grid(lower_pet, "PET")


def test_previous_mask_is_brought_onto_the_grid_and_an_empty_one_refused(sts_001):
    ct, pet = sts_001.ct, sts_001.pet
    label = sts_001.label_on_ct
    prompt = UserPrompt(previous=label.with_array(label.array.astype(np.uint8) * 2), segment=2,
                        points=[world(ct, np.argwhere(label.array > 0)[0])[0]], labels=[0])
    on_pet = prompt.on_grid(pet, "PET")
    assert on_pet.previous.shape == pet.shape and on_pet.previous.any()
    with pytest.raises(DistillSegError, match="no voxel of segment 1"):
        UserPrompt(previous=label.with_array(label.array.astype(np.uint8) * 2), segment=1).on_grid(ct, "CT")


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LAS", "PIR"])
def test_canonical_index_matches_the_teachers_reorientation(codes):
    import nibabel.orientations as nio

    shape = (7, 5, 4)
    ornt = nio.axcodes2ornt(tuple(codes))
    affine = np.eye(4)
    for axis, (target, flip) in enumerate(ornt):
        affine[:3, axis] = 0
        affine[int(target), axis] = flip * 2.0
    orientation = Reorientation.for_affine(affine, shape, "LPS")
    mapping = CanonicalIndex(orientation)
    rng = np.random.default_rng(0)
    for index in rng.integers(0, shape, size=(10, 3)):
        marks = np.zeros(shape, np.uint8)
        marks[tuple(index)] = 1
        expected = np.argwhere(orientation.to_canonical(marks))[0]
        np.testing.assert_array_equal(mapping(index)[0], expected)


def test_box_edits_of_box_only_teachers():
    box = np.array([10, 10, 30, 30], np.float32)
    mask = np.zeros((50, 50), bool)
    mask[12:28, 12:22] = True  # the lesion sits in the left part of the box
    cut, (side, value) = cut_box(box, SliceClick(row=20, col=26, label=0), mask)  # a negative click right of it
    assert cut[2] < 26 and cut[0] == 10 and (side, value) == (2, 25)
    assert agree(mask, mask) and agree(np.zeros_like(mask), np.zeros_like(mask)) and not agree(mask, ~mask)


def test_option_parsing():
    low, high = parse_box("10,-5,3,-10,5,-3")
    np.testing.assert_array_equal(low, [-10, -5, -3])
    np.testing.assert_array_equal(high, [10, 5, 3])
    points, labels = parse_points("1,2,3,+; -4,5.5,6,-")
    np.testing.assert_array_equal(points, [[1, 2, 3], [-4, 5.5, 6]])
    np.testing.assert_array_equal(labels, [1, 0])
    for bad in ("1,2,3", "1,2,3,4,5,x", "1,2,3,nan,5,6"):
        with pytest.raises(DistillSegError, match="--prompt-box"):
            parse_box(bad)
    for bad in ("1,2,3", "1,2,3,?", ";", "a,b,c,+"):
        with pytest.raises(DistillSegError, match="--prompt-points"):
            parse_points(bad)
