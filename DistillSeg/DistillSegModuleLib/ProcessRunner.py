"""Running ``python -m DistillSegLib ...`` in a separate process, line by line, cancellable.

The Logic only sees the small :class:`ProcessRunner` protocol, so the same Logic runs with
:class:`SubprocessRunner` (tests, scripts, fallback) and with ``QProcessRunner`` in Slicer
(``Widget.py``), where output arrives through the Qt event loop and the UI never freezes.
The pattern (a thin runner behind the logic, JSON progress lines) follows
lassoan/SlicerMONAIAuto3DSeg ``MONAIAuto3DSegLib/process.py``; the code is our own.

Callbacks are always called on the thread that calls :meth:`SubprocessRunner.poll` (or
:meth:`~SubprocessRunner.wait`), never on the reader thread, so they may touch the MRML scene.
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
# Seconds between SIGTERM (engine cleans up: atomic writes roll back) and SIGKILL.
TERMINATE_GRACE_S = 5.0


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


class ProcessRunner(Protocol):
    """What the Logic needs from a process runner."""

    def start(self, command: Sequence[str], on_line: LineCallback, on_finished: FinishedCallback,
              env: Mapping[str, str] | None = None) -> None:
        """Start ``command``; call ``on_line`` with each stdout line, ``on_finished`` once at the end."""

    def cancel(self) -> None:
        """Stop the process (and its children); ``on_finished`` then reports ``cancelled=True``."""

    def is_running(self) -> bool:
        """True between :meth:`start` and the ``on_finished`` call."""


class SubprocessRunner:
    """:class:`ProcessRunner` on :mod:`subprocess` with a reader thread and a queue.

    Call :meth:`poll` regularly (a timer in a GUI) or :meth:`wait` (scripts, tests) to
    deliver the callbacks on the calling thread.
    """

    def __init__(self, stderr_lines: int = 40) -> None:
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=stderr_lines)
        self._on_line: LineCallback | None = None
        self._on_finished: FinishedCallback | None = None
        self._cancelled = False
        self._readers: list[threading.Thread] = []

    def start(self, command: Sequence[str], on_line: LineCallback, on_finished: FinishedCallback,
              env: Mapping[str, str] | None = None) -> None:
        if self.is_running():
            raise RuntimeError("a process is already running")
        self._on_line, self._on_finished = on_line, on_finished
        self._cancelled = False
        self._stderr.clear()
        self._events = queue.Queue()
        self._process = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=dict(env) if env is not None else None,
            # Own process group, so cancel reaches worker processes (data loaders) too.
            start_new_session=(os.name == "posix"),
            creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self._process.stdout, "line"), daemon=True),
            threading.Thread(target=self._read, args=(self._process.stderr, "stderr"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        threading.Thread(target=self._wait_exit, daemon=True).start()

    def is_running(self) -> bool:
        return self._process is not None

    def cancel(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._cancelled = True
        _terminate(process)
        deadline = time.monotonic() + TERMINATE_GRACE_S
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if process.poll() is None:
            _terminate(process, kill=True)

    def poll(self) -> bool:
        """Deliver queued lines and the end of the run; True while the process is still running."""
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

    def _read(self, stream, kind: str) -> None:
        for line in stream:
            self._events.put((kind, line.rstrip("\r\n")))
        stream.close()

    def _wait_exit(self) -> None:
        process = self._process
        exit_code = process.wait()
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


def _terminate(process: subprocess.Popen, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL) the process group on POSIX; terminate/kill on Windows."""
    try:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        elif kill:
            process.kill()
        else:
            process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
    except (ProcessLookupError, PermissionError, OSError):
        pass


def python_executable() -> str:
    """The interpreter that runs ``-m DistillSegLib``: ``PythonSlicer`` inside Slicer.

    In Slicer ``sys.executable`` is the application, not a plain interpreter; Slicer ships
    ``PythonSlicer`` beside it (the launcher that sets Slicer's Python environment).
    """
    import shutil

    inside_slicer_app = hasattr(sys.modules.get("slicer"), "app")  # slicer-core has no app
    if inside_slicer_app:
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable
