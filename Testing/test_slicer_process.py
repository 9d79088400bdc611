"""The module's process runner with real child processes (no engine needed: fast)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DistillSeg"))

from DistillSegModuleLib.ProcessRunner import EXIT_CANCELLED, SubprocessRunner  # noqa: E402

# A child that reports progress like the engine, and on SIGTERM cleans up as the engine's
# CancelToken does (exit status 130) after writing a marker file.
CHILD = r"""
import json, signal, sys, time
marker = sys.argv[1]
def stop(*_):
    open(marker, "w").write("terminated cleanly")
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
for step in range(1, 100000):
    print(json.dumps({"stage": "train", "step": step, "total": 100000}), flush=True)
    time.sleep(0.02)
"""


def test_lines_arrive_in_order_and_exit_is_reported():
    runner = SubprocessRunner()
    lines, results = [], []
    code = "import sys\nfor i in range(5): print(i)\nsys.stderr.write('error: bad input file x.nii\\n')\nsys.exit(2)"
    runner.start([sys.executable, "-c", code], lines.append, results.append)
    assert runner.is_running()
    runner.wait(60)
    assert lines == ["0", "1", "2", "3", "4"]
    result, = results
    assert (result.exit_code, result.cancelled, result.ok) == (2, False, False)
    assert result.error_message() == "bad input file x.nii"
    assert not runner.is_running()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cancel_terminates_a_running_child_gracefully(tmp_path):
    runner = SubprocessRunner()
    marker = tmp_path / "marker.txt"
    steps, results = [], []

    def on_line(line):
        steps.append(json.loads(line)["step"])
        if len(steps) == 3:
            runner.cancel()

    started = time.monotonic()
    runner.start([sys.executable, "-c", CHILD, str(marker)], on_line, results.append)
    runner.wait(60)
    result, = results
    assert result.cancelled and result.exit_code == EXIT_CANCELLED and not result.ok
    assert marker.read_text() == "terminated cleanly"  # SIGTERM first, so the child could clean up
    assert steps[:3] == [1, 2, 3]
    assert time.monotonic() - started < 30


def test_a_second_start_while_running_is_refused(tmp_path):
    runner = SubprocessRunner()
    runner.start([sys.executable, "-c", CHILD, str(tmp_path / "m")], lambda line: None, lambda result: None)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            runner.start([sys.executable, "-c", "pass"], lambda line: None, lambda result: None)
    finally:
        runner.cancel()
        runner.wait(60)
