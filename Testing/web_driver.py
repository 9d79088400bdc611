"""Drive ``distillseg web`` in a real Chromium (Playwright): shared by the browser tests and
``benchmarks/web.py``.

The server is started as a user starts it (``python -m DistillSegLib web ...``) on a free
port of 127.0.0.1; the page is Debian's Chromium (``apt-get install chromium``) driven by
Playwright with ``executable_path`` (never ``playwright install``, which downloads a browser).
Every wait polls the page (an element, or ``#status``'s ``data-done`` counter), never sleeps.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("DISTILLSEG_CHROMIUM", "/usr/bin/chromium")
STARTUP_TIMEOUT_S = 120
JOB_TIMEOUT_MS = 600_000  # a hang guard, not a timing: Distil on a loaded 2-core machine
UI_TIMEOUT_MS = 120_000  # the same for what happens without a job (a click, a stroke, a load)
ADDRESS = re.compile(r"open (http://\S+)")


def missing_web_tools() -> str | None:
    """Why the browser tests cannot run here (``None`` when they can)."""
    for module, how in (("trame_slicer", "pip install -e '.[web]'"), ("playwright", "pip install -e '.[web]'")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({how}; `make test-web` uses its own venv)"
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WebServer:
    """A running ``distillseg web``: its address, its output so far, when it was launched."""

    process: subprocess.Popen
    launched: float  # time.monotonic() just before the launch
    lines: list[str] = field(default_factory=list)
    url: str = ""

    def wait_for_address(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        """The address the server printed, once it listens (its ``ready`` line; this blocks on
        its output, not on a clock)."""
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.lines.append(line.rstrip())
                match = ADDRESS.search(line)
                if match and not self.url:
                    self.url = match.group(1)
                if line.startswith("ready") and self.url:
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            raise RuntimeError("distillseg web printed no address:\n" + "\n".join(self.lines[-40:]))
        return self.url


@contextlib.contextmanager
def web_server(*options: str, env: dict | None = None):
    """``python -m DistillSegLib web OPTIONS`` on a free port; stopped (SIGTERM) at the end."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [environment.get("PYTHONPATH")])])
    environment.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    options = list(options)
    if "--port" not in options:
        options += ["--port", str(free_port())]
    launched = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "DistillSegLib", "web", *options], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    server = WebServer(process, launched)
    try:
        yield server
    finally:
        # The front end runs in a child of the engine's `web` process: stop the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 850):
    """A Playwright page in Debian's Chromium; its console messages collect in ``page.console``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.console = []
            page.on("console", lambda message: page.console.append(message.text))
            yield page
        finally:
            browser.close()


def done_count(page) -> int:
    return int(page.get_attribute("#status", "data-done") or 0)


def click_and_wait_done(page, element_id: str, timeout_ms: int = JOB_TIMEOUT_MS) -> str:
    """Click a job's button and wait until the job has finished (``#status[data-done]`` grew);
    the status line then."""
    before = done_count(page)
    page.click(f"#{element_id}")
    page.wait_for_function(f"Number(document.querySelector('#status').dataset.done) > {before}", timeout=timeout_ms)
    return page.inner_text("#status")


def lesion_rows(page) -> list[list[str]]:
    """The lesion table as shown: one list of cell texts per lesion."""
    return [[cell.inner_text() for cell in row.query_selector_all("td")]
            for row in page.query_selector_all("#lesion-table tbody tr")]


def view_point(page, view: int, point: tuple[float, float]) -> tuple[float, float]:
    """Page pixels of ``point``, given as fractions of slice view number ``view``'s width and
    height (0: axial)."""
    box = page.query_selector_all(".remote-controlled-area")[view].bounding_box()
    return box["x"] + box["width"] * point[0], box["y"] + box["height"] * point[1]


def drag(page, view: int, path: list[tuple[float, float]], steps: int = 10, pause_ms: int = 0) -> None:
    """A mouse drag in slice view ``view`` through ``path`` (fractions of the view), ``steps``
    moves per leg, ``pause_ms`` after each (a hand's pace: a loaded server can merge moves
    sent faster, and a Scissors outline merged to a line encloses nothing)."""
    corners = [view_point(page, view, p) for p in path]
    page.mouse.move(*corners[0])
    page.mouse.down()
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):
        for i in range(1, steps + 1):
            page.mouse.move(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps)
            if pause_ms:
                page.wait_for_timeout(pause_ms)
    page.mouse.up()


def edited(page, action) -> None:
    """Do ``action``, then wait until the server applied the edit (``#status[data-edits]`` grew)."""
    before = int(page.get_attribute("#status", "data-edits") or 0)
    action()
    page.wait_for_function(f"Number(document.querySelector('#status').dataset.edits) > {before}",
                           timeout=UI_TIMEOUT_MS)


def stroke_and_wait(page, view: int, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A straight drag from ``start`` to ``end``, then wait until the server applied it."""
    edited(page, lambda: drag(page, view, [start, end]))


def mtv_once_changed(page, before: float, timeout_s: float = 10.0) -> float:
    """The lesion table's total MTV once it differs from ``before`` (or after ``timeout_s``): the
    table follows an edit a moment after the edit count, on a loaded machine."""
    import time

    deadline = time.monotonic() + timeout_s
    while (now := total_mtv(page)) == before and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    return now


def total_mtv(page) -> float:
    """The sum of the MTV column of the lesion table as shown (mL)."""
    return sum(float(row[1]) for row in lesion_rows(page))


def wait_for_status(page, text: str, timeout_ms: int = JOB_TIMEOUT_MS) -> str:
    """Wait until ``#status`` says ``text`` or reports an error (then fail with its message)."""
    page.wait_for_function(
        "([text]) => { const s = document.querySelector('#status'); "
        "return s && (s.innerText.includes(text) || s.dataset.error === 'true'); }", arg=[text], timeout=timeout_ms)
    status = page.inner_text("#status")
    assert page.get_attribute("#status", "data-error") != "true", f"the page reports an error: {status}"
    return status


def wait_for_error(page, text: str, timeout_ms: int = UI_TIMEOUT_MS) -> str:
    """Wait until ``#status`` reports an error that says ``text``; the status line then."""
    page.wait_for_function(
        "([text]) => { const s = document.querySelector('#status'); "
        "return s && s.dataset.error === 'true' && s.innerText.includes(text); }", arg=[text], timeout=timeout_ms)
    return page.inner_text("#status")


def choose(page, select_id: str, option: str) -> None:
    """Pick ``option`` in the Vuetify select ``#select_id`` as a user does: open it, click the item."""
    page.locator(".v-select", has=page.locator(f"#{select_id}")).click()  # the field: its input sits under a cover
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function("([id, option]) => document.querySelector('#' + id).value === option",
                           arg=[select_id, option], timeout=UI_TIMEOUT_MS)
