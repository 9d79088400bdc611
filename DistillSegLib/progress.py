"""Progress for long work: a bar on a terminal, plain lines in logs, JSON lines for the Slicer module; cancel.

How progress is shown depends on where it goes:

* ``json_lines``: one JSON object per line on stdout, e.g.::

      {"stage": "train", "step": 40, "total": 1200, "loss": 0.41, "metrics": {}, "eta": 312.5}

  The Slicer module (or any caller) reads them while the process runs; a final line
  ``{"stage": "done", ...}`` or ``{"stage": "cancelled", ...}`` closes the run.
* stderr is a terminal: a tqdm bar.
* otherwise (a log file, a pipe, CI): plain lines such as ``train: 40/1200 (3%), loss 0.4100,
  eta 5 min`` every tenth of a stage or every 30 s, never carriage returns.

Anything else written to stderr while a bar is drawn (messages, warnings, the final
``error:`` line) goes through :func:`write_line`, which first clears the bar so that the
text starts on a line of its own; :func:`close_all` ends every bar before such a line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import signal
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from .errors import CancelledError

# Plain-line mode: a line every this fraction of a stage, or after this many seconds.
LINE_FRACTION = 0.1
LINE_SECONDS = 30.0

_ACTIVE: "weakref.WeakSet[Progress]" = weakref.WeakSet()


# The warm engine's (``distillseg serve``) token of the job being run: every CancelToken
# created while that job runs follows it, so the engine cancels a command's long loops
# without the command knowing it runs inside the engine.
_JOB_TOKEN: contextvars.ContextVar["CancelToken | None"] = contextvars.ContextVar("distillseg_job_token", default=None)


class CancelToken:
    """Set by SIGINT/SIGTERM (or by the caller); long loops call :meth:`check` between steps.

    A token created inside :func:`job_scope` (a warm-engine job) is also cancelled when that
    job's token is, and leaves the signals to the engine.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._job = _JOB_TOKEN.get()

    def cancel(self, reason: str = "cancelled by the user") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or (self._job is not None and self._job.cancelled)

    def check(self) -> None:
        if self.cancelled:
            raise CancelledError(self.reason if self._event.is_set() else self._job.reason)

    @contextmanager
    def on_signals(self) -> Iterator["CancelToken"]:
        """Turn SIGINT/SIGTERM (and SIGBREAK on Windows, which is what a GUI can send a console
        process there) into a cancel request for the duration of the block (in the main thread
        and outside a warm-engine job, whose signals the engine handles)."""
        if threading.current_thread() is not threading.main_thread() or self._job is not None:
            yield self
            return
        handler = lambda signum, frame: self.cancel(f"stopped by {signal.Signals(signum).name}")  # noqa: E731
        signals = (signal.SIGINT, signal.SIGTERM, *filter(None, [getattr(signal, "SIGBREAK", None)]))
        previous = {sig: signal.signal(sig, handler) for sig in signals}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


@contextmanager
def job_scope(token: CancelToken) -> Iterator[CancelToken]:
    """Run a block as one warm-engine job: CancelTokens created inside follow ``token``."""
    reset = _JOB_TOKEN.set(token)
    try:
        yield token
    finally:
        _JOB_TOKEN.reset(reset)


def stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


class Progress:
    """Reports steps of named stages as a bar (terminal), plain lines (stderr) or JSON lines (stdout).

    Args:
        json_lines: JSON progress lines on stdout (``--json-progress``).
        enabled: False shows nothing (library use, or the non-zero ranks of DDP).
        bar: a tqdm bar (True) or plain lines (False); default: a bar only when stderr
            is a terminal.
    """

    def __init__(self, json_lines: bool = False, enabled: bool = True, bar: bool | None = None) -> None:
        self.json_lines = json_lines
        self.enabled = enabled
        self.use_bar = stderr_is_terminal() if bar is None else bar
        self._bar = None
        self._stage = ""
        self._total = 0
        self._start = 0.0
        self._last_line = (0.0, -1)  # (time, tenth of the stage) of the last plain line

    @property
    def mode(self) -> str:
        """``"json"``, ``"bar"``, ``"lines"`` or ``"off"``."""
        if self.json_lines:
            return "json"
        if not self.enabled:
            return "off"
        return "bar" if self.use_bar else "lines"

    @property
    def stage(self) -> str:
        """The current stage's name ("" before the first)."""
        return self._stage

    def start(self, stage: str, total: int) -> None:
        self.close()
        self._stage, self._total, self._start = stage, int(total), time.monotonic()
        self._last_line = (self._start, -1)
        if self.mode == "json":
            self.emit(stage=stage, step=0, total=self._total, eta=None)
        elif self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, desc=stage, unit="step", file=sys.stderr, dynamic_ncols=True)
            _ACTIVE.add(self)

    def update(self, step: int, loss: float | None = None, **metrics: Any) -> None:
        """Report that ``step`` of the current stage's ``total`` steps are done."""
        elapsed = time.monotonic() - self._start
        eta = elapsed / step * (self._total - step) if step > 0 else None
        if self.mode == "json":
            self.emit(stage=self._stage, step=int(step), total=self._total, loss=loss,
                      metrics=metrics, eta=None if eta is None else round(eta, 1))
        elif self._bar is not None:
            self._bar.n = int(step)
            postfix = {"loss": f"{loss:.4f}"} if loss is not None else {}
            postfix.update({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()})
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.refresh()
        elif self.mode == "lines":
            self._plain_line(int(step), loss, eta, metrics)

    def _plain_line(self, step: int, loss: float | None, eta: float | None, metrics: dict) -> None:
        now = time.monotonic()
        tenth = int(step / self._total / LINE_FRACTION) if self._total else 0
        last_time, last_tenth = self._last_line
        if not (step >= self._total or tenth > last_tenth or now - last_time >= LINE_SECONDS):
            return
        self._last_line = (now, tenth)
        parts = [f"{self._stage}: {step}/{self._total}" + (f" ({100 * step // self._total}%)" if self._total else "")]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
        if eta is not None and step < self._total and now - self._start >= 1.0:
            parts.append(f"eta {format_seconds(eta)}")
        write_line(", ".join(parts))

    def message(self, text: str) -> None:
        if self.mode == "json":
            self.emit(stage="message", message=text)
        elif self.enabled:
            write_line(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        _ACTIVE.discard(self)

    def emit(self, **record: Any) -> None:
        """Write one JSON object as a line on stdout (only in JSON mode)."""
        if self.json_lines:
            print(json.dumps(record, default=str), flush=True)


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def write_line(text: str, stream=None) -> None:
    """Write ``text`` as a line of its own on stderr, above any progress bar being drawn."""
    stream = stream or sys.stderr
    if any(p._bar is not None for p in list(_ACTIVE)):
        from tqdm import tqdm

        tqdm.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)


def close_all() -> None:
    """End every progress bar (called before an ``error:`` or ``cancelled:`` line)."""
    for progress in list(_ACTIVE):
        progress.close()


class ProgressAwareHandler(logging.Handler):
    """A logging handler for stderr that never writes into the middle of a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(self.format(record))
        except Exception:  # logging must never raise
            self.handleError(record)
