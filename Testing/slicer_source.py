"""Parts of 3D Slicer's own source, for tests that check the module against it.

Slicer cannot be installed here; ``slicer-core`` gives its MRML library but not its Python
package ``slicer`` (ScriptedLoadableModule, i18n, parameterNodeWrapper) nor its data files.
Tests that need them read them from a Slicer source checkout named by ``$SLICER_SOURCE_DIR``
(e.g. ``git clone --branch v5.10.0 https://github.com/Slicer/Slicer``) and skip, saying so,
when it is absent. Nothing of Slicer is copied into this repository.

:func:`scripted_module_api` loads the real ``Base/Python/slicer/ScriptedLoadableModule.py``
and ``i18n.py`` into slicer-core's ``slicer`` package and sets ``slicer.mrmlScene`` to a real
scene, as the Slicer application does. Its imports of ``qt`` and ``ctk`` (PythonQt, only in
the application) are satisfied by placeholder modules that raise on *any* use: what runs
without error provably used no Qt.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Iterator

import pytest

ENVIRONMENT_VARIABLE = "SLICER_SOURCE_DIR"


def slicer_source(*parts: str) -> Path:
    """A file of the Slicer checkout in ``$SLICER_SOURCE_DIR``, or skip the test naming what is missing."""
    root = os.environ.get(ENVIRONMENT_VARIABLE)
    if not root:
        pytest.skip(f"${ENVIRONMENT_VARIABLE} is not set: point it at a Slicer source checkout (v5.10.0 or later) "
                    "to check the module against Slicer's own code")
    path = Path(root).joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found in ${ENVIRONMENT_VARIABLE} ({root})")
    return path


class QtIsNotHere(types.ModuleType):
    """A stand-in for PythonQt's ``qt``/``ctk`` modules that fails on any attribute use."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"{self.__name__}.{name} used: this code path needs the Slicer application (Qt)")


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def scripted_module_api(scene) -> Iterator[types.ModuleType]:
    """Slicer's real ``slicer.ScriptedLoadableModule`` on slicer-core with ``slicer.mrmlScene = scene``;
    everything is put back afterwards."""
    import slicer

    base = slicer_source("Base", "Python", "slicer")
    saved = {name: sys.modules.get(name) for name in ("qt", "ctk", "slicer.i18n", "slicer.ScriptedLoadableModule")}
    had_scene = hasattr(slicer, "mrmlScene")
    try:
        sys.modules["qt"], sys.modules["ctk"] = QtIsNotHere("qt"), QtIsNotHere("ctk")
        slicer.i18n = _load("slicer.i18n", base / "i18n.py")
        api = _load("slicer.ScriptedLoadableModule", base / "ScriptedLoadableModule.py")
        slicer.ScriptedLoadableModule = api
        slicer.mrmlScene = scene
        yield api
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for attribute in ("i18n", "ScriptedLoadableModule") + (() if had_scene else ("mrmlScene",)):
            if hasattr(slicer, attribute):
                delattr(slicer, attribute)


def load_module_file(path: Path, name: str = "DistillSeg") -> types.ModuleType:
    """Import a scripted module's ``.py`` as Slicer does (a fresh module named after the file)."""
    sys.modules.pop(name, None)
    return _load(name, path)
