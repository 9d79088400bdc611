"""The teacher interface and what every teacher shares: modalities, orientation, checkpoints.

A teacher takes ONE image, a CT (HU) or a PET (SUVbw), on that image's own grid (DESIGN.md:
teachers see each modality on its native grid; only their outputs are resampled to another
grid) and a :class:`~.prompts.Prompt` on the same grid, and returns foreground
probabilities (float32 in [0, 1]) on that grid.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import DistillSegError
from ..io.volume import Volume
from .prompts import Prompt

MODALITIES = ("CT", "PET")


@runtime_checkable
class Teacher(Protocol):
    """A segmentation foundation model used as a teacher.

    Attributes:
        name: registry name (``"litemedsam"``, ``"sam"``, ``"sam-med3d"``, ``"seganypet"``).
        modality: the default modality, ``"CT"`` or ``"PET"``.
        modalities: the modalities it accepts.
        dims: 2 (slice by slice) or 3.
        weights_sha256: SHA-256 of the weights file (part of every cache key).
        prompt_kinds: the prompt kinds it understands (subset of ``"box", "points", "mask"``).
    """

    name: str
    modality: str
    modalities: tuple[str, ...]
    dims: int
    weights_sha256: str
    prompt_kinds: tuple[str, ...]

    def predict(self, image: Volume, prompt: Prompt, modality: str | None = None) -> np.ndarray:
        """Foreground probabilities ``(I, J, K)`` float32 in [0, 1] on the grid of ``image``.

        ``image`` is the modality's own volume (CT in HU or PET in SUVbw, ``modality``
        says which: it decides the intensity normalisation); ``prompt.mask`` lies on the
        same grid.
        """
        ...


def check_inputs(teacher: Teacher, image: Volume, prompt: Prompt, modality: str | None) -> str:
    """Validate a teacher call; returns the modality to use."""
    modality = normalise_modality(modality or teacher.modality)
    if modality not in teacher.modalities:
        raise DistillSegError(f"teacher {teacher.name} does not take {modality} (it takes {teacher.modalities})")
    if prompt.mask.shape != image.shape:
        raise DistillSegError(
            f"teacher {teacher.name}: prompt mask shape {prompt.mask.shape} differs from the {modality} "
            f"image grid {image.shape} (bring the prompt onto the image's grid first)"
        )
    unsupported = set(prompt.kinds) - set(teacher.prompt_kinds)
    if unsupported:
        raise DistillSegError(
            f"teacher {teacher.name} does not take {sorted(unsupported)} prompts (it takes {teacher.prompt_kinds})"
        )
    return modality


def normalise_modality(modality: str) -> str:
    value = modality.upper()
    value = "PET" if value in ("PT", "PET") else value
    if value not in MODALITIES:
        raise DistillSegError(f"unknown modality {modality!r}: expected CT or PET")
    return value


# ----------------------------------------------------------------------------- orientation

@dataclass(frozen=True)
class Reorientation:
    """Exact (transposes and flips only, no interpolation) map between a grid's index
    order and a canonical anatomical orientation.

    ``canonical`` is an axis-code string such as ``"LPS"``: index axis 0 increases towards
    the patient's Left, 1 towards Posterior, 2 towards Superior (the DICOM axial display
    order: an axial slice ``array[:, :, k].T`` has rows from anterior to posterior and
    columns from the patient's right to left, the radiological view).
    """

    source: np.ndarray  # nibabel orientation of the grid's axes
    target: np.ndarray  # nibabel orientation of the canonical axes
    shape: tuple[int, int, int]

    @classmethod
    def for_affine(cls, affine: np.ndarray, shape: tuple[int, ...], canonical: str = "LPS") -> "Reorientation":
        import nibabel.orientations as nio

        return cls(nio.io_orientation(affine), nio.axcodes2ornt(tuple(canonical)), tuple(int(n) for n in shape))

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """``array`` on the grid -> the same voxels in canonical index order."""
        import nibabel.orientations as nio

        return np.ascontiguousarray(nio.apply_orientation(array, nio.ornt_transform(self.source, self.target)))

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical`."""
        import nibabel.orientations as nio

        out = np.ascontiguousarray(nio.apply_orientation(array, nio.ornt_transform(self.target, self.source)))
        if out.shape != self.shape:
            raise AssertionError(f"reorientation round trip gave {out.shape}, expected {self.shape}")
        return out


# ----------------------------------------------------------------------------- weights

def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file (streamed; cached per path, size and mtime)."""
    path = Path(path)
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_HASH_SUFFIX = re.compile(r"_([0-9a-f]{6,})$")


def check_hash_prefix(path: str | os.PathLike, sha256: str) -> None:
    """Refuse a weights file whose name ends in ``_<hex>`` that is not its SHA-256 prefix.

    Segment Anything's published checkpoints are named ``sam_vit_b_01ec64.pth`` etc.: the
    suffix is the first hex digits of the file's SHA-256 (the torch.hub convention, see
    ``torch.hub.download_url_to_file``'s ``hash_prefix``), so a truncated or different file
    is caught before loading.
    """
    stem = Path(path).name.split(".")[0]
    match = _HASH_SUFFIX.search(stem)
    if match and not sha256.startswith(match.group(1)):
        raise DistillSegError(
            f"weights file {path} is named for SHA-256 prefix {match.group(1)} but its SHA-256 is "
            f"{sha256[:len(match.group(1))]}... ({sha256}): the file is corrupt, truncated or not the "
            "published checkpoint"
        )


# How a file written by ``torch.save`` begins: a zip archive (torch >= 1.6) or a pickle
# (protocol 2-5, the legacy format).
TORCH_FILE_HEADERS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def checkpoint_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a PyTorch checkpoint (from its first bytes), or None."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        return "the file is empty"
    if not head.startswith(TORCH_FILE_HEADERS):
        return f"not a PyTorch checkpoint: it starts with {head!r}, neither a zip archive nor a pickle"
    return None


def read_state_dict(path: str | os.PathLike, wrapper_keys: tuple[str, ...] = ("model_state_dict", "model", "state_dict")) -> dict:
    """Load a checkpoint's state dict safely (``weights_only=True``), unwrapping a known key.

    Raises:
        DistillSegError: missing or unreadable file, or no tensors in it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise DistillSegError(f"checkpoint not found: {path}")
    problem = checkpoint_file_problem(path)
    if problem:
        raise DistillSegError(f"cannot read checkpoint {path}: {problem}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        raise DistillSegError(f"cannot read checkpoint {path}: {reason}") from exc
    if isinstance(payload, dict):
        for key in wrapper_keys:
            if key in payload and isinstance(payload[key], dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(hasattr(v, "shape") for v in payload.values()):
        raise DistillSegError(f"checkpoint {path} does not hold a state dict of tensors")
    # DataParallel/DDP checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in payload):
        payload = {k[len("module."):]: v for k, v in payload.items()}
    return payload


def load_state_dict_strict(module, state: dict, source: str) -> None:
    """Load ``state`` into ``module`` requiring identical keys and shapes.

    Raises:
        DistillSegError: naming the first missing, unexpected and mis-shaped keys.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mis_shaped:
        def head(items: list[str]) -> str:
            return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")

        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {head(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if mis_shaped:
            problems.append(f"{len(mis_shaped)} shape mismatches: {head(mis_shaped)}")
        raise DistillSegError(
            f"checkpoint {source} does not match the {type(module).__name__} architecture: " + "; ".join(problems)
        )
    module.load_state_dict(state, strict=True)

