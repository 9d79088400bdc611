"""Model files: round trip, refusal of tampered or foreign files, the CLI's error rule."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from DistillSegLib.errors import DistillSegError
from DistillSegLib.io.labels import SegmentClass
from DistillSegLib.student.config import StudentConfig
from DistillSegLib.student.model_file import load_model, save_model
from DistillSegLib.student.network import build_student, count_parameters

SMALL = StudentConfig(channels=(8, 16, 32), strides=(2, 2), num_res_units=1, patch_size=(32, 32, 16))


@pytest.fixture()
def model_file(tmp_path):
    torch.manual_seed(0)
    network = build_student(SMALL)
    path = save_model(tmp_path / "student.pt", network, SMALL, {"strategy": "supervised",
                                                                "training_cases": {"labelled": ["STS_001"]}})
    return path, network


def test_round_trip_keeps_weights_and_metadata(model_file):
    path, network = model_file
    model = load_model(path)
    assert model.config == SMALL
    for name, value in network.state_dict().items():
        assert torch.equal(model.network.state_dict()[name], value)
    meta = model.metadata
    assert meta["classes"]["1"]["name"] == "tumour"
    assert meta["classes"]["1"]["type"] == ["SCT", "108369006", "Neoplasm"]
    assert meta["field_of_view"] == "crop" and meta["channels"] == ["CT", "PET"]
    assert meta["training_cases"]["labelled"] == ["STS_001"] and len(meta["weights_sha256"]) == 64
    assert meta["parameters"] == count_parameters(network)


def test_default_student_is_about_the_reference_size():
    # ../shared/DESIGN.md's reference supervised student has 1.2 M parameters.
    assert 1.0e6 < count_parameters(build_student(StudentConfig())) < 1.4e6


def test_tampered_weights_are_refused(model_file):
    path, _ = model_file
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["weights"]))
    payload["weights"][name] = payload["weights"][name] + 1e-3
    torch.save(payload, path)
    with pytest.raises(DistillSegError, match="was modified.*SHA-256"):
        load_model(path)


def test_tampered_metadata_is_refused(model_file):
    path, _ = model_file
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["metadata"])
    meta["field_of_view"] = "whole-body"  # e.g. to dodge the ROI rule
    payload["metadata"] = json.dumps(meta, sort_keys=True)
    torch.save(payload, path)
    with pytest.raises(DistillSegError, match="metadata does not match"):
        load_model(path)


def test_a_pickled_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "distillseg-student/1", "obj": SegmentClass("x")}, path)  # needs unpickling a class
    with pytest.raises(DistillSegError, match="cannot read model file"):
        load_model(path)


def run_cli(capsys, *args):
    """The command line in this process: exit status and stderr as the console script gives them."""
    from DistillSegLib.cli import main

    capsys.readouterr()
    code = main(list(args))
    return subprocess.CompletedProcess(args, code, "", capsys.readouterr().err)


def test_bad_inputs_exit_2_with_one_error_line(tmp_path, sts_case_dir, capsys):
    folder = sts_case_dir("STS_001")
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_bytes(b"not a model")
    result = run_cli(capsys, "predict", "--model", str(not_a_model), "--ct", str(folder / "CT_image.nii.gz"),
                     "--pet", str(folder / "PET_image.nii.gz"), "--out", str(tmp_path / "x.nii.gz"), "--roi", "all")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")
    assert "model.pt" in result.stderr

    result = run_cli(capsys, "train", "--data", str(folder.parent), "--labelled", "STS_999", "--out", str(tmp_path / "m.pt"))
    assert result.returncode == 2 and result.stderr.startswith("error: --labelled: no case STS_999")
    assert not (tmp_path / "m.pt").exists()
