"""Metric functions against values computed by hand on small arrays, empty cases included."""

from __future__ import annotations

import numpy as np
import pytest

from DistillSegLib.metrics.segmentation import (
    dice,
    evaluate_masks,
    false_volumes_ml,
    hd95,
    lesion_detection,
    summarise,
    surface_dice,
)


def box(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def test_dice_by_hand():
    gt = box((10, 10, 10), (2, 2, 2), (6, 6, 6))      # 64 voxels
    pred = box((10, 10, 10), (4, 2, 2), (8, 6, 6))    # 64 voxels, 32 shared
    assert dice(pred, gt) == pytest.approx(2 * 32 / 128)


def test_hd95_of_shifted_box_is_the_shift_in_mm():
    # A box shifted by 2 voxels along i, 1.5 mm spacing: surface distances are 0, 1.5 or
    # 3 mm; more than 5 % of the surface points are 3 mm away (the faces across i),
    # so the 95th percentile is 3 mm.
    gt = box((20, 20, 20), (5, 5, 5), (12, 12, 12))
    pred = box((20, 20, 20), (7, 5, 5), (14, 12, 12))
    assert hd95(pred, gt, (1.5, 1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(gt, gt, (1.5, 1.0, 1.0)) == 0.0


def test_surface_dice_tolerance():
    gt = box((20, 20, 20), (5, 5, 5), (12, 12, 12))
    shifted = box((20, 20, 20), (6, 5, 5), (13, 12, 12))
    # Shift of 1 mm: every surface voxel lies within 2 mm of the other surface.
    assert surface_dice(shifted, gt, (1.0, 1.0, 1.0), 2.0) == pytest.approx(1.0)
    far = box((20, 20, 20), (9, 5, 5), (16, 12, 12))
    assert surface_dice(far, gt, (1.0, 1.0, 1.0), 2.0) < 0.8


def test_fp_fn_volumes_and_lesion_detection_by_hand():
    shape = (20, 20, 20)
    gt = box(shape, (1, 1, 1), (4, 4, 4)) | box(shape, (10, 10, 10), (12, 12, 12))   # 27 + 8 voxels
    pred = box(shape, (2, 2, 2), (5, 5, 5)) | box(shape, (15, 15, 15), (17, 17, 18))  # 27 + 12 voxels
    voxel_ml = 0.002
    fp, fn = false_volumes_ml(pred, gt, voxel_ml)
    assert fp == pytest.approx(12 * voxel_ml)   # the predicted blob touching no GT
    assert fn == pytest.approx(8 * voxel_ml)    # the GT lesion touching no prediction
    detection = lesion_detection(pred, gt)
    assert (detection["tp"], detection["fp"], detection["fn"]) == (1, 1, 1)
    assert detection["f1"] == pytest.approx(2 / 4)


def test_diagonal_voxels_are_one_lesion():
    # 26-connectivity: voxels touching only by a corner form one component.
    gt = np.zeros((5, 5, 5), bool)
    gt[1, 1, 1] = gt[2, 2, 2] = True
    assert lesion_detection(gt, gt) == {"tp": 1, "fp": 0, "fn": 0, "f1": 1.0}


@pytest.mark.parametrize(
    "pred_empty, gt_empty, expected",
    [
        (True, True, {"dice": 1.0, "hd95_mm": 0.0, "surface_dice_2mm": 1.0, "fp_volume_ml": 0.0, "fn_volume_ml": 0.0, "f1": 1.0}),
        (True, False, {"dice": 0.0, "hd95_mm": None, "surface_dice_2mm": 0.0, "fp_volume_ml": 0.0, "fn_volume_ml": 0.008, "f1": 0.0}),
        (False, True, {"dice": 0.0, "hd95_mm": None, "surface_dice_2mm": 0.0, "fp_volume_ml": 0.008, "fn_volume_ml": 0.0, "f1": 0.0}),
    ],
)
def test_empty_cases(pred_empty, gt_empty, expected):
    blob = box((10, 10, 10), (3, 3, 3), (5, 5, 5))  # 8 voxels of 1 mm^3 = 0.008 mL
    empty = np.zeros_like(blob)
    result = evaluate_masks(empty if pred_empty else blob, empty if gt_empty else blob, (1.0, 1.0, 1.0))
    for key, value in expected.items():
        got = result["lesions"]["f1"] if key == "f1" else result[key]
        assert got == (None if value is None else pytest.approx(value)), key


def test_summary_leaves_undefined_hd95_out_of_the_mean():
    blob = box((10, 10, 10), (3, 3, 3), (5, 5, 5))
    cases = [evaluate_masks(blob, blob, (1, 1, 1)), evaluate_masks(np.zeros_like(blob), blob, (1, 1, 1))]
    mean = summarise(cases)
    assert mean["dice"] == pytest.approx(0.5)
    assert mean["hd95_mm"] == 0.0 and mean["hd95_undefined"] == 1
    assert (mean["lesions"]["tp"], mean["lesions"]["fn"]) == (1, 1)


def test_mean_hd95_leaves_out_and_names_cases_where_a_mask_is_empty():
    from DistillSegLib.commands.evaluate import format_table

    blob = box((12, 12, 12), (3, 3, 3), (5, 5, 5))
    shifted = box((12, 12, 12), (5, 3, 3), (7, 5, 5))
    empty = np.zeros_like(blob)
    cases = [{"case_id": "A", **evaluate_masks(shifted, blob, (1, 1, 1))},
             {"case_id": "B", **evaluate_masks(empty, empty, (1, 1, 1))},
             {"case_id": "C", **evaluate_masks(empty, blob, (1, 1, 1))}]
    mean = summarise(cases)
    assert mean["hd95_mm"] == pytest.approx(cases[0]["hd95_mm"])  # not halved by B's 0 "distance"
    assert mean["hd95_cases"] == 1
    assert mean["hd95_left_out"] == {"one_mask_empty": ["C"], "both_masks_empty": ["B"]}
    text = format_table({"cases": cases, "mean": mean})
    assert "mean HD95 over 1 of 3 cases; left out: one mask empty, HD95 undefined: C; both masks empty: B" in text
