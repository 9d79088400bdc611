"""Progress for long work: a tqdm bar for people, JSON lines for the Slicer module; cancel.

JSON progress lines go to stdout, one object per line, e.g.::

    {"stage": "train", "step": 40, "total": 1200, "loss": 0.41, "metrics": {}, "eta": 312.5}

The Slicer module (or any caller) reads them while the process runs; a final line
``{"stage": "done", ...}`` or ``{"stage": "error", "message": ...}`` closes the run.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from .errors import CancelledError


class CancelToken:
    """Set by SIGINT/SIGTERM (or by the caller); long loops call :meth:`check` between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled by the user") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise CancelledError(self.reason)

    @contextmanager
    def on_signals(self) -> Iterator["CancelToken"]:
        """Turn SIGINT/SIGTERM into a cancel request for the duration of the block."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        handler = lambda signum, frame: self.cancel(f"stopped by {signal.Signals(signum).name}")  # noqa: E731
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class Progress:
    """Reports steps of named stages either as a progress bar (stderr) or JSON lines (stdout)."""

    def __init__(self, json_lines: bool = False, enabled: bool = True) -> None:
        self.json_lines = json_lines
        self.enabled = enabled
        self._bar = None
        self._stage = ""
        self._total = 0
        self._start = 0.0

    @property
    def stage(self) -> str:
        """The current stage's name ("" before the first)."""
        return self._stage

    def start(self, stage: str, total: int) -> None:
        self.close()
        self._stage, self._total, self._start = stage, int(total), time.monotonic()
        if self.json_lines:
            self.emit(stage=stage, step=0, total=self._total, eta=None)
        elif self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, desc=stage, unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(self, step: int, loss: float | None = None, **metrics: Any) -> None:
        """Report that ``step`` of the current stage's ``total`` steps are done."""
        elapsed = time.monotonic() - self._start
        eta = elapsed / step * (self._total - step) if step > 0 else None
        if self.json_lines:
            self.emit(stage=self._stage, step=int(step), total=self._total, loss=loss,
                      metrics=metrics, eta=None if eta is None else round(eta, 1))
        elif self._bar is not None:
            self._bar.n = int(step)
            postfix = {"loss": f"{loss:.4f}"} if loss is not None else {}
            postfix.update({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()})
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.refresh()

    def message(self, text: str) -> None:
        if self.json_lines:
            self.emit(stage="message", message=text)
        elif self.enabled:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def emit(self, **record: Any) -> None:
        """Write one JSON object as a line on stdout (only in JSON mode)."""
        if self.json_lines:
            print(json.dumps(record, default=str), flush=True)
