"""Every failure is one clear line: ``error: ...`` and exit 2, nothing half-written, checks that
need no model before any loading, progress that never garbles stderr, library warnings only
with --debug."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, require_data
from DistillSegLib.student.config import StudentConfig
from DistillSegLib.student.model_file import _file_digest, save_model, weights_sha256
from DistillSegLib.io.volume import crop_volume, read_image, write_image
from DistillSegLib.student.network import build_student

TINY = StudentConfig(spacing=(4.0, 4.0, 4.0), channels=(8, 16, 32), strides=(2, 2), num_res_units=1,
                     patch_size=(32, 32, 16))



def assert_one_error_line(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def files(tmp_path_factory, sts_case_dir):
    """A tiny (untrained, real) student, bad files of every kind, and a file standing where a folder should be."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    torch.manual_seed(0)
    model = save_model(folder / "student.pt", build_student(TINY), TINY)
    (folder / "empty.nii.gz").write_bytes(b"")
    (folder / "text.nii.gz").write_text("not an image\n")
    (folder / "empty.pt").write_bytes(b"")
    weights = {k: v.clone() for k, v in build_student(TINY).state_dict().items()}
    metadata = json.dumps({"weights_sha256": weights_sha256(weights)})  # a valid digest, no configuration
    torch.save({"format": "distillseg-student/1", "metadata": metadata, "weights": weights,
                "digest": _file_digest(metadata, weights_sha256(weights))}, folder / "noconfig.pt")
    (folder / "a_file").write_text("a file where a folder is expected\n")
    label = read_image(sts_case_dir("STS_001") / "CT_mask.nii.gz")
    negative = label.array.astype(np.int16)
    negative[0, 0, 0] = -1
    write_image(label.with_array(negative), folder / "negative_label.nii.gz")
    ct = read_image(sts_case_dir("STS_001") / "CT_image.nii.gz")
    write_image(crop_volume(ct, (slice(0, ct.shape[0]), slice(0, ct.shape[1]), slice(30, 31))),
                folder / "one_slice_ct.nii.gz")
    preds = folder / "preds"
    preds.mkdir()
    shutil.copy(folder / "text.nii.gz", preds / "STS_001.nii.gz")
    case = sts_case_dir("STS_001")
    return {"dir": folder, "model": model, "ct": case / "CT_image.nii.gz", "pet": case / "PET_image.nii.gz",
            "label": case / "CT_mask.nii.gz", "data": case.parent, "preds": preds, "blocked": folder / "a_file" / "x"}


BAD_INPUTS = {
    "info: empty .nii.gz": (lambda f: ["info", "--ct", f["dir"] / "empty.nii.gz", "--pet", f["pet"]], "empty"),
    "info: text .nii.gz": (lambda f: ["info", "--ct", f["dir"] / "text.nii.gz", "--pet", f["pet"]], "text.nii.gz"),
    "predict: text .nii.gz": (lambda f: ["predict", "--model", f["model"], "--ct", f["dir"] / "text.nii.gz",
                                         "--pet", f["pet"], "--out", f["dir"] / "o.nii.gz", "--roi", "all"], "text.nii.gz"),
    "evaluate: text .nii.gz": (lambda f: ["evaluate", "--pred", f["preds"], "--gt", f["data"], "--cases", "STS_001"],
                               "STS_001.nii.gz"),
    "predict: empty .pt": (lambda f: ["predict", "--model", f["dir"] / "empty.pt", "--ct", f["ct"], "--pet", f["pet"],
                                      "--out", f["dir"] / "o.nii.gz", "--roi", "all"], "empty.pt"),
    "predict: model without configuration": (
        lambda f: ["predict", "--model", f["dir"] / "noconfig.pt", "--ct", f["ct"], "--pet", f["pet"],
                   "--out", f["dir"] / "o.nii.gz", "--roi", "all"], "no student configuration"),
    "predict: --out in a file": (lambda f: ["predict", "--model", f["model"], "--ct", f["ct"], "--pet", f["pet"],
                                            "--out", f["blocked"] / "o.nii.gz", "--roi", "all"], "a_file is a file"),
    "predict: --stats in a file": (lambda f: ["predict", "--model", f["model"], "--ct", f["ct"], "--pet", f["pet"],
                                              "--out", f["dir"] / "o.nii.gz", "--stats", f["blocked"] / "s.csv",
                                              "--roi", "all"], "--stats"),
    "predict: --prob x.txt": (lambda f: ["predict", "--model", f["model"], "--ct", f["ct"], "--pet", f["pet"],
                                         "--out", f["dir"] / "o.nii.gz", "--prob", f["dir"] / "x.txt", "--roi", "all"],
                              "--prob"),
    "evaluate: --out in a file": (lambda f: ["evaluate", "--pred", f["data"], "--gt", f["data"], "--cases", "STS_001",
                                             "--out", f["blocked"] / "scores.json"], "a_file is a file"),
    "convert: --out in a file": (lambda f: ["convert", "--ct", f["ct"], "--pet", f["pet"], "--out", f["blocked"]],
                                 "a_file is a file"),
    "info: label value -1": (lambda f: ["info", "--ct", f["ct"], "--pet", f["pet"], "--label",
                                        f["dir"] / "negative_label.nii.gz"], "negative values (down to -1)"),
    "train: --lr nan": (lambda f: ["train", "--data", f["data"], "--labelled", "STS_001", "--lr", "nan",
                                   "--out", f["dir"] / "m.pt"], "--lr"),
    "predict: a missing option": (lambda f: ["predict", "--model", f["model"], "--ct", f["ct"], "--pet", f["pet"]],
                                  "--out"),
    "predict: --prompt-segment=-1": (
        lambda f: ["predict", "--teacher", "litemedsam", "--ct", f["ct"], "--pet", f["pet"], "--out", f["dir"] / "o.nii.gz",
                   "--prompt-mask", f["label"], "--prompt-points=-70,-12,-791,-", "--prompt-segment=-1"],
        "--prompt-segment must be a label value from 1"),
    "predict: zero-size --prompt-box": (
        lambda f: ["predict", "--teacher", "litemedsam", "--ct", f["ct"], "--pet", f["pet"], "--out", f["dir"] / "o.nii.gz",
                   "--prompt-box=-80,-20,-800,-80,0,-780"], "zero extent"),
    "predict: a 246-character output name": (
        lambda f: ["predict", "--model", f["model"], "--ct", f["ct"], "--pet", f["pet"], "--roi", "all",
                   "--out", f["dir"] / ("x" * 246 + ".nii.gz")], "file name is too long"),
    "predict: a one-slice CT": (
        lambda f: ["predict", "--model", f["model"], "--ct", f["dir"] / "one_slice_ct.nii.gz", "--pet", f["pet"],
                   "--roi", "all", "--out", f["dir"] / "o.nii.gz"], "single voxel thick along axis k"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line(files, case, cli):
    make_args, fragment = BAD_INPUTS[case]
    result = cli(*make_args(files))
    assert_one_error_line(result, fragment)
    assert not (files["dir"] / "o.nii.gz").exists()


def test_a_second_predict_on_the_same_output_is_refused_while_the_first_runs(files, tmp_path, cli):
    """Two runs on one --out would each replace it atomically: one result silently lost, or one
    run's label map beside the other's provenance. The lock of a running predict is held here."""
    from DistillSegLib.atomic import exclusive_lock

    out = tmp_path / "label.nii.gz"
    with exclusive_lock(out, "output"):
        result = cli("predict", "--model", files["model"], "--ct", files["ct"], "--pet", files["pet"],
                     "--out", out, "--roi", "all", "--threads", "1")
    assert_one_error_line(result, f"is writing the output {out}")
    assert not out.exists()
    result = cli("predict", "--model", files["model"], "--ct", files["ct"], "--pet", files["pet"],
                 "--out", out, "--roi", "all", "--threads", "1")
    assert result.returncode == 0 and out.exists()  # the lock went with its holder


def test_an_output_that_is_an_input_is_refused(files, tmp_path, cli):
    ct = shutil.copy(files["ct"], tmp_path / "CT_image.nii.gz")
    before = hashlib.sha256(Path(ct).read_bytes()).hexdigest()
    result = cli("predict", "--model", files["model"], "--ct", ct, "--pet", files["pet"], "--out", ct,
                 "--roi", "all")
    assert_one_error_line(result, "--out", "is also an input")
    assert hashlib.sha256(Path(ct).read_bytes()).hexdigest() == before
    result = cli("predict", "--model", files["model"], "--ct", ct, "--pet", files["pet"],
                 "--out", tmp_path / "x.nii.gz", "--stats", files["pet"], "--roi", "all")
    assert_one_error_line(result, "--stats")


def test_outputs_are_written_all_or_none(files, tmp_path, monkeypatch, cli):
    """The lesion table cannot be written (disk full, simulated): no label map is left behind."""
    import DistillSegLib.metrics.lesions as lesions

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "lesions.csv"))

    monkeypatch.setattr(lesions, "write_lesion_table", disk_full)
    out, prob, stats = tmp_path / "label.nii.gz", tmp_path / "prob.nii.gz", tmp_path / "lesions.csv"
    result = cli("predict", "--model", files["model"], "--ct", files["ct"], "--pet", files["pet"],
                 "--out", out, "--prob", prob, "--stats", stats, "--roi", "all", "--threads", "1")
    assert result.returncode == 2 and "No space left on device" in result.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # neither the label map, nor the probabilities, nor a temporary file


def test_checks_that_need_no_model_come_before_any_loading(files, tmp_path, cli):
    base = ["predict", "--model", files["model"], "--ct", files["ct"], "--pet", files["pet"], "--roi", "all",
            "--json-progress"]
    result = cli(*base, "--out", tmp_path / "seg.dcm")
    assert_one_error_line(result, "DICOM SEG", "not a DICOM folder")
    assert result.stdout == ""  # no progress: nothing was loaded or run
    if not torch.cuda.is_available():
        result = cli(*base, "--out", tmp_path / "x.nii.gz", "--device", "cuda")
        assert_one_error_line(result, "no CUDA GPU")
        assert result.stdout == ""
    result = cli(*base, "--out", tmp_path / "x.nii.gz", "--roi=nan,0,0,10,10,10")
    assert_one_error_line(result, "finite")
    assert "outside the CT" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_progress_off_a_terminal_is_plain_lines(files, tmp_path, cli):
    result = cli("predict", "--model", files["model"], "--ct", files["ct"], "--pet", files["pet"],
                 "--out", tmp_path / "x.nii.gz", "--roi", "all", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert "predict: 3/3 (100%)" in result.stderr.splitlines()


def test_an_error_after_the_bar_started_is_a_line_of_its_own_on_a_terminal(files, tmp_path):
    """On a terminal the bar is drawn; the error ends it and starts a new line, and no bar follows."""
    checkpoint = tmp_path / "sam_med3d_turbo.pth"
    checkpoint.write_text("hello, not a checkpoint\n")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    process = subprocess.Popen(
        [sys.executable, "-m", "DistillSegLib", "predict", "--teacher", "sam-med3d", "--checkpoint", str(checkpoint),
         "--prompt-from", str(files["label"]), "--ct", str(files["ct"]), "--pet", str(files["pet"]),
         "--out", str(tmp_path / "t.nii.gz"), "--threads", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=60) == 2
    terminal = b"".join(chunks).decode(errors="replace")
    assert "predict:" in terminal and "%|" in terminal  # a real tqdm bar was drawn
    before, _, after = terminal.rpartition("error: ")
    assert before.endswith("\n"), repr(terminal[-300:])  # the error starts a line of its own ...
    assert "sam_med3d_turbo.pth: not a PyTorch checkpoint" in after
    assert after.strip().count("\n") == 0 and "%|" not in after  # ... and nothing is drawn after it


def test_library_warnings_only_with_debug(files, tmp_path, recwarn, cli):
    """Writing a DICOM SEG makes pydicom and highdicom warn (values longer than their VR allows);
    a user sees none of that unless --debug."""
    folder = require_data("sts-petct-dicom", "STS_007")
    args = ["predict", "--model", files["model"], "--ct", folder / "CT" / "image", "--pet", folder / "PET" / "image",
            "--roi", "all", "--threads", "1", "--json-progress"]

    def from_libraries():
        return [w for w in recwarn.list if "pydicom" in w.filename or "highdicom" in w.filename]

    quiet = cli(*args, "--out", tmp_path / "a.dcm")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and from_libraries() == []
    loud = cli("--debug", *args, "--out", tmp_path / "b.dcm")
    assert loud.returncode == 0, loud.stderr
    assert from_libraries() and "WARNING pydicom: The value length" in loud.stderr
