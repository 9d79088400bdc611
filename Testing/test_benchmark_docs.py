"""docs/benchmarks.md is generated from benchmarks/results/*.json: it must be what the generator
writes today (no figure typed by hand, none left behind when a JSON changes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import make_docs  # noqa: E402


def in_git_checkout() -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True).returncode == 0


@pytest.mark.skipif(not in_git_checkout(), reason="dates come from git: not a git checkout")
def test_the_committed_page_is_what_the_generator_writes():
    expected = make_docs.render()
    current = (ROOT / "docs" / "benchmarks.md").read_text()
    assert current == expected, "docs/benchmarks.md is out of date: run python benchmarks/make_docs.py " \
                                "(after committing new JSON files: their dates come from git)"


def test_every_result_file_has_a_section_with_command_load_and_date():
    page = make_docs.render()
    for path in sorted((ROOT / "benchmarks" / "results").rglob("*.json")):
        name = str(path.relative_to(ROOT / "benchmarks" / "results").with_suffix(""))
        section = page.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert "date: " in section and "Command" in section and "load" in section.lower(), name
    assert "held-out" not in page and "held out" in page  # the validation cases are named for what they are


def test_a_new_file_of_unknown_shape_gets_a_section(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "distillation_untouched.json").write_text(json.dumps(
        {"command": "benchmarks/distillation.py --score-on untouched", "scored_on": "untouched",
         "load_average_end": 1.5, "summary": {"supervised": {"runs": 2, "dice_mean": 0.7, "dice_sd": 0.01}}}))
    (results / "something_new.json").write_text(json.dumps({"rows": [1, 2], "wall_s": 3.25, "load": [2.0, 1, 1]}))
    page = make_docs.render(results)
    assert "## distillation_untouched" in page and "untouched Dice" in page and "0.700 +- 0.010" in page
    assert "## something_new" in page and "`wall_s`: 3.250" in page and "2.0 .. 2.0" in page
    assert "not committed yet" in page
