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


@pytest.mark.parametrize("order, flip, pet_flip", [((2, 0, 1), True, True), ((1, 0, 2), False, False),
                                                   ((0, 1, 2), True, True), ((0, 1, 2), False, True)])
def test_the_student_gives_the_same_mask_whatever_the_axis_order(sts_001, order, flip, pet_flip, torch_one_thread,
                                                                  tmp_path):
    from DistillSegLib.io.case import Case
    from DistillSegLib.student.catalogue import resolve_model
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.student.model_file import load_model

    model = load_model(resolve_model("sts-petct-crop"))
    reference = predict_case(model, sts_001, roi="all", device="cpu").label.array
    # Through NIfTI files, as a user hands them over (the sform is float32: the flipped affine is rounded).
    files = []
    for volume, flipped, name in ((sts_001.ct, flip, "ct"), (sts_001.pet, pet_flip, "pet")):
        moved = reordered(volume, order, flipped)
        files.append(tmp_path / f"{name}.nii.gz")
        nibabel.save(nibabel.Nifti1Image(moved.array, moved.affine), str(files[-1]))
    stored = Case("STS_001", read_image(files[0]), read_image(files[1]))
    label = predict_case(model, stored, roi="all", device="cpu").label
    assert label.shape == stored.ct.shape and np.allclose(label.affine, stored.ct.affine)
    back = label.array[::-1] if flip else label.array
    back = back.transpose(np.argsort(order))
    assert reference.sum() > 1000
    # Exact, but for the float32 sform: a flipped file's origin is rounded by ~1e-5 mm, which
    # flips a few voxels whose probability is 0.5 to within that (16 of 137,938 here; the
    # file's own axis order used to change the mask by 10%: 466 mL against 430 mL).
    assert np.count_nonzero(back != reference) <= 1e-3 * reference.sum()


# ----------------------------------------------------------------------------- PET coverage


def test_covered_fraction_is_the_exact_voxel_count_through_any_rotation(sts_001):
    from scipy.spatial.transform import Rotation

    from DistillSegLib.io.resample import covered_fraction
    from DistillSegLib.io.volume import Volume, apply_affine

    ct, pet = sts_001.ct, sts_001.pet
    affine = pet.affine.copy()
    affine[:3, :3] = Rotation.from_euler("xz", [20, 45], degrees=True).as_matrix() @ affine[:3, :3]
    rotated = Volume(pet.array, affine)
    index = np.argwhere(np.ones(ct.shape, bool)).astype(float)
    in_pet = apply_affine(np.linalg.inv(affine) @ ct.affine, index)
    brute = np.mean(np.all((in_pet >= -0.5) & (in_pet <= np.array(pet.shape) - 0.5), axis=1))
    assert 0.1 < brute < 0.9
    assert covered_fraction(ct, rotated) == pytest.approx(brute, abs=1e-9)


def test_a_rotated_pet_whose_box_meets_the_ct_but_whose_voxels_cover_none_is_refused(sts_001):
    from DistillSegLib.io.case import Case
    from DistillSegLib.io.resample import overlap_fraction
    from DistillSegLib.io.volume import Volume

    ct, pet = sts_001.ct, sts_001.pet
    n, spacing = 40, 4.0
    diamond = np.eye(4)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    diamond[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) * spacing
    half = n * spacing / 2 * np.sqrt(2)  # centre to a tip of the diamond
    low, high = ct.world_bounds()
    centre = np.array([high[0] + 0.6 * half, high[1] + 0.6 * half, (low[2] + high[2]) / 2])
    diamond[:3, 3] = centre - diamond[:3, :3] @ np.full(3, (n - 1) / 2)
    rotated = Volume(pet.array[:n, :n, :n].copy() if min(pet.shape) >= n else np.ones((n, n, n), np.float32),
                     diamond, {"path": "rotated PET"})
    assert overlap_fraction(ct, rotated) > 0  # the boxes meet: the old check let it through
    with pytest.raises(DistillSegError, match="do not overlap in space \\(no voxel of either lies inside the other\\)"):
        Case("STS_001", ct, rotated)


def cropped_pet(pet, axis: int, keep: int):
    from DistillSegLib.io.volume import crop_volume

    box = [slice(0, n) for n in pet.shape]
    box[axis] = slice(0, keep)
    return crop_volume(pet, tuple(box))


def test_a_pet_covering_a_fifth_of_the_ct_is_warned_with_the_fraction(sts_001, caplog):
    from DistillSegLib.io.case import Case

    pet = cropped_pet(sts_001.pet, 2, int(sts_001.pet.shape[2] * 0.22))
    Case("STS_001", sts_001.ct, pet)
    assert "covers only 2" in caplog.text and "% of the CT" in caplog.text
    caplog.clear()
    Case("STS_001", sts_001.ct, sts_001.pet)
    assert "covers only" not in caplog.text  # the real crop (99%) is not warned about


def test_a_lesion_cut_by_the_pet_edge_is_named_in_the_lesion_table(sts_001, caplog):
    from DistillSegLib.metrics.lesions import format_lesion_table, lesion_table

    label = sts_001.label_on_ct
    voxels = np.argwhere(label.array > 0)
    centre_world = label.affine @ np.append(voxels.mean(axis=0), 1.0)
    k_centre = int(round((np.linalg.inv(sts_001.pet.affine) @ centre_world)[2]))
    pet = cropped_pet(sts_001.pet, 2, k_centre)  # the PET ends halfway up the tumour
    whole = lesion_table(label, sts_001.pet).rows[0]
    cut = lesion_table(label, pet).rows[0]
    assert whole["pet_coverage"] == 1.0
    assert 0.3 < cut["pet_coverage"] < 0.7 and cut["mtv_ml"] == whole["mtv_ml"]
    assert "outside the PET's field of view" in caplog.text
    text = format_lesion_table(lesion_table(label, pet))
    assert f"only {100 * cut['pet_coverage']:.0f}% of it lies inside the PET's field of view" in text


def test_an_roi_half_outside_the_pet_is_named(sts_001, tmp_path, cli):
    from DistillSegLib.io.volume import write_image
    from DistillSegLib.student.inference import roi_from_mask

    label = sts_001.label_on_ct
    centre = label.affine @ np.append(np.argwhere(label.array > 0).mean(axis=0), 1.0)
    k_centre = int(round((np.linalg.inv(sts_001.pet.affine) @ centre)[2]))
    pet = tmp_path / "pet_cut.nii.gz"
    write_image(cropped_pet(sts_001.pet, 2, k_centre), pet)
    low, high = roi_from_mask(label, 0.0)
    roi = ",".join(f"{v:.2f}" for v in [*low, *high])
    result = cli("predict", "--model", "sts-petct-crop", "--ct", sts_001.ct.meta["path"], "--pet", pet,
                 f"--roi={roi}", "--out", tmp_path / "label.nii.gz", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "the region of interest lies" in result.stderr and "outside the PET's field of view" in result.stderr
