"""A PET/CT case: CT (HU) + PET (SUVbw) in one patient frame + optional label map.

Inputs may be image files (NIfTI/NRRD/MHA) or DICOM folders; labels may be label-map
files, RTSTRUCT or DICOM SEG. Everything is validated here, once: non-overlapping
CT/PET is an error, differing frames of reference a warning, a label must sit on the
CT or the PET grid.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import DistillSegError
from .resample import covered_fraction, require_overlap, resample_to
from .volume import Volume, check_finite, is_image_file, read_image

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass
class Case:
    """One PET/CT study.

    Attributes:
        case_id: identifier (folder name, nnU-Net case id, ...).
        ct: CT in HU on its own grid.
        pet: PET in SUVbw on its own (native) grid.
        label: optional integer label map on the CT or the PET grid; its
            ``meta["label_names"]`` maps values to names.
    """

    case_id: str
    ct: Volume
    pet: Volume
    label: Volume | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_overlap(self.ct, self.pet, "CT and PET")
        require_pet_covers_ct(self.ct, self.pet, self.case_id)
        ct_for, pet_for = (v.meta.get("frame_of_reference_uid") for v in (self.ct, self.pet))
        if ct_for and pet_for and ct_for != pet_for:
            log.warning(
                "CT and PET have different FrameOfReferenceUIDs (%s vs %s): assuming they "
                "are registered (case %s)", ct_for, pet_for, self.case_id
            )
        if self.label is not None and not (same_grid(self.label, self.ct) or same_grid(self.label, self.pet)):
            raise DistillSegError(
                f"label map {self.label.describe()} (shape {self.label.shape}) lies on neither the CT grid "
                f"{self.ct.shape} nor the PET grid {self.pet.shape}"
            )

    @cached_property
    def pet_on_ct(self) -> Volume:
        """PET resampled (linear) onto the CT grid; 0 SUV outside the PET field of view."""
        return resample_to(self.pet, self.ct, "linear", fill=0.0)

    @cached_property
    def label_on_ct(self) -> Volume | None:
        """Label map on the CT grid (nearest-neighbour if it came on the PET grid)."""
        if self.label is None or same_grid(self.label, self.ct):
            return self.label
        return resample_to(self.label, self.ct, "nearest", fill=0)

    @property
    def label_names(self) -> dict[int, str]:
        if self.label is None:
            return {}
        return default_label_names(self.label)


# Below this fraction of CT voxels inside the PET's field of view a case is warned about. The
# tumour crops of sts-petct reach down to 92% (STS_019), the PET crop being a little smaller.
PET_COVERAGE_WARNING = 0.9


def require_pet_covers_ct(ct: Volume, pet: Volume, case_id: str = "") -> float:
    """Fraction of CT voxels inside the PET's field of view; none is an error, little a warning.

    Outside the PET, SUV is 0: a student sees no uptake there and segments less (a PET
    covering 22% of the STS_001 CT gave 242 mL instead of 430 mL).
    """
    fraction = covered_fraction(ct, pet)
    if fraction <= 0.0:
        raise DistillSegError(
            f"no voxel of the CT {ct.describe()} lies inside the PET's field of view ({pet.describe()}): "
            "they do not overlap (a rotated or misplaced PET?)")
    if fraction < PET_COVERAGE_WARNING:
        log.warning("%sthe PET %s covers only %.0f%% of the CT %s: outside it SUV is 0, so results there "
                    "(segmentation, SUV figures) see no uptake", f"case {case_id}: " if case_id else "",
                    pet.describe(), 100 * fraction, ct.describe())
    return fraction


def warn_if_region_outside_pet(ct: Volume, pet: Volume, box: tuple[slice, slice, slice], what: str) -> float:
    """Fraction of a CT region (an ROI's index box) inside the PET's field of view; a warning
    naming the region when less than ``PET_COVERAGE_WARNING`` of it is."""
    from .volume import crop_volume

    fraction = covered_fraction(crop_volume(ct, box), pet)
    if fraction < PET_COVERAGE_WARNING:
        log.warning("%s lies %.0f%% outside the PET's field of view (%s): there SUV is 0, so results in it see "
                    "no uptake", what, 100 * (1 - fraction), pet.describe())
    return fraction


def same_grid(a: Volume, b: Volume, tolerance_mm: float = 1e-3) -> bool:
    """True when two volumes share shape and affine (to ``tolerance_mm``)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=tolerance_mm))


def default_label_names(label: Volume) -> dict[int, str]:
    """``meta["label_names"]`` if present, otherwise ``{1: "tumour"}``-style names per value."""
    names = label.meta.get("label_names")
    if names:
        return {int(k): str(v) for k, v in names.items()}
    values = [int(v) for v in np.unique(label.array) if v != 0]
    return {v: "tumour" if values == [1] else f"label {v}" for v in values}


def load_volume(path: PathLike, modality: str | None = None) -> Volume:
    """Read an image file or a DICOM series folder.

    Args:
        path: NIfTI/NRRD/MHA file, or a folder holding a DICOM series.
        modality: ``"CT"`` or ``"PT"``; picks the series in a folder and decides the
            conversion (HU, SUVbw).
    """
    path = Path(path)
    if not path.exists():
        raise DistillSegError(f"file or folder not found: {path}")
    if path.is_dir() or path.suffix.lower() == ".dcm":
        from .dicom_series import read_dicom_series

        volume = read_dicom_series(path, modality=modality)
    elif is_image_file(path):
        volume = read_image(path)
    else:
        raise DistillSegError(f"unsupported input {path}: expected NIfTI/NRRD/MHA or a DICOM folder")
    if modality:
        volume.meta.setdefault("modality", modality)
    check_finite(volume)
    return volume


def load_label(path: PathLike, ct: Volume, pet: Volume) -> Volume:
    """Read a label map file, an RTSTRUCT or a DICOM SEG as an integer label map.

    DICOM masks are rasterised on the grid of the image they were drawn on (matched by
    frame of reference / position), falling back to the CT grid.
    """
    path = Path(path)
    if not path.exists():
        raise DistillSegError(f"label file not found: {path}")
    if is_image_file(path):
        label = read_image(path)
        if np.issubdtype(label.array.dtype, np.floating):
            if not np.allclose(label.array, np.round(label.array)):
                raise DistillSegError(f"label map {path} holds non-integer values")
            label = label.with_array(np.round(label.array).astype(np.int16))
        if label.array.min() < 0:
            raise DistillSegError(
                f"label map {path} holds negative values (down to {label.array.min()}): label values are "
                "0 (background) and 1, 2, ... (classes); is it an image rather than a label map?")
        return label
    from .dicom_masks import read_dicom_mask

    return read_dicom_mask(path, references=[ct, pet])


def load_case(
    ct: PathLike,
    pet: PathLike,
    label: PathLike | None = None,
    case_id: str | None = None,
    check: bool = True,
) -> Case:
    """Load a case from files or DICOM folders (see :func:`load_volume`, :func:`load_label`).

    Args:
        check: refuse a CT that does not look like HU or a PET that does not look like SUV
            (:mod:`.plausibility`; ``--allow-implausible`` turns it off).
    """
    ct_volume = load_volume(ct, "CT")
    pet_volume = load_volume(pet, "PT")
    if check:
        from .plausibility import require_plausible

        require_plausible(ct_volume, pet_volume)
    label_volume = load_label(label, ct_volume, pet_volume) if label else None
    return Case(case_id or default_case_id(ct), ct_volume, pet_volume, label_volume)


def default_case_id(ct: PathLike) -> str:
    """A readable id: the file stem, or the case folder's name for generic file names."""
    path = Path(ct)
    stem = path.name.split(".")[0]
    if path.is_dir() or stem.lower() in {"ct_image", "ct", "image"}:
        generic = {"ct", "image", "dicom"}
        parents = [p.name for p in ([path] if path.is_dir() else []) + list(path.parents)]
        return next((name for name in parents if name.lower() not in generic and name), stem)
    return stem


# The layout of ../shared/data/sts-petct: one folder per case.
CASE_FOLDER_FILES = {"ct": "CT_image", "pet": "PET_image", "label": "CT_mask"}


def find_in_folder(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def load_case_folder(folder: PathLike, check: bool = True) -> Case:
    """Load a case folder (``CT_image``, ``PET_image``, optional ``CT_mask``)."""
    folder = Path(folder)
    paths = {key: find_in_folder(folder, stem) for key, stem in CASE_FOLDER_FILES.items()}
    for key in ("ct", "pet"):
        if paths[key] is None:
            raise DistillSegError(f"case folder {folder} has no {CASE_FOLDER_FILES[key]}.nii.gz")
    return load_case(paths["ct"], paths["pet"], paths["label"], case_id=folder.name, check=check)
