"""Per-lesion PET statistics of a label map: MTV, SUVmax, SUVmean, SUVpeak, TLG, centroid.

The function behind ``distillseg stats``, ``distillseg predict --stats`` and the Slicer
module's lesion table. The method (also written into every table, :data:`METHOD`):

* Lesions are the 26-connected components of each non-zero label value on the label's own
  grid (CT or PET); components smaller than ``min_lesion_ml`` (default
  :data:`DEFAULT_MIN_LESION_ML`) are left out and counted.
* MTV (mL) and the centroid (RAS mm) come from the lesion's voxels on the label's grid.
* SUV figures come from the PET's own voxels, never from a PET interpolated onto the CT
  grid (which lowers SUVmax by a few per cent: PERCIST, EANM). The lesion is brought onto
  the PET grid by the IBSI partial-volume rule (:func:`~DistillSegLib.io.resample.mask_to_grid`):
  a PET voxel belongs to it when the lesion mask, trilinearly interpolated at the voxel's
  centre, is at least 0.5 (IBSI reference manual, "Partial volume effects in the ROI mask",
  E8H9). A lesion that covers no PET voxel by that rule (smaller than about half a PET
  voxel) takes the PET voxel that contains its centroid; ``pet_voxels`` says how many PET
  voxels each row used (0: the lesion lies outside the PET's field of view, whose SUV is 0).
* SUVmax and SUVmean over those PET voxels; TLG = MTV x SUVmean (Larson et al., Clin
  Positron Imaging 1999;2:159-171).
* SUVpeak follows PERCIST 1.0 (Wahl et al., J Nucl Med 2009;50:122S-150S): the highest mean
  SUV in a 1 mL sphere (radius (3/(4 pi))^(1/3) cm = 6.20 mm), computed on the PET grid as
  the IBSI global intensity peak (0F91): for every lesion PET voxel, the mean SUV of the PET
  voxels whose centres lie within 6.20 mm of its centre (the sphere may reach beyond the
  lesion; voxels outside the PET image are left out of the mean); the highest such mean.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..atomic import write_text_atomic
from ..errors import DistillSegError
from ..io.resample import PARTIAL_VOLUME_THRESHOLD, mask_to_grid
from ..io.volume import Volume, apply_affine, crop_volume

log = logging.getLogger(__name__)

PEAK_SPHERE_ML = 1.0
PEAK_RADIUS_MM = (3.0 * PEAK_SPHERE_ML * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)  # 6.2035 mm
# Components below this volume are left out of lesion tables: 0.1 mL is one to two voxels
# of a clinical PET (4-5.5 mm x 3.3 mm here), too small for any PET figure to mean much.
DEFAULT_MIN_LESION_ML = 0.1
COLUMNS = ["lesion", "label", "class", "mtv_ml", "suv_max", "suv_mean", "suv_peak", "tlg",
           "centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "voxels", "pet_voxels", "pet_coverage", "overlaps_with"]
SUV_COLUMNS = ("suv_max", "suv_mean", "suv_peak", "tlg")

METHOD = {
    "lesions": "26-connected components of each label value on the label's own grid",
    "mtv_ml": "lesion voxels on the label's grid x voxel volume",
    "suv_grid": "the PET's own voxels (never a PET interpolated onto another grid)",
    "pet_voxel_rule": (f"a PET voxel belongs to a lesion when the lesion mask, trilinearly interpolated at the "
                       f"voxel's centre, is >= {PARTIAL_VOLUME_THRESHOLD} (IBSI partial-volume rule E8H9); a lesion "
                       "covering no PET voxel so takes the PET voxel containing its centroid"),
    "suv_peak": (f"PERCIST 1 mL sphere (radius {PEAK_RADIUS_MM:.2f} mm) on the PET grid: highest mean SUV of the PET "
                 "voxels whose centres lie within the radius of a lesion PET voxel's centre (IBSI global intensity "
                 "peak 0F91; voxels outside the PET image left out)"),
    "tlg": "MTV x SUVmean",
    "overlaps_with": ("ROIs of an RTSTRUCT/SEG that overlap: each is measured on its own whole mask (never on the "
                      "part left to it in a label map), so their rows share voxels; the other ROIs' names"),
    "pet_coverage": ("fraction of the lesion's voxels whose centres lie inside the PET's field of view; below 1 the "
                     "lesion is cut by the PET's edge and its SUV figures and TLG describe the covered part only"),
}


@dataclass
class LesionTable:
    """Rows (one per lesion, keys :data:`COLUMNS`) and how they were made.

    Attributes:
        rows: the lesions, in label value then component order.
        min_lesion_ml: components below this MTV were left out ...
        left_out: ... this many of them, ``left_out_ml`` mL in all.
        label_grid: ``"CT"``/``"PET"`` or another description of the label's grid.
    """

    rows: list[dict[str, Any]]
    min_lesion_ml: float
    left_out: int = 0
    left_out_ml: float = 0.0
    label_grid: str = ""
    method: dict[str, Any] = field(default_factory=lambda: dict(METHOD))

    def header(self) -> dict[str, Any]:
        """The method and the left-out components, as written above every table."""
        return {**self.method, "label_grid": self.label_grid, "min_lesion_ml": self.min_lesion_ml,
                "left_out_components": self.left_out, "left_out_ml": round(self.left_out_ml, 4)}


def sphere_offsets(spacing: tuple[float, float, float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """``(N, 3)`` integer voxel offsets whose centres lie within ``radius_mm`` of the origin."""
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
    inside = np.sum((grid * np.asarray(spacing)) ** 2, axis=1) <= radius_mm**2
    return grid[inside]


def sphere_kernel(spacing: tuple[float, float, float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """0/1 kernel of :func:`sphere_offsets` (odd size, centred)."""
    offsets = sphere_offsets(spacing, radius_mm)
    half = np.abs(offsets).max(axis=0)
    kernel = np.zeros(tuple(2 * half + 1))
    kernel[tuple((offsets + half).T)] = 1.0
    return kernel


def suv_peak(pet: np.ndarray, centres: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Highest 1 mL-sphere mean SUV over the sphere centres ``centres`` (``(N, 3)`` PET indices).

    The sphere is the set of PET voxels whose centres lie within :data:`PEAK_RADIUS_MM` of
    the centre voxel's centre; voxels outside the image are left out of the mean.
    """
    kernel = sphere_kernel(spacing)
    half = np.array(kernel.shape) // 2
    lo, hi = centres.min(axis=0) - half, centres.max(axis=0) + half + 1
    src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, pet.shape)
    region = np.zeros(tuple(hi - lo), np.float64)
    inside = np.zeros(tuple(hi - lo), np.float64)
    window = tuple(slice(a - p, b - p) for a, b, p in zip(src_lo, src_hi, lo))
    region[window] = pet[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    inside[window] = 1.0
    sums = ndimage.correlate(region, kernel, mode="constant", cval=0.0)
    counts = ndimage.correlate(inside, kernel, mode="constant", cval=0.0)
    local = centres - lo
    index = tuple(local.T)
    return float(np.max(sums[index] / counts[index]))


def pet_coverage(lesion: Volume, pet: Volume) -> float:
    """Fraction of ``lesion``'s non-zero voxels whose centres lie inside ``pet``'s field of view (voxel edges)."""
    voxels = np.argwhere(lesion.array > 0)
    if not len(voxels):
        return 1.0
    index = apply_affine(np.linalg.inv(pet.affine) @ lesion.affine, voxels)
    inside = np.all((index >= -0.5) & (index <= np.asarray(pet.shape) - 0.5), axis=1)
    return float(inside.mean())


def lesion_on_pet(lesion: Volume, pet: Volume) -> np.ndarray:
    """``(N, 3)`` PET voxel indices that belong to ``lesion`` (a 0/1 mask on any grid, see :data:`METHOD`).

    Empty when the lesion lies outside the PET's field of view.
    """
    # Only the PET voxels around the lesion's physical extent are looked at.
    lo, hi = lesion.world_bounds()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    index = apply_affine(np.linalg.inv(pet.affine), corners)
    start = np.clip(np.floor(index.min(axis=0)).astype(int) - 1, 0, None)
    stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 2, pet.shape)
    if np.any(stop <= start):
        return np.zeros((0, 3), int)
    affine = pet.affine.copy()
    affine[:3, 3] = pet.affine[:3, :3] @ start + pet.affine[:3, 3]
    grid = Volume(np.zeros(tuple(stop - start), np.uint8), affine)
    inside = np.argwhere(mask_to_grid(lesion, grid).array > 0) + start
    if len(inside):
        return inside
    centroid = apply_affine(lesion.affine, np.argwhere(lesion.array > 0).mean(axis=0)[None])
    voxel = np.round(apply_affine(np.linalg.inv(pet.affine), centroid)[0]).astype(int)
    if np.all(voxel >= 0) and np.all(voxel < pet.shape):
        return voxel[None]
    return np.zeros((0, 3), int)


def lesion_table(
    label: Volume,
    pet: Volume,
    class_names: dict[int, str] | None = None,
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML,
    label_grid: str = "",
) -> LesionTable:
    """The lesions of ``label`` with their PET figures from ``pet``'s own grid (see :data:`METHOD`).

    Args:
        label: integer label map on any grid overlapping the PET (CT or PET grid).
        pet: SUV image on its native grid.
        class_names: ``{value: name}``; default the label's ``meta["label_names"]``.
        min_lesion_ml: components with a smaller MTV are left out (counted in the table).
        label_grid: how to name the label's grid in the table (e.g. ``"CT"``).
    """
    if not np.isfinite(min_lesion_ml) or min_lesion_ml < 0:
        raise DistillSegError(f"--min-lesion-ml must be a number >= 0, got {min_lesion_ml}")
    suv = pet.array.astype(np.float64)
    voxel_ml = label.voxel_volume_ml
    names = class_names or {int(k): str(v) for k, v in (label.meta.get("label_names") or {}).items()}
    table = LesionTable([], float(min_lesion_ml), label_grid=label_grid)
    values = [int(v) for v in np.unique(label.array) if v != 0]
    # Work inside each value's, then each component's bounding box: a whole-body map with
    # many values, or thousands of specks, stays fast.
    value_boxes = ndimage.find_objects(label.array.astype(np.int32)) if values and min(values) > 0 else None
    own_masks = {int(v): m for v, m in (label.meta.get("own_masks") or {}).items() if m.shape == label.shape}
    overlaps = {int(v): [int(o) for o in others] for v, others in (label.meta.get("overlaps_with") or {}).items()}
    values = sorted(set(values) | set(own_masks))  # an ROI wholly covered by a smaller one too
    for value in values:
        if value in own_masks:  # an overlapping ROI: its own whole mask, not the ring the label map kept
            region, inside = label, own_masks[value]
        else:
            region = crop_volume(label, value_boxes[value - 1]) if value_boxes else label
            inside = region.array == value
        components, _ = ndimage.label(inside, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(components.ravel())
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            mtv = float(sizes[index] * voxel_ml)
            if mtv < min_lesion_ml:
                table.left_out += 1
                table.left_out_ml += mtv
                continue
            lesion = crop_volume(region.with_array(components), box)
            lesion = lesion.with_array((lesion.array == index).astype(np.uint8))
            centroid = apply_affine(lesion.affine, np.argwhere(lesion.array > 0).mean(axis=0)[None])[0]
            table.rows.append({
                "lesion": len(table.rows) + 1,
                "label": value,
                "class": names.get(value, f"label {value}"),
                "mtv_ml": mtv,
                **pet_figures(suv, lesion_on_pet(lesion, pet), pet.spacing, mtv),
                "centroid_r_mm": float(centroid[0]),
                "centroid_a_mm": float(centroid[1]),
                "centroid_s_mm": float(centroid[2]),
                "voxels": int(sizes[index]),
                "pet_coverage": pet_coverage(lesion, pet),
                "overlaps_with": ", ".join(names.get(o, f"label {o}") for o in overlaps.get(value, [])),
            })
            row = table.rows[-1]
            if row["pet_voxels"] == 0:
                log.warning("lesion %d (%s) lies outside the PET's field of view: its SUV figures are 0",
                            len(table.rows), row["class"])
            elif row["pet_coverage"] < 1.0:
                log.warning("lesion %d (%s): %.0f%% of its %.2f mL lies outside the PET's field of view: its "
                            "SUVmax, SUVmean, SUVpeak and TLG describe the covered part only",
                            len(table.rows), row["class"], 100 * (1 - row["pet_coverage"]), mtv)
    return table


def pet_figures(suv: np.ndarray, voxels: np.ndarray, spacing: tuple[float, float, float], mtv_ml: float) -> dict:
    """SUVmax, SUVmean, SUVpeak, TLG and ``pet_voxels`` of one lesion's PET voxels ``(N, 3)``."""
    if len(voxels) == 0:
        return {"suv_max": 0.0, "suv_mean": 0.0, "suv_peak": 0.0, "tlg": 0.0, "pet_voxels": 0}
    values = suv[tuple(voxels.T)]
    mean = float(values.mean())
    return {"suv_max": float(values.max()), "suv_mean": mean, "suv_peak": suv_peak(suv, voxels, spacing),
            "tlg": mtv_ml * mean, "pet_voxels": int(len(voxels))}


def lesion_statistics(
    label: Volume, pet: Volume, class_names: dict[int, str] | None = None,
    min_lesion_ml: float = DEFAULT_MIN_LESION_ML,
) -> list[dict[str, Any]]:
    """The rows of :func:`lesion_table` (one dict per lesion, keys :data:`COLUMNS`)."""
    return lesion_table(label, pet, class_names, min_lesion_ml).rows


def format_lesion_table(table: LesionTable) -> str:
    """A fixed-width text table for the terminal (method in the last lines)."""
    lines = [f"{'lesion':>6} {'class':<14}{'MTV mL':>10} {'SUVmax':>8} {'SUVmean':>8} {'SUVpeak':>8} {'TLG':>10} "
             f"{'PET vox':>8}  centroid RAS mm"]
    for row in table.rows:
        lines.append(f"{row['lesion']:>6} {row['class'][:13]:<14}{row['mtv_ml']:>10.2f} {row['suv_max']:>8.2f} "
                     f"{row['suv_mean']:>8.2f} {row['suv_peak']:>8.2f} {row['tlg']:>10.1f} {row['pet_voxels']:>8}  "
                     f"{row['centroid_r_mm']:.1f}, {row['centroid_a_mm']:.1f}, {row['centroid_s_mm']:.1f}")
    if not table.rows:
        lines.append("(no lesion)")
    for row in table.rows:
        if row.get("overlaps_with"):
            lines.append(f"lesion {row['lesion']} ({row['class']}) overlaps {row['overlaps_with']}: each ROI is measured "
                         "on its own whole mask, so their rows share voxels (do not add their MTVs)")
        if row.get("pet_coverage", 1.0) < 1.0:
            lines.append(f"lesion {row['lesion']}: only {100 * row['pet_coverage']:.0f}% of it lies inside the PET's "
                         "field of view (cut by its edge): SUV figures and TLG describe the covered part only")
    lines.append(f"{table.left_out} component(s) under {table.min_lesion_ml:g} mL left out "
                 f"({table.left_out_ml:.2f} mL in all; --min-lesion-ml)")
    lines.append("SUV from the native PET grid; PET voxel in a lesion when the trilinearly interpolated mask >= 0.5 "
                 "(IBSI); SUVpeak: PERCIST 1 mL sphere")
    return "\n".join(lines)


def lesion_table_json(table: LesionTable) -> dict[str, Any]:
    """``{"method": {...}, "lesions": [...]}`` (the Slicer module reads ``lesions``)."""
    return {"method": table.header(), "lesions": table.rows}


def render_lesion_table(table: LesionTable, path: str | os.PathLike) -> str:
    """The text of ``path``'s format: JSON, or CSV whose ``#`` header lines state the method."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return json.dumps(lesion_table_json(table), indent=2)
    if path.suffix.lower() != ".csv":
        raise DistillSegError(f"a lesion table must end in .csv or .json, got {path}")
    buffer = io.StringIO()
    buffer.write("".join(f"# {key}: {value}\n" for key, value in table.header().items()))
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_lesion_table(table: LesionTable, path: str | os.PathLike) -> Path:
    """Write the table as ``.csv`` or ``.json`` (chosen by the suffix), atomically."""
    return write_text_atomic(path, render_lesion_table(table, path))
