"""Lesion statistics on a real case (STS_001's GTV) against values computed by hand."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from DistillSegLib.metrics.lesions import PEAK_RADIUS_MM, lesion_statistics, sphere_offsets, write_lesion_table


def brute_force_peak(suv: np.ndarray, lesion: np.ndarray, spacing) -> float:
    """Mean SUV of the 1 mL sphere around every lesion voxel, by explicit offsets."""
    offsets = sphere_offsets(spacing)
    centres = np.argwhere(lesion)
    padded = np.pad(suv, [(abs(offsets[:, a]).max(),) * 2 for a in range(3)])  # 0 SUV outside the image
    shift = np.array([abs(offsets[:, a]).max() for a in range(3)])
    best = -np.inf
    for chunk in np.array_split(centres, max(1, len(centres) // 4000)):
        idx = chunk[:, None, :] + offsets[None] + shift
        best = max(best, padded[idx[..., 0], idx[..., 1], idx[..., 2]].mean(axis=1).max())
    return float(best)


def test_sphere_is_one_millilitre():
    # On a fine grid the voxel count of the sphere approaches 1 mL.
    spacing = (0.5, 0.5, 0.5)
    assert len(sphere_offsets(spacing)) * 0.125 / 1000 == pytest.approx(1.0, rel=0.02)
    assert PEAK_RADIUS_MM == pytest.approx(6.2035, abs=1e-3)


def test_lesion_statistics_of_sts_001(sts_001, tmp_path):
    label = sts_001.label_on_ct
    rows = lesion_statistics(label, sts_001.pet)

    suv = sts_001.pet_on_ct.array.astype(np.float64)
    components, count = ndimage.label(label.array > 0, structure=np.ones((3, 3, 3)))
    assert len(rows) == count
    biggest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    lesion = components == biggest
    row = max(rows, key=lambda r: r["voxels"])
    spacing = label.spacing
    voxel_ml = np.prod(spacing) / 1000.0
    assert row["voxels"] == lesion.sum()
    assert row["mtv_ml"] == pytest.approx(lesion.sum() * voxel_ml)
    assert row["suv_max"] == pytest.approx(suv[lesion].max(), rel=1e-6)
    assert row["suv_mean"] == pytest.approx(suv[lesion].mean(), rel=1e-6)
    assert row["tlg"] == pytest.approx(lesion.sum() * voxel_ml * suv[lesion].mean(), rel=1e-6)
    assert row["suv_peak"] == pytest.approx(brute_force_peak(suv, lesion, spacing), rel=1e-6)
    assert row["suv_mean"] < row["suv_peak"] < row["suv_max"]
    centroid = label.affine[:3, :3] @ np.argwhere(lesion).mean(axis=0) + label.affine[:3, 3]
    assert [row["centroid_r_mm"], row["centroid_a_mm"], row["centroid_s_mm"]] == pytest.approx(centroid.tolist())

    write_lesion_table(rows, tmp_path / "lesions.csv")
    with open(tmp_path / "lesions.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == count and float(table[0]["mtv_ml"]) == pytest.approx(rows[0]["mtv_ml"], abs=1e-4)
