"""The module's :class:`~.ProcessRunner.ProcessRunner` on the warm engine (``distillseg serve``).

A drop-in for :class:`~.ProcessRunner.SubprocessRunner`: the Logic keeps building the same
``python -m DistillSegLib <command> ...`` lines, and :class:`EngineRunner` sends the commands
the engine runs (predict, embed, info, teachers, evaluate: ``DistillSegLib.engine.protocol
.JOB_COMMANDS``) to one engine that stays up between runs, and any other command (train)
to a plain subprocess as before. The engine starts with the first job (or :meth:`warmUp`,
e.g. when the module opens), is restarted when it dies or does not answer a cancel within
``CANCEL_GRACE_S`` seconds (its job then reports ``cancelled``), and stops with
:meth:`shutdown` (when Slicer closes). Callbacks arrive on the thread calling :meth:`poll`
(a QTimer in Slicer), never on a reader thread.

Background embedding of a loaded study: :meth:`embedStudy` queues ``distillseg embed`` as
a background job; any Run or click goes first and the embedding resumes after it.

With a scheduler, a started engine is also watched while idle (every
:data:`WATCH_INTERVAL_S`): one that dies between jobs (out of memory, killed) is reported
through ``onEngineStopped`` and started again at once, so the next Run does not first wait
for a new engine to import torch.
"""

from __future__ import annotations

import json
from typing import Callable, Mapping, Sequence

from .ProcessRunner import (EXIT_CANCELLED, POLL_INTERVAL_S, FinishedCallback, LineCallback, ProcessResult,
                            Scheduler, SubprocessRunner)


# Seconds between two looks at an idle engine.
WATCH_INTERVAL_S = 2.0


def engine_arguments(command: Sequence[str]) -> list[str]:
    """``[python, "-m", "DistillSegLib", *args]`` -> ``args``."""
    command = list(command)
    for n in range(len(command) - 1):
        if command[n] == "-m" and command[n + 1] == "DistillSegLib":
            return command[n + 2:]
    raise ValueError(f"not a DistillSeg engine command: {command[:4]}")


class EngineRunner:
    """:class:`ProcessRunner` over one warm engine (see the module docstring).

    Args:
        python: the interpreter for the engine (default: the first command's, i.e. ``PythonSlicer``).
        engine_args: extra arguments of ``serve`` (e.g. ``["--threads", "1"]``).
        cancel_grace: seconds a cancelled job may take before the engine is killed and restarted.
        schedule: as :class:`SubprocessRunner`'s (Slicer: ``qt.QTimer.singleShot``): the runner
            then polls itself while a job runs, and watches the idle engine; otherwise call
            :meth:`poll` or :meth:`wait`.
        onEngineStopped: ``callable(reason)`` when the engine died while idle (it is restarted).
    """

    def __init__(self, python: str | None = None, engine_args: Sequence[str] = (), cancel_grace: float | None = None,
                 schedule: Scheduler | None = None, onEngineStopped: Callable[[str], None] | None = None) -> None:
        self.python = python
        self.engine_args = list(engine_args)
        self.cancel_grace = cancel_grace
        self.client = None
        self.fallback = SubprocessRunner(schedule=schedule)
        self._schedule = schedule
        self._job: str | None = None
        self._background: str | None = None
        self.onEngineStopped = onEngineStopped
        self._watching = False
        self._stopping = False

    # ------------------------------------------------------------------ ProcessRunner
    def start(self, command: Sequence[str], on_line: LineCallback, on_finished: FinishedCallback,
              env: Mapping[str, str] | None = None) -> None:
        from DistillSegLib.engine.protocol import JOB_COMMANDS

        if self.is_running():
            raise RuntimeError("a process is already running")
        args = engine_arguments(command)
        if not args or args[0] not in JOB_COMMANDS:
            self.fallback.start(command, on_line, on_finished, env=env)
            return
        client = self._client(command[0], env)

        def finished(result) -> None:
            self._job = None
            on_finished(as_process_result(result))

        self._job = client.submit(args, on_message=lambda message: on_line(json.dumps(message)), on_finished=finished)
        if self._schedule is not None:
            self._schedule(POLL_INTERVAL_S, self._tick)

    def cancel(self) -> None:
        """Ask the engine to stop the job (returns at once: ``on_finished`` follows from :meth:`poll`)."""
        if self._job is not None:
            self.client.cancel(self._job)
        else:
            self.fallback.cancel()

    def is_running(self) -> bool:
        return self._job is not None or self.fallback.is_running()

    # ------------------------------------------------------------------ driving it
    def poll(self) -> bool:
        """Deliver pending output and endings; True while a job runs."""
        if self.client is not None:
            self.client.poll()
        self.fallback.poll()
        return self.is_running()

    def _tick(self) -> None:
        if self.poll() and self._schedule is not None:
            self._schedule(POLL_INTERVAL_S, self._tick)

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> None:
        """Poll until the running job ends (``TimeoutError`` after ``timeout`` seconds)."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job still running after {timeout} s")
            time.sleep(interval)

    def warmUp(self, python: str, env: Mapping[str, str] | None = None) -> None:
        """Start the engine now (it imports torch and MONAI), so the first Run does not wait for it."""
        self._client(python, env).start()

    def embedStudy(self, python: str, ctPath: str, petPath: str, teacher: str = "litemedsam",
                   env: Mapping[str, str] | None = None) -> str:
        """Queue the background embedding of a study's CT and PET slices (replacing an earlier one)."""
        client = self._client(python, env)
        if self._background is not None and client.is_pending(self._background):
            client.cancel(self._background)
        self._background = client.submit(["embed", "--teacher", teacher, "--ct", str(ctPath), "--pet", str(petPath),
                                          "--batch-size", "1"], background=True)
        return self._background

    def _watch(self) -> None:
        """Start watching the engine (once; only with a scheduler)."""
        if self._schedule is not None and not self._watching:
            self._watching = True
            self._schedule(WATCH_INTERVAL_S, self._watchdog)

    def _watchdog(self) -> None:
        client = self.client
        if client is None or self._stopping:
            self._watching = False
            return
        was_alive = client._process is not None
        client.poll()
        if was_alive and client._process is None and not self._stopping:
            reason = client.lastEnded or "the engine stopped"
            client.start()  # warm again before the next Run
            if self.onEngineStopped is not None:
                self.onEngineStopped(f"{reason}; it was restarted")
        self._schedule(WATCH_INTERVAL_S, self._watchdog)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the engine and a running training process (Slicer quits or the module is
        reloaded): the training gets the gentle stop, its process tree is killed after the
        runner's grace time, and this returns once it is gone (at most ``timeout`` s)."""
        self._stopping = True
        if self.client is not None:
            self.client.shutdown()
        if self.fallback.is_running():
            self.fallback.cancel()
            try:
                self.fallback.wait(timeout)
            except TimeoutError:
                pass

    def _client(self, python: str, env: Mapping[str, str] | None):
        if self.client is None:
            from DistillSegLib.engine.client import EngineClient

            kwargs = {} if self.cancel_grace is None else {"cancel_grace": self.cancel_grace}
            self.client = EngineClient(python=self.python or python, engine_args=self.engine_args, env=env, **kwargs)
        self._stopping = False
        self._watch()
        return self.client


def as_process_result(result) -> ProcessResult:
    """An engine :class:`~DistillSegLib.engine.client.JobResult` as the Logic's :class:`ProcessResult`."""
    exit_code = result.exit_code if result.exit_code >= 0 else 1
    return ProcessResult(exit_code=EXIT_CANCELLED if result.cancelled else exit_code, cancelled=result.cancelled,
                         stderr_tail=f"error: {result.message}" if result.message and not result.cancelled
                         else (result.message or ""))
