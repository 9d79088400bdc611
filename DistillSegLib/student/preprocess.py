"""From a :class:`~DistillSegLib.io.case.Case` to the student's input and back.

A case is brought onto a grid with the student's spacing (same extent as the CT, see
:func:`~DistillSegLib.io.resample.resample_to_spacing`) whose index axes always run in one
anatomical orientation, ``STUDENT_ORIENTATION``, whatever the order and direction in which
the file stores its axes (as nnU-Net and MONAI's ``Orientationd`` do): a network is not
invariant to transposes and flips, so a CT stored as ``(k, i, j)`` gave 466 mL instead of
430 mL on STS_001. CT and PET become the two channels of one ``(2, I, J, K)`` float32
array, the label a ``(I, J, K)`` uint8 array. Predictions on that grid go back onto the
file's own CT grid through the affines (world coordinates), which undoes the reorientation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..io.case import Case
from ..errors import DistillSegError
from ..io.resample import resample_to, resample_to_spacing
from ..io.volume import Volume, crop_volume
from .config import StudentConfig

AIR_HU = -1000.0
# Axis codes of the student grid: index axes increasing towards Left, Posterior, Superior. The
# orientation of every training case (sts-petct, and DICOM axial series), so for them the
# reorientation is the identity and trained students see what they were trained on.
STUDENT_ORIENTATION = "LPS"


def to_student_orientation(volume: Volume, orientation: str = STUDENT_ORIENTATION) -> Volume:
    """The same voxels with index axes reordered and flipped to ``orientation`` (no interpolation).

    Args:
        volume: any grid; its axes are matched to the nearest anatomical axes (nibabel
            ``io_orientation``), so an oblique grid keeps its obliquity.
        orientation: three axis codes, e.g. ``"LPS"``.

    Returns:
        A Volume whose ``array[i, j, k]`` is the same voxel as before at the same world
        position (the affine is updated); ``volume`` itself when already in ``orientation``.
    """
    import nibabel.orientations as nio

    transform = nio.ornt_transform(nio.io_orientation(volume.affine), nio.axcodes2ornt(tuple(orientation)))
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return volume
    array = np.ascontiguousarray(nio.apply_orientation(volume.array, transform))
    affine = volume.affine @ nio.inv_ornt_aff(transform, volume.shape)
    return Volume(array, affine, dict(volume.meta))


def from_student_orientation(array: np.ndarray, like: Volume, orientation: str = STUDENT_ORIENTATION) -> np.ndarray:
    """Inverse of :func:`to_student_orientation`: ``array`` on ``to_student_orientation(like)``'s grid
    -> the same voxels in ``like``'s own index order (transposes and flips only, exact)."""
    import nibabel.orientations as nio

    transform = nio.ornt_transform(nio.axcodes2ornt(tuple(orientation)), nio.io_orientation(like.affine))
    out = np.ascontiguousarray(nio.apply_orientation(array, transform))
    if out.shape != like.shape:
        raise AssertionError(f"reorientation gave {out.shape}, expected {like.shape}")
    return out


@dataclass
class PreparedCase:
    """One case at the student's spacing, held in memory for training or inference.

    Attributes:
        case_id: the case's id.
        image: ``(2, I, J, K)`` float32, channel 0 normalised CT, channel 1 scaled SUV.
        label: ``(I, J, K)`` uint8 class map on the same grid, or ``None`` (unlabelled).
        affine: ``(4, 4)`` index-to-RAS matrix of the student grid (padding, if any, is
            appended at the high end of each axis, so the origin is the CT's own corner).
        valid_shape: ``(I, J, K)`` extent of real data before padding to the patch size.
        source: the :class:`Case` it was prepared from (CT and native PET, for teachers that
            see each modality on its own grid), or None.
        box: the CT index box (ROI) it was prepared in, or None for the whole CT.
        audit_label: an unlabelled case's label on this grid, kept aside only to measure
            the quality of pseudo-labels (never read by training), or None.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    valid_shape: tuple[int, int, int]
    meta: dict = field(default_factory=dict)
    source: Case | None = field(default=None, repr=False)
    box: tuple[slice, slice, slice] | None = None
    audit_label: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape[1:])  # type: ignore[return-value]

    def grid(self, array: np.ndarray | None = None) -> Volume:
        """A :class:`Volume` on this case's student grid (zeros unless ``array`` is given)."""
        return Volume(np.zeros(self.shape, np.uint8) if array is None else array, self.affine)


def normalise_ct(hu: np.ndarray, config: StudentConfig) -> np.ndarray:
    """HU -> [-1, 1] over ``config.ct_window``, clipped (MONAI ``ScaleIntensityRange``)."""
    from monai.transforms import ScaleIntensityRange

    low, high = config.ct_window
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=True)
    return np.asarray(scale(hu.astype(np.float32)), dtype=np.float32)


def normalise_pet(suv: np.ndarray, config: StudentConfig) -> np.ndarray:
    """SUV -> SUV / ``pet_suv_scale`` after clipping to [0, ``pet_suv_clip``]."""
    return (np.clip(suv, 0.0, config.pet_suv_clip) / config.pet_suv_scale).astype(np.float32)


def prepare_case(
    case: Case,
    config: StudentConfig,
    box: tuple[slice, slice, slice] | None = None,
    with_label: bool = True,
    audit: bool = False,
) -> PreparedCase:
    """Resample and normalise a case for the student.

    Args:
        case: CT (HU), PET (SUV) and optional label.
        config: the student's preprocessing settings.
        box: optional index box on the CT grid (an ROI); only that part is prepared.
        with_label: also resample the label (nearest neighbour) when the case has one.
        audit: for an unlabelled case (``with_label=False``) that has a label: keep it as
            ``audit_label`` to measure pseudo-labels against (training never reads it).

    The PET is resampled straight from its native grid onto the student grid (one
    interpolation instead of two through the CT grid); 0 SUV outside its field of view.
    The student grid's axes run in ``STUDENT_ORIENTATION`` whatever the CT file's axis order.
    """
    ct = to_student_orientation(case.ct if box is None else crop_volume(case.ct, box))
    ct_small = resample_to_spacing(ct, config.spacing, "linear", fill=AIR_HU)
    pet_small = resample_to(to_student_orientation(case.pet), ct_small, "linear", fill=0.0)
    label = None
    if (with_label or audit) and case.label is not None:
        label_on_ct = case.label_on_ct if box is None else crop_volume(case.label_on_ct, box)
        label = resample_to(label_on_ct, ct_small, "nearest", fill=0).array.astype(np.uint8)
        if label.max() > len(config.classes):
            raise DistillSegError(
                f"case {case.case_id}: label value {int(label.max())} but the student has "
                f"{len(config.classes)} class(es) {list(config.class_names.values())}"
            )
    image = np.stack([normalise_ct(ct_small.array, config), normalise_pet(pet_small.array, config)])
    valid_shape = ct_small.shape
    image, label = pad_to_patch(image, label, config)
    # The audit holds its own copy; an unlabelled case keeps a source without its label, so
    # nothing that reads ``source`` (the teachers' native grids) can reach the label.
    audit_label = None if with_label or label is None else label.copy()
    source = case if with_label else without_label(case)
    return PreparedCase(case.case_id, image, label if with_label else None, ct_small.affine, valid_shape,
                        meta={"ct_shape": case.ct.shape, "box": box}, source=source, box=box, audit_label=audit_label)


def without_label(case: Case) -> Case:
    """A shallow copy of ``case`` with no label (images shared, the cached PET-on-CT kept)."""
    if case.label is None:
        return case
    copy_ = copy.copy(case)
    copy_.__dict__.pop("label_on_ct", None)
    copy_.label = None
    copy_.meta = {k: v for k, v in case.meta.items() if "label" not in k}
    return copy_


def pad_to_patch(
    image: np.ndarray, label: np.ndarray | None, config: StudentConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad at the high end of each axis so every axis holds at least one patch.

    CT padding is air (-1 after normalisation), PET padding 0 SUV, label background.
    """
    missing = [max(p - n, 0) for p, n in zip(config.patch_size, image.shape[1:])]
    if not any(missing):
        return image, label
    widths = [(0, m) for m in missing]
    ct = np.pad(image[0], widths, constant_values=-1.0)
    pet = np.pad(image[1], widths, constant_values=0.0)
    padded_label = None if label is None else np.pad(label, widths, constant_values=0)
    return np.stack([ct, pet]), padded_label


def probabilities_to_ct_grid(
    probabilities: np.ndarray,
    prepared: PreparedCase,
    ct: Volume,
    box: tuple[slice, slice, slice] | None = None,
) -> tuple[Volume, Volume]:
    """Bring class probabilities from the student grid back onto the CT grid.

    Args:
        probabilities: ``(C, I, J, K)`` float softmax output on ``prepared``'s grid.
        prepared: the prepared case they belong to.
        ct: the CT whose grid the result lives on.
        box: the ROI index box of the CT the case was prepared in; outside it the label
            is background and the probability of foreground 0.

    Returns:
        ``(label, foreground)``: uint8 class map and float32 probability of the most
        likely foreground class (``1 - P(background)``), both exactly on the CT grid.
    """
    num_classes = probabilities.shape[0]
    # Onto the CT grid in the student's orientation, then back to the file's own index order by
    # exact transposes and flips: the resampling itself is the same whatever order the file
    # stores its axes in.
    target = to_student_orientation(ct)
    # Linear interpolation of each class's probability, then argmax on the fine grid:
    # smoother borders than nearest-neighbour upsampling of the coarse label map. With one
    # foreground class, interpolation keeps P(bg) + P(fg) = 1, so argmax is P(fg) > 0.5 and
    # one channel is enough (half the resampling of a whole-body study).
    if num_classes == 2:
        foreground = resample_to(prepared.grid(probabilities[1].astype(np.float32)), target, "linear", fill=0.0).array
        foreground = from_student_orientation(foreground.clip(0.0, 1.0).astype(np.float32), ct)
        label = (foreground > 0.5).astype(np.uint8)
    else:
        channels = [
            resample_to(prepared.grid(probabilities[c].astype(np.float32)), target, "linear",
                        fill=1.0 if c == 0 else 0.0).array
            for c in range(num_classes)
        ]
        stacked = np.stack([from_student_orientation(channel, ct) for channel in channels])
        label = np.argmax(stacked, axis=0).astype(np.uint8)
        foreground = (1.0 - stacked[0]).clip(0.0, 1.0).astype(np.float32)
    if box is not None:
        inside = np.zeros(ct.shape, bool)
        inside[box] = True
        label[~inside] = 0
        foreground[~inside] = 0.0
    return ct.with_array(label), ct.with_array(foreground)


def foreground_fraction(cases: Sequence[PreparedCase]) -> float:
    """Fraction of labelled voxels that are foreground (for reports)."""
    voxels = [c.label for c in cases if c.label is not None]
    return float(np.mean([np.mean(v > 0) for v in voxels])) if voxels else 0.0
