"""Every kill path of the engine reaches the interpreter behind a launcher, and the engine
starts detached from Slicer's console.

``PythonSlicer`` is a launcher: it starts the real interpreter as a child and forwards no
signal. On Windows there is no process group a single kill could reach, so killing the
launcher's process alone leaves the engine running. The launcher here starts the
interpreter in a session of its own, outside the launcher's process group, as a Windows
child is outside anything but its process tree: only a kill that walks the tree stops it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT
from DistillSegLib.engine.client import EngineClient
from DistillSegLib.engine.processes import background_options, kill_tree

LAUNCHER_SOURCE = f"""#!{sys.executable}
import subprocess, sys
sys.exit(subprocess.call([{sys.executable!r}, *sys.argv[1:]], start_new_session=True))
"""


@pytest.fixture
def launcher(tmp_path) -> Path:
    path = tmp_path / "PythonLauncher"
    path.write_text(LAUNCHER_SOURCE)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def interpreter_of(pid: int, timeout: float = 60.0) -> psutil.Process:
    """The interpreter the launcher ``pid`` started."""
    deadline = time.monotonic() + timeout
    launcher = psutil.Process(pid)
    while time.monotonic() < deadline:
        children = launcher.children()
        try:  # once it runs the interpreter (not the launcher's fork before exec)
            if children and children[0].cmdline() != launcher.cmdline():
                return children[0]
        except psutil.Error:
            pass
        time.sleep(0.05)
    raise TimeoutError("the launcher started no interpreter")


def suspend(process: psutil.Process, timeout: float = 10.0) -> None:
    """Stop ``process`` and wait until every thread of it has stopped.

    ``SIGSTOP`` stops a process's threads one by one as the kernel gets to them: until
    the group stop reaches the reader thread, a line written to the engine is still read
    and handled. The test waits for the kernel to report every thread stopped before it
    writes anything.
    """
    process.suspend()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [_thread_state(process.pid, thread.id) for thread in process.threads()]
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
    raise TimeoutError(f"process {process.pid} did not stop within {timeout} s")


def _thread_state(pid: int, tid: int) -> str:
    """The kernel's one-letter state of thread ``tid`` (``T``: stopped); Linux ``/proc``."""
    stat_line = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return stat_line.rsplit(")", 1)[1].split()[0]


def gone(process: psutil.Process, timeout: float = 10.0) -> bool:
    """Whether ``process`` ends within ``timeout`` s (a zombie, dead but not yet reaped, counts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def engine_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("how", ["kill", "shutdown", "cancel"])
def test_every_kill_path_stops_the_engine_behind_a_launcher(launcher, how):
    engine = EngineClient(python=str(launcher), engine_args=["--threads", "1"], env=engine_env(), cancel_grace=0.5)
    engine.start()
    interpreter = interpreter_of(engine.pid)
    try:
        if how == "kill":
            engine.kill()
        elif how == "shutdown":
            engine.wait_ready(timeout=300)
            # An engine that does not answer: stopped, it neither reads nor exits; shutdown kills it.
            suspend(interpreter)
            engine.shutdown(timeout=1.0)
        else:  # a cancel that is not answered in time kills the engine and restarts it
            engine.wait_ready(timeout=300)
            suspend(interpreter)
            job = engine.submit(["teachers", "--json"])
            engine.cancel(job)
            result = engine.wait(job, timeout=60)
            assert result.cancelled and "did not stop within" in result.message
        assert gone(interpreter), f"{how}: the interpreter behind the launcher is still running"
    finally:
        if interpreter.is_running():
            interpreter.kill()
        engine.shutdown(timeout=5.0)


def test_kill_tree_reaches_grandchildren_outside_the_process_group(launcher):
    process = subprocess.Popen([str(launcher), "-c", "import time; time.sleep(600)"], **background_options())
    interpreter = interpreter_of(process.pid)
    assert os.getsid(interpreter.pid) != os.getsid(process.pid)  # outside the launcher's group
    kill_tree(process)
    assert process.wait(10) != 0
    assert gone(interpreter)
    kill_tree(process)  # already gone: no error


@pytest.mark.skipif(os.name == "nt", reason="POSIX sessions")
def test_the_engine_and_pip_start_detached_from_the_callers_terminal(tmp_path):
    sys.path.insert(0, str(ROOT / "DistillSeg"))
    from DistillSegModuleLib.Dependencies import runPip

    engine = EngineClient(engine_args=["--threads", "1"], env=engine_env())
    engine.start()
    try:
        assert os.getsid(engine.pid) == engine.pid  # a session of its own: no signal from Slicer's terminal
    finally:
        engine.kill()
    code, lines = runPip(sys.executable, ["--version"])
    assert code == 0 and lines[0].startswith("pip ")


def slow_launcher(folder: Path, seconds: float, script: str | None = None) -> Path:
    """A launcher that takes ``seconds`` to start its interpreter (a cold PythonSlicer), which
    runs ``script`` instead of the given arguments when one is given."""
    arguments = "['-c', " + repr(script) + "]" if script is not None else "sys.argv[1:]"
    path = folder / "SlowLauncher"
    path.write_text(f"#!{sys.executable}\nimport subprocess, sys, time\ntime.sleep({seconds})\n"
                    f"sys.exit(subprocess.call([{sys.executable!r}, *{arguments}]))\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_quitting_while_the_engine_starts_does_not_wait_for_it(tmp_path):
    engine = EngineClient(python=str(slow_launcher(tmp_path, 20.0)), env=engine_env())
    engine.start()
    launcher = psutil.Process(engine.pid)
    started = time.monotonic()
    engine.shutdown()  # Slicer quits while the engine is still importing
    assert time.monotonic() - started < 5.0
    assert gone(launcher, 1.0) and not engine.is_alive()


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_training_run_is_killed_when_the_module_shuts_down(tmp_path):
    sys.path.insert(0, str(ROOT / "DistillSeg"))
    from DistillSegModuleLib.EngineRunner import EngineRunner

    stubborn = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('training', flush=True)\ntime.sleep(600)")
    runner = EngineRunner()
    runner.fallback._grace_s = 1.0
    lines, results = [], []
    # ``train`` runs in its own process, not in the warm engine
    runner.start([str(slow_launcher(tmp_path, 0.0, stubborn)), "-m", "DistillSegLib", "train"], lines.append,
                 results.append)
    deadline = time.monotonic() + 60
    while not lines and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.05)
    tree = [psutil.Process(pid) for pid in runner.fallback.process_ids()]
    tree += [child for p in tree for child in p.children(recursive=True) if child.pid not in {q.pid for q in tree}]
    assert len(tree) == 2  # the launcher and the training interpreter, which ignores SIGTERM
    runner.shutdown()
    assert all(gone(p, 1.0) for p in tree)
    assert results and results[0].cancelled


def test_an_engine_that_dies_while_idle_is_noticed_and_restarted(tmp_path):
    """Between jobs nothing polls the engine: a watch on the idle engine (Slicer's timer, here a
    small event loop) notices when it dies and starts a new one before the next Run."""
    import heapq
    import itertools
    import signal

    sys.path.insert(0, str(ROOT / "DistillSeg"))
    from DistillSegModuleLib.EngineRunner import EngineRunner

    queue, counter = [], itertools.count()

    def schedule(seconds, function):
        heapq.heappush(queue, (time.monotonic() + seconds, next(counter), function))

    def run_until(condition, timeout=60.0):
        deadline = time.monotonic() + timeout
        while queue and not condition() and time.monotonic() < deadline:
            due, _, function = heapq.heappop(queue)
            time.sleep(max(0.0, due - time.monotonic()))
            function()

    stopped = []
    runner = EngineRunner(engine_args=["--threads", "1"], schedule=schedule, onEngineStopped=stopped.append)
    runner.warmUp(sys.executable, engine_env())
    first = runner.client.pid
    os.kill(first, signal.SIGKILL)  # e.g. the system's out-of-memory killer, while no job runs
    run_until(lambda: stopped)
    try:
        assert stopped and "stopped unexpectedly" in stopped[0] and "restarted" in stopped[0]
        assert runner.client.is_alive() and runner.client.pid != first
    finally:
        runner.shutdown()
    run_until(lambda: False, timeout=10.0)
    assert not queue, "the watch ends with the engine"
