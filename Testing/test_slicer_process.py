"""The module's process runner with real child processes (no engine needed: fast).

In Slicer the engine's interpreter is ``PythonSlicer``, a CTK application launcher that starts
the real interpreter as a child and forwards no signal (commontk/AppLauncher,
``Base/ctkAppLauncher.cpp``). :data:`LAUNCHER` does the same (a Python process that runs its
arguments as a child and takes the default action on SIGTERM), so the tests see the process
tree the runner faces in Slicer.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DistillSeg"))

from DistillSegModuleLib.ProcessRunner import EXIT_CANCELLED, SubprocessRunner  # noqa: E402

# A child that reports progress like the engine, and on SIGTERM cleans up as the engine's
# CancelToken does (exit status 130) after writing a marker file.
CHILD = r"""
import json, signal, sys, time
marker = sys.argv[1]
def stop(*_):
    time.sleep(0.3)  # a rollback takes a moment
    open(marker, "w").write("terminated cleanly")
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
for step in range(1, 100000):
    print(json.dumps({"stage": "train", "step": step, "total": 100000}), flush=True)
    time.sleep(0.02)
"""

# Like PythonSlicer: run the real interpreter as a child, return its exit status, forward no signal.
LAUNCHER_SOURCE = f"""#!{sys.executable}
import subprocess, sys
sys.exit(subprocess.call([{sys.executable!r}, *sys.argv[1:]]))
"""


def write_launcher(folder: Path) -> Path:
    """An executable launcher script in ``folder`` (``PythonSlicer``'s process structure)."""
    path = folder / "PythonLauncher"
    path.write_text(LAUNCHER_SOURCE)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def launcher(tmp_path) -> Path:
    return write_launcher(tmp_path)


def alive(pids) -> list[int]:
    """The ids of ``pids`` still running (zombies count as gone)."""
    result = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                result.append(pid)
        except psutil.NoSuchProcess:
            pass
    return result


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


def test_a_program_that_cannot_start_raises_and_leaves_the_runner_idle(tmp_path):
    runner = SubprocessRunner()
    with pytest.raises(OSError):
        runner.start([str(tmp_path / "no-such-interpreter"), "-c", "pass"], lambda line: None, lambda result: None)
    assert not runner.is_running()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cancel_reaches_the_interpreter_behind_a_launcher_and_waits_for_it(tmp_path, launcher):
    """The engine behind a launcher gets the gentle stop (it rolls back: marker written), and
    the run is reported finished only when no process of its tree is left."""
    runner = SubprocessRunner()
    marker = tmp_path / "marker.txt"
    steps, results, tree = [], [], []

    def on_line(line):
        steps.append(json.loads(line)["step"])
        if len(steps) == 3:
            tree.extend(runner.process_ids())
            runner.cancel()

    def on_finished(result):
        results.append((result, alive(tree)))

    runner.start([str(launcher), "-c", CHILD, str(marker)], on_line, on_finished)
    runner.wait(60)
    (result, left), = results
    assert len(tree) == 2, "the launcher and the interpreter it started"
    assert result.cancelled and result.exit_code == EXIT_CANCELLED and not result.ok
    assert left == [], "a process of the run was still alive when the run was reported finished"
    assert marker.read_text() == "terminated cleanly"  # stopped gently first, so it could clean up
    assert not runner.is_running()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_process_that_ignores_the_gentle_stop_is_killed_after_the_grace_time(launcher):
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(600)"
    runner = SubprocessRunner(grace_s=1.0)
    tree, results = [], []

    def on_line(line):
        tree.extend(runner.process_ids())
        runner.cancel()

    started = time.monotonic()
    runner.start([str(launcher), "-c", stubborn], on_line, results.append)
    runner.wait(60)
    assert results and results[0].cancelled
    assert len(tree) == 2 and alive(tree) == []
    assert time.monotonic() - started < 30


def test_a_scheduler_drives_the_runner_as_slicers_qt_timer_does():
    """``schedule(seconds, function)`` is all the runner needs from Slicer (``qt.QTimer.singleShot``):
    here a small event loop on this thread plays the Qt event loop."""
    queue, counter = [], itertools.count()

    def schedule(seconds, function):
        heapq.heappush(queue, (time.monotonic() + seconds, next(counter), function))

    runner = SubprocessRunner(schedule=schedule)
    lines, results = [], []
    runner.start([sys.executable, "-c", "print('a'); print('b')"], lines.append, results.append)
    deadline = time.monotonic() + 60
    while queue and time.monotonic() < deadline:
        due, _, function = heapq.heappop(queue)
        time.sleep(max(0.0, due - time.monotonic()))
        function()
    assert lines == ["a", "b"] and results and results[0].ok
    assert not queue, "the runner stops rescheduling itself once the run has ended"


def test_a_second_start_while_running_is_refused(tmp_path):
    runner = SubprocessRunner()
    runner.start([sys.executable, "-c", CHILD, str(tmp_path / "m")], lambda line: None, lambda result: None)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            runner.start([sys.executable, "-c", "pass"], lambda line: None, lambda result: None)
    finally:
        runner.cancel()
        runner.wait(60)
    assert not alive(runner.process_ids())


def test_engine_treats_sigbreak_like_sigterm_where_it_exists():
    """Windows: the runner's gentle stop is CTRL_BREAK (SIGBREAK); the engine must cancel on it."""
    import signal

    from DistillSegLib.progress import CancelToken

    if not hasattr(signal, "SIGBREAK"):
        pytest.skip("SIGBREAK exists on Windows only")
    token = CancelToken()
    with token.on_signals():
        assert signal.getsignal(signal.SIGBREAK) not in (signal.SIG_DFL, signal.SIG_IGN)
    assert os.name == "nt"
