"""Running ``python -m DistillSegLib ...`` in a separate process, line by line, cancellable.

The Logic only sees the small :class:`ProcessRunner` protocol (``start``, ``cancel``,
``is_running``), so another runner (a warm background engine) can replace this one.
:class:`SubprocessRunner` is the one used everywhere, Slicer included: in Slicer a
``qt.QTimer`` calls :meth:`SubprocessRunner.poll` (see ``schedule``), as
lassoan/SlicerMONAIAuto3DSeg ``MONAIAuto3DSegLib/process.py`` does; the code is our own.

Why a process *tree*: in Slicer the interpreter is ``PythonSlicer``, a CTK application
launcher (commontk/AppLauncher ``Base/ctkAppLauncher.cpp``) that starts the real
interpreter as a child process and forwards no signal. Cancel therefore signals every
process of the tree (psutil), first gently (SIGTERM on POSIX, CTRL_BREAK on Windows: the
engine's ``CancelToken`` rolls back), then, after :data:`TERMINATE_GRACE_S`, kills what is
left. The run is reported finished only when no process of the tree is alive, so the
caller may then delete the job's temporary folder.

Callbacks are always called on the thread that calls :meth:`SubprocessRunner.poll` (or
:meth:`~SubprocessRunner.wait`), never on a reader thread, so they may touch the MRML scene.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

# Exit status the engine uses for a cancelled run (``DistillSegLib.cli.main``).
EXIT_CANCELLED = 130
# Seconds between the gentle stop (the engine rolls back its atomic writes) and the kill.
TERMINATE_GRACE_S = 5.0
# Seconds between two polls when a scheduler (Slicer's QTimer) drives the runner.
POLL_INTERVAL_S = 0.1


@dataclass
class ProcessResult:
    """How a run ended.

    Attributes:
        exit_code: the process's exit status (``EXIT_CANCELLED`` after :meth:`cancel`).
        cancelled: True when the run was cancelled through the runner.
        stderr_tail: the last lines of stderr (the engine's ``error: ...`` line is there).
    """

    exit_code: int
    cancelled: bool
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.cancelled

    def error_message(self) -> str:
        """The engine's (or argparse's) ``error: ...`` message, or the stderr tail."""
        for line in reversed(self.stderr_tail.splitlines()):
            if "error: " in line:
                return line.split("error: ", 1)[1]
        return self.stderr_tail.strip() or f"process ended with exit status {self.exit_code}"


LineCallback = Callable[[str], None]
FinishedCallback = Callable[[ProcessResult], None]
# ``schedule(seconds, function)``: call ``function`` once after ``seconds`` on the GUI thread.
Scheduler = Callable[[float, Callable[[], None]], None]


class ProcessRunner(Protocol):
    """What the Logic needs from a process runner."""

    def start(self, command: Sequence[str], on_line: LineCallback, on_finished: FinishedCallback,
              env: Mapping[str, str] | None = None) -> None:
        """Start ``command``; call ``on_line`` with each stdout line, ``on_finished`` once at the end.

        Raises:
            OSError: the program cannot be started (``on_finished`` is then never called).
        """

    def cancel(self) -> None:
        """Ask the run to stop; ``on_finished`` reports ``cancelled=True`` once nothing of it runs."""

    def is_running(self) -> bool:
        """True from :meth:`start` until ``on_finished`` has been called."""


class SubprocessRunner:
    """:class:`ProcessRunner` on :mod:`subprocess` + psutil, with reader threads and a queue.

    Args:
        schedule: when given (Slicer: ``qt.QTimer.singleShot``), the runner polls itself every
            :data:`POLL_INTERVAL_S` while a run is active; otherwise call :meth:`poll` or
            :meth:`wait`.
        grace_s: seconds between the gentle stop and the kill.
    """

    def __init__(self, schedule: Scheduler | None = None, grace_s: float = TERMINATE_GRACE_S,
                 stderr_lines: int = 40) -> None:
        self._schedule = schedule
        self._grace_s = grace_s
        self._process: subprocess.Popen | None = None
        self._tree: dict[int, object] = {}  # pid -> psutil.Process, every process seen in the run's tree
        self._tree_lock = threading.Lock()
        self._events: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=stderr_lines)
        self._on_line: LineCallback | None = None
        self._on_finished: FinishedCallback | None = None
        self._cancelled = False
        self._kill_at: float | None = None  # monotonic time after which survivors are killed
        self._readers: list[threading.Thread] = []

    # ----------------------------------------------------------------- protocol

    def start(self, command: Sequence[str], on_line: LineCallback, on_finished: FinishedCallback,
              env: Mapping[str, str] | None = None) -> None:
        import psutil

        if self.is_running():
            raise RuntimeError("a process is already running")
        self._on_line, self._on_finished = on_line, on_finished
        self._cancelled, self._kill_at = False, None
        self._stderr.clear()
        self._events = queue.Queue()
        self._process = subprocess.Popen(list(command), **_popen_options(env))
        with self._tree_lock:
            self._tree = {self._process.pid: psutil.Process(self._process.pid)}
        self._readers = [
            threading.Thread(target=self._read, args=(self._process.stdout, "line"), daemon=True),
            threading.Thread(target=self._read, args=(self._process.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        threading.Thread(target=self._wait_exit, args=(self._process,), daemon=True).start()
        if self._schedule is not None:
            self._schedule(POLL_INTERVAL_S, self._tick)

    def is_running(self) -> bool:
        return self._process is not None

    def cancel(self) -> None:
        """Stop every process of the run's tree gently now, kill survivors after the grace time.

        Returns at once; :meth:`poll` delivers the end of the run when nothing is left.
        """
        if self._process is None or self._cancelled:
            return
        self._cancelled = True
        self._kill_at = time.monotonic() + self._grace_s
        self._refresh_tree()
        for process in self._alive():
            _stop_gently(process)

    # ----------------------------------------------------------------- driving

    def poll(self) -> bool:
        """Deliver queued lines and the end of the run; True while the run is still active."""
        if self._process is None:
            return False
        self._refresh_tree()
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            for process in self._alive():
                _kill(process)
        while True:
            try:
                kind, payload = self._events.get_nowait()
            except queue.Empty:
                return self._process is not None
            if kind == "line" and self._on_line is not None:
                self._on_line(payload)
            elif kind == "stderr":
                self._stderr.append(payload)
            elif kind == "exit":
                self._finish(payload)
                return False

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> None:
        """Poll until the run ends (or ``timeout`` seconds pass: then raise ``TimeoutError``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"process still running after {timeout} s")
            time.sleep(interval)

    def process_ids(self) -> list[int]:
        """Ids of the processes of the current run's tree seen so far (alive or not)."""
        with self._tree_lock:
            return list(self._tree)

    def _tick(self) -> None:
        if self.poll() and self._schedule is not None:
            self._schedule(POLL_INTERVAL_S, self._tick)

    # ----------------------------------------------------------------- process tree

    def _refresh_tree(self) -> None:
        """Remember every descendant of the root while the root lives (orphans lose their parent)."""
        import psutil

        with self._tree_lock:
            root = self._tree.get(self._process.pid) if self._process is not None else None
            if root is None:
                return
            try:
                for child in root.children(recursive=True):
                    self._tree.setdefault(child.pid, child)
            except psutil.Error:
                pass  # the root has exited: its former children stay in the set

    def _alive(self) -> list:
        with self._tree_lock:
            processes = list(self._tree.values())
        return [p for p in processes if _is_alive(p)]

    # ----------------------------------------------------------------- threads

    def _read(self, stream, kind: str) -> None:
        for line in stream:
            self._events.put((kind, line.rstrip("\r\n")))
        stream.close()

    def _wait_exit(self, process: subprocess.Popen) -> None:
        exit_code = process.wait()
        root_exited = time.monotonic()
        while self._alive():  # e.g. the interpreter the launcher started
            if self._kill_at is None and time.monotonic() - root_exited > self._grace_s:
                self._kill_at = time.monotonic()  # orphans of a finished run: poll() kills them
            time.sleep(0.05)
        for reader in self._readers:  # every line is queued before the exit event
            reader.join()
        self._events.put(("exit", exit_code))

    def _finish(self, exit_code: int) -> None:
        result = ProcessResult(
            exit_code=EXIT_CANCELLED if self._cancelled else int(exit_code),
            cancelled=self._cancelled or exit_code == EXIT_CANCELLED,
            stderr_tail="\n".join(self._stderr),
        )
        self._process = None
        on_finished, self._on_line, self._on_finished = self._on_finished, None, None
        if on_finished is not None:
            on_finished(result)


def _popen_options(env: Mapping[str, str] | None) -> dict:
    """Pipes, no stdin, own process group; on Windows no console window (as
    ``slicer.util.launchConsoleProcess`` does)."""
    from DistillSegLib.engine.processes import background_options

    return dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                encoding="utf-8", errors="replace", bufsize=1, env=dict(env) if env is not None else None,
                **background_options())


def _is_alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop_gently(process) -> None:
    """SIGTERM on POSIX; CTRL_BREAK on Windows (``terminate()`` there is a hard kill, and
    QProcess's WM_CLOSE is ignored by console programs). The engine handles both."""
    import psutil

    try:
        if os.name == "nt":
            process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            process.terminate()
    except (psutil.Error, OSError):
        pass


def _kill(process) -> None:
    import psutil

    try:
        process.kill()
    except psutil.Error:
        pass


def python_executable() -> str:
    """The interpreter that runs ``-m DistillSegLib``: ``PythonSlicer`` inside Slicer.

    In Slicer ``sys.executable`` is the application, not a plain interpreter; Slicer ships
    ``PythonSlicer`` on its PATH (``slicer.util._executePythonModule`` finds it the same way).
    """
    import shutil

    inside_slicer_app = hasattr(sys.modules.get("slicer"), "app")  # slicer-core has no app
    if inside_slicer_app:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable
