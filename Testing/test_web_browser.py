"""``distillseg web`` in a real Chromium on real sts-petct cases (pytest + Playwright).

The flow a user clicks through: the study given with --ct/--pet is on screen, Place ROI at
the PET hot spot, Run (the bundled student on the warm engine), the lesion table, Save (the
NIfTI must be bit-identical to ``distillseg predict``'s for the same ROI and model), a Paint
stroke that changes the table and is kept by the next Save, Add to training set, Distil at
the default strategy refused without an unlabelled study, a 10-step supervised Distil that
selects the new student, a long Distil cancelled from the page, then Scissors and
a click that removes one island. A second test checks that a
server bound beyond this machine refuses a browser without the access token.

Skipped with the reason when trame-slicer, Playwright or Chromium are missing (``make
test-web`` installs them in a venv of their own). ``$DISTILLSEG_WEB_CASES`` (comma-separated)
picks the cases (default: STS_019, the smallest). ``$DISTILLSEG_WEB_SCREENSHOTS`` (a folder)
keeps the screenshots (``benchmarks/web.py`` puts them in docs/images), and
``$DISTILLSEG_WEB_TIMINGS`` (a JSON file) receives the measured times for the benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import require_data
from DistillSegLib.distill import DEFAULT_STRATEGY
from DistillSegLib.io.volume import read_image
from web_driver import (JOB_TIMEOUT_MS, ROOT, UI_TIMEOUT_MS, choose, chromium_page, click_and_wait_done,
                        done_count, drag, edited, lesion_rows, missing_web_tools, mtv_once_changed, stroke_and_wait,
                        total_mtv,
                        view_point, wait_for_error, wait_for_status, web_server)

pytestmark = pytest.mark.skipif(missing_web_tools() is not None, reason=missing_web_tools() or "")

CASES = [c.strip() for c in os.environ.get("DISTILLSEG_WEB_CASES", "STS_019").split(",") if c.strip()]
MODEL = "sts-petct-crop"  # the bundled student Run uses by default
BUNDLED_TITLE = "STS PET/CT tumour, crop, promptable: box and clicks (supervised, 30 cases) (bundled)"
THREADS = "1"  # a shared 2-core machine: one torch thread is faster than two fighting


def screenshot(page, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("DISTILLSEG_WEB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def record_timing(case: str, **figures) -> None:
    target = os.environ.get("DISTILLSEG_WEB_TIMINGS")
    if target:
        path = Path(target)
        records = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps([*records, {"case": case, **figures}], indent=2))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_the_workflow_in_chromium(case, tmp_path):
    folder = require_data("sts-petct", case)
    ct, pet = folder / "CT_image.nii.gz", folder / "PET_image.nii.gz"
    out, models, training = tmp_path / "out", tmp_path / "models", tmp_path / "training-set"
    with web_server("--ct", str(ct), "--pet", str(pet), "--out", str(out), "--models", str(models),
                    "--training-set", str(training), "--device", "cpu", "--threads", THREADS) as server, \
            chromium_page() as page:
        url = server.wait_for_address()
        assert url.startswith("http://127.0.0.1:") and "secret=" not in url, "local by default, no token needed"
        page.goto(url)
        wait_for_status(page, "loaded")
        first_frame_s = time.monotonic() - server.launched

        page.click("#place-roi")
        page.wait_for_selector("#roi-text", timeout=UI_TIMEOUT_MS)
        roi = page.inner_text("#roi-text").removeprefix("ROI ").strip()
        assert len(roi.split(",")) == 6

        status = click_and_wait_done(page, "run-student")
        assert "done" in status, status
        rows = lesion_rows(page)
        run_on_screen_s = time.monotonic() - server.launched
        assert rows and rows[0][0] == "1", f"no lesion in the table: {rows}"
        mtv = float(rows[0][1])
        cut_off = page.evaluate("""() => {
            const box = document.querySelector('#lesion-table').getBoundingClientRect();
            return [...document.querySelectorAll('#lesion-table th')]
                .filter(th => th.getBoundingClientRect().right > box.right + 1).map(th => th.innerText); }""")
        assert not cut_off, f"lesion-table columns out of sight: {cut_off}"
        assert mtv > 0.1  # the engine's smallest lesion
        shot = screenshot(page, tmp_path, "web-run")
        assert shot.stat().st_size > 10_000

        page.click("#save-segmentation")
        page.wait_for_selector("#saved-path", timeout=UI_TIMEOUT_MS)
        saved = Path(page.inner_text("#saved-path").removeprefix("saved ").strip())
        assert saved.parent == out and saved.is_file()
        as_run = tmp_path / "as-run.nii.gz"
        as_run.write_bytes(saved.read_bytes())

        # A Paint stroke across the axial view (through the lesion and out of it): the table follows.
        page.click("#effect-paint")
        wait_for_status(page, "Paint:", UI_TIMEOUT_MS)
        stroke_and_wait(page, 0, (0.1, 0.5), (0.9, 0.5))
        assert total_mtv(page) > mtv, "painting added to the segmentation"
        screenshot(page, tmp_path, "web-paint")
        page.click("#effect-none")
        page.click("#save-segmentation")
        page.wait_for_selector("#saved-path", timeout=UI_TIMEOUT_MS)
        painted, predicted = read_image(saved).array, read_image(as_run).array
        assert (painted >= predicted).all() and painted.sum() > predicted.sum(), "Save keeps the correction"

        page.click("#add-to-training-set")
        page.wait_for_selector("#case-id", timeout=UI_TIMEOUT_MS)
        case_id = page.inner_text("#case-id").removeprefix("case ").strip()
        assert (training / "labelsTr" / f"{case_id}.nii.gz").is_file()
        assert (training / "imagesTr" / f"{case_id}_0001.nii.gz").is_file(), "PET on the CT grid"

        # Distil at the default strategy also learns from studies without a segmentation: with
        # none in the training set it refuses in words and writes nothing. The same study cannot
        # come back unlabelled: its label stays.
        assert page.input_value("#distil-strategy") == DEFAULT_STRATEGY
        page.fill("#distil-steps", "10")
        page.click("#distil")
        wait_for_error(page, f"{DEFAULT_STRATEGY} also learns from studies without a segmentation")
        page.click("#add-unlabelled-to-training-set")
        wait_for_error(page, f"case {case_id} is already in")
        assert (training / "labelsTr" / f"{case_id}.nii.gz").is_file()
        assert not models.exists() or not list(models.glob("*.pt"))

        choose(page, "distil-strategy", "supervised")
        status = click_and_wait_done(page, "distil")
        assert "new student" in status, status
        trained = list(models.glob("student-supervised-*.pt"))
        assert len(trained) == 1 and not list(models.glob("*.checkpoint.pt"))
        assert page.get_attribute("#status", "data-model") == str(trained[0]), "Run now uses the new student"
        screenshot(page, tmp_path, "web-distil")

        # Cancel: a long Distil stopped from the page leaves no model behind.
        page.fill("#distil-steps", "100000")
        before = done_count(page)
        page.click("#distil")
        page.wait_for_selector("#status[data-busy='distil']", timeout=UI_TIMEOUT_MS)
        page.click("#cancel")
        page.wait_for_function(f"Number(document.querySelector('#status').dataset.done) > {before}",
                               timeout=JOB_TIMEOUT_MS)
        assert "cancelled" in page.inner_text("#status")
        assert sorted(models.glob("*.pt")) == trained, "a cancelled Distil writes no model"

        # Scissors: a square outline at the view's centre (the ROI's, inside the lesion) erases
        # through every slice; then a click on what the stroke left removes that island.
        page.click("#effect-scissors")
        wait_for_status(page, "Scissors:", UI_TIMEOUT_MS)
        before_cut = total_mtv(page)
        square = [(0.45, 0.45), (0.55, 0.45), (0.55, 0.55), (0.45, 0.55), (0.45, 0.45)]
        edited(page, lambda: drag(page, 0, square, pause_ms=30))
        after_cut = mtv_once_changed(page, before_cut)
        assert after_cut < before_cut, f"Scissors erased nothing: {before_cut} -> {after_cut} mL"
        page.click("#effect-islands")
        wait_for_status(page, "Islands:", UI_TIMEOUT_MS)
        edited(page, lambda: page.mouse.click(*view_point(page, 0, (0.3, 0.5))))  # on the painted stroke
        assert mtv_once_changed(page, after_cut) < after_cut, "the clicked island is still there"

    # The engine's own predict on the same study and model, the ROI as its box: the saved file, byte for byte.
    expected = tmp_path / "predict.nii.gz"
    subprocess.run([sys.executable, "-m", "DistillSegLib", "predict", "--model", MODEL, "--ct", str(ct),
                    "--pet", str(pet), f"--prompt-box={roi}", "--out", str(expected), "--device", "cpu",
                    "--threads", THREADS], check=True, cwd=ROOT, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert as_run.read_bytes() == expected.read_bytes(), "the saved segmentation differs from `distillseg predict`"
    record_timing(case, first_frame_s=round(first_frame_s, 2), run_result_on_screen_s=round(run_on_screen_s, 2),
                  lesions=len(rows), mtv_ml=mtv)


@pytest.mark.slow
def test_clicks_correct_the_result_with_the_promptable_student(tmp_path):
    """Run with the bundled student, which takes prompts (the ROI is its box), a negative and a
    positive click placed in the axial view, Correct: the segment is replaced by the student's
    answer to the box, both clicks and the previous mask; a prompt-free student refuses clicks
    in words."""
    from DistillSegLib.student.config import StudentConfig
    from DistillSegLib.student.model_file import save_model
    from DistillSegLib.student.network import build_student

    case = CASES[0]
    folder = require_data("sts-petct", case)
    ct, pet = folder / "CT_image.nii.gz", folder / "PET_image.nii.gz"
    out, models = tmp_path / "out", tmp_path / "models"
    models.mkdir()
    # A user's own prompt-free student (untrained: only its refusal of clicks is tested), listed first.
    save_model(models / "my-prompt-free.pt", build_student(StudentConfig()), StudentConfig(), {})
    with web_server("--ct", str(ct), "--pet", str(pet), "--out", str(out), "--models", str(models),
                    "--device", "cpu", "--threads", THREADS) as server, chromium_page() as page:
        page.goto(server.wait_for_address())
        wait_for_status(page, "loaded")
        page.click("#place-roi")
        page.wait_for_selector("#roi-text", timeout=UI_TIMEOUT_MS)
        choose(page, "student-model", BUNDLED_TITLE)  # the user's own student is listed first
        assert "done" in click_and_wait_done(page, "run-student")
        choose(page, "student-model", "my-prompt-free (yours)")
        page.click("#click-positive")
        wait_for_error(page, "takes no prompts")
        choose(page, "student-model", BUNDLED_TITLE)
        page.click("#save-segmentation")
        page.wait_for_selector("#saved-path", timeout=UI_TIMEOUT_MS)
        saved = Path(page.inner_text("#saved-path").removeprefix("saved ").strip())
        first = read_image(saved).array

        page.click("#click-negative")
        wait_for_status(page, "wrongly includes", UI_TIMEOUT_MS)
        page.mouse.click(*view_point(page, 0, (0.52, 0.47)))  # near the ROI's centre (its handle is there)
        page.wait_for_selector("#click-counts:has-text('0 +, 1 -')", timeout=UI_TIMEOUT_MS)
        page.click("#click-positive")
        page.mouse.click(*view_point(page, 0, (0.46, 0.53)))
        page.wait_for_selector("#click-counts:has-text('1 +, 1 -')", timeout=UI_TIMEOUT_MS)
        started = time.monotonic()
        status = click_and_wait_done(page, "correct-with-clicks")
        correct_s = time.monotonic() - started
        assert "done" in status, status
        assert page.get_attribute("#click-stop", "disabled") is not None, "placing stops when correcting"
        page.click("#save-segmentation")
        wait_for_status(page, "saved", UI_TIMEOUT_MS)
        corrected = read_image(saved).array
        assert corrected.shape == first.shape and (corrected != first).any(), "the clicks changed nothing"
        assert corrected.any(), "the correction removed the whole lesion"
        screenshot(page, tmp_path, "web-clicks")
        assert "done" in click_and_wait_done(page, "run-student")  # a new result: the old clicks go
        page.wait_for_selector("#click-counts:has-text('0 +, 0 -')", timeout=UI_TIMEOUT_MS)
    record_timing(case, correct_with_clicks_s=round(correct_s, 2))


@pytest.mark.slow
def test_a_dicom_study_loaded_in_the_page(tmp_path):
    """No --ct/--pet: the user types the DICOM folders and presses Load (PET series in SUV)."""
    folder = require_data("sts-petct-dicom", "STS_007")
    with web_server("--out", str(tmp_path), "--models", str(tmp_path / "models"), "--device", "cpu",
                    "--threads", THREADS) as server, chromium_page() as page:
        page.goto(server.wait_for_address())
        page.wait_for_selector("#status:has-text('load a CT and a PET')", timeout=UI_TIMEOUT_MS)
        assert page.is_disabled("#run-student") and page.is_disabled("#save-segmentation")
        page.fill("#ct-path", str(folder / "CT" / "image"))
        page.fill("#pet-path", str(folder / "PET" / "image"))
        page.click("#load-study")
        assert "SUV" in wait_for_status(page, "loaded")
        page.click("#place-roi")
        page.wait_for_selector("#roi-text", timeout=UI_TIMEOUT_MS)
        assert "done" in click_and_wait_done(page, "run-student")
        assert lesion_rows(page) and total_mtv(page) > 0.1

        page.fill("#pet-path", str(folder / "missing"))
        page.click("#load-study")
        page.wait_for_selector("#status[data-error='true']", timeout=UI_TIMEOUT_MS)
        assert lesion_rows(page), "a failed load leaves the study and its result as they were"


def test_a_network_bound_server_refuses_a_browser_without_the_token(tmp_path):
    token = "test-token-" + os.urandom(12).hex()
    with web_server("--host", "0.0.0.0", "--out", str(tmp_path), env={"DISTILLSEG_WEB_TOKEN": token}) as server, \
            chromium_page() as page:
        url = server.wait_for_address()
        assert f"secret={token}" in url
        bare = f"http://127.0.0.1:{urlsplit(url).port}/"
        with page.expect_console_message(lambda message: "Authentication failed" in message.text, timeout=60_000):
            page.goto(bare)
        assert page.query_selector("#status") is None, "the page got the app's state without the token"

        page.goto(f"{bare}?secret={token}")
        page.wait_for_selector("#status", timeout=60_000)
        assert "load a CT and a PET" in page.inner_text("#status")
