"""Shared fixtures: where the real PET/CT data lives, and small helpers.

The data is read from ``$DISTILLSEG_DATA`` or ``../shared/data`` relative to the project
root; tests that need it skip with a clear reason when it is absent (CI has it).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("DISTILLSEG_DATA", ROOT.parent / "shared" / "data")).resolve()


def require_data(*parts: str) -> Path:
    """Path under the shared data folder, or skip the test naming what is missing."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real PET/CT data not found at {path} (set DISTILLSEG_DATA or place ../shared/data)")
    return path


@pytest.fixture(scope="session")
def sts_dir() -> Path:
    return require_data("sts-petct")


@pytest.fixture(scope="session")
def sts_case_dir(sts_dir: Path):
    """Folder of one STS case: ``sts_case_dir("STS_001")``."""

    def get(case_id: str) -> Path:
        return require_data("sts-petct", case_id)

    return get


@pytest.fixture(scope="session")
def sts_001(sts_dir: Path):
    from DistillSegLib.io.case import load_case_folder

    return load_case_folder(sts_dir / "STS_001")


@pytest.fixture(scope="session", autouse=True)
def isolated_teacher_cache(tmp_path_factory):
    """Keep teacher outputs of the tests out of the user's cache (subprocesses inherit it)."""
    previous = os.environ.get("DISTILLSEG_CACHE")
    os.environ["DISTILLSEG_CACHE"] = str(tmp_path_factory.mktemp("teacher-cache"))
    yield
    if previous is None:
        os.environ.pop("DISTILLSEG_CACHE", None)
    else:
        os.environ["DISTILLSEG_CACHE"] = previous


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread: on a shared 2-core machine OpenMP spinning makes 2 threads far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def cli(capsys):
    """``cli(*args)``: run ``distillseg ARGS`` in this process (the console script's code path) and
    return a CompletedProcess with its exit status, stdout and stderr."""
    from DistillSegLib.cli import main

    def run(*args) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run
