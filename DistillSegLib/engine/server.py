"""The warm engine: one long-lived process running ``distillseg`` commands as jobs (see :mod:`.protocol`).

Why: on a 2-core CPU ``import monai`` alone takes 6-13 s and a fresh ``distillseg predict``
9-13 s, while the student needs 0.2-1 s on a crop and LiteMedSAM's decoder 0.2 s per slice
once the slices are embedded. The engine imports torch and MONAI once, keeps the teachers'
models (their loaders are memoised per process) and slice embeddings (the process-wide
embedding store) in memory, and embeds a loaded study in the background.

Threads: jobs run on the main thread (so that the allocator settings of the main heap and
the signal handlers apply to them); a reader thread parses stdin and queues jobs, cancels
and the shutdown. The protocol owns the real stdout: file descriptor 1 is pointed at stderr,
so whatever a library prints can never corrupt it, and ``sys.stdout`` is replaced by a
writer that tags the running job's JSON progress lines with its id.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

from .. import __version__
from ..errors import CancelledError, DistillSegError
from ..progress import CancelToken, job_scope
from . import protocol


class ArgumentError(DistillSegError):
    """A job's command line does not parse."""


class RaisingParser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting (one job's typo must not end the engine)."""

    def error(self, message: str):
        raise ArgumentError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None):
        if status:
            raise ArgumentError(message.strip() if message else f"{self.prog}: exit status {status}")
        raise _HelpShown()


class _HelpShown(Exception):
    """``--help``/``--version`` in a job: the text was printed, the job is done."""


@dataclass
class Job:
    job_id: str
    argv: list[str]
    background: bool = False
    token: CancelToken = field(default_factory=CancelToken)
    runs: int = 0


class JobOutput(io.TextIOBase):
    """``sys.stdout`` inside the engine: each line a job prints becomes a protocol message
    (JSON objects get the job's id, other text an ``output`` event)."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            self._send(line)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            line, self._buffer = self._buffer, ""
            self._send(line)

    def _send(self, line: str) -> None:
        if not line.strip():
            return
        job_id = self.engine.current_job_id()
        try:
            message = protocol.decode(line)
        except ValueError:
            message = {"event": "output", "text": line}
        self.engine.send({"job": job_id, **message} if job_id is not None else message)


class Engine:
    """Queue, run and report jobs (see :mod:`.protocol`)."""

    def __init__(self, out: TextIO, threads: int = 0) -> None:
        from ..cli import build_parser

        self.out = out
        self.parser = build_parser(parser_class=RaisingParser)
        self.threads = threads
        self._lock = threading.RLock()  # one writer at a time (re-entrant: signal handlers send too)
        self._changed = threading.Condition()
        self._foreground: deque[Job] = deque()
        self._background: deque[Job] = deque()
        self._running: Job | None = None
        self._stopping = False

    # ------------------------------------------------------------------ protocol out
    def send(self, message: dict) -> None:
        with self._lock:
            self.out.write(protocol.encode(message) + "\n")
            self.out.flush()

    def current_job_id(self) -> str | None:
        job = self._running
        return None if job is None else job.job_id

    # ------------------------------------------------------------------ protocol in (reader thread)
    def read(self, stdin: TextIO) -> None:
        """Handle every line of ``stdin``; its end (or a failure to read it) shuts the engine down.

        No line can stop the reader: anything a line raises is answered with an ``error``
        event, since a dead reader would leave an engine that ignores shutdown and outlives
        its client.
        """
        try:
            for line in _lines(stdin):
                if line is None:
                    self.send({"event": "error", "fatal": False, "message": "a line that is not UTF-8 text was ignored"})
                elif line.strip():
                    try:
                        self.handle(line)
                    except Exception as exc:  # noqa: BLE001 - the reader must outlive any line
                        traceback.print_exc(file=sys.stderr)
                        self.send({"event": "error", "fatal": False,
                                   "message": f"could not handle a line ({type(exc).__name__}: {exc})"})
        finally:
            self.stop("the client closed the engine's input")

    def handle(self, line: str) -> None:
        try:
            message = protocol.decode(line)
        except RecursionError:
            self.send({"event": "error", "fatal": False, "message": "a line nested too deeply to read was ignored"})
            return
        except ValueError as exc:
            self.send({"event": "error", "fatal": False, "message": f"not a JSON object: {exc}: {line.strip()[:200]}"})
            return
        problem = protocol.message_problem(message)
        if problem:
            self.send({"event": "error", "fatal": False,
                       **({"job": str(message["job"])} if isinstance(message.get("job"), (str, int)) else {}),
                       "message": problem})
        elif message.get("shutdown") is True:
            self.stop("shutdown requested")
        elif "cancel" in message:
            self.cancel(str(message["cancel"]))
        else:
            self.submit(Job(str(message["job"]), list(message["argv"]), message.get("background", False)))

    def submit(self, job: Job) -> None:
        with self._changed:
            if self._known(job.job_id):
                self.send({"event": "error", "fatal": False, "job": job.job_id,
                           "message": f"job id {job.job_id!r} is already queued or running: not run again"})
                return
            if self._stopping:
                self.finish(job, protocol.EXIT_CANCELLED, 0.0, "the engine is shutting down")
                return
            (self._background if job.background else self._foreground).append(job)
            running = self._running
            if not job.background and running is not None and running.background:
                running.token.cancel(protocol.PREEMPTED)
            self._changed.notify_all()

    def cancel(self, job_id: str) -> None:
        with self._changed:
            for queue in (self._foreground, self._background):
                for job in list(queue):
                    if job.job_id == job_id:
                        queue.remove(job)
                        self.finish(job, protocol.EXIT_CANCELLED, 0.0, "cancelled before it started")
                        return
            if self._running is not None and self._running.job_id == job_id:
                self._running.token.cancel("cancelled by the client")
                return
        self.send({"event": "error", "fatal": False, "job": job_id,
                   "message": f"no job {job_id!r} to cancel: unknown, or already finished"})

    def _known(self, job_id: str) -> bool:
        running = self._running
        return (running is not None and running.job_id == job_id) or any(
            job.job_id == job_id for queue in (self._foreground, self._background) for job in queue)

    def stop(self, reason: str) -> None:
        """Cancel everything and let :meth:`serve` end."""
        with self._changed:
            if self._stopping:
                return
            self._stopping = True
            for queue in (self._foreground, self._background):
                while queue:
                    self.finish(queue.popleft(), protocol.EXIT_CANCELLED, 0.0, reason)
            if self._running is not None:
                self._running.token.cancel(reason)
            self._changed.notify_all()

    # ------------------------------------------------------------------ jobs (main thread)
    def serve(self) -> int:
        while True:
            with self._changed:
                while not (self._stopping or self._foreground or self._background):
                    self._changed.wait()
                if self._stopping:
                    break
                job = (self._foreground or self._background).popleft()
                self._running = job
            try:
                self.run(job)
            finally:
                with self._changed:
                    self._running = None
        self.send({"event": "bye"})
        return 0

    def run(self, job: Job) -> None:
        """Run one job to its ``finished`` (or ``paused``) message."""
        import torch

        self.send({"job": job.job_id, "event": "resumed" if job.runs else "started"})
        job.runs += 1
        started = time.perf_counter()
        code, message = protocol.EXIT_OK, None
        try:
            args = self.parse(job.argv)
            with job_scope(job.token):
                job.token.check()
                code = int(args.run(args) or 0)
        except _HelpShown:
            code = protocol.EXIT_OK
        except CancelledError as exc:
            if job.background and job.token.reason == protocol.PREEMPTED and not self._stopping:
                self.pause(job)
                return
            code, message = protocol.EXIT_CANCELLED, str(exc) or "cancelled"
        except DistillSegError as exc:
            code, message = protocol.EXIT_BAD_INPUT, str(exc)
        except Exception as exc:  # a bug in a command: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            code, message = protocol.EXIT_BUG, f"unexpected {type(exc).__name__}: {exc}"
        finally:
            sys.stdout.flush()
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)  # a job's --threads lasts for that job only
        self.finish(job, code, time.perf_counter() - started, message)

    def parse(self, argv: list[str]) -> argparse.Namespace:
        if not argv or argv[0] not in protocol.JOB_COMMANDS:
            raise DistillSegError(
                f"the warm engine runs {', '.join(protocol.JOB_COMMANDS)}; "
                f"{argv[0] if argv else 'an empty command'!r} runs as its own process (distillseg ...)")
        if takes_json_progress(argv[0]) and "--json-progress" not in argv:
            argv = [*argv, "--json-progress"]
        return self.parser.parse_args(argv)

    def pause(self, job: Job) -> None:
        with self._changed:
            job.token = CancelToken()
            self._background.appendleft(job)
        self.send({"job": job.job_id, "event": "paused"})

    def finish(self, job: Job, code: int, seconds: float, message: str | None) -> None:
        self.send({"job": job.job_id, "event": "finished", "exit_code": code, "seconds": round(seconds, 3),
                   **({"message": message} if message else {})})


def _lines(stdin: TextIO):
    """The lines of ``stdin`` as text; ``None`` for a line that is not UTF-8 (reading bytes when
    the stream has them, so that one bad byte does not end the text decoder and the reader)."""
    binary = getattr(stdin, "buffer", None)
    if binary is None:
        yield from stdin
        return
    for raw in binary:
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            yield None


@functools.lru_cache(maxsize=None)
def takes_json_progress(command: str) -> bool:
    """Whether ``distillseg COMMAND`` has a ``--json-progress`` option."""
    import importlib

    parser = argparse.ArgumentParser(add_help=False)
    importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.commands.{command}").add_arguments(parser)
    return "--json-progress" in parser.format_usage()


def warm_up() -> None:
    """Import what every job needs (torch, MONAI, the student and the teachers' code)."""
    import torch  # noqa: F401
    import monai.inferers  # noqa: F401

    from ..student import inference  # noqa: F401
    from ..teachers import interactive, registry  # noqa: F401


def serve(threads: int = 0, stdin: TextIO | None = None) -> int:
    """Run the engine on this process's stdin/stdout until shutdown; returns the exit status."""
    protocol_out = _take_stdout()
    engine = Engine(protocol_out, threads)
    sys.stdout = JobOutput(engine)
    started = time.perf_counter()
    try:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        engine.threads = torch.get_num_threads()
        warm_up()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: engine.stop(f"stopped by {signal.Signals(signum).name}"))
        reader = threading.Thread(target=engine.read, args=(stdin or sys.stdin,), name="engine-stdin", daemon=True)
        engine.send({"event": "ready", "pid": os.getpid(), "protocol": protocol.PROTOCOL_VERSION,
                     "version": __version__, "seconds": round(time.perf_counter() - started, 2),
                     "threads": torch.get_num_threads()})
        reader.start()
        return engine.serve()
    except BaseException as exc:  # the engine itself failed: one line, then the exit status
        traceback.print_exc(file=sys.stderr)
        engine.send({"event": "error", "fatal": True, "message": f"{type(exc).__name__}: {exc}"})
        return protocol.EXIT_BUG


def _take_stdout() -> TextIO:
    """A private copy of stdout for the protocol; file descriptor 1 then points at stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(protocol_fd, "w", buffering=1, encoding="utf-8")
