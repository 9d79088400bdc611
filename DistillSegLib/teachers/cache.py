"""On-disk cache of teacher outputs, keyed by everything that decides them.

The key hashes the teacher name, its weights' SHA-256 (including LoRA adapters), the case
(id and a hash of the image's array and grid), the modality and the prompt (a hash of the
prompt arrays and settings, :meth:`Prompt.digest`): a changed prompt or weight never
reuses a stale entry. Entries are written atomically, so a killed process never leaves a
half-written one. Location: ``$DISTILLSEG_CACHE`` or ``~/.cache/distillseg/teachers``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..io.volume import Volume
from .prompts import Prompt

CACHE_ENV = "DISTILLSEG_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "distillseg" / "teachers")


def volumes_digest(*volumes: Volume) -> str:
    """SHA-256 of the arrays (values, dtype, shape) and affines of the volumes."""
    h = hashlib.sha256()
    for volume in volumes:
        array = np.ascontiguousarray(volume.array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array.tobytes())
        h.update(np.round(volume.affine, 6).tobytes())
    return h.hexdigest()


class TeacherCache:
    """Probability maps of teachers on disk (``<root>/<teacher>/<key[:2]>/<key>.npz``)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(teacher_name: str, weights_sha256: str, case_id: str, case_digest: str, modality: str, prompt: Prompt) -> str:
        record = {
            "teacher": teacher_name, "weights_sha256": weights_sha256, "case_id": case_id,
            "case_digest": case_digest, "modality": modality, "prompt": prompt.digest(),
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def path(self, teacher_name: str, key: str) -> Path:
        return self.root / teacher_name / key[:2] / f"{key}.npz"

    def get(self, teacher_name: str, key: str) -> np.ndarray | None:
        path = self.path(teacher_name, key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                probability = data["probability"]
        except (OSError, ValueError, KeyError, EOFError):
            self.misses += 1  # unreadable entry: recompute (and overwrite) rather than fail
            return None
        self.hits += 1
        return probability

    def put(self, teacher_name: str, key: str, probability: np.ndarray) -> Path:
        path = self.path(teacher_name, key)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, probability=np.asarray(probability, np.float32))
        return path


def cached_predict(teacher, image: Volume, prompt: Prompt, modality: str | None = None,
                   case_id: str = "", cache: TeacherCache | None = None) -> np.ndarray:
    """``teacher.predict(image, prompt, modality)`` through the cache (no cache: a plain call)."""
    from .base import normalise_modality

    if cache is None:
        return teacher.predict(image, prompt, modality)
    modality = normalise_modality(modality or teacher.modality)
    key = cache.key(teacher.name, teacher.weights_sha256, case_id, volumes_digest(image), modality, prompt)
    probability = cache.get(teacher.name, key)
    if probability is None:
        probability = teacher.predict(image, prompt, modality)
        cache.put(teacher.name, key, probability)
    return probability
