"""``distillseg train / predict / evaluate`` end to end on real cases, cancel by SIGTERM, DICOM SEG."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from DistillSegLib.student.model_file import load_model
from conftest import ROOT, require_data

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_ARGS = ["--spacing", "4,4,4", "--patch-size", "32,32,16", "--channels", "8,16,32", "--res-units", "1"]



def cli(capsys, *args):
    """Run the command line in this process (same code path as the console script)."""
    from DistillSegLib.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.fixture(scope="module")
def cancelled_run(sts_dir, tmp_path_factory):
    """A training stopped by SIGTERM after its first checkpoint, over an existing model file."""
    folder = tmp_path_factory.mktemp("train")
    out = folder / "student.pt"
    out.write_bytes(b"the previous model")
    checkpoint = folder / "student.checkpoint.pt"
    process = subprocess.Popen(
        [sys.executable, "-m", "DistillSegLib", "train", "--data", str(sts_dir), "--labelled", "STS_001",
         "--steps", "500", "--checkpoint-every", "2", "--out", str(out), "--json-progress", "--threads", "1",
         *TINY_ARGS],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout, stderr, out, checkpoint


def test_sigterm_stops_training_cleanly(cancelled_run):
    code, stdout, stderr, out, checkpoint = cancelled_run
    assert code == 130, stderr
    assert stderr.strip().startswith("cancelled: stopped by SIGTERM")
    assert out.read_bytes() == b"the previous model"  # an existing model is never half-replaced
    model = load_model(checkpoint)                     # the last checkpoint is a complete model
    assert model.metadata["training"]["steps_done"] >= 2
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert lines[-1]["stage"] == "cancelled"
    assert any(line.get("stage") == "train" and line.get("loss") is not None for line in lines)


def test_predict_writes_the_ct_grid_and_evaluate_scores_it(cancelled_run, sts_case_dir, tmp_path, capsys):
    import nibabel

    checkpoint = cancelled_run[4]
    case = sts_case_dir("STS_001")
    pred = tmp_path / "pred" / "STS_001.nii.gz"
    stats = tmp_path / "STS_001.json"
    result = cli(capsys, "predict", "--model", str(checkpoint), "--ct", str(case / "CT_image.nii.gz"),
                 "--pet", str(case / "PET_image.nii.gz"), "--out", str(pred), "--roi", "all",
                 "--stats", str(stats))
    assert result.returncode == 0, result.stderr
    ct, label = nibabel.load(case / "CT_image.nii.gz"), nibabel.load(pred)
    assert label.shape == ct.shape
    assert np.allclose(label.affine, ct.affine, atol=1e-4)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1}
    rows = json.loads(stats.read_text())["lesions"]
    # (the 1 mL peak sphere may reach beyond a small lesion, so SUVpeak can exceed its SUVmax)
    assert rows and all(r["mtv_ml"] > 0 and r["suv_peak"] > 0 for r in rows)

    result = cli(capsys, "evaluate", "--pred", str(pred.parent), "--gt", str(case.parent), "--cases", "STS_001",
                 "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert [c["case_id"] for c in scores["cases"]] == ["STS_001"]
    assert scores["mean"]["dice"] == pytest.approx(scores["cases"][0]["dice"])

    no_roi = cli(capsys, "predict", "--model", str(checkpoint), "--ct", str(case / "CT_image.nii.gz"),
                 "--pet", str(case / "PET_image.nii.gz"), "--out", str(tmp_path / "y.nii.gz"))
    assert no_roi.returncode == 2 and "trained on crops" in no_roi.stderr
    assert len(no_roi.stderr.strip().splitlines()) == 1


def test_dicom_input_gives_a_dicom_seg_referencing_the_ct(cancelled_run, tmp_path):
    import pydicom

    from DistillSegLib.io.case import load_case
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.io.segmentation_export import write_label_map

    folder = require_data("sts-petct-dicom", "STS_007")
    case = load_case(folder / "CT" / "image", folder / "PET" / "image")
    model = load_model(cancelled_run[4])
    prediction = predict_case(model, case, roi="all", device="cpu")
    assert prediction.label.shape == case.ct.shape
    path = write_label_map(prediction.label, tmp_path / "seg.dcm", model.config.classes, case.ct)
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == case.ct.meta["frame_of_reference_uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == case.ct.meta["series_instance_uid"]
    assert seg.SegmentSequence[0].SegmentLabel == "tumour"
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    # The SEG's voxels are the label map's: count foreground pixels over all frames.
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    assert int(frames.sum()) == int((prediction.label.array > 0).sum())
