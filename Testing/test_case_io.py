"""Case loading from files: geometry conventions, resampling, validation (real sts-petct data)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from DistillSegLib.io.case import Case, load_case, load_case_folder
from DistillSegLib.io.dataset import find_cases, write_nnunet_case
from DistillSegLib.errors import DistillSegError
from DistillSegLib.io.resample import resample_to
from DistillSegLib.io.volume import Volume, read_image, write_image


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_all_cases_load_and_pet_mask_agrees_with_ct_mask(sts_dir):
    from DistillSegLib.io.plausibility import plausibility_report

    scores = {}
    for source in find_cases(sts_dir):
        case = source.load()  # refuses implausible HU/SUV values
        assert plausibility_report(case.ct, case.pet) == []
        pet_mask = read_image(sts_dir / source.case_id / "PET_mask.nii.gz")
        on_ct = resample_to(pet_mask, case.ct, "nearest")
        assert on_ct.shape == case.ct.shape
        scores[source.case_id] = dice(on_ct.array, case.label_on_ct.array)
    assert len(scores) == 30
    values = np.array(list(scores.values()))
    assert np.median(values) >= 0.93, scores
    assert values.min() >= 0.60, scores


def test_volume_is_ras_and_round_trips(sts_001, tmp_path):
    ct = sts_001.ct
    # The NIfTI header of this case stores an LPS-oriented grid: i runs to the patient's left.
    assert ct.orientation == "LPS"
    assert ct.affine[0, 0] < 0 and ct.affine[1, 1] < 0
    nib = pytest.importorskip("nibabel")
    header_affine = nib.load(ct.meta["path"]).affine
    np.testing.assert_allclose(ct.affine, header_affine, atol=1e-3)
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        path = write_image(ct, tmp_path / f"ct{suffix}")
        back = read_image(path)
        np.testing.assert_array_equal(back.array, ct.array)
        np.testing.assert_allclose(back.affine, ct.affine, atol=1e-4)


def test_pet_on_ct_keeps_suv_and_is_zero_outside(sts_001):
    pet = sts_001.pet_on_ct
    assert pet.shape == sts_001.ct.shape
    np.testing.assert_allclose(pet.affine, sts_001.ct.affine)
    # Linear interpolation can only lower the maximum, and not by much for a 25 SUV hot spot.
    assert 0.8 * sts_001.pet.array.max() <= pet.array.max() <= sts_001.pet.array.max() + 1e-4
    shifted = Volume(sts_001.pet.array, sts_001.pet.affine.copy())
    shifted.affine[2, 3] += 100.0  # half the PET leaves the CT's field of view
    partial = Case("shifted", sts_001.ct, shifted)
    assert (partial.pet_on_ct.array[..., :5] == 0).all() or (partial.pet_on_ct.array[..., -5:] == 0).all()


def test_non_overlapping_ct_and_pet_is_an_error(sts_001):
    far = Volume(sts_001.pet.array, sts_001.pet.affine.copy(), {"path": "far_pet.nii.gz"})
    far.affine[2, 3] += 5000.0
    with pytest.raises(DistillSegError, match="do not overlap"):
        Case("far", sts_001.ct, far)


def test_label_on_neither_grid_is_an_error(sts_001):
    label = Volume(np.zeros((10, 10, 10), np.uint8), np.eye(4), {"path": "odd_mask.nii.gz"})
    with pytest.raises(DistillSegError, match="neither the CT grid"):
        Case("odd", sts_001.ct, sts_001.pet, label)


def test_nan_image_is_refused(sts_001, tmp_path):
    array = sts_001.pet.array.astype(np.float32).copy()
    array[3, 3, 3] = np.nan
    path = write_image(sts_001.pet.with_array(array), tmp_path / "nan_pet.nii.gz")
    with pytest.raises(DistillSegError, match="NaN"):
        load_case(sts_001.ct.meta["path"], path)


def test_nnunet_dataset_round_trip(sts_001, tmp_path):
    dataset = tmp_path / "Dataset001_STS"
    write_nnunet_case(dataset, "STS_001", sts_001.ct, sts_001.pet_on_ct, sts_001.label_on_ct, {1: "tumour"})
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT", "1": "PET"} and meta["labels"] == {"background": 0, "tumour": 1}
    (source,) = find_cases(dataset)
    back = source.load()
    np.testing.assert_array_equal(back.label.array, sts_001.label_on_ct.array)
    np.testing.assert_allclose(back.pet.array, sts_001.pet_on_ct.array, rtol=1e-6)
    np.testing.assert_allclose(back.ct.affine, sts_001.ct.affine, atol=1e-4)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "DistillSegLib", *args], capture_output=True, text=True, timeout=300)


def test_info_json(sts_case_dir):
    folder = sts_case_dir("STS_001")
    result = run_cli("info", "--ct", str(folder / "CT_image.nii.gz"), "--pet", str(folder / "PET_image.nii.gz"),
                     "--label", str(folder / "CT_mask.nii.gz"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["ct"]["shape"] == [198, 202, 59]
    assert info["pet"]["shape"] == [41, 43, 59]
    assert info["pet"]["suv_max"] == pytest.approx(25.41, abs=0.01)
    case = load_case_folder(folder)
    expected_ml = (case.label.array > 0).sum() * case.ct.voxel_volume_ml
    assert info["label"]["volume_ml"]["tumour"] == pytest.approx(expected_ml)


def test_missing_file_gives_one_error_line(sts_case_dir, tmp_path):
    folder = sts_case_dir("STS_001")
    result = run_cli("info", "--ct", str(folder / "CT_image.nii.gz"), "--pet", str(tmp_path / "missing.nii.gz"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing.nii.gz" in lines[0]
    assert "Traceback" not in result.stderr
