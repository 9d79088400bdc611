"""Run one teacher on one case with an automatic prompt: what ``distillseg predict --teacher`` calls.

The teacher sees its modality on that modality's own grid (the CT, or the PET on its native
grid: resampling the PET onto the 1 mm CT grid would only blur what the teacher sees); the
prompt is brought onto that grid and the output back onto the CT grid.
"""

from __future__ import annotations

import os

import numpy as np

from ..io.case import Case, same_grid
from ..errors import DistillSegError
from ..io.resample import resample_to
from ..io.volume import Volume
from .cache import TeacherCache, cached_predict
from .prompts import Prompt
from .base import normalise_modality
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


def modality_image(case: Case, modality: str) -> Volume:
    """The case's image of ``modality`` on its own grid: the CT (HU) or the native PET (SUV)."""
    return case.ct if normalise_modality(modality) == "CT" else case.pet


def probability_on_grid(probability: np.ndarray, image: Volume, reference: Volume) -> np.ndarray:
    """A teacher's probabilities on ``image``'s grid brought onto ``reference``'s grid (linear)."""
    if same_grid(image, reference):
        return np.asarray(probability, np.float32)
    moved = resample_to(Volume(np.asarray(probability, np.float32), image.affine), reference, "linear", fill=0.0)
    return np.clip(moved.array, 0.0, 1.0).astype(np.float32)


def teacher_on_case(
    teacher,
    case: Case,
    prompt_mask: Volume,
    modality: str,
    prompt_kinds: tuple[str, ...] = ("box",),
    cache: TeacherCache | None = None,
) -> np.ndarray:
    """A loaded teacher on one case: ``(I, J, K)`` foreground probabilities on the CT grid.

    The prompt map (any grid) is brought onto the grid of the modality's own image (CT, or
    native PET), the teacher runs there (through ``cache`` when given) and its output is
    resampled (linear) onto the CT grid.

    Raises:
        DistillSegError: the prompt is empty on the image's grid.
    """
    image = modality_image(case, modality)
    mask = prompt_on_grid(prompt_mask, image)
    if not (mask >= 0.5).any():
        raise DistillSegError(
            f"the prompt mask {prompt_mask.describe()} is empty on the {modality} grid: nothing to prompt with")
    prompt = Prompt(mask, kinds=tuple(prompt_kinds))
    native = cached_predict(teacher, image, prompt, modality, case_id=case.case_id, cache=cache)
    return probability_on_grid(native, image, case.ct)


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
        case: the PET/CT case (the teacher sees the CT, or the PET on its native grid).
        teacher: registry name (``litemedsam``, ``sam``, ``sam-med3d``, ``seganypet``).
        checkpoint: weights file; None for LiteMedSAM's embedded weights or the file found
            in ``$DISTILLSEG_WEIGHTS``.
        prompt_mask: label map or probability map (any grid overlapping the CT; resampled
            onto the grid of the modality's image): the student's prediction or a label.
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
    modality = normalise_modality(modality or model.modality)
    probability = teacher_on_case(model, case, prompt_mask, modality, prompt_kinds or info.default_prompt_kinds,
                                  TeacherCache() if cache is True else (cache or None))
    meta = {"teacher": info.name, "modality": modality, "weights_sha256": model.weights_sha256}
    prob_volume = Volume(probability.astype(np.float32), case.ct.affine.copy(), dict(meta))
    label = Volume((probability >= threshold).astype(np.uint8), case.ct.affine.copy(),
                   {**meta, "label_names": {1: "tumour"}})
    return label, prob_volume
