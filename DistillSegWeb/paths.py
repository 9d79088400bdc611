"""Where the Slicer module's logic folder is, so that the web front end imports the same code.

The module's logic lives in ``DistillSeg/DistillSegModuleLib`` (a Slicer scripted module's
folder, not an installed package); the front end puts ``DistillSeg/`` on ``sys.path`` when
``DistillSegModuleLib`` is not importable yet, as the tests and benchmarks do.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_FOLDER = ROOT / "DistillSeg"


def ensure_module_logic_importable() -> None:
    """Make ``import DistillSegModuleLib`` (and ``DistillSegLib``) work from a source checkout."""
    for folder in (ROOT, MODULE_FOLDER):
        if str(folder) not in sys.path:
            sys.path.insert(0 if folder == MODULE_FOLDER else len(sys.path), str(folder))
    if importlib.util.find_spec("DistillSegModuleLib") is None:
        raise ImportError(f"the Slicer module's logic is not at {MODULE_FOLDER / 'DistillSegModuleLib'}")
