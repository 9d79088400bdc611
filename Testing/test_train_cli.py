"""``distillseg train``: a resume keeps the arguments it started with, an empty case list is not
"all", one run at a time per model file, and checks that need no data come first."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from DistillSegLib.student.model_file import load_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_ARGS = ["--spacing", "4,4,4", "--patch-size", "32,32,16", "--channels", "8,16,32", "--res-units", "1",
             "--val-every", "1000"]



@pytest.fixture(scope="module")
def data(sts_case_dir, tmp_path_factory):
    """A small dataset: STS_001 and STS_002 (links to the shared cases)."""
    folder = tmp_path_factory.mktemp("data")
    for case_id in ("STS_001", "STS_002"):
        (folder / case_id).symlink_to(sts_case_dir(case_id), target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A 2-step run on STS_001: its model and its final checkpoint."""
    from DistillSegLib.cli import main

    out = tmp_path_factory.mktemp("model") / "student.pt"
    assert main(["train", "--data", str(data), "--labelled", "STS_001", "--steps", "2", "--out", str(out),
                 "--threads", "1", *TINY_ARGS]) == 0
    return out, out.with_name("student.checkpoint.pt")


@pytest.mark.parametrize("change, named", [
    (["--labelled", "STS_002"], "--labelled STS_001 (now STS_002)"),
    (["--labelled", "STS_001", "--seed", "1"], "--seed 0 (now 1)"),
    (["--labelled", "STS_001", "--steps", "4"], "--steps 2 (now 4)"),
    (["--labelled", "STS_001", "--unlabelled", "STS_002"], "--unlabelled  (now STS_002)"),
])
def test_resume_with_other_arguments_is_refused_before_loading(data, trained, change, named, cli):
    out, checkpoint = trained
    before = checkpoint.read_bytes()
    steps = [] if "--steps" in change else ["--steps", "2"]
    result = cli("train", "--data", data, *change, *steps, "--out", out, "--resume", "--json-progress",
                 "--threads", "1", *TINY_ARGS)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: --resume:") and named in line
    assert result.stdout == ""  # refused before any case was prepared
    assert checkpoint.read_bytes() == before
    assert load_model(out).metadata["training_cases"]["labelled"] == ["STS_001"]


def test_resume_with_the_same_arguments_continues(data, trained, tmp_path, cli):
    out, checkpoint = trained
    copy = tmp_path / "student.pt"
    copy.with_name("student.checkpoint.pt").write_bytes(checkpoint.read_bytes())
    result = cli("train", "--data", data, "--labelled", "STS_001", "--steps", "2", "--out", copy,
                 "--resume", "--threads", "1", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr and load_model(copy).metadata["training"]["steps_done"] == 2


@pytest.mark.parametrize("option", ["--labelled", "--val", "--unlabelled"])
def test_an_empty_case_list_is_not_all(data, tmp_path, option, cli):
    result = cli("train", "--data", data, option, "", "--steps", "1", "--out", tmp_path / "m.pt",
                 *TINY_ARGS)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {option} is empty: give case ids, or leave the option out"
    assert not (tmp_path / "m.pt").exists()


def test_two_runs_on_one_model_file(data, tmp_path, cli):
    """While one run trains into student.pt, a second one on the same file is refused."""
    out = tmp_path / "student.pt"
    first = subprocess.Popen(
        [sys.executable, "-m", "DistillSegLib", "train", "--data", str(data), "--labelled", "STS_001",
         "--steps", "100000", "--out", str(out), "--json-progress", "--threads", "1", *TINY_ARGS],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait until it trains (it holds the lock since its start)
            line = first.stdout.readline()
            if not line or json.loads(line).get("stage") == "train":
                break
        second = cli("train", "--data", data, "--labelled", "STS_001", "--steps", "1", "--out", out,
                     "--threads", "1", *TINY_ARGS)
        assert second.returncode == 2
        assert second.stderr.strip() == (f"error: another process (pid {first.pid}) is writing the model {out}: "
                                         "wait for it to finish, or choose another file")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130 and not out.exists()
    # The lock ends with its process: the next run on that file proceeds.
    assert cli("train", "--data", data, "--labelled", "STS_001", "--steps", "1", "--out", out,
               "--threads", "1", *TINY_ARGS).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.checkpoint.pt", "student.pt"]  # no lock file


def test_a_model_records_the_file_name_it_started_from_never_its_folder(data, trained, tmp_path, cli):
    from DistillSegLib.student.model_file import read_payload

    folder = tmp_path / "Doe^Jane_19700101_MRN12345"
    folder.mkdir()
    start = folder / "start.pt"
    start.write_bytes(trained[0].read_bytes())
    out = tmp_path / "continued.pt"
    result = cli("train", "--data", data, "--labelled", "STS_001", "--steps", "1", "--init", start, "--out", out,
                 "--threads", "1", *TINY_ARGS)
    assert result.returncode == 0, result.stderr
    metadata = read_payload(out)["metadata"]
    assert metadata["init_from"]["path"] == "start.pt"
    assert "Doe^Jane" not in json.dumps(metadata)
