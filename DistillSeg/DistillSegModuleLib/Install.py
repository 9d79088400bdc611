"""First-use installation of the engine's Python dependencies inside Slicer (Slicer only).

Never at import time: the widget calls :func:`ensureDependencies` when the user first asks
for work that needs them, and nothing is installed unless the user confirms. The rules
(what is installed, what is never replaced, restart detection) are in ``Dependencies.py``,
tested outside Slicer; this file adds the dialogs and the PyTorch extension:

* torch comes from Slicer's PyTorch extension (``PyTorchUtils.PyTorchUtilsLogic.installTorch``,
  fepegar/SlicerPyTorch), which picks the build for the user's GPU; it raises when pip fails
  and returns ``None`` only when the user declines;
* the other packages are installed by ``PythonSlicer -m pip install -r requirements.txt -c
  constraints`` (what ``slicer.util.pip_install`` runs, Base/Python/slicer/util.py v5.10.0,
  but with pip's output kept so that its error can be shown).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import slicer
from slicer.i18n import tr as _

from . import Dependencies
from .ProcessRunner import python_executable

# monai 1.6.1 (requirements.txt) declares torch>=2.8.0: an older torch would be replaced by pip.
TORCH_REQUIREMENT = ">=2.8"


def ensureDependencies() -> bool:
    """Install what is missing after asking the user; True when everything is ready."""
    platformProblem = Dependencies.platformProblem()
    if platformProblem:
        slicer.util.errorDisplay(_(platformProblem))
        return False
    required = Dependencies.readRequirements(Dependencies.resourceFile(Dependencies.REQUIREMENTS_NAME))
    provided = Dependencies.readRequirements(Dependencies.resourceFile(Dependencies.PROVIDED_NAME))
    installed = Dependencies.installedVersions()
    problems = Dependencies.providedProblems(provided, installed)
    if problems:
        slicer.util.errorDisplay(_("DistillSeg cannot run in this Slicer (it never replaces packages Slicer "
                                   "itself uses):\n\n{problems}\n\nUse Slicer 5.10 or later.")
                                 .format(problems="\n".join(problems)))
        return False
    torchMissing = [r for r in Dependencies.missing(provided, installed) if r.name in Dependencies.TORCH_PACKAGES]
    toInstall = Dependencies.missing(required, installed)
    if not torchMissing and not toInstall:
        return True
    listing = "\n".join([f"{r.text} (PyTorch extension)" for r in torchMissing] + [r.text for r in toInstall])
    if not slicer.util.confirmOkCancelDisplay(
            _("DistillSeg needs these Python packages (a few minutes, several hundred MB):\n\n{listing}\n\n"
              "Install them now?").format(listing=listing), _("DistillSeg: install dependencies")):
        return False
    loadedBefore = set(sys.modules)  # what runs old code if its package is replaced
    with slicer.util.WaitCursor():
        if torchMissing and not _installTorch():
            return False
        ok = _pipInstall(provided, Dependencies.installedVersions()) if toInstall else True
    after = Dependencies.installedVersions()
    changed = Dependencies.changedLoadedPackages(installed, after, loadedBefore)
    # In testing mode Slicer's confirmation dialogs answer "yes" by themselves: never restart then.
    if changed and not slicer.app.testingEnabled() and slicer.util.confirmYesNoDisplay(
            _("These packages were updated while an older version is in use:\n\n{changed}\n\n"
              "Restart Slicer now? (DistillSeg may fail until Slicer is restarted.)").format(changed="\n".join(changed))):
        slicer.util.restart()
    stillMissing = Dependencies.missing(required, after)
    if ok and stillMissing:
        slicer.util.errorDisplay(_("Could not install: {names}").format(names=", ".join(r.text for r in stillMissing)))
    return ok and not stillMissing


def _installTorch() -> bool:
    try:
        import PyTorchUtils  # the PyTorch extension's module
    except ModuleNotFoundError:
        slicer.util.errorDisplay(_("DistillSeg needs PyTorch: install the 'PyTorch' extension from the Extensions "
                                   "Manager, restart Slicer, then try again."))
        return False
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                               torchVersionRequirement=TORCH_REQUIREMENT)
    except Exception as exc:  # installTorch lets pip's CalledProcessError through
        slicer.util.errorDisplay(_("PyTorch could not be installed: {error}").format(error=exc))
        return False
    return torch is not None


def _pipInstall(provided, installed) -> bool:
    """pip install of requirements.txt with Slicer's packages pinned; pip's error shown on failure."""
    with tempfile.TemporaryDirectory(prefix="DistillSeg-pip-") as folder:
        constraintsFile = Path(folder) / "constraints.txt"
        constraintsFile.write_text(Dependencies.constraints(provided, installed))
        arguments = ["install", "-r", str(Dependencies.resourceFile(Dependencies.REQUIREMENTS_NAME)),
                     "-c", str(constraintsFile)]
        code, lines = Dependencies.runPip(python_executable(), arguments, _showPipLine, env=os.environ)
    if code != 0:
        slicer.util.errorDisplay(_("Installing DistillSeg's packages failed; nothing of Slicer's own packages was "
                                   "replaced. pip says:\n\n{error}").format(error=Dependencies.pipError(lines)))
    return code == 0


def _showPipLine(line: str) -> None:
    print(line)
    slicer.app.processEvents()  # as slicer.util.logProcessOutput does: keep the GUI alive
