"""What the engine needs in Slicer's Python, and how to install it without breaking Slicer.

No Slicer import: ``Install.py`` (Slicer only: dialogs, the PyTorch extension) calls these,
and the test suite runs them. Two requirement files, both in ``Resources/``:

* ``requirements.txt``: packages the module installs (pinned as in ``pyproject.toml``);
* ``requirements-slicer.txt``: packages Slicer (or its PyTorch extension) ships, with the
  oldest version the engine works with. They are never installed or replaced by the
  module: Slicer's own modules use them (SimpleITK with Slicer's IO, pydicom/highdicom by
  the DICOM plugins, numpy/scipy everywhere), so every one that is installed is pinned to
  its installed version in a pip *constraints* file. A requirement pip cannot meet without
  replacing one of them fails with pip's own message instead of silently replacing it. A
  line whose comment starts with ``optional`` is checked only when the package is present
  (highdicom: Slicer ships it from 5.12; only DICOM SEG export needs it).

Replacing a package whose modules are already imported needs a restart (the old code stays
in memory): :func:`changedLoadedPackages` says which. The same rules are followed by
KitwareMedical/SlicerNNUnet (``InstallLogic.py``: skip SimpleITK, torch, requests; torch via
the PyTorch extension) and Slicer main's ``slicer.packaging`` (constraints, restart
detection); the code is ours.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

REQUIREMENTS_NAME = "requirements.txt"
PROVIDED_NAME = "requirements-slicer.txt"
TORCH_PACKAGES = ("torch", "torchvision")  # installed by the PyTorch extension (PyTorchUtils)


@dataclass(frozen=True)
class Requirement:
    """One line of a requirements file."""

    text: str
    optional: bool = False

    @property
    def parsed(self):
        from packaging.requirements import Requirement as Parsed

        return Parsed(self.text)

    @property
    def name(self) -> str:
        return canonical(self.parsed.name)

    def satisfiedBy(self, version: str | None) -> bool:
        return version is not None and (not self.parsed.specifier or self.parsed.specifier.contains(version, True))


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``SimpleITK`` -> ``simpleitk``)."""
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def resourceFile(name: str) -> Path:
    """A file of the module's ``Resources/`` (installed extension) or the checkout's ``Resources/``."""
    moduleDir = Path(__file__).resolve().parent.parent
    for candidate in (moduleDir / "Resources" / name, moduleDir.parent / "Resources" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} not found beside the DistillSeg module")


def readRequirements(path: Path) -> list[Requirement]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
    result = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text, _, comment = line.partition("#")
        if text.strip():
            result.append(Requirement(text.strip(), comment.strip().lower().startswith("optional")))
    return result


def installedVersions(names: Iterable[str] | None = None) -> dict[str, str]:
    """``{canonical name: version}`` of installed distributions (all, or only ``names``)."""
    versions = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            versions[canonical(name)] = distribution.version
    if names is None:
        return versions
    wanted = {canonical(n) for n in names}
    return {n: v for n, v in versions.items() if n in wanted}


def missing(requirements: Sequence[Requirement], installed: Mapping[str, str]) -> list[Requirement]:
    """Requirements not installed at a version they accept (optional ones only when present)."""
    return [r for r in requirements
            if not r.satisfiedBy(installed.get(r.name)) and not (r.optional and r.name not in installed)]


def providedProblems(provided: Sequence[Requirement], installed: Mapping[str, str]) -> list[str]:
    """Why Slicer's own packages (torch aside: the PyTorch extension updates it) do not fit the
    engine, one sentence each; empty when they do."""
    return [f"DistillSeg needs {r.text}, this Slicer has "
            + (f"{r.name} {installed[r.name]}" if r.name in installed else f"no {r.name}")
            for r in missing(provided, installed) if r.name not in TORCH_PACKAGES]


# Why DistillSeg cannot run in Slicer's Python on macOS (measured in a torch 2.2.2 stack on
# Linux, docs/slicer.md); shown by the installer and said in the module's help,
# the README, docs/slicer.md and the extension's description.
MACOS_UNSUPPORTED = (
    "DistillSeg does not run in 3D Slicer on macOS. Slicer's Python on macOS is x86_64 (Intel, or "
    "Rosetta on Apple silicon), for which PyTorch publishes nothing newer than torch 2.2.2; the engine "
    "needs torch 2.8 or later (monai 1.6). The newest stack that accepts torch 2.2 (monai 1.4.0) needs "
    "numpy < 2, and torch 2.2.2 cannot exchange arrays with numpy 2 ('Numpy is not available'), while "
    "Slicer 5.10 and later ship numpy 2, which DistillSeg never replaces. Use Slicer on Windows or Linux.")


def platformProblem(system: str | None = None, machine: str | None = None,
                    installed: Mapping[str, str] | None = None) -> str | None:
    """Why the engine cannot be installed in this Slicer's Python, or None.

    macOS on x86_64 (Slicer's macOS Python): no torch >= 2.8 exists there
    (:data:`MACOS_UNSUPPORTED`), unless one is installed already.
    """
    import platform

    system = system if system is not None else platform.system()
    machine = machine if machine is not None else platform.machine()
    if system != "Darwin" or machine.lower() not in ("x86_64", "amd64", "i386"):
        return None
    installed = installed if installed is not None else installedVersions(["torch"])
    torch = Requirement("torch>=2.8")
    return None if torch.satisfiedBy(installed.get("torch")) else MACOS_UNSUPPORTED


def constraints(provided: Sequence[Requirement], installed: Mapping[str, str]) -> str:
    """A pip constraints file pinning every installed package of ``provided`` to its version."""
    return "".join(f"{r.name}=={installed[r.name]}\n" for r in provided if r.name in installed)


def changedLoadedPackages(before: Mapping[str, str], after: Mapping[str, str],
                          loadedModules: Iterable[str] | None = None) -> list[str]:
    """``name old -> new`` for each distribution whose version changed while one of its
    top-level modules is imported (then Slicer must be restarted).

    ``loadedModules``: the modules imported *before* the installation (default: those
    imported now). A distribution that was not installed before cannot have had its old
    code imported, so a first installation never needs a restart, even though the
    installer imports what it installed (the PyTorch extension imports torch to check it).
    """
    loaded = set(loadedModules if loadedModules is not None else sys.modules)
    owners: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            owners.setdefault(canonical(distribution), set()).add(module)
    changed = []
    for name in sorted(set(before) | set(after)):
        if name in before and before.get(name) != after.get(name) and owners.get(name, {name}) & loaded:
            changed.append(f"{name} {before.get(name, '(none)')} -> {after.get(name, '(removed)')}")
    return changed


def runPip(python: str, arguments: Sequence[str], onLine: Callable[[str], None] | None = None,
           env: Mapping[str, str] | None = None) -> tuple[int, list[str]]:
    """Run ``python -m pip ARGUMENTS``; ``(exit status, output lines)``, each line also given
    to ``onLine`` as it comes (Slicer: print it and keep the GUI alive). On Windows pip's
    console window is hidden, as ``slicer.util.launchConsoleProcess`` hides it."""
    from DistillSegLib.engine.processes import background_options

    process = subprocess.Popen([python, "-m", "pip", *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace",
                               env=dict(env) if env is not None else None, **background_options(new_group=False))
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\r\n"))
        if onLine is not None:
            onLine(lines[-1])
    return process.wait(), lines


def pipError(lines: Sequence[str], limit: int = 12) -> str:
    """pip's error: its ``ERROR:`` lines and what follows them (the conflict explanation),
    else the last lines of its output."""
    start = next((i for i, line in enumerate(lines) if line.startswith("ERROR")), None)
    chosen = [line for line in (lines[start:] if start is not None else lines[-limit:]) if line.strip()]
    return "\n".join(chosen[:limit])
