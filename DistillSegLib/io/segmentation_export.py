"""Writing a predicted label map with its segment names and terminology.

* ``.nii.gz`` / ``.nii`` / ``.nrrd``: plain label map (uint8) on the CT grid.
* ``.seg.nrrd``: 3D Slicer segmentation file (label map + ``SegmentN_*`` header fields:
  name, label value, colour, terminology), the layout Slicer's
  ``vtkMRMLSegmentationStorageNode`` reads and writes.
* ``.dcm``: DICOM SEG (highdicom) referencing the CT series the prediction was made on;
  needs the CT to have been read from DICOM (``ct.meta["dicom_files"]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..atomic import atomic_path
from ..errors import DistillSegError
from .labels import SegmentClass
from .volume import Volume, volume_to_sitk, write_image

LABEL_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".dcm")


def check_label_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.name.lower().endswith(LABEL_SUFFIXES):
        raise DistillSegError(f"unsupported output {path}: use one of {', '.join(LABEL_SUFFIXES)}")
    return path


def write_label_map(label: Volume, path: str | os.PathLike, classes: Sequence[SegmentClass], ct: Volume) -> Path:
    """Write ``label`` (uint8 classes on ``ct``'s grid) in the format the suffix names."""
    path = check_label_path(path)
    name = path.name.lower()
    if name.endswith(".dcm"):
        return write_dicom_seg(label, path, classes, ct)
    if name.endswith(".seg.nrrd"):
        return write_seg_nrrd(label, path, classes)
    return write_image(label.with_array(label.array.astype(np.uint8)), path)


def _slicer_terminology(segment: SegmentClass) -> str:
    # Slicer's terminology string: context~category~type~modifier~anatomic context~region~modifier
    cat, typ = segment.category, segment.type
    return (f"Segmentation category and type - 3D Slicer General Anatomy list~{cat[0]}^{cat[1]}^{cat[2]}"
            f"~{typ[0]}^{typ[1]}^{typ[2]}~^^~Anatomic codes - DICOM master list~^^~^^")


def write_seg_nrrd(label: Volume, path: Path, classes: Sequence[SegmentClass]) -> Path:
    """3D Slicer ``.seg.nrrd`` (one layer, label value = class index)."""
    import SimpleITK as sitk

    image = volume_to_sitk(label.with_array(label.array.astype(np.uint8)))
    shape = label.shape
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    for n, segment in enumerate(classes):
        prefix = f"Segment{n}_"
        image.SetMetaData(prefix + "ID", f"Segment_{n + 1}")
        image.SetMetaData(prefix + "Name", segment.name)
        image.SetMetaData(prefix + "LabelValue", str(n + 1))
        image.SetMetaData(prefix + "Layer", "0")
        image.SetMetaData(prefix + "Color", " ".join(f"{c / 255:.4f}" for c in segment.color))
        image.SetMetaData(prefix + "Extent", f"0 {shape[0] - 1} 0 {shape[1] - 1} 0 {shape[2] - 1}")
        image.SetMetaData(prefix + "Terminology", _slicer_terminology(segment))
        image.SetMetaData(prefix + "Tags", "TerminologyEntry:" + _slicer_terminology(segment) + "|")
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def write_dicom_seg(label: Volume, path: Path, classes: Sequence[SegmentClass], ct: Volume) -> Path:
    """DICOM SEG (binary, one segment per class) referencing the CT's DICOM instances."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    files = ct.meta.get("dicom_files")
    if not files:
        raise DistillSegError(
            f"--out {path.name}: a DICOM SEG must reference a DICOM CT series, but the CT "
            f"{ct.describe()} was not read from DICOM; write .nii.gz or .seg.nrrd instead"
        )
    sources = [pydicom.dcmread(f) for f in files]
    # Each source slice's k index on the CT grid, through its own position (robust to
    # slices that the reader regularised).
    inverse = np.linalg.inv(ct.affine)
    frames = []
    for ds in sources:
        ras = np.array([-1.0, -1.0, 1.0]) * np.asarray(ds.ImagePositionPatient, float)
        k = int(round(float((inverse[:3, :3] @ ras + inverse[:3, 3])[2])))
        k = min(max(k, 0), ct.shape[2] - 1)
        frames.append(label.array[:, :, k].T)  # (rows, columns)
    pixels = np.stack(frames)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="DistillSeg student", version=__version__, family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n + 1,
            segment_label=segment.name,
            segmented_property_category=hd.sr.CodedConcept(segment.category[1], segment.category[0], segment.category[2]),
            segmented_property_type=hd.sr.CodedConcept(segment.type[1], segment.type[0], segment.type[2]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for n, segment in enumerate(classes)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="DistillSeg",
        manufacturer_model_name="DistillSeg student",
        software_versions=__version__,
        device_serial_number="0",
        series_description="DistillSeg segmentation (not for clinical use)",
        omit_empty_frames=False,
    )
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))
    return path
