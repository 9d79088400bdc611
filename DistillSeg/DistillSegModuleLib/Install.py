"""First-use installation of the engine's Python dependencies inside Slicer.

Never at import time: the widget calls :func:`ensureDependencies` when the user first
asks for work that needs them, and nothing is installed unless the user confirms.
PyTorch comes from Slicer's PyTorch extension (``PyTorchUtils``), which picks the build
for the user's GPU/CUDA; the rest from ``Resources/requirements.txt`` through
``slicer.util.pip_install``. Slicer's own SimpleITK is never replaced. The approach follows
KitwareMedical/SlicerNNUnet ``SlicerNNUNetLib/InstallLogic.py`` and
lassoan/SlicerMONAIAuto3DSeg ``MONAIAuto3DSegLib/dependency_handler.py``; the code is ours.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import slicer

MINIMUM_TORCH = ">=2.1"
REQUIREMENTS_NAME = "requirements.txt"


def requirementsFile() -> Path:
    module_dir = Path(__file__).resolve().parent.parent
    for candidate in (module_dir / "Resources" / REQUIREMENTS_NAME, module_dir.parent / "Resources" / REQUIREMENTS_NAME):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{REQUIREMENTS_NAME} not found beside the DistillSeg module")


def readRequirements(path: Path | None = None) -> list[str]:
    """Requirement strings of ``requirements.txt`` (comments and blank lines dropped)."""
    lines = (path or requirementsFile()).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def missingRequirements(requirements: list[str]) -> list[str]:
    """Requirements not installed at a compatible version."""
    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and installed not in requirement.specifier:
            missing.append(text)
    return missing


def torchInstalled() -> bool:
    try:
        importlib.metadata.version("torch")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def ensureDependencies() -> bool:
    """Install what is missing after asking the user; True when everything is ready."""
    missing = missingRequirements(readRequirements())
    needTorch = not torchInstalled()
    if not missing and not needTorch:
        return True
    try:
        import PyTorchUtils  # the PyTorch extension's module
    except ModuleNotFoundError:
        if needTorch:
            slicer.util.errorDisplay(
                "DistillSeg needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
                "restart Slicer, then try again.")
            return False
        PyTorchUtils = None
    listing = "\n".join(["torch (PyTorch extension)"] * needTorch + missing)
    if not slicer.util.confirmOkCancelDisplay(
            f"DistillSeg needs these Python packages (a few minutes, several hundred MB):\n\n{listing}\n\n"
            "Install them now?", "DistillSeg: install dependencies"):
        return False
    with slicer.util.WaitCursor():
        if needTorch and PyTorchUtils is not None:
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                                   torchVersionRequirement=MINIMUM_TORCH)
            if torch is None:
                slicer.util.errorDisplay("PyTorch installation failed; see the Python console.")
                return False
        if missing:
            slicer.util.pip_install(missing)
    stillMissing = missingRequirements(readRequirements())
    if stillMissing:
        slicer.util.errorDisplay(f"Could not install: {', '.join(stillMissing)}")
        return False
    return True

