"""Implausible PET/CT is refused (PET in Bq/mL, negative SUV, CT and PET swapped), naming the
file and what looks wrong; --allow-implausible overrides; the real data all passes
(sts-petct: test_case_io.py; the DICOM series and the whole-body PET: test_dicom.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from DistillSegLib.io.plausibility import ct_problems, pet_problems
from DistillSegLib.io.volume import read_image, write_image



@pytest.fixture(scope="module")
def bad_pets(sts_case_dir, tmp_path_factory):
    """STS_001's PET in Bq/mL-like values (x 5000, SUVmax ~127 000) and negated."""
    folder = sts_case_dir("STS_001")
    out = tmp_path_factory.mktemp("implausible")
    pet = read_image(folder / "PET_image.nii.gz")
    return {"bq": write_image(pet.with_array(pet.array * 5000.0), out / "pet_bq.nii.gz"),
            "negative": write_image(pet.with_array(-pet.array), out / "pet_negative.nii.gz")}


def test_the_checks_name_what_looks_wrong(sts_001):
    assert ct_problems(sts_001.ct) == [] and pet_problems(sts_001.pet) == []
    assert any("Bq/mL" in p for p in pet_problems(sts_001.pet.with_array(sts_001.pet.array * 5000)))
    assert any("negative" in p for p in pet_problems(sts_001.pet.with_array(-sts_001.pet.array)))
    assert any("is it a CT" in p for p in pet_problems(sts_001.ct))       # CT given as PET
    assert any("is it a PET" in p for p in ct_problems(sts_001.pet))      # PET given as CT
    assert any("outside the HU range" in p for p in ct_problems(sts_001.ct.with_array(sts_001.ct.array * 40.0)))
    assert pet_problems(sts_001.pet.with_array(np.zeros(sts_001.pet.shape, np.float32)))


@pytest.mark.parametrize("kind, message", [("bq", "SUV up to 1270"), ("negative", "below SUV -0.5")])
def test_implausible_pet_is_refused_with_the_file_named(sts_case_dir, bad_pets, tmp_path, kind, message, cli):
    folder = sts_case_dir("STS_001")
    table = tmp_path / "lesions.csv"
    result = cli("stats", "--ct", folder / "CT_image.nii.gz", "--pet", bad_pets[kind],
                     "--label", folder / "CT_mask.nii.gz", "--out", table)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and bad_pets[kind].name in lines[0]
    assert message in lines[0] and "--allow-implausible" in lines[0]
    assert not table.exists()


def test_swapped_ct_and_pet_are_refused(sts_case_dir, cli):
    folder = sts_case_dir("STS_001")
    result = cli("stats", "--ct", folder / "PET_image.nii.gz", "--pet", folder / "CT_image.nii.gz",
                     "--label", folder / "CT_mask.nii.gz")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "PET_image.nii.gz does not look like a CT" in line
    assert "CT_image.nii.gz does not look like a PET" in line


def test_allow_implausible_overrides(sts_case_dir, bad_pets, cli):
    folder = sts_case_dir("STS_001")
    result = cli("stats", "--ct", folder / "CT_image.nii.gz", "--pet", bad_pets["bq"],
                     "--label", folder / "CT_mask.nii.gz", "--json", "--allow-implausible")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["lesions"][0]["suv_max"] > 10000  # the file's own values


def test_info_reports_but_does_not_refuse(sts_case_dir, bad_pets, cli):
    folder = sts_case_dir("STS_001")
    result = cli("info", "--ct", folder / "CT_image.nii.gz", "--pet", bad_pets["bq"])
    assert result.returncode == 0
    assert "implausible: " in result.stdout and "pet_bq.nii.gz" in result.stdout
