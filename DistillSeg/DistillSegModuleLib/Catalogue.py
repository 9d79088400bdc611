"""Which student models and teachers the module offers: bundled students + the user's folder.

The catalogue (``Resources/ModelCatalogue.json``) and the bundled students are found by the
engine's :mod:`DistillSegLib.student.catalogue` (also behind ``distillseg predict --model
NAME``). Students the user distils are ``.pt`` files (format ``distillseg-student/1``,
``DistillSegLib/student/model_file.py``) in a models folder. No Qt and no Slicer import here.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from DistillSegLib.errors import DistillSegError
from DistillSegLib.student import catalogue as engineCatalogue

MODEL_SUFFIX = ".pt"
CHECKPOINT_SUFFIX = ".checkpoint.pt"  # training checkpoints of ``distillseg train``, not offered
BUNDLED_STUDENT = "sts-petct-crop"


@dataclass(frozen=True)
class ModelEntry:
    """A student model the user can pick."""

    title: str
    path: Path
    source: str  # "bundled" or "user"


def bundledCatalogue() -> dict:
    """The parsed catalogue (``{"students": [...], "teachers": [...]}``)."""
    return engineCatalogue.load_catalogue()


def bundledStudent(name: str = BUNDLED_STUDENT) -> Path:
    """The file of a bundled student (SHA-256 checked)."""
    return engineCatalogue.resolve_model(name)


def defaultModelsFolder() -> Path:
    """``$DISTILLSEG_MODELS`` or ``~/.distillseg/models``."""
    return Path(os.environ.get("DISTILLSEG_MODELS", Path.home() / ".distillseg" / "models"))


def studentModels(folder: str | os.PathLike | None = None, catalogue: dict | None = None) -> list[ModelEntry]:
    """Students in the user folder (newest first), then the bundled students.

    A bundled student whose file is missing or modified is left out (the engine would refuse it).
    """
    folder = Path(folder) if folder else defaultModelsFolder()
    entries: list[ModelEntry] = []
    if folder.is_dir():
        files = sorted((p for p in folder.glob(f"*{MODEL_SUFFIX}")
                        if not p.name.startswith(".") and not p.name.endswith(CHECKPOINT_SUFFIX)),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        entries += [ModelEntry(p.stem, p, "user") for p in files]
    for student in (catalogue if catalogue is not None else bundledCatalogue()).get("students", []):
        try:
            entries.append(ModelEntry(student.get("title", student["name"]), engineCatalogue.student_file(student),
                                      "bundled"))
        except DistillSegError:
            continue
    return entries


def newModelPath(folder: str | os.PathLike, strategy: str) -> Path:
    """A fresh file name for a distilled student: ``student-<strategy>-<UTC time>.pt``."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = Path(folder) / f"student-{strategy}-{stamp}{MODEL_SUFFIX}"
    counter = 1
    while path.exists():
        path = Path(folder) / f"student-{strategy}-{stamp}-{counter}{MODEL_SUFFIX}"
        counter += 1
    return path


def teacherCheckpoint(name: str, checkpoint: str | os.PathLike | None, catalogue: dict | None = None) -> str | None:
    """The checkpoint to give teacher ``name``: None for a teacher with embedded weights.

    The module has one checkpoint field for every teacher; after a Distil with SAM or
    SAM-Med3D it still holds their file, which LiteMedSAM must not be given.
    """
    teachers = (catalogue if catalogue is not None else bundledCatalogue()).get("teachers", [])
    teacher = next((t for t in teachers if t.get("name") == name), None)
    if not checkpoint or (teacher is not None and teacher.get("checkpoint") == "embedded"):
        return None
    return str(checkpoint)


def teacherAvailability(teacher: dict, checkpoint: str | os.PathLike | None) -> tuple[bool, str]:
    """Whether a teacher can run here, and why not.

    Embedded teachers need their package; the others need a readable checkpoint file.
    """
    if teacher.get("checkpoint") == "embedded":
        package = teacher.get("package", "")
        if importlib.util.find_spec(package) is None:
            return False, f"{teacher['title']}: package {package} is not installed (install the dependencies)"
        return True, f"{teacher['title']}: available (weights embedded in {package})"
    if not checkpoint:
        expected = teacher.get("file_name", "a checkpoint file")
        return False, f"{teacher['title']}: select its checkpoint ({expected})"
    path = Path(checkpoint)
    if not path.is_file():
        return False, f"{teacher['title']}: checkpoint not found: {path}"
    if not os.access(path, os.R_OK):
        return False, f"{teacher['title']}: checkpoint not readable: {path}"
    return True, f"{teacher['title']}: checkpoint {path.name} ({path.stat().st_size / 1e6:.0f} MB)"
