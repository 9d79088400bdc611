"""Where a result came from: a JSON sidecar beside every label map ``distillseg predict`` writes.

``LABEL.nii.gz`` (or ``.nii``, ``.nrrd``, ``.seg.nrrd``, ``.dcm``) gets
``LABEL.provenance.json``, written atomically after the label map::

    {"format": "distillseg-provenance/1", "created": "2025-01-01T12:00:00+00:00",
     "distillseg_version": "0.1.0",
     "source": "student" | "teacher",
     "inputs": {"ct": "...", "pet": "..."},
     "student": {"model": "student.pt", "weights_sha256": "...", "strategy": "supervised", ...},
     "teacher": {"name": "litemedsam", "weights_sha256": "...", "modality": "CT"},
     "prompt": {"kind": "automatic", "prompt_from": "student.pt"}
             | {"kind": "user", "box_ras_mm": [x0, y0, z0, x1, y1, z1],
                "points_ras_mm": [[r, a, s], ...], "point_labels": [1, 0, ...]}
             | {"kind": "correction", ..., "previous": {"path": "...", "segment": 1, "sha256": "..."}},
     "segment": 1}

(``student`` for a student's result; ``teacher`` and ``prompt`` for a teacher's.) "Add to
training set" in the Slicer module records it with the case, so a training set says which
labels a radiologist drew or corrected from which suggestion. What goes into a training set
passes :func:`for_training_set` first: file names at most, never folders (a folder such as
``Doe^Jane_19700101_MRN12345/`` names the patient) nor node names, which users name after
patients too.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from . import __version__
from .atomic import write_json_atomic

FORMAT = "distillseg-provenance/1"
SUFFIX = ".provenance.json"
LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".dcm")


def provenance_path(label_path: str | os.PathLike) -> Path:
    """``LABEL.<suffix>`` -> ``LABEL.provenance.json`` (same folder)."""
    path = Path(label_path)
    name = path.name
    for suffix in LABEL_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + SUFFIX)


# Keys whose values name MRML nodes or the user's inputs wholesale: never copied into a training set.
NOT_FOR_TRAINING_SET = ("segmentation", "node", "node_name", "inputs", "outputs")


def file_name_only(text: str) -> str:
    """The last component of a POSIX or Windows path (``/a/b/c.nii.gz`` -> ``c.nii.gz``); other text as is."""
    if "/" not in text and "\\" not in text:
        return text
    return PureWindowsPath(text).name if "\\" in text else PurePosixPath(text).name


def for_training_set(record: Any) -> Any:
    """A copy of a provenance record fit for a training set that may be shared.

    Every string that holds a folder is cut to its file name (``prompt_from``,
    ``previous.path``, ``student.model``, ``teacher.checkpoint``, ``init_from.path`` and any
    other field, at any depth); the fields of :data:`NOT_FOR_TRAINING_SET` (node names, the
    input paths) are dropped. Hashes, versions, boxes and points are kept.
    """
    if isinstance(record, dict):
        return {k: for_training_set(v) for k, v in record.items() if k not in NOT_FOR_TRAINING_SET}
    if isinstance(record, (list, tuple)):
        return [for_training_set(v) for v in record]
    if isinstance(record, str):
        return file_name_only(record)
    return record


def provenance_payload(record: dict) -> dict:
    """The sidecar's content: ``record`` (as documented above) with the format, time and version."""
    return {"format": FORMAT, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "distillseg_version": __version__, **record}


def write_provenance(label_path: str | os.PathLike, record: dict) -> Path:
    """Write the sidecar of ``label_path`` on its own (atomically); ``distillseg predict`` writes
    it together with its other outputs instead."""
    return write_json_atomic(provenance_path(label_path), provenance_payload(record))


def read_provenance(label_path: str | os.PathLike) -> dict | None:
    """The sidecar of ``label_path``, or None when there is none (or it is not ours)."""
    path = provenance_path(label_path)
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == FORMAT else None


def student_record(model) -> dict:
    """The ``student`` part for a loaded :class:`~DistillSegLib.student.model_file.StudentModel`."""
    metadata = model.metadata or {}
    keys = ("weights_sha256", "strategy", "field_of_view", "created", "distillseg_version")
    return {"model": str(model.path) if model.path else None, **{k: metadata[k] for k in keys if k in metadata}}
