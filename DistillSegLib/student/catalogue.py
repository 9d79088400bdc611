"""The model catalogue: students shipped with DistillSeg, found by name (``--model sts-petct-crop``).

The catalogue is ``Resources/ModelCatalogue.json`` beside the ``DistillSegLib`` folder, in a
source checkout and in the installed Slicer extension alike (``DistillSeg/CMakeLists.txt``
installs the engine and the module's ``Resources/`` into one folder). A student entry names
its file relative to a resources folder (``Models/<name>.pt``): the module's
``DistillSeg/Resources`` in a checkout, ``Resources`` in the installed extension. The file's
SHA-256 is recorded in the entry and checked before use.

Standard library only (no torch): the Slicer module reads the catalogue before the engine's
dependencies are installed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import DistillSegError

ROOT = Path(__file__).resolve().parents[2]  # the folder that holds DistillSegLib/
CATALOGUE_NAME = "ModelCatalogue.json"
CATALOGUE_FORMAT = "distillseg-catalogue/1"


def catalogue_path(root: Path = ROOT) -> Path:
    return root / "Resources" / CATALOGUE_NAME


def load_catalogue(root: Path = ROOT) -> dict:
    """The parsed catalogue (``{"students": [...], "teachers": [...]}``).

    Raises:
        DistillSegError: the file is missing, not JSON or not a DistillSeg catalogue.
    """
    path = catalogue_path(root)
    try:
        catalogue = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DistillSegError(f"model catalogue not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise DistillSegError(f"model catalogue {path} is not valid JSON: {exc}") from exc
    if catalogue.get("format") != CATALOGUE_FORMAT:
        raise DistillSegError(f"{path} is not a DistillSeg model catalogue (format {CATALOGUE_FORMAT})")
    return catalogue


def resource_folders(root: Path = ROOT) -> list[Path]:
    """Where bundled files are looked for: the installed extension's ``Resources`` first,
    then the module's ``Resources`` of a source checkout."""
    return [root / "Resources", root / "DistillSeg" / "Resources"]


def student_entry(name: str, catalogue: dict | None = None) -> dict | None:
    """The catalogue entry of a bundled student, or ``None``."""
    students = (catalogue if catalogue is not None else load_catalogue()).get("students", [])
    return next((s for s in students if s.get("name") == name), None)


def student_file(entry: dict, root: Path = ROOT) -> Path:
    """The bundled student's file, its SHA-256 checked against the catalogue.

    Raises:
        DistillSegError: the file is missing, or its bytes are not the ones the catalogue lists.
    """
    for folder in resource_folders(root):
        path = folder / entry["file"]
        if path.is_file():
            break
    else:
        raise DistillSegError(f"bundled model {entry['name']}: {entry['file']} not found in "
                              f"{', '.join(str(f) for f in resource_folders(root))}")
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise DistillSegError(f"bundled model {path} does not match the catalogue: SHA-256 {actual[:12]}... "
                              f"instead of {str(entry.get('sha256'))[:12]}...")
    return path


def resolve_model(model: str | os.PathLike, root: Path = ROOT) -> Path:
    """A model file from a path or a catalogue name (``sts-petct-crop``).

    An existing file wins; otherwise the name is looked up in the catalogue.

    Raises:
        DistillSegError: neither a file nor a catalogue name (the known names are listed).
    """
    path = Path(model)
    if path.is_file():
        return path
    catalogue = load_catalogue(root)
    entry = student_entry(str(model), catalogue)
    if entry is None:
        names = ", ".join(s["name"] for s in catalogue.get("students", [])) or "none"
        raise DistillSegError(f"model file not found: {model} (nor is it a bundled model name; bundled: {names})")
    return student_file(entry, root)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
