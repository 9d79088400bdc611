"""Geometry a hostile user can hand over: sheared affines, permuted and flipped axes, a PET
that covers little or none of the CT (real cases, edited)."""

from __future__ import annotations

import subprocess
import sys

import nibabel
import numpy as np
import pytest
import torch

from conftest import ROOT, require_data
from DistillSegLib.errors import DistillSegError
from DistillSegLib.io.volume import read_image
from DistillSegLib.student.config import StudentConfig
from DistillSegLib.student.model_file import save_model
from DistillSegLib.student.network import build_student

TINY = StudentConfig(spacing=(4.0, 4.0, 4.0), channels=(8, 16, 32), strides=(2, 2), num_res_units=1,
                     patch_size=(32, 32, 16))


@pytest.fixture(scope="module")
def case():
    return require_data("sts-petct", "STS_001")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("model") / "student.pt", build_student(TINY), TINY)


def sheared_copy(source, target, shear: float = 0.3):
    image = nibabel.load(str(source))
    affine = image.affine.copy()
    affine[:3, 2] += shear * affine[:3, 0] / np.linalg.norm(affine[:3, 0]) * np.linalg.norm(affine[:3, 2])
    nibabel.save(nibabel.Nifti1Image(np.asanyarray(image.dataobj), affine), str(target))
    return target


def test_a_sheared_affine_is_refused_naming_the_axes(case, tmp_path):
    path = sheared_copy(case / "CT_image.nii.gz", tmp_path / "sheared.nii.gz")
    with pytest.raises(DistillSegError, match=r"sheared \(voxel axes i and k meet at 73\.30 degrees"):
        read_image(path)


def test_predict_on_a_sheared_ct_is_one_error_line_and_writes_nothing(case, tiny_model, tmp_path):
    path = sheared_copy(case / "CT_image.nii.gz", tmp_path / "sheared.nii.gz")
    out = tmp_path / "label.nii.gz"
    result = subprocess.run(
        [sys.executable, "-m", "DistillSegLib", "predict", "--model", str(tiny_model), "--ct", str(path),
         "--pet", str(case / "PET_image.nii.gz"), "--out", str(out), "--roi", "all", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "sheared" in lines[0], result.stderr
    assert not out.exists()


def reordered(volume, order, flip_first: bool):
    """The same image stored with its index axes in ``order`` (and the first stored axis flipped)."""
    from DistillSegLib.io.volume import Volume

    array = volume.array.transpose(order)
    axes = volume.affine[:3, list(order)]
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = axes, volume.affine[:3, 3]
    if flip_first:
        array = array[::-1]
        affine[:3, 3] += axes[:, 0] * (array.shape[0] - 1)
        affine[:3, 0] = -axes[:, 0]
    return Volume(np.ascontiguousarray(array), affine, dict(volume.meta))


@pytest.mark.parametrize("order, flip", [((2, 0, 1), True), ((1, 0, 2), False), ((0, 1, 2), True)])
def test_the_student_gives_the_same_mask_whatever_the_axis_order(sts_001, order, flip, torch_one_thread):
    from DistillSegLib.io.case import Case
    from DistillSegLib.student.catalogue import resolve_model
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.student.model_file import load_model

    model = load_model(resolve_model("sts-petct-crop"))
    reference = predict_case(model, sts_001, roi="all", device="cpu").label.array
    stored = Case("STS_001", reordered(sts_001.ct, order, flip), reordered(sts_001.pet, order, not flip))
    label = predict_case(model, stored, roi="all", device="cpu").label
    assert label.shape == stored.ct.shape and np.allclose(label.affine, stored.ct.affine)
    back = label.array[::-1] if flip else label.array
    back = back.transpose(np.argsort(order))
    assert reference.sum() > 1000
    assert np.count_nonzero(back != reference) == 0
