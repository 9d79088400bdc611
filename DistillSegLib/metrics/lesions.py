"""Per-lesion PET statistics of a label map: MTV, SUVmax, SUVmean, SUVpeak, TLG, centroid.

One row per 26-connected component of each foreground class, computed on the label's
grid with the PET resampled onto it.

SUVpeak follows PERCIST 1.0 (Wahl et al., J Nucl Med 2009;50:122S-150S): the highest
mean SUV in a 1 mL sphere (radius (3/(4 pi))^(1/3) cm = 6.20 mm) whose centre lies in the
lesion; the sphere is the set of voxels whose centres lie within that radius of the
centre voxel's centre, and it may extend beyond the lesion (PET outside the image
counts as 0). TLG = MTV x SUVmean (Larson et al., Clin Positron Imaging 1999).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, signal

from ..atomic import write_text_atomic
from ..errors import DistillSegError
from ..io.volume import Volume, apply_affine

PEAK_SPHERE_ML = 1.0
PEAK_RADIUS_MM = (3.0 * PEAK_SPHERE_ML * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)  # 6.2035 mm
COLUMNS = ["lesion", "label", "class", "mtv_ml", "suv_max", "suv_mean", "suv_peak", "tlg",
           "centroid_r_mm", "centroid_a_mm", "centroid_s_mm", "voxels"]


def sphere_offsets(spacing: tuple[float, float, float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """``(N, 3)`` integer voxel offsets whose centres lie within ``radius_mm`` of the origin."""
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
    inside = np.sum((grid * np.asarray(spacing)) ** 2, axis=1) <= radius_mm**2
    return grid[inside]


def sphere_kernel(spacing: tuple[float, float, float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Normalised averaging kernel of :func:`sphere_offsets` (sums to 1)."""
    offsets = sphere_offsets(spacing, radius_mm)
    half = np.abs(offsets).max(axis=0)
    kernel = np.zeros(tuple(2 * half + 1))
    kernel[tuple((offsets + half).T)] = 1.0
    return kernel / kernel.sum()


def suv_peak(
    pet: np.ndarray, lesion: np.ndarray, spacing: tuple[float, float, float],
    box: tuple[slice, slice, slice] | None = None,
) -> float:
    """Highest 1 mL-sphere mean SUV over sphere centres inside ``lesion`` (bool, same grid).

    ``box``: the lesion's bounding box if known (saves a scan of the whole volume).
    """
    kernel = sphere_kernel(spacing)
    half = np.array(kernel.shape) // 2
    if box is None:
        index = np.argwhere(lesion)
        lo, hi = index.min(axis=0), index.max(axis=0) + 1
    else:
        lo, hi = np.array([b.start for b in box]), np.array([b.stop for b in box])
    # Only the lesion's bounding box (plus the sphere's reach) is convolved (FFT).
    pad_lo, pad_hi = lo - half, hi + half
    region = np.zeros(tuple(pad_hi - pad_lo), np.float64)
    src_lo, src_hi = np.maximum(pad_lo, 0), np.minimum(pad_hi, pet.shape)
    region[tuple(slice(a - p, b - p) for a, b, p in zip(src_lo, src_hi, pad_lo))] = pet[
        tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
    means = signal.fftconvolve(region, kernel, mode="valid")  # centres lo..hi-1
    return float(means[lesion[tuple(slice(a, b) for a, b in zip(lo, hi))]].max())


def lesion_statistics(label: Volume, pet: Volume, class_names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """One dict per connected lesion of each non-zero label value (see :data:`COLUMNS`).

    Args:
        label: integer label map.
        pet: SUV image; resampled (linear) onto the label grid when it lies elsewhere.
    """
    from ..io.case import same_grid
    from ..io.resample import resample_to

    if not same_grid(label, pet):
        pet = resample_to(pet, label, "linear", fill=0.0)
    suv = pet.array.astype(np.float64)
    voxel_ml = label.voxel_volume_ml
    names = class_names or {int(k): str(v) for k, v in (label.meta.get("label_names") or {}).items()}
    rows: list[dict[str, Any]] = []
    for value in [int(v) for v in np.unique(label.array) if v != 0]:
        components, count = ndimage.label(label.array == value, structure=np.ones((3, 3, 3), bool))
        # Work inside each component's bounding box: thousands of specks stay fast.
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            lesion = np.zeros(label.shape, bool)
            lesion[box] = components[box] == index
            values = suv[box][lesion[box]]
            mtv = float(values.size * voxel_ml)
            offset = np.array([s.start for s in box])
            centroid = apply_affine(label.affine, (np.argwhere(lesion[box]).mean(axis=0) + offset)[None])[0]
            rows.append({
                "lesion": len(rows) + 1,
                "label": value,
                "class": names.get(value, f"label {value}"),
                "mtv_ml": mtv,
                "suv_max": float(values.max()),
                "suv_mean": float(values.mean()),
                "suv_peak": suv_peak(suv, lesion, label.spacing, box),
                "tlg": mtv * float(values.mean()),
                "centroid_r_mm": float(centroid[0]),
                "centroid_a_mm": float(centroid[1]),
                "centroid_s_mm": float(centroid[2]),
                "voxels": int(values.size),
            })
    return rows


def write_lesion_table(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows as ``.csv`` or ``.json`` (chosen by the suffix), atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return write_text_atomic(path, json.dumps({"lesions": rows}, indent=2))
    if path.suffix.lower() != ".csv":
        raise DistillSegError(f"--stats must end in .csv or .json, got {path}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return write_text_atomic(path, buffer.getvalue())
