"""A promptable student answering the radiologist's box, clicks and previous mask.

The prompt is the same :class:`~DistillSegLib.teachers.user_prompts.UserPrompt` the teachers
take (RAS mm), checked by the same :meth:`UserPrompt.on_grid`. The student segments a region
cropped to the prompt (as it was trained: crop-to-prompt): a window of at least one patch
along each axis centred on the prompt's extent (the box, the previous mask's bounding box
and the clicks), grown by ``PROMPT_MARGIN_MM``, inside the CT. Outside that region, and outside the drawn
box when there is one (the teachers' answers are bounded by it too), the answer is
background; for a correction the previous label map's other segments are kept and only the
corrected segment is replaced.

The student layer never imports the teachers (``Testing/test_layering.py``): the prompt is
used through its own methods and fields (``on_grid``, ``box``, ``points``, ``previous``,
``segment``, ``describe``), and the previous mask is read with :mod:`DistillSegLib.io`.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import DistillSegError
from ..io.case import Case
from ..io.volume import Volume, apply_affine
from .inference import IndexBox, Prediction, resolve_device, sliding_window_probabilities
from .model_file import StudentModel
from .preprocess import prepare_case, probabilities_to_ct_grid
from .prompt_channels import GridPrompts, encode_prompts

# Context kept around the prompt's extent (mm), beyond the one-patch minimum.
PROMPT_MARGIN_MM = 15.0


class RadiologistPrompt(Protocol):
    """What the student reads of a :class:`~DistillSegLib.teachers.user_prompts.UserPrompt`."""

    box: tuple[np.ndarray, np.ndarray] | None
    points: np.ndarray
    labels: np.ndarray
    previous: Volume | None
    segment: int

    def on_grid(self, image: Volume, modality: str) -> Any: ...


def box_corners(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``(8, 3)`` corners of the axis-aligned box ``low``..``high``."""
    return np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])], float)


def previous_on(previous: Volume, grid: Volume) -> np.ndarray:
    """A previous label map on ``grid`` (nearest neighbour), uint8."""
    from ..io.case import same_grid
    from ..io.resample import resample_to

    moved = previous if same_grid(previous, grid) else resample_to(previous, grid, "nearest", fill=0)
    return np.asarray(moved.array).astype(np.uint8)


def require_promptable(model: StudentModel) -> None:
    """A prompt-free student never silently ignores a prompt."""
    if not model.config.takes_prompts:
        raise DistillSegError(
            f"model {model.path or ''} takes no prompts (it was trained without prompt channels): drop "
            "--prompt-box/--prompt-points/--prompt-mask, or use a promptable student (`distillseg train "
            "--promptable`) or a teacher (--teacher NAME)")


def prompt_extent(prompt: RadiologistPrompt, ct: Volume) -> tuple[np.ndarray, np.ndarray]:
    """RAS ``(low, high)`` mm spanned by the box, the clicks and the previous segment."""
    points = [np.asarray(p, float) for p in prompt.points]
    if prompt.box is not None:
        points.extend(box_corners(*prompt.box))
    if prompt.previous is not None:
        index = np.argwhere(previous_on(prompt.previous, ct) == prompt.segment)
        if index.size:
            low, high = index.min(axis=0) - 0.5, index.max(axis=0) + 0.5
            points.extend(apply_affine(ct.affine, box_corners(low, high)))
    if not points:
        raise DistillSegError("the prompt has no box, click or previous segment to segment around")
    stacked = np.array(points)
    return stacked.min(axis=0), stacked.max(axis=0)


def prompt_region(prompt: RadiologistPrompt, ct: Volume, model: StudentModel) -> IndexBox:
    """The CT index box the student segments for ``prompt``: centred on the prompt's extent,
    which it holds with ``PROMPT_MARGIN_MM`` around, and at least one training patch along each
    axis (the student grid has the CT's axes), so the network sees real tissue around the box
    as in training, never padding; clipped to the CT."""
    low, high = prompt_extent(prompt, ct)
    index = apply_affine(np.linalg.inv(ct.affine), box_corners(low, high))
    first, last = index.min(axis=0), index.max(axis=0)
    spacing = np.asarray(ct.spacing, float)
    patch_half = np.asarray(model.config.patch_size, float) * np.asarray(model.config.spacing, float) / 2.0 / spacing
    half = np.maximum((last - first) / 2.0 + PROMPT_MARGIN_MM / spacing, patch_half)
    centre = (first + last) / 2.0
    shape = np.asarray(ct.shape)
    # Shift a window that sticks out of the CT back inside it (keeps one patch of real data).
    start = np.clip(centre - half, 0, None)
    stop = np.minimum(centre + half, shape - 1)
    start = np.clip(np.minimum(start, stop - 2 * half), 0, None)
    stop = np.minimum(np.maximum(stop, start + 2 * half), shape - 1)
    begin, end = np.floor(start).astype(int), np.ceil(stop).astype(int) + 1
    if np.any(end <= begin):
        raise DistillSegError("the prompt lies outside the CT")
    return tuple(slice(int(a), int(b)) for a, b in zip(begin, end))  # type: ignore[return-value]


def predict_with_prompt(model: StudentModel, case: Case, prompt: RadiologistPrompt, device: str | torch.device = "cpu",
                        cancel=None) -> Prediction:
    """Segment ``case`` with a promptable student guided by ``prompt``.

    Returns:
        A :class:`~.inference.Prediction` on the CT grid: ``label`` holds the prompted segment
        (value ``prompt.segment``) and, for a correction, the previous label map's other
        segments; ``probability`` the student's foreground probability; ``box`` the region.
    Raises:
        DistillSegError: a student that takes no prompts; a box or click outside the CT.
    """
    start = time.perf_counter()
    require_promptable(model)
    on_ct = prompt.on_grid(case.ct, "CT")  # a box or click outside the CT is refused here, with its coordinates
    region = prompt_region(prompt, case.ct, model)
    if cancel is not None:
        cancel.check()
    prepared = prepare_case(case, model.config, box=region, with_label=False)
    on_grid = prompt.on_grid(prepared.grid(), "CT")
    config = model.config
    channels = encode_prompts(config.prompt_channels, prepared.shape, config.spacing, config.click_sigma_mm,
                              GridPrompts(on_grid.box, on_grid.points, on_grid.labels, on_grid.previous))
    inputs = torch.cat([torch.as_tensor(prepared.image), channels], dim=0)
    probabilities = sliding_window_probabilities(model.network, inputs, config, resolve_device(str(device)),
                                                 cancel=cancel)
    label, foreground = probabilities_to_ct_grid(probabilities.numpy(), prepared, case.ct, region)
    if on_ct.box is not None:  # the drawn box says where the lesion is, as it bounds the teachers' answers
        outside = ~on_ct.box_mask()
        label.array[outside] = 0
        foreground.array[outside] = 0.0
    answer, names = np.zeros(case.ct.shape, np.uint8), {prompt.segment: model.config.class_names.get(1, "tumour")}
    if prompt.previous is not None:
        from ..io.case import default_label_names

        answer, previous_names = previous_on(prompt.previous, case.ct), default_label_names(prompt.previous)
        answer[answer == prompt.segment] = 0
        names = {**previous_names, **({} if prompt.segment in previous_names else names)}
    answer[np.asarray(label.array) > 0] = prompt.segment
    result = case.ct.with_array(answer)
    result.meta = {"label_names": names, "modality": "SEG"}
    return Prediction(result, foreground, region, time.perf_counter() - start)
