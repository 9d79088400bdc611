"""``distillseg predict --teacher``: a teacher prompted automatically from a label map."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from DistillSegLib.io.case import load_case_folder
from DistillSegLib.io.volume import read_image, write_image
from DistillSegLib.provenance import read_provenance


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "DistillSegLib", *args], capture_output=True, text=True, timeout=600)


def test_teacher_prompted_from_a_label_segments_the_prompted_slices(sts_case_dir, tmp_path):
    folder = sts_case_dir("STS_001")
    case = load_case_folder(folder)
    gt = case.label_on_ct.array > 0
    middle = int(np.argmax(gt.sum(axis=(0, 1))))
    prompt = np.zeros_like(gt, dtype=np.uint8)
    prompt[..., middle : middle + 2] = gt[..., middle : middle + 2]  # two slices keep the test fast
    prompt_path = write_image(case.ct.with_array(prompt), tmp_path / "prompt.nii.gz")
    out = tmp_path / "teacher.nii.gz"
    result = run_cli("predict", "--teacher", "litemedsam", "--prompt-from", str(prompt_path),
                     "--ct", str(folder / "CT_image.nii.gz"), "--pet", str(folder / "PET_image.nii.gz"),
                     "--out", str(out), "--threads", "1")
    assert result.returncode == 0, result.stderr
    label = read_image(out)
    assert label.shape == case.ct.shape
    np.testing.assert_allclose(label.affine, case.ct.affine, atol=1e-4)
    predicted = label.array > 0
    assert not predicted[..., :middle].any() and not predicted[..., middle + 2 :].any()
    on_slices = slice(middle, middle + 2)
    dice = 2 * (predicted[..., on_slices] & gt[..., on_slices]).sum() / (predicted[..., on_slices].sum() + gt[..., on_slices].sum())
    assert dice > 0.8
    record = read_provenance(out)  # where the result came from, for "Add to training set"
    assert record["source"] == "teacher" and record["teacher"]["name"] == "litemedsam"
    assert record["prompt"] == {"kind": "automatic", "prompt_from": str(prompt_path)}


def test_teacher_without_prompt_is_a_clear_error(sts_case_dir, tmp_path):
    folder = sts_case_dir("STS_001")
    result = run_cli("predict", "--teacher", "litemedsam", "--ct", str(folder / "CT_image.nii.gz"),
                     "--pet", str(folder / "PET_image.nii.gz"), "--out", str(tmp_path / "x.nii.gz"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "--prompt-from" in result.stderr
    assert not (tmp_path / "x.nii.gz").exists()


def test_teacher_honours_the_roi(sts_case_dir, tmp_path):
    """--roi limits where the teacher is prompted and answers (it was ignored); --roi=foo is refused."""
    from DistillSegLib.io.volume import apply_affine

    folder = sts_case_dir("STS_001")
    case = load_case_folder(folder)
    gt = case.label_on_ct.array > 0
    middle = int(np.argmax(gt.sum(axis=(0, 1))))
    corners = np.array([[-0.5, -0.5, middle - 0.4], np.array(case.ct.shape[:2] + (middle + 1.4,)) - [0.5, 0.5, 0]])
    low, high = apply_affine(case.ct.affine, corners)
    roi = ",".join(f"{v:.3f}" for v in list(np.minimum(low, high)) + list(np.maximum(low, high)))
    base = ["predict", "--teacher", "litemedsam", "--prompt-from", str(folder / "CT_mask.nii.gz"),
            "--ct", str(folder / "CT_image.nii.gz"), "--pet", str(folder / "PET_image.nii.gz"), "--threads", "1"]
    bad = run_cli(*base, "--out", str(tmp_path / "bad.nii.gz"), "--roi=foo")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --roi must be six")
    out = tmp_path / "teacher.nii.gz"
    result = run_cli(*base, "--out", str(out), f"--roi={roi}")
    assert result.returncode == 0, result.stderr
    predicted = read_image(out).array > 0
    assert not predicted[..., :middle].any() and not predicted[..., middle + 2:].any()
    on_slices = slice(middle, middle + 2)
    dice = 2 * (predicted[..., on_slices] & gt[..., on_slices]).sum() / (predicted[..., on_slices].sum() + gt[..., on_slices].sum())
    assert dice > 0.8
