"""A client of the warm engine over subprocess pipes (standard library, psutil where installed; Slicer imports it).

:class:`EngineClient` starts ``python -m DistillSegLib serve`` in its own process group (no console
window on Windows; killed with its whole process tree, :mod:`.processes`),
submits jobs, delivers each job's messages to callbacks, cancels, restarts the engine when it
dies or does not answer a cancel within :data:`~.protocol.CANCEL_GRACE_S` seconds, and
shuts it down. Like the module's ``SubprocessRunner``, it reads the pipes on background
threads and calls the callbacks only from :meth:`EngineClient.poll` (or :meth:`wait`), i.e.
on the caller's thread, so callbacks may touch the MRML scene. Example::

    client = EngineClient()
    job = client.submit(["predict", "--model", "m.pt", "--ct", ct, "--pet", pet, "--roi", "all", "--out", out],
                        on_message=print)
    result = client.wait(job)          # JobResult(exit_code=0, ...)
    client.shutdown()
"""

from __future__ import annotations

import itertools
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from . import protocol
from .processes import background_options, kill_tree


@dataclass
class JobResult:
    """How a job ended.

    Attributes:
        job_id: the job.
        exit_code: the command line's exit status (0 done, 2 bad input, 130 cancelled, 1 a
            bug), or :data:`~.protocol.EXIT_ENGINE_DIED` when the engine died under it.
        message: the error message (the ``error:`` text), if any.
        seconds: the job's run time in the engine.
        messages: every message of the job, in order (progress lines included).
    """

    job_id: str
    exit_code: int
    message: str | None = None
    seconds: float = 0.0
    messages: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == protocol.EXIT_OK

    @property
    def cancelled(self) -> bool:
        return self.exit_code == protocol.EXIT_CANCELLED


MessageCallback = Callable[[dict], None]
FinishedCallback = Callable[[JobResult], None]


@dataclass
class _Pending:
    job_id: str
    argv: list[str]
    background: bool
    on_message: MessageCallback | None
    on_finished: FinishedCallback | None
    messages: list[dict] = field(default_factory=list)
    cancel_deadline: float | None = None
    sent_to: int = 0  # the engine generation it was sent to
    attempts: int = 0


class EngineClient:
    """Start, feed, cancel, restart and stop one warm engine (see :mod:`.protocol`).

    Args:
        python: the interpreter (``PythonSlicer`` inside Slicer).
        engine_args: extra arguments of ``serve`` (e.g. ``["--threads", "1"]``).
        env: the engine's environment (default: this process's).
        cancel_grace: seconds a cancelled job may take before the engine is killed and restarted.
    """

    def __init__(self, python: str | None = None, engine_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 cancel_grace: float = protocol.CANCEL_GRACE_S, stderr_lines: int = 200) -> None:
        self.python = python or sys.executable
        self.engine_args = list(engine_args)
        self.env = dict(env) if env is not None else None
        self.cancel_grace = cancel_grace
        self.ready: dict | None = None
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=stderr_lines)
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._generation = 0
        self._bye = False
        self.lastEnded: str | None = None  # why the last engine ended

    # ------------------------------------------------------------------ process
    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the engine (it imports torch and MONAI; ``ready`` arrives some seconds later)."""
        if self.is_alive():
            return
        self._generation += 1
        self.ready = None
        self._process = subprocess.Popen(
            [self.python, "-m", "DistillSegLib", "serve", *self.engine_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
            encoding="utf-8", env=self.env,
            **background_options(),  # its own process group; no console window on Windows
        )
        self._bye = False
        generation = self._generation
        for stream, kind in ((self._process.stdout, "line"), (self._process.stderr, "stderr")):
            threading.Thread(target=self._read, args=(stream, kind, generation), daemon=True).start()
        for job in list(self._pending.values()):  # background jobs that outlived the last engine
            self._send_job(job)

    def wait_ready(self, timeout: float = 120.0) -> dict:
        """Block until the engine's ``ready`` message (delivering other messages meanwhile)."""
        self.start()
        deadline = time.monotonic() + timeout
        while self.ready is None:
            if not self.is_alive() and self._events.empty():
                raise RuntimeError(f"the engine ended before it was ready: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the engine was not ready after {timeout} s")
            self.poll(block=0.05)
        return self.ready

    def kill(self) -> None:
        """Kill the engine's process tree; pending jobs end with ``EXIT_ENGINE_DIED``."""
        process = self._process
        if process is None:
            return
        _kill_group(process)
        process.wait()
        self._engine_gone(f"the engine was killed (exit status {process.returncode})", restart_background=False)

    def shutdown(self, timeout: float = 30.0) -> int | None:
        """Ask the engine to stop (pending jobs are cancelled), kill it after ``timeout``; its exit status.

        An engine still starting (importing torch: no ``ready`` yet) is killed at once: it
        has nothing to finish and would read the request only when its imports are done,
        while the caller (Slicer quitting) waits.
        """
        process = self._process
        if process is None:
            return None
        self.poll()
        if self.ready is None and process.poll() is None:
            timeout = 0.0
        try:
            self._write({"shutdown": True})
            process.stdin.close()
        except (OSError, ValueError):
            pass
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            self.poll(block=0.05)
        if process.poll() is None:
            _kill_group(process)
        process.wait()
        self.poll()
        self._engine_gone("the engine was shut down", restart_background=False)
        return process.returncode

    # ------------------------------------------------------------------ jobs
    def submit(self, argv: Sequence[str], on_message: MessageCallback | None = None,
               on_finished: FinishedCallback | None = None, background: bool = False,
               job_id: str | None = None) -> str:
        """Queue ``distillseg ARGV`` in the engine (started first if it is not running); the job's id."""
        job_id = job_id or f"j{next(self._ids)}"
        if job_id in self._pending:
            raise ValueError(f"job {job_id} is already pending")
        self._pending[job_id] = _Pending(job_id, [str(a) for a in argv], background, on_message, on_finished)
        if self.is_alive():
            self._send_job(self._pending[job_id])
        else:
            self.start()  # sends every pending job
        return job_id

    def cancel(self, job_id: str) -> None:
        """Ask the engine to stop a job; :meth:`poll` kills and restarts the engine if it has not
        finished :attr:`cancel_grace` seconds later."""
        pending = self._pending.get(job_id)
        if pending is None or pending.cancel_deadline is not None:
            return
        pending.cancel_deadline = time.monotonic() + self.cancel_grace
        try:
            self._write({"cancel": job_id})
        except (OSError, ValueError):
            pass  # the engine is gone: poll() reports it

    def is_pending(self, job_id: str) -> bool:
        return job_id in self._pending

    def wait(self, job_id: str, timeout: float | None = None) -> JobResult:
        """Poll until ``job_id`` finishes; its result (``TimeoutError`` after ``timeout`` s)."""
        results: list[JobResult] = []
        pending = self._pending.get(job_id)
        if pending is None:
            raise KeyError(f"no pending job {job_id}")
        callback = pending.on_finished

        def finished(result: JobResult) -> None:
            results.append(result)
            if callback is not None:
                callback(result)

        pending.on_finished = finished
        deadline = None if timeout is None else time.monotonic() + timeout
        while not results:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
            self.poll(block=0.05)
        return results[0]

    def poll(self, block: float = 0.0) -> bool:
        """Deliver queued messages (waiting up to ``block`` s for the first); enforce cancel
        deadlines; True while any job is pending."""
        try:
            item = self._events.get(timeout=block) if block > 0 else self._events.get_nowait()
        except queue.Empty:
            item = None
        while item is not None:
            self._dispatch(*item)
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                item = None
        now = time.monotonic()
        late = [p for p in self._pending.values() if p.cancel_deadline is not None and now > p.cancel_deadline]
        if late and self._process is not None:
            self._restart(f"job {late[0].job_id} did not stop within {self.cancel_grace:.0f} s of its cancel: "
                          "the engine was killed (it restarts with the next job)")
        return bool(self._pending)

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    # ------------------------------------------------------------------ internals
    def _send_job(self, pending: _Pending) -> None:
        if pending.sent_to == self._generation:
            return
        pending.sent_to = self._generation
        pending.attempts += 1
        try:
            self._write({"job": pending.job_id, "argv": pending.argv, "background": pending.background})
        except (OSError, ValueError):
            pass  # the engine died: the reader's end-of-stream reports it

    def _write(self, message: dict) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise OSError("no engine")
        process.stdin.write(protocol.encode(message) + "\n")
        process.stdin.flush()

    def _read(self, stream, kind: str, generation: int) -> None:
        for line in stream:
            self._events.put((kind, line.rstrip("\r\n"), generation))
        stream.close()
        if kind == "line":
            self._events.put(("eof", "", generation))

    def _dispatch(self, kind: str, payload: str, generation: int) -> None:
        if generation != self._generation:
            return  # from an engine that was replaced
        if kind == "stderr":
            self._stderr.append(payload)
            return
        if kind == "eof":
            process = self._process
            if process is not None:
                process.wait()
                self._engine_gone("the engine was shut down" if self._bye else
                                  f"the engine stopped unexpectedly (exit status {process.returncode})"
                                  + _last_error(self._stderr))
            return
        try:
            message = protocol.decode(payload)
        except ValueError:
            self._stderr.append(payload)
            return
        if message.get("event") == "ready":
            self.ready = message
        elif message.get("event") == "bye":
            self._bye = True
        job = self._pending.get(str(message.get("job")))
        if job is None:
            return
        job.messages.append(message)
        if message.get("event") == "finished":
            del self._pending[job.job_id]
            result = JobResult(job.job_id, int(message.get("exit_code", protocol.EXIT_BUG)), message.get("message"),
                               float(message.get("seconds", 0.0)), job.messages)
            if job.on_message is not None:
                job.on_message(message)
            if job.on_finished is not None:
                job.on_finished(result)
        elif job.on_message is not None:
            job.on_message(message)

    def _engine_gone(self, reason: str, restart_background: bool = True) -> None:
        """The engine ended: its foreground jobs fail (those being cancelled are reported
        cancelled); background jobs go to a new engine unless ``restart_background`` is False."""
        if self._process is None:
            return
        self._process = None
        self.lastEnded = reason
        self._generation += 1
        for job in list(self._pending.values()):
            if job.background and job.cancel_deadline is None and restart_background and job.attempts < 2:
                continue  # tried again once in a new engine
            del self._pending[job.job_id]
            code = protocol.EXIT_CANCELLED if job.cancel_deadline is not None else protocol.EXIT_ENGINE_DIED
            if job.on_finished is not None:
                job.on_finished(JobResult(job.job_id, code, reason, 0.0, job.messages))
        if self._pending:
            self.restarts += 1
            self.start()

    def _restart(self, reason: str) -> None:
        process = self._process
        _kill_group(process)
        process.wait()
        self._engine_gone(reason)

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the engine and every process under it (``PythonSlicer`` starts the interpreter
    as its child: killing the launcher alone would leave the engine running)."""
    kill_tree(process)


def _last_error(lines) -> str:
    for line in reversed(list(lines)):
        if line.strip():
            return f": {line.strip()}"
    return ""
