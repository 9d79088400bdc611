"""A 3D image with its world geometry, and reading/writing it through SimpleITK.

Conventions used everywhere in DistillSegLib:

* ``Volume.array`` is indexed ``[i, j, k]`` in the file's own index order (the NIfTI
  order: ``i`` varies fastest on disk). SimpleITK's ``GetArrayFromImage`` returns
  ``[k, j, i]``; the transpose happens here, at the boundary, and nowhere else.
* ``Volume.affine`` maps a voxel index ``(i, j, k, 1)`` to world **RAS** millimetres,
  as in NIfTI and the Slicer scene. ITK and DICOM use LPS; the sign flip of the first
  two world axes happens here, at the boundary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_path
from ..errors import DistillSegError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    """A 3D array on a grid in RAS world space.

    Attributes:
        array: voxel values, shape ``(I, J, K)``; HU for CT, SUVbw for PET, integer labels
            for label maps.
        affine: ``(4, 4)`` voxel-index-to-RAS-mm matrix (no shear).
        meta: free-form facts about where the volume came from (``path``, ``modality``,
            ``units``, ``frame_of_reference_uid``, ``series_instance_uid``,
            ``label_names`` as ``{value: name}`` ...).
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise DistillSegError(f"expected a 3D volume, got shape {self.array.shape} ({self.describe()})")
        if self.affine.shape != (4, 4):
            raise DistillSegError(f"affine must be 4x4, got {self.affine.shape} ({self.describe()})")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    @property
    def orientation(self) -> str:
        """Anatomical direction of increasing i, j, k, e.g. ``"RAS"`` or ``"LPS"``."""
        import nibabel

        return "".join(nibabel.aff2axcodes(self.affine))

    def describe(self) -> str:
        return str(self.meta.get("path", "in-memory volume"))

    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """The same grid holding other values (e.g. a label map on the CT grid)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match grid {self.array.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    def world_corners(self) -> np.ndarray:
        """``(8, 3)`` RAS positions of the outer voxel *edges* (the physical extent)."""
        lo = np.full(3, -0.5)
        hi = np.array(self.shape, dtype=float) - 0.5
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        return apply_affine(self.affine, corners)

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned RAS bounding box (min, max) of the physical extent, in mm."""
        corners = self.world_corners()
        return corners.min(axis=0), corners.max(axis=0)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 3)`` index coordinates to ``(N, 3)`` world coordinates."""
    points = np.asarray(points, dtype=float)
    return points @ affine[:3, :3].T + affine[:3, 3]


def crop_volume(volume: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """Sub-volume ``volume.array[box]`` with its affine moved to the box's first voxel."""
    start = np.array([s.start for s in box], dtype=float)
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ start + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.array[box]), affine, dict(volume.meta))


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def volume_from_sitk(image: sitk.Image, **meta: Any) -> Volume:
    """Convert a 3D SimpleITK image (LPS) to a :class:`Volume` (RAS, ``[i, j, k]``)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DistillSegError(
            f"expected a 3D single-channel image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components ({meta.get('path', 'image')})"
        )
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.array(image.GetSpacing(), dtype=float)
    affine_lps[:3, 3] = image.GetOrigin()
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    return Volume(array, LPS_TO_RAS @ affine_lps, dict(meta))


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Convert a :class:`Volume` to a SimpleITK image with LPS geometry (orthogonal axes only)."""
    require_orthogonal(volume)
    affine_lps = LPS_TO_RAS @ volume.affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in affine_lps[:3, 3]))
    image.SetDirection(tuple(float(d) for d in (affine_lps[:3, :3] / spacing).ravel()))
    return image


def read_image(path: str | os.PathLike, **meta: Any) -> Volume:
    """Read a NIfTI / NRRD / MHA file into a :class:`Volume`.

    Raises:
        DistillSegError: the file is missing, unreadable, not 3D, or holds NaNs.
    """
    path = Path(path)
    if not path.exists():
        raise DistillSegError(f"file not found: {path}")
    if not path.is_file():
        raise DistillSegError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise DistillSegError(f"cannot read image {path}: the file is empty")
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            volume = _read_nifti(path, **meta)
        else:
            volume = volume_from_sitk(sitk.ReadImage(str(path)), path=str(path), **meta)
    except DistillSegError:
        raise
    except Exception as exc:  # nibabel, gzip, zlib and ITK raise many types for a file that is not an image
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DistillSegError(f"cannot read image {path}: {reason}") from exc
    check_finite(volume)
    require_orthogonal(volume)
    return volume


def _read_nifti(path: Path, **meta: Any) -> Volume:
    # nibabel rather than ITK for NIfTI: ITK's reader silently turns NaN voxels into 0,
    # and nibabel's affine is the header's own sform/qform (already RAS).
    import nibabel

    image = nibabel.load(str(path))
    array = np.asanyarray(image.dataobj)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DistillSegError(f"expected a 3D image, got shape {array.shape} ({path})")
    return Volume(np.ascontiguousarray(array), image.affine, {"path": str(path), **meta})


# Largest |cosine| between two voxel axes still counted as a right angle (float32 sform rounding
# is ~1e-7; 1e-3 is 0.06 degrees).
ORTHOGONAL_TOLERANCE = 1e-3


def require_orthogonal(volume: Volume) -> None:
    """Refuse an affine whose voxel axes are not at right angles (a sheared grid) or degenerate.

    Everything downstream (SimpleITK, Slicer, NRRD/MHA output) holds a grid as spacing plus
    an orthonormal direction: a sheared NIfTI affine would be written back with another
    geometry (the far corner moved by centimetres) after an ITK warning.
    """
    axes = volume.affine[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not np.all(np.isfinite(axes)) or np.any(lengths <= 0):
        raise DistillSegError(f"{volume.describe()}: the affine has a zero or non-finite voxel size "
                              f"({np.round(lengths, 4).tolist()} mm)")
    unit = axes / lengths
    cosines = np.abs(unit.T @ unit - np.eye(3))
    worst = np.unravel_index(int(np.argmax(cosines)), cosines.shape)
    if cosines[worst] > ORTHOGONAL_TOLERANCE:
        angle = float(np.degrees(np.arccos(np.clip(unit[:, worst[0]] @ unit[:, worst[1]], -1, 1))))
        names = "ijk"
        raise DistillSegError(
            f"{volume.describe()}: the affine is sheared (voxel axes {names[worst[0]]} and {names[worst[1]]} "
            f"meet at {angle:.2f} degrees, not 90): sheared grids are not supported; resample the image "
            "onto a grid with orthogonal axes first (e.g. 3D Slicer: Resample Scalar/Vector/DWI Volume)"
        )


def check_finite(volume: Volume) -> None:
    """Refuse NaN or infinite voxels: they would silently poison every statistic."""
    if np.issubdtype(volume.array.dtype, np.floating):
        bad = ~np.isfinite(volume.array)
        if bad.any():
            raise DistillSegError(
                f"{int(bad.sum())} voxels are NaN or infinite in {volume.describe()}"
            )


def write_image(volume: Volume, path: str | os.PathLike) -> Path:
    """Write a volume atomically (temporary file in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(volume_to_sitk(volume), str(tmp), useCompression=True)
    return Path(path)
