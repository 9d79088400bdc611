"""Interactive segmentation: a teacher prompted by the radiologist's box, clicks and corrections.

:func:`prepare_interactive` and :func:`segment_interactively` are what ``distillseg predict --teacher NAME --prompt-box ...``
(and the warm engine) call: the :class:`~.user_prompts.UserPrompt` (RAS mm) is brought onto
the grid of the image the teacher sees (the CT, or the PET on its native grid), the
teacher segments there, and the result comes back onto the CT grid.

2D teachers (LiteMedSAM, SAM) segment slice by slice inside the box, as LiteMedSAM's own 3D
inference does (bowang-lab/MedSAM, branch LiteMedSAM, ``CVPR24_LiteMedSAM_infer.py``,
``MedSAM_infer_npz_3D``): the middle slice of the box gets the box itself, and each next
slice, walking up and down from it, gets the bounding box of its neighbour's mask plus 3
pixels of the model's 256-pixel frame (its ``get_bbox256(..., bbox_shift=3)``), so the
drawn box need not be tight on every slice. Unlike that script, a walk stops where the
mask vanishes (instead of falling back to the whole box on every later slice), every
slice box stays inside the drawn box, and, walking towards a box face that lies on the
image's first or last slice (a lesion the image cuts), no slice box is smaller than the
drawn box (``WALK_FLOOR``): without that floor, one under-segmented slice of a large tumour
shrank every later box up to the image's edge.

Clicks: SAM takes them as point prompts on their slices, and the previous mask as its mask
prompt (SAM's iterative refinement). LiteMedSAM was trained with boxes only and its point
prompts do not work (a negative click on a CT slice of STS_003 dropped the slice Dice from
0.91 to 0.33-0.43; a click alone segments nothing), so for box-only teachers a click edits
its slice's box: a positive click outside it grows the box to include it; one inside it
that the mask missed gets a second box of the same size centred on it, and the part of that
mask holding the click is added; a negative click inside the box moves the side that keeps
most of the mask past it (nothing beyond the cut is kept), and one on the lesion's first or
last slice removes that slice. A correction (previous mask + clicks) re-runs only the
clicked slices, except that a positive click beyond the previous mask's first or last
slice walks on outwards as the box did, over slices the previous mask did not reach.
(Carrying a click's edit to the neighbouring slices was tried and dropped: on STS_003 a
negative click's cut of a leak on the lesion's edge cut through its bulk higher up; on
STS_028 a positive click's growth, boxing each neighbour by its previous mask and the added
region, grew 19 slices and lowered the Dice from 0.807 to 0.771.)

3D teachers (SAM-Med3D, SegAnyPET) see a 128^3 region at 1.5 mm centred on the prompt.
They take clicks as 3D points and the previous mask as the mask prompt (the reference's
``sam_model_infer`` feeds the previous low-resolution logits back; uni-medical/SAM-Med3D
``utils/infer_utils.py``). They have no box prompt (SAM-Med3D's ``_embed_boxes`` is SAM's
2D code and was not trained), so a box centres the region, gives a positive click at its
centre when the user gave none (the reference's first click without ground truth is the
region's centre) and bounds the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DistillSegError
from ..io.case import Case
from ..io.volume import Volume
from ..precision import inference_autocast
from .base import Reorientation, normalise_modality
from .prompts import bounding_box, mask_prompt
from .user_prompts import GridPrompt, UserPrompt

CANONICAL = "LPS"  # the slice-wise teachers' display orientation (slicewise.CANONICAL)
# Margin of a box taken from a neighbouring slice's mask, in pixels of the model's input
# frame (MedSAM CVPR24_LiteMedSAM_infer.py get_bbox256: bbox_shift=3 at 256 pixels).
MODEL_FRAME_MARGIN = 3
# ... and at least this many pixels of the slice itself: on a PET slice of 30 pixels, 3 pixels
# of the 256-pixel frame are 0.35 PET pixels, and the masks shrank slice after slice.
MIN_MARGIN_PIXELS = 2.0
# A correction's walk stops on a slice where the new mask and the previous one agree this well.
AGREEMENT_DICE = 0.9
# What bounds a walked slice's box from below, besides its neighbour's mask (one under-segmented
# slice must not shrink every later box: on STS_009, a 1,981 mL tumour cut by the crop's top
# slice, the mask collapsed from ~11,000 to ~1,400 pixels while the reference kept ~10,000-12,000):
#   "edge": towards a drawn box face on the image's first or last slice (a lesion the image
#           cuts, which does not taper there), the drawn box's full in-plane extent; elsewhere
#           nothing (the neighbour's mask alone, MedSAM's rule);
#   "ellipsoid": the cross-section of the ellipsoid inscribed in the drawn box, and "edge";
#           measured on the largest validation tumours it widened boxes LiteMedSAM then
#           over-filled (STS_036 0.869 -> 0.819), so it is not the default;
#   "none": the neighbour's mask alone.
WALK_FLOOR = "edge"


@dataclass(frozen=True)
class InteractiveResult:
    """A teacher's interactive result on the CT grid.

    Attributes:
        label: uint8 label map on the CT grid: the prompted segment (value ``segment``) and,
            for a correction, the previous label map's other segments unchanged.
        probability: float32 foreground probability of the prompted segment, CT grid.
        segment: the label value of the prompted segment.
        slices: how many 2D slices the teacher decoded (0 for 3D teachers).
    """

    label: Volume
    probability: Volume
    segment: int
    slices: int


@dataclass
class InteractiveRequest:
    """A checked interactive request: the loaded teacher, the image it sees and the prompt on
    that image's grid (see :func:`prepare_interactive`)."""

    case: Case
    teacher: object
    modality: str
    image: Volume
    prompt: UserPrompt
    on_grid: GridPrompt
    checkpoint: str | None = None


def prepare_interactive(case: Case, teacher: str, checkpoint, prompt: UserPrompt,
                        modality: str | None = None) -> InteractiveRequest:
    """Check a radiologist's prompt against the image the teacher sees and load the teacher.

    Everything a user can get wrong fails here, before any long work: an unknown or not
    installed teacher, a box or click outside the image (for the PET: its field of view),
    a box-only teacher without a box.

    Args:
        case: the study (the teacher sees the CT, or the PET on its native grid).
        teacher: registry name; ``checkpoint``: its weights file (None: embedded/default).
        prompt: box and clicks in RAS mm, and the previous mask for a correction.
        modality: ``"CT"`` or ``"PET"`` (default: the teacher's own).
    """
    from .registry import load_teacher, teacher_info
    from .run import modality_image

    info = teacher_info(teacher)
    modality = normalise_modality(modality or info.default_modality)
    image = modality_image(case, modality)
    on_grid = prompt.on_grid(image, modality)  # bad prompts are refused before the model loads
    if ("points" not in info.prompt_kinds and info.dims == 2 and on_grid.box is None
            and (on_grid.previous is None or not on_grid.previous.any())):
        raise DistillSegError(f"teacher {info.name} takes boxes only: draw a box (clicks then correct its result)")
    model = load_teacher(info.name, checkpoint, modality)
    return InteractiveRequest(case, model, modality, image, prompt, on_grid,
                              None if checkpoint is None else str(checkpoint))


def segment_interactively(request: InteractiveRequest, threshold: float = 0.5,
                          cancel=None) -> tuple[InteractiveResult, dict]:
    """Run a prepared request (:func:`prepare_interactive`).

    ``cancel``: a :class:`~DistillSegLib.progress.CancelToken` checked between slices.

    Returns:
        ``(result, provenance)``: the result on the CT grid and a JSON-ready record of the
        teacher (name, weights SHA-256, modality) and the prompt.
    """
    from .run import probability_on_grid

    case, prompt, model = request.case, request.prompt, request.teacher
    native, slices = predict_interactive(model, request.image, request.on_grid, request.modality, cancel)
    probability = probability_on_grid(native, request.image, case.ct)
    label = np.zeros(case.ct.shape, np.uint8)
    names = {prompt.segment: "tumour"}
    if prompt.previous is not None:
        label, names = previous_on_ct(prompt.previous, case.ct)
        label[label == prompt.segment] = 0
        names.setdefault(prompt.segment, "tumour")
    label[probability >= threshold] = prompt.segment
    meta = {"teacher": model.name, "modality": request.modality, "weights_sha256": model.weights_sha256}
    result = InteractiveResult(
        Volume(label, case.ct.affine.copy(), {**meta, "label_names": names}),
        Volume(probability.astype(np.float32), case.ct.affine.copy(), dict(meta)), prompt.segment, slices)
    provenance = {"teacher": {"name": model.name, "weights_sha256": model.weights_sha256, "modality": request.modality,
                              **({"checkpoint": request.checkpoint} if request.checkpoint else {})},
                  "prompt": prompt.describe(), "segment": int(prompt.segment)}
    return result, provenance


def previous_on_ct(previous: Volume, ct: Volume) -> tuple[np.ndarray, dict[int, str]]:
    """The previous label map on the CT grid (nearest) and its segment names."""
    from ..io.case import default_label_names, same_grid
    from ..io.resample import resample_to

    names = default_label_names(previous)
    moved = previous if same_grid(previous, ct) else resample_to(previous, ct, "nearest", fill=0)
    return np.asarray(moved.array).astype(np.uint8), names


def predict_interactive(teacher, image: Volume, prompt: GridPrompt, modality: str, cancel=None) -> tuple[np.ndarray, int]:
    """Foreground probabilities ``(I, J, K)`` on ``image``'s grid and the number of 2D slices decoded."""
    if teacher.dims == 3:
        return volumetric_prediction(teacher, image, prompt, modality), 0
    return SlicePropagation(teacher, image, prompt, modality, cancel).run()


# ----------------------------------------------------------------------------- 2D teachers

class CanonicalIndex:
    """Maps voxel indices of a grid to the canonical (LPS) index order of the slice-wise
    teachers (the exact transposes/flips of :class:`~.base.Reorientation`)."""

    def __init__(self, orientation: Reorientation) -> None:
        import nibabel.orientations as nio

        self.transform = nio.ornt_transform(orientation.source, orientation.target)
        self.shape = np.array(orientation.shape)

    def __call__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, float).reshape(-1, 3)
        out = np.empty_like(index)
        for axis, (target, flip) in enumerate(self.transform):
            values = index[:, axis]
            out[:, int(target)] = self.shape[axis] - 1 - values if flip < 0 else values
        return out

    def axis(self, grid_axis: int) -> int:
        return int(self.transform[grid_axis, 0])


@dataclass
class SliceClick:
    row: float
    col: float
    label: int


class SlicePropagation:
    """A 2D teacher walking through the axial slices of one image (see the module docstring).

    Works on the canonical stack ``(K, H, W)`` (``stack[k]`` is the radiological view of
    axial slice k: rows anterior to posterior, columns right to left); boxes are SAM's
    ``[x0, y0, x1, y1]`` (column, row) pixel indices of a slice.
    """

    def __init__(self, teacher, image: Volume, prompt: GridPrompt, modality: str, cancel=None) -> None:
        self.teacher, self.cancel = teacher, cancel
        self.orientation = Reorientation.for_affine(image.affine, image.shape, CANONICAL)
        self.stack = teacher.canonical_stack(image, modality)
        self.resized, self.scale = teacher.frame(self.stack.shape[1:])
        self.margin = max(MODEL_FRAME_MARGIN / self.scale, MIN_MARGIN_PIXELS)
        self.takes_points = "points" in teacher.prompt_kinds
        self.takes_masks = "mask" in teacher.prompt_kinds
        to_canonical = CanonicalIndex(self.orientation)
        depth = self.stack.shape[0]
        # The drawn box in-plane, its slices, and the slices a walk may reach (all of them for
        # a box drawn on one slice: the walk then follows the lesion until it vanishes).
        self.box, self.box_slices, self.k_range = None, None, (0, depth - 1)
        if prompt.box is not None:
            corners = to_canonical(np.array(prompt.box))
            low, high = np.round(corners.min(axis=0)).astype(int), np.round(corners.max(axis=0)).astype(int)
            self.box = np.array([low[0], low[1], high[0], high[1]], np.float32)
            self.box_slices = (int(low[2]), int(high[2]))
            if not any(to_canonical.axis(a) == 2 for a in prompt.flat_axes):
                self.k_range = self.box_slices
        self.clicks: dict[int, list[SliceClick]] = {}
        for (i, j, k), label in zip(to_canonical(prompt.points), prompt.labels):
            self.clicks.setdefault(int(round(k)), []).append(SliceClick(j, i, int(label)))
        self.previous = None
        if prompt.previous is not None:
            self.previous = self.orientation.to_canonical(prompt.previous).transpose(2, 1, 0)
        self.embeddings: dict[int, object] = {}
        self.decoded = 0

    # ------------------------------------------------------------------ the walks
    def run(self) -> tuple[np.ndarray, int]:
        """Probabilities on the image grid and the number of slices decoded."""
        probability = (np.zeros(self.stack.shape, np.float32) if self.previous is None
                       else self.previous.astype(np.float32))
        if self.previous is not None and self.clicks:
            self.correct(probability)
        else:
            starts = self.start_boxes()
            for k, box in starts.items():
                probability[k] = self.decode(k, self.edit_box(box, self.clicks.get(k, []), None)[0])
            for k in sorted(starts):
                for step in (1, -1):
                    self.walk(probability, k, step, set(starts))
        canonical = probability.transpose(2, 1, 0)
        return self.orientation.from_canonical(np.ascontiguousarray(canonical)), self.decoded

    def walk(self, probability: np.ndarray, start: int, step: int, starts: set[int]) -> None:
        """Decode slices from ``start`` in direction ``step``, each boxed by its neighbour's mask."""
        k = start
        while self.k_range[0] <= k + step <= self.k_range[1] and k + step not in starts:
            foreground = probability[k] >= 0.5
            if not foreground.any():
                return
            k += step
            box = self.with_floor(self.grow(bounding_box(foreground), self.margin), k)
            box, _ = self.edit_box(box, self.clicks.get(k, []), None)
            probability[k] = self.decode(k, box, step)

    def floor_box(self, k: int) -> np.ndarray | None:
        """The smallest in-plane box slice ``k`` may get (see ``WALK_FLOOR``): towards a drawn box
        face on the image's first or last slice, the drawn box's in-plane extent (a lesion the
        image cuts does not taper there); elsewhere, with "ellipsoid", the cross-section of the
        ellipsoid inscribed in the drawn box. None without a drawn box, outside its slices, or
        where no floor applies."""
        if WALK_FLOOR == "none" or self.box is None or self.box_slices is None:
            return None
        first, last = self.box_slices
        half_depth = (last - first + 1) / 2.0
        t = (k - (first + last) / 2.0) / half_depth
        if abs(t) >= 1.0:
            return None
        if (t < 0 and first == 0) or (t > 0 and last == self.stack.shape[0] - 1):
            t = 0.0  # the box ends at the image's edge: the lesion is cut there, not tapering
        elif WALK_FLOOR == "edge":
            return None
        centre, half = (self.box[:2] + self.box[2:]) / 2.0, (self.box[2:] - self.box[:2]) / 2.0 * np.sqrt(1.0 - t * t)
        return np.concatenate([centre - half, centre + half]).astype(np.float32)

    def with_floor(self, box: np.ndarray, k: int) -> np.ndarray:
        """``box`` grown to hold :meth:`floor_box` of slice ``k`` (see ``WALK_FLOOR``)."""
        floor = self.floor_box(k)
        if floor is None:
            return box
        return self.clip(np.concatenate([np.minimum(box[:2], floor[:2]), np.maximum(box[2:], floor[2:])]))

    def correct(self, probability: np.ndarray) -> None:
        """Re-run the clicked slices with their edited boxes and carry a positive click's growth
        to the neighbouring slices while it changes them (see the module docstring)."""
        clicked = sorted(self.clicks)
        rows = np.flatnonzero(self.previous.any(axis=(1, 2)))
        ends = {int(rows[0]), int(rows[-1])} if len(rows) else set()
        for k in clicked:
            clicks = self.clicks[k]
            if not self.takes_points and k in ends and any(c.label == 0 and on(self.previous[k], c) for c in clicks):
                probability[k] = 0.0  # a negative click on the lesion's end slice: it does not reach this slice
                continue
            box, _ = self.edit_box(self.correction_box(k), clicks, self.previous[k])
            new = self.decode(k, box)
            if not self.takes_points and box is not None:
                new = new * self.plane(box)  # nothing beyond a cut
            probability[k] = self.add_positives(k, new, box)
        centre = (rows[0] + rows[-1]) / 2.0 if len(rows) else None
        for k in clicked:
            if centre is not None and not self.previous[k].any() and (probability[k] >= 0.5).any():
                self.extend(probability, k, 1 if k > centre else -1, set(clicked))

    def extend(self, probability: np.ndarray, start: int, step: int, clicked: set[int]) -> None:
        """A positive click beyond the previous mask's end: walk on outwards (each slice boxed by
        its neighbour's mask) over slices the previous mask did not reach, until the mask vanishes."""
        k = start
        while (self.k_range[0] <= k + step <= self.k_range[1] and k + step not in clicked
               and not self.previous[k + step].any() and (probability[k] >= 0.5).any()):
            k += step
            probability[k] = self.decode(k, self.clip(self.grow(bounding_box(probability[k - step] >= 0.5),
                                                                self.margin)), step)

    def start_boxes(self) -> dict[int, np.ndarray | None]:
        """The first slices to decode and their boxes (None: points only)."""
        if self.box is not None:
            return {(self.box_slices[0] + self.box_slices[1]) // 2: self.box.copy()}
        if self.previous is not None:  # re-run the previous mask's middle slice
            slices = np.flatnonzero(self.previous.any(axis=(1, 2)))
            middle = int(slices[len(slices) // 2])
            return {middle: self.grow(bounding_box(self.previous[middle]), self.margin)}
        return {k: None for k, clicks in self.clicks.items() if any(c.label == 1 for c in clicks)}

    def correction_box(self, k: int) -> np.ndarray | None:
        """Box of a clicked slice in a correction: the previous mask's there (or on the nearest
        slice that has one), else the drawn box."""
        rows = np.flatnonzero(self.previous.any(axis=(1, 2)))
        if len(rows):
            nearest = int(rows[np.argmin(np.abs(rows - k))])
            return self.grow(bounding_box(self.previous[nearest]), self.margin)
        return None if self.box is None else self.box.copy()

    # ------------------------------------------------------------------ one slice
    def decode(self, k: int, box: np.ndarray | None, step: int = 1) -> np.ndarray:
        """Probabilities ``(H, W)`` of slice ``k`` prompted by ``box`` and, for teachers that
        take them, its clicks and (corrections) the previous mask."""
        import torch

        if self.cancel is not None:
            self.cancel.check()
        clicks = self.clicks.get(k, [])
        boxes = points = labels = masks = None
        if box is not None:
            boxes = torch.from_numpy(np.asarray(box, np.float32) * self.scale)[None, None]
        if self.takes_points and clicks:
            points = torch.tensor([[((c.col + 0.5) * self.scale, (c.row + 0.5) * self.scale) for c in clicks]],
                                  dtype=torch.float32)
            labels = torch.tensor([[c.label for c in clicks]], dtype=torch.int64)
        if self.takes_masks and self.previous is not None and self.previous[k].any():
            masks = self.mask_logits(self.previous[k])
        embedding = self.embedding(k, step)
        with torch.inference_mode(), inference_autocast(self.teacher.device):
            logits = self.teacher.decode(embedding, boxes, points, labels, masks)
            probability = self.teacher.logits_to_slices(logits, self.resized, self.stack.shape[1:])[0]
        self.decoded += 1
        return probability * self.box_plane() if self.box is not None else probability

    def edit_box(self, box: np.ndarray | None, clicks: list[SliceClick],
                 current: np.ndarray | None) -> tuple[np.ndarray | None, list[tuple[int, float]]]:
        """``box`` grown to include positive clicks and, for box-only teachers, cut past negative
        clicks inside it (keeping most of ``current``); the cuts made (coordinate, value)."""
        cuts: list[tuple[int, float]] = []
        for click in clicks:
            if box is None and self.takes_points:
                break  # points alone prompt a teacher that takes them
            if click.label == 1 and (box is None or not inside(box, click)):
                around = self.grow(np.array([click.col, click.row, click.col, click.row], np.float32), self.margin)
                box = around if box is None else np.concatenate([np.minimum(box[:2], around[:2]),
                                                                 np.maximum(box[2:], around[2:])])
        if not self.takes_points and box is not None:
            for click in clicks:
                if click.label == 0 and inside(box, click):
                    box, cut = cut_box(box, click, current)
                    cuts += [cut] if cut is not None else []
        return (None if box is None else self.clip(box)), cuts

    def add_positives(self, k: int, probability: np.ndarray, box: np.ndarray | None) -> np.ndarray:
        """Box-only teachers: a positive click the slice's box already held but its mask missed
        gets a box of the same size centred on it; the part of that mask holding the click is added."""
        from scipy import ndimage

        if self.takes_points or box is None:
            return probability
        for click in (c for c in self.clicks[k] if c.label == 1):
            row, col = int(round(click.row)), int(round(click.col))
            if probability[row, col] >= 0.5:
                continue
            half = (box[2:] - box[:2]) / 2.0
            centred = self.clip(np.array([col - half[0], row - half[1], col + half[0], row + half[1]], np.float32))
            extra = self.decode(k, centred)
            components, _ = ndimage.label(extra >= 0.5)
            if components[row, col]:
                probability = np.maximum(probability, np.where(components == components[row, col], extra, 0.0))
        return probability.astype(np.float32)

    def embedding(self, k: int, step: int = 1):
        """Image embedding of slice k; when missing, encoded in one batch with the next slices
        the walk (direction ``step``) will reach."""
        import torch

        if k not in self.embeddings:
            ahead = range(k, k + step * self.teacher.batch_size, step)
            batch = [s for s in ahead if self.k_range[0] <= s <= self.k_range[1] and s not in self.embeddings] or [k]
            images = self.teacher.preprocess_slices(self.stack[batch], self.resized)
            with torch.inference_mode():
                encoded = self.teacher.encode(images)
            self.embeddings.update({s: encoded[n:n + 1] for n, s in enumerate(batch)})
        return self.embeddings[k]

    def mask_logits(self, mask: np.ndarray):
        """A slice's previous mask as SAM's mask prompt ``(1, 1, M, M)`` (logits in the padded frame)."""
        import torch
        import torch.nn.functional as F

        size = tuple(int(n) for n in self.teacher.model.prompt_encoder.mask_input_size)
        n = self.teacher.image_size
        tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
        tensor = F.pad(F.interpolate(tensor, size=self.resized, mode="bilinear", align_corners=False),
                       (0, n - self.resized[1], 0, n - self.resized[0]))
        return torch.from_numpy(mask_prompt(tensor[0, 0].numpy(), size))[None, None]

    # ------------------------------------------------------------------ boxes
    def grow(self, box: np.ndarray, margin: float) -> np.ndarray:
        return self.clip(np.asarray(box, np.float32) + np.array([-margin, -margin, margin, margin], np.float32))

    def clip(self, box: np.ndarray) -> np.ndarray:
        """``box`` inside the slice and inside the drawn box."""
        height, width = self.stack.shape[1:]
        low, high = np.zeros(2, np.float32), np.array([width - 1, height - 1], np.float32)
        if self.box is not None:
            low, high = np.maximum(low, self.box[:2]), np.minimum(high, self.box[2:])
        first, last = np.clip(box[:2], low, high), np.clip(box[2:], low, high)
        return np.concatenate([first, np.maximum(first, last)]).astype(np.float32)

    def box_plane(self) -> np.ndarray:
        """``(H, W)`` 1 inside the drawn box's in-plane extent, 0 outside."""
        return self.plane(self.box)

    def plane(self, box: np.ndarray) -> np.ndarray:
        """``(H, W)`` 1 inside ``box``, 0 outside."""
        plane = np.zeros(self.stack.shape[1:], np.float32)
        x0, y0, x1, y1 = np.round(box).astype(int)
        plane[y0:y1 + 1, x0:x1 + 1] = 1.0
        return plane


def on(mask: np.ndarray, click: SliceClick) -> bool:
    """True when the click's pixel is in ``mask``."""
    return bool(mask[int(round(click.row)), int(round(click.col))])


def inside(box: np.ndarray, click: SliceClick) -> bool:
    return bool(box[0] <= click.col <= box[2] and box[1] <= click.row <= box[3])


def cut_box(box: np.ndarray, click: SliceClick, mask: np.ndarray | None) -> tuple[np.ndarray, tuple[int, float] | None]:
    """``box`` with one side moved just past a negative click: the side whose cut keeps the
    most of ``mask`` (the largest box when there is none); and the cut ``(coordinate, value)``
    (coordinate 0-3 of ``[x0, y0, x1, y1]``), None when no side can move."""
    candidates = [(0, np.floor(click.col) + 1), (2, np.ceil(click.col) - 1),
                  (1, np.floor(click.row) + 1), (3, np.ceil(click.row) - 1)]
    boxes = [(apply_cuts(box, [cut]), cut) for cut in candidates]
    boxes = [(b, cut) for b, cut in boxes if b[0] <= b[2] and b[1] <= b[3]]
    if not boxes:
        return box, None

    def kept(item) -> tuple[float, float]:
        b = item[0]
        c0, r0, c1, r1 = np.round(b).astype(int)
        inside_mask = float(mask[r0:r1 + 1, c0:c1 + 1].sum()) if mask is not None else 0.0
        return inside_mask, float((b[2] - b[0] + 1) * (b[3] - b[1] + 1))

    return max(boxes, key=kept)


def apply_cuts(box: np.ndarray, cuts: list[tuple[int, float]]) -> np.ndarray:
    """``box`` with its sides moved inwards to the cuts ``(coordinate, value)``."""
    box = np.array(box, np.float32)
    for coordinate, value in cuts:
        box[coordinate] = max(box[coordinate], value) if coordinate < 2 else min(box[coordinate], value)
    return box


def agree(new: np.ndarray, previous: np.ndarray) -> bool:
    """Both empty, or Dice >= :data:`AGREEMENT_DICE`."""
    total = int(new.sum()) + int(previous.sum())
    return total == 0 or 2.0 * int((new & previous).sum()) / total >= AGREEMENT_DICE


# ----------------------------------------------------------------------------- 3D teachers

def volumetric_prediction(teacher, image: Volume, prompt: GridPrompt, modality: str) -> np.ndarray:
    """A SAM-Med3D-architecture teacher on the 128^3 region around the prompt (see the module
    docstring): ``(I, J, K)`` probabilities on ``image``'s grid, 0 outside the box."""
    from ..io.resample import resample_to
    from ..io.volume import apply_affine
    from .sam_med3d import SPACING_MM, region_around, z_normalise

    size = teacher.config.image_size
    region = region_around(apply_affine(image.affine, prompt.centre()[None])[0], size)
    to_region = np.linalg.inv(region.affine) @ image.affine
    points, labels = prompt.points, prompt.labels
    if prompt.box is not None and not (labels == 1).any():
        points, labels = np.vstack([points, prompt.centre()[None]]), np.append(labels, 1)
    region_points = apply_affine(to_region, points) if len(points) else np.zeros((0, 3))
    outside = np.any((region_points < 0) | (region_points > size - 1), axis=1)
    if outside.any():
        raise DistillSegError(
            f"prompt point {int(np.flatnonzero(outside)[0]) + 1} lies outside the {size * SPACING_MM:.0f} mm "
            f"cube {teacher.name} sees around the prompt's centre: click closer to the lesion")
    roi_image = resample_to(Volume(image.array.astype(np.float32), image.affine), region, "linear", fill=0.0).array
    mask = None
    if prompt.previous is not None and prompt.previous.any():
        previous = Volume(prompt.previous.astype(np.float32), image.affine)
        mask = resample_to(previous, region, "linear", fill=0.0).array
    logits = teacher.refine(z_normalise(roi_image), region_points, labels, mask)
    probability = Volume((1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))).astype(np.float32), region.affine)
    result = np.clip(resample_to(probability, image, "linear", fill=0.0).array, 0.0, 1.0).astype(np.float32)
    box = prompt.box_mask()
    return result if box is None else result * box
