"""Automatic box prompts from a student's prediction, one 3D component at a time.

The plain prompt (:class:`~.prompts.Prompt`, ``"box"``) puts one box per axial slice
around all of the student's foreground: a false-positive speck far from the tumour makes
that box cover both, and LiteMedSAM fills a box even on a tumour-free slice. Here
a slice-wise teacher is prompted per 3D connected component of the
student's mask instead, and its answers carry what the caller needs to decide which
components to believe:

* **one box per component and slice** (the component's pixels on the slice, plus a margin
  in mm), so components never share a box;
* **box refinement** (``refine`` passes): the teacher's own mask on a slice becomes a new
  box (plus margin) and the decoder runs again; the answer whose predicted IoU is higher
  is kept (decoder only: the embeddings are reused);
* **extension past the component's ends** (``extend_slices``): the slice beyond each end is
  offered with the box of the teacher's mask on the last slice (MedSAM-style
  propagation); it is accepted while the teacher's predicted IoU reaches
  ``extend_min_iou`` and its mask overlaps the previous slice's mask, so an
  under-segmented tumour can grow along the axis;
* **per-component evidence**: the teacher's mean predicted IoU (SAM's IoU head, its own
  confidence) and the Dice between its mask and the component, with which
  :mod:`DistillSegLib.distill.pseudo_labels` ranks components and keeps those the
  teachers confirm.

Everything runs on a :class:`~.slicewise.SliceSession` (the image on its own grid,
canonical slices, cached embeddings): only the decoder runs per box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from .prompts import bounding_box
from .slicewise import SliceSession


@dataclass(frozen=True)
class AutoPromptSettings:
    """How boxes are derived from a student's components.

    Attributes:
        margin_mm: added around every box (mm, at least one pixel).
        refine: box-refinement passes (teacher mask -> new box -> decoder).
        extend_slices: slices offered past each end of a component (0: none).
        extend_min_iou: predicted IoU the teacher must reach on an extension slice.
        extend_min_overlap: fraction of an extension slice's mask that must lie inside the
            previous slice's mask (a tumour continues; it does not jump).
        max_components: at most this many components, largest first.
    """

    margin_mm: float = 5.0
    refine: int = 0
    extend_slices: int = 0
    extend_min_iou: float = 0.8
    extend_min_overlap: float = 0.5
    max_components: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ComponentAnswer:
    """The teacher's answer for one component of the student's mask.

    Attributes:
        label: the component's value in the component map.
        slices: canonical slices answered (the component's own, then accepted extensions).
        extended: how many of them are extension slices.
        probability: ``{slice: (H, W)}`` teacher probability per answered slice.
        slice_iou: ``{slice: predicted IoU}``.
        agreement: Dice between the teacher's mask and the component on the component's
            own slices.
    """

    label: int
    slices: list[int]
    extended: int
    probability: dict[int, np.ndarray] = field(repr=False)
    slice_iou: dict[int, float]
    agreement: float

    @property
    def mean_iou(self) -> float:
        return float(np.mean(list(self.slice_iou.values()))) if self.slice_iou else 0.0

    def summary(self) -> dict:
        return {"label": self.label, "slices": len(self.slices), "extended": self.extended,
                "mean_iou": round(self.mean_iou, 4), "agreement": round(self.agreement, 4)}


def component_map(probability: np.ndarray, threshold: float = 0.5, min_voxels: int = 1,
                  max_components: int | None = None) -> np.ndarray:
    """3D connected components (26-connectivity) of ``probability >= threshold``, largest
    first, numbered 1..n; components under ``min_voxels`` are dropped. ``(I, J, K)`` int32."""
    labels, count = ndimage.label(np.asarray(probability) >= threshold, structure=np.ones((3, 3, 3)))
    if count == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel())[1:]
    order = [int(i) + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_voxels]
    if max_components is not None:
        order = order[:max_components]
    relabel = np.zeros(count + 1, np.int32)
    relabel[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return relabel[labels]


def margin_pixels(session: SliceSession, margin_mm: float) -> int:
    """``margin_mm`` in pixels of the canonical axial slice (its finer in-plane spacing; >= 1)."""
    spacing = np.sqrt((session.image.affine[:3, :3] ** 2).sum(axis=0))
    axial = session.orientation.source[:, 0] != 2  # image axes that map to R-L or A-P
    return max(1, int(round(margin_mm / max(float(spacing[axial].min()), 1e-6))))


def prompt_components(session: SliceSession, components: np.ndarray,
                      settings: AutoPromptSettings = AutoPromptSettings(),
                      on_slices=None) -> list[ComponentAnswer]:
    """Ask the teacher about every component of ``components`` (``(I, J, K)`` ints on the
    session's image grid, 0 = background), one box per component and slice.
    ``on_slices(n)`` is called after each component's ``n`` slices are answered (progress)."""
    canonical = session.to_canonical(np.asarray(components))
    margin = margin_pixels(session, settings.margin_mm)
    answers = []
    for label in [int(v) for v in np.unique(canonical) if v > 0][: settings.max_components]:
        mask = canonical == label
        slices = [int(k) for k in np.flatnonzero(mask.any(axis=(1, 2)))]
        boxes = np.stack([bounding_box(mask[k], margin) for k in slices])
        probability, iou = session.decode_boxes(slices, boxes)
        for _ in range(settings.refine):
            probability, iou = _refined(session, slices, boxes, probability, iou, margin)
        answer = ComponentAnswer(label, list(slices), 0, dict(zip(slices, probability)),
                                 {k: float(v) for k, v in zip(slices, iou)},
                                 _dice(probability >= 0.5, mask[slices]))
        if settings.extend_slices > 0:
            for direction in (-1, 1):
                _extend(session, answer, direction, margin, settings)
        answers.append(answer)
        if on_slices is not None:
            on_slices(len(slices))
    return answers


def _refined(session, slices, boxes, probability, iou, margin):
    """One refinement pass: boxes around the teacher's masks; the better-rated answer per slice."""
    new_boxes = boxes.copy()
    for n, p in enumerate(probability):
        box = bounding_box(p >= 0.5, margin)
        if box is not None:
            new_boxes[n] = box
    changed = np.flatnonzero(np.any(np.abs(new_boxes - boxes) > 0.5, axis=1))
    if not len(changed):
        return probability, iou
    again, again_iou = session.decode_boxes(np.asarray(slices)[changed], new_boxes[changed])
    probability, iou = probability.copy(), iou.copy()
    better = again_iou > iou[changed]
    probability[changed[better]] = again[better]
    iou[changed[better]] = again_iou[better]
    boxes[changed[better]] = new_boxes[changed[better]]
    return probability, iou


def _extend(session: SliceSession, answer: ComponentAnswer, direction: int, margin: int,
            settings: AutoPromptSettings) -> None:
    """Offer slices past one end of the component while the teacher keeps confirming."""
    k = min(answer.slices) if direction < 0 else max(answer.slices)
    previous = answer.probability[k] >= 0.5
    for _ in range(settings.extend_slices):
        k += direction
        if not 0 <= k < session.shape[0] or k in answer.probability or not previous.any():
            return
        box = bounding_box(previous, margin)
        probability, iou = session.decode_boxes([k], box[None])
        mask = probability[0] >= 0.5
        overlap = (mask & previous).sum() / max(mask.sum(), 1)
        if iou[0] < settings.extend_min_iou or not mask.any() or overlap < settings.extend_min_overlap:
            return
        answer.slices.append(k)
        answer.extended += 1
        answer.probability[k] = probability[0]
        answer.slice_iou[k] = float(iou[0])
        previous = mask


def assemble(session: SliceSession, answers: list[ComponentAnswer], keep: set[int] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept components' answers on the image grid.

    Returns ``(probability, confidence, answered)``, each ``(I, J, K)``: the maximum teacher
    probability over the kept components; the predicted IoU of the answer each voxel's
    slice got (the best-rated one where components share a slice; 0 on slices no kept
    component reached); whether the voxel's slice was answered at all.
    """
    shape = session.shape
    probability = np.zeros(shape, np.float32)
    confidence = np.zeros(shape, np.float32)
    answered = np.zeros(shape, bool)
    for answer in answers:
        if keep is not None and answer.label not in keep:
            continue
        for k, p in answer.probability.items():
            np.maximum(probability[k], p, out=probability[k])
            confidence[k] = max(float(confidence[k, 0, 0]), answer.slice_iou[k])
            answered[k] = True
    return session.from_canonical(probability), session.from_canonical(confidence), session.from_canonical(answered)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / total) if total else 1.0
