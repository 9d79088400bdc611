"""Lesion statistics: SUV figures from the native PET voxels, checked against an independent
computation (scipy instead of SimpleITK for the mask, explicit loops for SUVpeak) on real cases."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from DistillSegLib.io.volume import Volume, read_image
from DistillSegLib.metrics.lesions import (PEAK_RADIUS_MM, lesion_statistics, lesion_table, sphere_offsets,
                                           write_lesion_table)

RELATIVE = 1e-3  # 0.1 %


def mask_on_pet(mask: np.ndarray, grid: Volume, pet: Volume) -> np.ndarray:
    """The IBSI rule, written independently of the engine: the 0/1 mask (on ``grid``) interpolated
    trilinearly (scipy, zero beyond the grid) at every PET voxel centre, kept where >= 0.5."""
    centres = np.indices(pet.shape).reshape(3, -1).T.astype(float)
    world = centres @ pet.affine[:3, :3].T + pet.affine[:3, 3]
    inverse = np.linalg.inv(grid.affine)
    index = world @ inverse[:3, :3].T + inverse[:3, 3]
    fraction = ndimage.map_coordinates(mask.astype(float), index.T, order=1, mode="grid-constant", cval=0.0)
    return (fraction >= 0.5).reshape(pet.shape)


def peak_by_loops(suv: np.ndarray, lesion: np.ndarray, spacing) -> float:
    """Mean SUV of the PET voxels whose centres lie within 6.2035 mm of each lesion voxel's centre
    (voxels outside the image left out); the highest such mean."""
    radius = (3.0 / (4.0 * np.pi)) ** (1.0 / 3.0) * 10.0
    reach = [int(radius // s) for s in spacing]
    offsets = [(a, b, c) for a in range(-reach[0], reach[0] + 1) for b in range(-reach[1], reach[1] + 1)
               for c in range(-reach[2], reach[2] + 1)
               if (a * spacing[0]) ** 2 + (b * spacing[1]) ** 2 + (c * spacing[2]) ** 2 <= radius**2]
    best = -np.inf
    for centre in np.argwhere(lesion):
        values = [suv[tuple(centre + o)] for o in np.array(offsets)
                  if np.all(centre + o >= 0) and np.all(centre + o < suv.shape)]
        best = max(best, float(np.mean(values)))
    return best


def test_sphere_is_one_millilitre():
    # On a fine grid the voxel count of the sphere approaches 1 mL.
    spacing = (0.5, 0.5, 0.5)
    assert len(sphere_offsets(spacing)) * 0.125 / 1000 == pytest.approx(1.0, rel=0.02)
    assert PEAK_RADIUS_MM == pytest.approx(6.2035, abs=1e-3)


@pytest.mark.parametrize("case_id", ["STS_001", "STS_019", "STS_044"])
def test_suv_figures_come_from_the_native_pet(sts_case_dir, case_id):
    """A label on the CT grid: MTV on the CT grid, SUV figures from the PET's own voxels (0.1 %)."""
    folder = sts_case_dir(case_id)
    label, pet = read_image(folder / "CT_mask.nii.gz"), read_image(folder / "PET_image.nii.gz")
    table = lesion_table(label, pet, min_lesion_ml=0.0)
    components, count = ndimage.label(label.array > 0, structure=np.ones((3, 3, 3)))
    assert len(table.rows) == count and table.left_out == 0
    biggest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    lesion = components == biggest
    row = max(table.rows, key=lambda r: r["voxels"])

    suv = pet.array.astype(np.float64)
    on_pet = mask_on_pet(lesion, label, pet)
    mtv = lesion.sum() * label.voxel_volume_ml
    assert row["voxels"] == lesion.sum() and row["mtv_ml"] == pytest.approx(mtv, rel=1e-9)
    assert row["pet_voxels"] == on_pet.sum()
    assert row["suv_max"] == pytest.approx(suv[on_pet].max(), rel=RELATIVE)
    assert row["suv_mean"] == pytest.approx(suv[on_pet].mean(), rel=RELATIVE)
    assert row["tlg"] == pytest.approx(mtv * suv[on_pet].mean(), rel=RELATIVE)
    assert row["suv_peak"] == pytest.approx(peak_by_loops(suv, on_pet, pet.spacing), rel=RELATIVE)
    assert row["suv_mean"] < row["suv_peak"] <= row["suv_max"]
    centroid = label.affine[:3, :3] @ np.argwhere(lesion).mean(axis=0) + label.affine[:3, 3]
    assert [row["centroid_r_mm"], row["centroid_a_mm"], row["centroid_s_mm"]] == pytest.approx(centroid.tolist())


def test_a_mask_over_the_whole_crop_finds_the_pet_maximum(sts_case_dir):
    """STS_019: the PET interpolated onto the CT grid peaks at 15.91; the PET's own maximum inside
    the CT crop is 16.33 (-2.6 %). The table reports the PET's own value."""
    folder = sts_case_dir("STS_019")
    ct, pet = read_image(folder / "CT_image.nii.gz"), read_image(folder / "PET_image.nii.gz")
    everything = ct.with_array(np.ones(ct.shape, np.uint8))
    row = lesion_statistics(everything, pet)[0]
    centres = np.indices(pet.shape).reshape(3, -1).T @ pet.affine[:3, :3].T + pet.affine[:3, 3]
    inverse = np.linalg.inv(ct.affine)
    index = centres @ inverse[:3, :3].T + inverse[:3, 3]
    inside = np.all((index >= -0.5) & (index <= np.array(ct.shape) - 0.5), axis=1).reshape(pet.shape)
    assert row["suv_max"] == pytest.approx(pet.array[inside].max(), rel=RELATIVE)
    assert row["suv_max"] == pytest.approx(16.33, abs=0.01)
    assert row["mtv_ml"] == pytest.approx(np.prod(ct.shape) * ct.voxel_volume_ml)


def test_a_label_on_the_pet_grid_uses_its_voxels_as_they_are(sts_case_dir):
    folder = sts_case_dir("STS_001")
    label, pet = read_image(folder / "PET_mask.nii.gz"), read_image(folder / "PET_image.nii.gz")
    rows = lesion_statistics(label, pet, min_lesion_ml=0.0)
    row = max(rows, key=lambda r: r["voxels"])
    components, _ = ndimage.label(label.array > 0, structure=np.ones((3, 3, 3)))
    lesion = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    suv = pet.array.astype(np.float64)
    assert row["pet_voxels"] == row["voxels"] == lesion.sum()
    assert row["mtv_ml"] == pytest.approx(lesion.sum() * pet.voxel_volume_ml, rel=1e-9)
    assert row["suv_max"] == pytest.approx(suv[lesion].max(), rel=1e-9)
    assert row["suv_mean"] == pytest.approx(suv[lesion].mean(), rel=1e-9)
    assert row["suv_peak"] == pytest.approx(peak_by_loops(suv, lesion, pet.spacing), rel=1e-9)


def test_specks_are_left_out_and_counted_and_the_method_is_in_the_header(sts_case_dir, tmp_path):
    folder = sts_case_dir("STS_001")
    label, pet = read_image(folder / "CT_mask.nii.gz"), read_image(folder / "PET_image.nii.gz")
    array = (label.array > 0).astype(np.uint8)
    specks = [(5, 5, 5), (5, 40, 5), (40, 5, 10)]  # single voxels far from the tumour, 0.003 mL each
    for index in specks:
        assert array[index] == 0
        array[index] = 1
    speckled = label.with_array(array)
    everything = lesion_table(speckled, pet, min_lesion_ml=0.0)
    table = lesion_table(speckled, pet)  # default --min-lesion-ml 0.1
    assert len(everything.rows) == len(table.rows) + table.left_out
    assert table.left_out >= len(specks)
    assert all(r["mtv_ml"] >= 0.1 for r in table.rows)
    tiny = [r for r in everything.rows if r["voxels"] == 1]
    assert len(tiny) >= len(specks) and all(r["pet_voxels"] == 1 for r in tiny)  # the PET voxel of its centroid

    write_lesion_table(table, tmp_path / "lesions.csv")
    text = (tmp_path / "lesions.csv").read_text().splitlines()
    header = [line for line in text if line.startswith("#")]
    assert any("IBSI" in line and "0.5" in line for line in header)
    assert any(line.startswith("# min_lesion_ml: 0.1") for line in header)
    rows = list(csv.DictReader(line for line in text if not line.startswith("#")))
    assert len(rows) == len(table.rows) and float(rows[0]["mtv_ml"]) == pytest.approx(table.rows[0]["mtv_ml"], abs=1e-4)
    write_lesion_table(table, tmp_path / "lesions.json")
    payload = json.loads((tmp_path / "lesions.json").read_text())
    assert payload["method"]["left_out_components"] == table.left_out and len(payload["lesions"]) == len(table.rows)
