"""The warm engine for real: ``distillseg serve`` in a subprocess driven by :class:`EngineClient` —
jobs run by the command line's own functions, bad input, cancel, a background job giving way,
a killed engine (nothing half-written, restarted), a cancel that is not answered, shutdown."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from DistillSegLib.engine import protocol
from DistillSegLib.engine.client import EngineClient
from DistillSegLib.io.volume import read_image
from DistillSegLib.provenance import read_provenance
from conftest import ROOT

TINY = dict(spacing=(4.0, 4.0, 4.0), patch_size=(32, 32, 16), channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


def engine_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def client():
    engine = EngineClient(engine_args=["--threads", "1"], env=engine_env())
    engine.wait_ready(timeout=300)
    yield engine
    engine.shutdown()


def tiny_model(path, seed: int = 0):
    """An (untrained) tiny student model file: jobs and the command line must agree on it."""
    import torch

    from DistillSegLib.student.config import StudentConfig
    from DistillSegLib.student.model_file import save_model
    from DistillSegLib.student.network import build_student

    torch.manual_seed(seed)
    config = StudentConfig(**TINY)
    return save_model(path, build_student(config), config)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def case_args(sts_case_dir, case: str = "STS_001") -> list[str]:
    folder = sts_case_dir(case)
    return ["--ct", str(folder / "CT_image.nii.gz"), "--pet", str(folder / "PET_image.nii.gz")]


def wait_for(client: EngineClient, condition, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        client.poll(block=0.05)


def test_a_student_job_gives_the_command_lines_result(client, model_path, sts_case_dir, tmp_path, capsys):
    from DistillSegLib.cli import main

    out = tmp_path / "engine.nii.gz"
    seen: list[dict] = []
    job = client.submit(["predict", "--model", str(model_path), *case_args(sts_case_dir), "--roi", "all",
                         "--out", str(out), "--stats", str(tmp_path / "engine.csv")], on_message=seen.append)
    result = client.wait(job, timeout=300)
    assert result.ok, result.message
    assert seen[0]["event"] == "started" and seen[-1]["event"] == "finished"
    stages = [m.get("stage") for m in seen]
    assert "predict" in stages and "done" in stages  # the --json-progress lines, tagged with the job
    assert all(m["job"] == job for m in seen)
    record = read_provenance(out)
    assert record["source"] == "student" and record["student"]["model"] == str(model_path)
    assert len(record["student"]["weights_sha256"]) == 64
    reference = tmp_path / "cli.nii.gz"
    assert main(["predict", "--model", str(model_path), *case_args(sts_case_dir), "--roi", "all",
                 "--out", str(reference), "--threads", "1"]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(read_image(out).array, read_image(reference).array)


def test_bad_jobs_are_answered_and_the_engine_stays(client, sts_case_dir, tmp_path):
    pid = client.pid
    missing = client.wait(client.submit(["predict", "--model", str(tmp_path / "none.pt"), *case_args(sts_case_dir),
                                         "--roi", "all", "--out", str(tmp_path / "x.nii.gz")]))
    assert missing.exit_code == protocol.EXIT_BAD_INPUT and "model file not found" in missing.message
    typo = client.wait(client.submit(["predict", "--model", "m.pt", "--modle", "x", "--ct", "a", "--pet", "b", "--out", "c.nii.gz"]))
    assert typo.exit_code == protocol.EXIT_BAD_INPUT and "--modle" in typo.message
    training = client.wait(client.submit(["train", "--data", "x", "--out", "y.pt"]))
    assert training.exit_code == protocol.EXIT_BAD_INPUT and "own process" in training.message
    listed = client.wait(client.submit(["teachers", "--json"]))
    assert listed.ok and any(m.get("event") == "output" and "litemedsam" in m["text"] for m in listed.messages)
    assert client.pid == pid and client.is_alive()


def test_cancel_stops_a_running_job_at_its_next_batch(client, sts_case_dir):
    pid = client.pid
    steps: list[dict] = []
    job = client.submit(["embed", *case_args(sts_case_dir, "STS_002"), "--batch-size", "1", "--modality", "CT"],
                        on_message=lambda m: steps.append(m) if m.get("stage") == "embed" and m.get("step") else None)
    wait_for(client, lambda: steps)
    client.cancel(job)
    result = client.wait(job, timeout=client.cancel_grace + 30)
    assert result.cancelled and "cancelled by the client" in result.message
    assert client.pid == pid  # answered in time: no restart


def test_a_background_job_gives_way_and_resumes(client, sts_case_dir):
    events: list[tuple[str, str]] = []

    def record(message: dict) -> None:
        if "event" in message:
            events.append((message["job"], message["event"]))

    background = client.submit(["embed", *case_args(sts_case_dir, "STS_003"), "--batch-size", "1", "--modality", "PET"],
                               on_message=record, background=True)
    wait_for(client, lambda: (background, "started") in events)
    foreground = client.submit(["teachers", "--json"], on_message=record)
    assert client.wait(foreground, timeout=300).ok
    wait_for(client, lambda: (background, "resumed") in events)
    assert events.index((background, "paused")) < events.index((foreground, "started"))
    assert events.index((foreground, "finished")) < events.index((background, "resumed"))
    client.cancel(background)
    assert client.wait(background, timeout=60).cancelled


def test_a_killed_engine_leaves_nothing_half_written_and_restarts(client, sts_case_dir, sts_001, tmp_path):
    from DistillSegLib.io.volume import apply_affine

    out = tmp_path / "box.nii.gz"
    lo, hi = np.zeros(3), np.array(sts_001.ct.shape) - 1.0
    corners = apply_affine(sts_001.ct.affine, np.array([lo + 0.2 * hi, 0.8 * hi]))
    box = ",".join(f"{v:.1f}" for v in np.concatenate([corners.min(axis=0), corners.max(axis=0)]))
    steps: list[dict] = []
    job = client.submit(["predict", "--teacher", "litemedsam", f"--prompt-box={box}", *case_args(sts_case_dir),
                         "--out", str(out)], on_message=lambda m: steps.append(m) if m.get("step") == 1 else None)
    wait_for(client, lambda: steps)  # the teacher is working
    old = client.pid
    client.kill()
    result = client.wait(job, timeout=30) if client.is_pending(job) else None
    assert result is None or result.exit_code == protocol.EXIT_ENGINE_DIED
    assert list(tmp_path.iterdir()) == []  # killed while the teacher worked: no output, no temporary file
    again = client.wait(client.submit(["teachers", "--json"]), timeout=300)
    assert again.ok and client.pid != old


def test_a_cancel_that_is_not_answered_kills_the_engine(sts_case_dir):
    engine = EngineClient(engine_args=["--threads", "1"], env=engine_env(), cancel_grace=2.0)
    try:
        engine.wait_ready(timeout=300)
        started: list[dict] = []
        # one batch of every CT slice: nothing checks the cancel until the encoder is through
        job = engine.submit(["embed", *case_args(sts_case_dir, "STS_004"), "--batch-size", "256", "--modality", "CT"],
                            on_message=lambda m: started.append(m) if m.get("stage") == "embed" else None)
        wait_for(engine, lambda: started)
        time.sleep(1.0)
        engine.cancel(job)
        begun = time.monotonic()
        result = engine.wait(job, timeout=60)
        assert result.cancelled and "did not stop within" in result.message
        assert time.monotonic() - begun < 10 and not engine.is_alive()
    finally:
        engine.shutdown()


def test_shutdown_is_clean():
    engine = EngineClient(engine_args=["--threads", "1"], env=engine_env())
    engine.wait_ready(timeout=300)
    process_pid = engine.pid
    assert engine.shutdown(timeout=60) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(process_pid, 0)


def test_the_engine_reads_jobs_from_plain_pipes(tmp_path):
    """The protocol without the client: what a script or another front end would do."""
    lines = '{"job": "a", "argv": ["teachers", "--json"]}\nnot json\n{"cancel": "zz"}\n'
    process = subprocess.Popen([sys.executable, "-m", "DistillSegLib", "serve", "--threads", "1"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=engine_env())
    process.stdin.write(lines)
    process.stdin.flush()
    messages = []
    for line in process.stdout:
        messages.append(protocol.decode(line))
        if messages[-1].get("event") == "finished":
            process.stdin.close()  # end of input: the engine says bye and exits
    assert process.wait(timeout=60) == 0
    events = [m.get("event") for m in messages]
    assert events[0] == "ready" and events[-1] == "bye"
    assert next(m for m in messages if m.get("event") == "error")["fatal"] is False
    assert next(m for m in messages if m.get("event") == "finished")["exit_code"] == 0


def engine_replies(text: str) -> tuple[list[dict], bool]:
    """Feed ``text`` to an engine's reader (in this process, no jobs run); its replies, and whether it stopped."""
    import io

    from DistillSegLib.engine.server import Engine

    out = io.StringIO()
    engine = Engine(out)
    engine.read(io.StringIO(text))
    return [protocol.decode(line) for line in out.getvalue().splitlines()], engine._stopping


@pytest.mark.parametrize("line, fragment", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"job": "a", "argv": ["info"], "background": "false"}', '"background" must be true or false'),
    ('{"job": "a", "argv": "predict --ct x"}', '"argv" must be a non-empty list of strings'),
    ('{"job": "a", "argv": ["predict", {"x": 1}]}', '"argv" must be a non-empty list of strings'),
    ('{"job": ["a"], "argv": ["info"]}', '"job" must be a string or an integer'),
    ('{"cancel": "never-submitted"}', "no job 'never-submitted' to cancel"),
    ('{"cancel": {"a": 1}}', '"cancel" must name a job id'),
    ('[1, 2, 3]', "not a JSON object"),
    ('"shutdown"', "not a JSON object"),
    ('{"shutdown": "yes"}', '"shutdown" must be true'),
])
def test_every_line_gets_an_answer_and_the_reader_survives_it(line, fragment):
    replies, stopped = engine_replies(line + "\n" + '{"cancel": "after"}\n')
    assert fragment in replies[0]["message"] and replies[0]["event"] == "error" and replies[0]["fatal"] is False
    assert "no job 'after' to cancel" in replies[1]["message"]  # the next line is still read
    assert stopped  # the end of input stops the engine


def test_a_deeply_nested_line_neither_hangs_the_engine_nor_keeps_it_alive_after_its_input_closes():
    process = subprocess.Popen([sys.executable, "-m", "DistillSegLib", "serve", "--threads", "1"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=engine_env())
    try:
        out, _ = process.communicate("[" * 100_000 + "]" * 100_000 + "\n" + '{"shutdown": true}\n', timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    messages = [protocol.decode(line) for line in out.splitlines()]
    assert [m.get("event") for m in messages] == ["ready", "error", "bye"]
    assert "nested too deeply" in messages[1]["message"]
