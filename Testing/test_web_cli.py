"""``distillseg web``'s hand-over and access rules, without a browser (any venv).

The browser itself is tested in ``test_web_browser.py`` (``make test-web``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from DistillSegWeb.access import address, access_token, is_local  # noqa: E402


def front_end(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "DistillSegLib", "web", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def test_loopback_needs_no_token_any_other_host_does():
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1") and is_local("127.0.0.2")
    assert access_token("127.0.0.1") is None
    for host in ("0.0.0.0", "192.168.1.20", "myhost.example.org"):
        assert not is_local(host)
        first, second = access_token(host, {}), access_token(host, {})
        assert first != second and len(first) >= 32, "a fresh random token each start"
    assert access_token("0.0.0.0", {"DISTILLSEG_WEB_TOKEN": "x" * 20}) == "x" * 20
    with pytest.raises(ValueError, match="too short"):
        access_token("0.0.0.0", {"DISTILLSEG_WEB_TOKEN": "short"})
    assert address("127.0.0.1", 8080, None) == "http://127.0.0.1:8080/"
    assert address("10.0.0.5", 8080, "t" * 32).endswith("/?secret=" + "t" * 32)


@pytest.mark.skipif(importlib.util.find_spec("trame_slicer") is None, reason="needs the web extra to get past the check")
def test_bad_input_is_one_error_line_and_nothing_listens(tmp_path):
    result = front_end("--ct", str(tmp_path / "missing.nii.gz"), "--pet", str(tmp_path / "missing.nii.gz"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: --ct: not found: {tmp_path / 'missing.nii.gz'}"
    assert "open http" not in result.stdout
    result = front_end("--ct", str(tmp_path))
    assert result.returncode == 2 and "give both --ct and --pet" in result.stderr


def test_a_short_token_is_refused_before_listening(tmp_path):
    if importlib.util.find_spec("trame_slicer") is None:
        pytest.skip("needs the web extra to get past the check")
    result = subprocess.run([sys.executable, "-m", "DistillSegLib", "web", "--host", "0.0.0.0"], capture_output=True,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                      "DISTILLSEG_WEB_TOKEN": "abc"}, timeout=120)
    assert result.returncode == 2 and "DISTILLSEG_WEB_TOKEN is too short" in result.stderr
    assert "open http" not in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("trame_slicer") is not None, reason="the web extra is installed here")
def test_without_the_web_extra_the_engine_says_how_to_install_it():
    result = front_end("--help")
    assert result.returncode == 0 and "--training-set" in result.stdout  # the engine's own --help
    result = front_end()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: the web front end needs the web extra")
