"""The refinement loop's correction-effort measures, against values counted by hand."""

from __future__ import annotations

import numpy as np
import pytest

from DistillSegLib.errors import DistillSegError
from DistillSegLib.io.volume import Volume
from DistillSegLib.metrics.correction import axial_axis, correction_effort, mean_effort


def box(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return mask


SPACING = (2.0, 1.0, 3.0)  # mm: a voxel is 6 mm^3 = 0.006 mL
RAS = np.diag([*SPACING, 1.0])


def test_effort_by_hand():
    shape = (10, 10, 10)
    reference = Volume(box(shape, (2, 2, 2), (6, 6, 6)), RAS)      # 64 voxels, axial slices k = 2..5
    segmentation = Volume(box(shape, (4, 2, 2), (8, 6, 7)), RAS)   # 80 voxels; 32 shared; k = 2..6
    effort = correction_effort(segmentation, reference)
    assert effort.added_ml == pytest.approx(32 * 0.006)      # i = 2, 3 of the reference: missed
    assert effort.removed_ml == pytest.approx(48 * 0.006)    # i = 6, 7 and the slice k = 6: outside it
    assert effort.edited_ml == pytest.approx(80 * 0.006)
    assert effort.reference_ml == pytest.approx(64 * 0.006)
    assert effort.drawn_fraction == pytest.approx(0.5)
    assert effort.slices_touched == 5                        # k = 2..6 each hold a changed voxel
    record = effort.to_dict()
    assert record["edited_ml"] == pytest.approx(effort.added_ml + effort.removed_ml)


def test_a_perfect_segmentation_needs_nothing_and_an_empty_one_needs_everything():
    reference = Volume(box((8, 8, 8), (1, 1, 3), (4, 5, 6)), RAS)   # 3 axial slices
    perfect = correction_effort(reference.with_array(reference.array.copy()), reference)
    assert (perfect.edited_ml, perfect.drawn_fraction, perfect.slices_touched) == (0.0, 0.0, 0)
    empty = correction_effort(reference.with_array(np.zeros((8, 8, 8), np.uint8)), reference)
    assert empty.drawn_fraction == 1.0 and empty.removed_ml == 0.0 and empty.slices_touched == 3
    nothing_to_find = correction_effort(reference, reference.with_array(np.zeros((8, 8, 8), np.uint8)))
    assert nothing_to_find.drawn_fraction is None and nothing_to_find.removed_ml == pytest.approx(reference.array.sum() * 0.006)


def test_slices_are_counted_along_the_axis_closest_to_superior():
    # The same masks with the axes permuted: the superior axis is now index axis 0.
    permuted = np.array([[0, 0, 3.0, 0], [0, 1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    assert axial_axis(RAS) == 2 and axial_axis(permuted) == 0
    reference = Volume(box((10, 10, 10), (2, 2, 2), (6, 6, 6)).transpose(2, 1, 0).copy(), permuted)
    segmentation = Volume(box((10, 10, 10), (4, 2, 2), (8, 6, 7)).transpose(2, 1, 0).copy(), permuted)
    effort = correction_effort(segmentation, reference)
    assert effort.slices_touched == 5 and effort.edited_ml == pytest.approx(80 * 0.006)
    # an oblique superior axis (tilted 20 degrees) still picks the axis that runs mostly superior
    tilt = np.deg2rad(20)
    oblique = np.array([[1.0, 0, 0, 0], [0, np.cos(tilt), np.sin(tilt), 0], [0, -np.sin(tilt), np.cos(tilt), 0],
                        [0, 0, 0, 1]])
    assert axial_axis(oblique) == 2


def test_masks_on_different_grids_are_refused():
    reference = Volume(box((6, 6, 6), (1, 1, 1), (3, 3, 3)), RAS)
    moved = Volume(reference.array.copy(), RAS + np.array([[0, 0, 0, 1.0], [0] * 4, [0] * 4, [0] * 4]))
    with pytest.raises(DistillSegError, match="not on one grid"):
        correction_effort(moved, reference)
    with pytest.raises(DistillSegError, match="not on one grid"):
        correction_effort(Volume(np.zeros((6, 6, 5), np.uint8), RAS), reference)


def test_mean_effort_leaves_undefined_fractions_out():
    efforts = [{"added_ml": 1.0, "removed_ml": 3.0, "edited_ml": 4.0, "reference_ml": 2.0, "drawn_fraction": 0.5,
                "slices_touched": 4},
               {"added_ml": 0.0, "removed_ml": 1.0, "edited_ml": 1.0, "reference_ml": 0.0, "drawn_fraction": None,
                "slices_touched": 1}]
    mean = mean_effort(efforts)
    assert mean["edited_ml"] == pytest.approx(2.5) and mean["slices_touched"] == pytest.approx(2.5)
    assert mean["drawn_fraction"] == pytest.approx(0.5) and mean["cases"] == 2
    assert mean_effort([])["edited_ml"] is None
