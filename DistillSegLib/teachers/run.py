"""Run one teacher on one case with an automatic prompt: what ``distillseg predict --teacher`` calls."""

from __future__ import annotations

import os

import numpy as np

from ..io.case import Case, same_grid
from ..errors import DistillSegError
from ..io.resample import resample_to
from ..io.volume import Volume
from .cache import TeacherCache, cached_predict
from .prompts import Prompt
from .registry import load_teacher, teacher_info


def prompt_on_grid(prompt_mask: Volume, reference: Volume) -> np.ndarray:
    """The prompt map on ``reference``'s grid (linear for probabilities, nearest for labels)."""
    if same_grid(prompt_mask, reference):
        array = prompt_mask.array
    else:
        floating = np.issubdtype(prompt_mask.array.dtype, np.floating)
        array = resample_to(prompt_mask, reference, "linear" if floating else "nearest", fill=0).array
    if np.issubdtype(array.dtype, np.floating):
        return np.clip(array, 0.0, 1.0).astype(np.float32)
    return (array > 0).astype(np.float32)


def segment_with_teacher(
    case: Case,
    teacher: str,
    checkpoint: str | os.PathLike | None,
    prompt_mask: Volume,
    modality: str | None = None,
    threshold: float = 0.5,
    prompt_kinds: tuple[str, ...] | None = None,
    cache: TeacherCache | bool | None = True,
) -> tuple[Volume, Volume]:
    """Segment a case with a teacher prompted automatically from a mask or probability map.

    Args:
        case: the PET/CT case (the teacher sees CT and PET on the CT grid).
        teacher: registry name (``litemedsam``, ``sam``, ``sam-med3d``, ``seganypet``).
        checkpoint: weights file; None for LiteMedSAM's embedded weights or the file found
            in ``$DISTILLSEG_WEIGHTS``.
        prompt_mask: label map or probability map (any grid overlapping the CT; resampled
            onto the CT grid): the student's prediction or a label.
        modality: ``"CT"`` or ``"PET"``; None runs the teacher on its default modality.
        threshold: probability at which the output becomes foreground.
        prompt_kinds: prompt kinds to derive (default: the teacher's defaults).
        cache: a :class:`TeacherCache`, True for the default cache, False/None for none.

    Returns:
        ``(label, probability)`` on the CT grid: uint8 0/1 label map (``label_names``
        ``{1: "tumour"}``) and float32 foreground probabilities.
    """
    info = teacher_info(teacher)
    model = load_teacher(info.name, checkpoint, modality)
    mask = prompt_on_grid(prompt_mask, case.ct)
    if not (mask >= 0.5).any():
        raise DistillSegError(f"the prompt mask {prompt_mask.describe()} is empty on the CT grid: nothing to prompt with")
    prompt = Prompt(mask, kinds=tuple(prompt_kinds or info.default_prompt_kinds))
    store = TeacherCache() if cache is True else (cache or None)
    probability = cached_predict(model, case.ct, case.pet_on_ct, prompt, modality or model.modality,
                                 case_id=case.case_id, cache=store)
    meta = {"teacher": info.name, "modality": modality or model.modality, "weights_sha256": model.weights_sha256}
    prob_volume = Volume(probability.astype(np.float32), case.ct.affine.copy(), dict(meta))
    label = Volume((probability >= threshold).astype(np.uint8), case.ct.affine.copy(),
                   {**meta, "label_names": {1: "tumour"}})
    return label, prob_volume
