"""The warm engine's protocol: JSON lines over the engine's stdin and stdout.

``distillseg serve`` (``python -m DistillSegLib serve``, ``PythonSlicer -m DistillSegLib serve``
in Slicer) stays up while a study is open and runs one job at a time. A job is a
``distillseg`` command line, run by the same function the command line calls.

Client -> engine (stdin), one object per line::

    {"job": "7", "argv": ["predict", "--model", "m.pt", "--ct", ..., "--out", "x.nii.gz"]}
    {"job": "8", "argv": ["embed", "--ct", ..., "--pet", ...], "background": true}
    {"cancel": "7"}
    {"shutdown": true}

Engine -> client (stdout), one object per line::

    {"event": "ready", "pid": 1234, "protocol": 1, "version": "0.1.0", "seconds": 5.2}
    {"job": "7", "event": "started"}
    {"job": "7", "stage": "predict", "step": 1, "total": 3, ...}   # the command's --json-progress lines
    {"job": "7", "event": "output", "text": "..."}                   # other stdout text of the command
    {"job": "7", "event": "finished", "exit_code": 0, "seconds": 1.3}
    {"job": "7", "event": "finished", "exit_code": 2, "message": "the ROI ... lies outside the CT"}
    {"job": "8", "event": "paused"} ... {"job": "8", "event": "resumed"}
    {"event": "error", "message": "...", "fatal": false}            # a line the engine could not use
    {"event": "bye"}

Rules:

* Jobs run in the order they arrive, one at a time; ``--json-progress`` is added to commands
  that have it. Only :data:`JOB_COMMANDS` run in the engine (training and the demo run as
  their own processes, as before).
* A background job (embedding a loaded study) gives way: when another job arrives it is
  paused at its next batch (``paused``; what it finished is kept) and resumes after the
  queue is empty (``resumed``).
* Exit codes are the command line's: 0 done, 2 bad input (``message`` is the ``error:``
  text), 130 cancelled, 1 an unexpected error (a bug; ``message`` names it, the traceback
  goes to the engine's stderr). The engine keeps running after any of them.
* ``cancel`` stops a queued job at once and a running one at its next check (between
  slices, sliding windows, encoder batches; at most a few seconds on a CPU). **Rule for
  clients:** if ``finished`` has not come :data:`CANCEL_GRACE_S` seconds after a cancel,
  kill the engine's process group and start a new engine. Outputs are written atomically
  (temporary file, then rename), so a killed job never leaves a half-written output behind.
* The engine ends after ``shutdown``, at the end of its stdin (the client went away) or on
  SIGTERM/SIGINT: queued and running jobs are cancelled, then ``bye``, exit status 0. An
  engine that dies (crash, killed) writes ``{"event": "error", "fatal": true, ...}`` when it
  still can; a client treats the end of stdout without ``bye`` as a crash: every job that
  had not finished is reported failed, and the next job starts a new engine.
* Every line gets an answer: a line that is not one JSON object, is nested too deeply, has
  fields of the wrong type (``"background": "false"`` is a string, not false) or cancels a
  job the engine does not hold is answered with ``{"event": "error", "fatal": false, ...}``
  (with ``job`` where the line named one), and the engine goes on reading.
* Anything else the engine's libraries print goes to its stderr, never into this protocol.
"""

from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1
# Commands a job may run; ``serve`` itself, training and the demo run as their own processes.
JOB_COMMANDS = ("predict", "embed", "info", "teachers", "evaluate")
# Seconds a client waits for ``finished`` after a cancel before it kills the engine.
CANCEL_GRACE_S = 10.0
# Exit codes (as the command line's: DistillSegLib.cli.main).
EXIT_OK, EXIT_BUG, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
# Exit code a client reports for a job whose engine died under it.
EXIT_ENGINE_DIED = -1
PREEMPTED = "paused: another job came first"


def encode(message: dict[str, Any]) -> str:
    """One protocol line (no newline)."""
    return json.dumps(message, default=str, separators=(",", ":"))


def message_problem(message: dict[str, Any]) -> str | None:
    """What is wrong with a client message (``None``: a valid job, cancel or shutdown).

    Types are checked, never coerced: ``"background": "false"`` is a string, not False.
    """
    expected = 'expected {"job": ID, "argv": [...]}, {"cancel": ID} or {"shutdown": true}'
    if "shutdown" in message:
        return None if message["shutdown"] is True and len(message) == 1 else \
            f'"shutdown" must be true and alone in its message; {expected}'
    if "cancel" in message:
        if not isinstance(message["cancel"], (str, int)) or isinstance(message["cancel"], bool):
            return f'"cancel" must name a job id (a string or an integer); {expected}'
        return None
    if "job" not in message or "argv" not in message:
        return expected
    if not isinstance(message["job"], (str, int)) or isinstance(message["job"], bool):
        return '"job" must be a string or an integer'
    argv = message["argv"]
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return '"argv" must be a non-empty list of strings'
    if not isinstance(message.get("background", False), bool):
        return f'"background" must be true or false, got {message["background"]!r}'
    unknown = sorted(set(message) - {"job", "argv", "background"})
    if unknown:
        return f"unknown field(s) {', '.join(unknown)} in a job message"
    return None


def decode(line: str) -> dict[str, Any]:
    """A protocol line as a dict (ValueError when it is not one JSON object)."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("expected one JSON object per line")
    return message
