"""Scene volumes <-> engine volumes, and telling PET from CT (``slicer-core`` only, no Qt).

Slicer nodes hold an IJK-to-RAS matrix and VTK arrays indexed ``[k, j, i]``; the engine's
:class:`~DistillSegLib.io.volume.Volume` holds ``[i, j, k]`` with an index-to-RAS affine. The
transpose happens here (:func:`volumeFromNode`, :func:`orientedImageFromArray`) and
nowhere else.
"""

from __future__ import annotations

import re

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

# Node attribute that records the modality of a volume the module loaded itself.
MODALITY_ATTRIBUTE = "DistillSeg.Modality"
# Attribute Slicer's DICOM plugins set on loaded volumes (space-separated SOP instance UIDs).
DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
# Attribute this module sets on volumes it reads from a DICOM series itself.
SERIES_UID_ATTRIBUTE = "DistillSeg.SeriesInstanceUID"
# UCUM codes for PET SUV and CT HU, as used for vtkMRMLScalarVolumeNode voxel value units
# (DICOM PS3.16 CID 7181 "Abstract Multi-dimensional Image Model Component Units").
SUV_UNITS = ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
HU_UNITS = ("[hnsf'U]", "UCUM", "Hounsfield unit")


class LogicError(Exception):
    """Bad input or a failed run, with a message meant for the user."""


# --------------------------------------------------------------------------- geometry helpers


def ijkToRasArray(node) -> np.ndarray:
    """The node's ``(4, 4)`` IJK-to-RAS matrix as numpy."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def arrayFromImageData(image) -> np.ndarray:
    """``[i, j, k]`` numpy copy of a single-component vtkImageData (VTK stores ``[k, j, i]``)."""
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return np.ascontiguousarray(flat.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0))


def volumeFromNode(node, withArray: bool = True):
    """A :class:`DistillSegLib.io.volume.Volume` holding the node's voxels and RAS geometry.

    With ``withArray=False`` the array is a zero-memory placeholder of the right shape
    (enough for geometry checks such as overlap).
    """
    from DistillSegLib.io.volume import Volume

    if node is None or node.GetImageData() is None:
        raise LogicError(f"volume {node.GetName() if node else '(none)'} holds no image data")
    if node.GetParentTransformNode() is not None:
        raise LogicError(f"volume {node.GetName()} is under a transform: harden the transform first "
                         "(Data module, right-click, Harden transform)")
    dims = node.GetImageData().GetDimensions()
    if withArray:
        array = arrayFromImageData(node.GetImageData())
    else:
        array = np.broadcast_to(np.zeros((), np.uint8), (dims[0], dims[1], dims[2]))
    return Volume(array, ijkToRasArray(node), {"path": node.GetName(), "modality": volumeModality(node)})


def orientedImageFromArray(array: np.ndarray, ijkToRas: np.ndarray):
    """A vtkOrientedImageData (segmentation geometry) from an ``[i, j, k]`` array and RAS affine."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*array.shape)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijkToRas[r, c]))
    image.SetImageToWorldMatrix(matrix)
    flat = np.ascontiguousarray(array.transpose(2, 1, 0)).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def ensureSegmentationConverters() -> None:
    """Register the segmentation representation converters if nobody did.

    Slicer's Segmentations module registers them at startup
    (``qSlicerSegmentationsModule::setup``); a bare ``slicer-core`` scene has none, and then
    a segment cannot even hold an empty binary labelmap.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if len(factory.GetConverterRules()) == 0:
        for rule in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                     slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
            factory.RegisterConverterRule(rule())


def requireOverlap(ctNode, petNode) -> None:
    """Raise :class:`LogicError` unless CT and PET share physical space (engine's check)."""
    from DistillSegLib.errors import DistillSegError
    from DistillSegLib.io.resample import require_overlap

    try:
        require_overlap(volumeFromNode(ctNode, False), volumeFromNode(petNode, False), "CT and PET")
    except DistillSegError as exc:
        raise LogicError(str(exc)) from exc


# --------------------------------------------------------------------------- modality


def volumeModality(node) -> str | None:
    """``"PT"``, ``"CT"`` or ``None`` from explicit facts, most reliable first.

    1. the attribute this module sets when it loads a file;
    2. the DICOM Modality of the node's series in the subject hierarchy;
    3. the voxel value units (SUV or Bq/ml -> PT, HU -> CT);
    4. the node name (``PET``/``PT``/``SUV`` or ``CT`` as a word).
    """
    if node is None:
        return None
    explicit = node.GetAttribute(MODALITY_ATTRIBUTE)
    if explicit in ("PT", "CT"):
        return explicit
    dicom = _subjectHierarchyModality(node)
    if dicom in ("PT", "CT"):
        return dicom
    units = node.GetVoxelValueUnits() if hasattr(node, "GetVoxelValueUnits") else None
    if units is not None:
        text = f"{units.GetCodeValue()} {units.GetCodeMeaning()}".lower()
        if "suv" in text or "bq/ml" in text:
            return "PT"
        if "hnsf" in text or "hounsfield" in text:
            return "CT"
    words = set(re.split(r"[^a-z0-9]+", (node.GetName() or "").lower()))
    if words & {"pet", "pt", "suv", "suvbw", "fdg"}:
        return "PT"
    if words & {"ct", "ctac"}:
        return "CT"
    return None


def _subjectHierarchyModality(node) -> str | None:
    scene = node.GetScene()
    if scene is None:
        return None
    shNode = scene.GetSubjectHierarchyNode() if hasattr(scene, "GetSubjectHierarchyNode") else None
    if shNode is None:
        return None
    item = shNode.GetItemByDataNode(node)
    while item:
        modality = shNode.GetItemAttribute(item, "DICOM.Modality")
        if modality:
            return modality.upper()
        item = shNode.GetItemParent(item)
    return None


def nodesByClass(scene, className: str) -> list:
    """Nodes of ``className`` in ``scene``, releasing the collection the scene returns.

    ``vtkMRMLScene::GetNodesByClass`` returns a new collection the caller owns; from Python
    the wrapper holds one reference and the C++ "New" another, so without ``UnRegister`` the
    collection (and a reference to every node in it) is never freed (as
    ``slicer.util.getNodesByClass`` does, Base/Python/slicer/util.py).
    """
    collection = scene.GetNodesByClass(className)
    collection.UnRegister(None)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def scalarVolumes(scene) -> list:
    """Scalar volumes of the scene (label maps excluded), in the order they were added."""
    return [n for n in nodesByClass(scene, "vtkMRMLScalarVolumeNode") if not n.IsA("vtkMRMLLabelMapVolumeNode")]


def findVolume(scene, modality: str):
    """The most recently added volume of ``modality`` (``"PT"``/``"CT"``), or ``None``.

    Never falls back to "the first volume": a volume whose modality cannot be told is not
    picked, and the user selects it.
    """
    matches = [n for n in scalarVolumes(scene) if volumeModality(n) == modality]
    return matches[-1] if matches else None
