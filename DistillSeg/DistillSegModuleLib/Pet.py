"""PET in the scene: is it SUV, a region of interest around its hot spot, its display (slicer-core only).

Slicer's DICOM plugins load a PET series with its stored units (usually Bq/ml) and set no
voxel-value units for PT (``DICOMLib/DICOMPlugin.py``, ``mapSOPClassUIDToDICOMQuantityAndUnits``
sets units for CT and MR only, Slicer v5.10.0 and main); they colour it with the PET-Heat
map (``DICOMScalarVolumePlugin.py``). Such a volume must never be taken for SUV:
:func:`suvState` tells the cases apart, and the Logic converts it from its DICOM files or
refuses it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import slicer

from .Nodes import DICOM_UIDS_ATTRIBUTE, MODALITY_ATTRIBUTE, volumeFromNode

# What :func:`suvState` reports.
SUV = "suv"  # units say SUV, or the module loaded it (file in SUV, or DICOM converted)
NOT_SUV = "not-suv"  # units say Bq/ml (or another activity unit)
DICOM_UNCONVERTED = "dicom-unconverted"  # loaded by Slicer's DICOM module: stored values, not SUV
UNKNOWN = "unknown"  # a file without units: taken as SUV, as documented (PET files must be SUVbw)

# Margin (mm) of an ROI around a lesion (the hot spot's 41%-of-SUVmax region, or a segmentation).
# Crop students were trained on crops ~5 cm around the tumour (sts-petct) and need that context:
# inside the label's box + 10 mm the held-out student scores far lower than with + 50 mm
# (benchmarks/bundled_student.py --stages margin; benchmarks/results/bundled_student.json).
ROI_MARGIN_MM = 50.0
# A promptable student reads the ROI as its box: around the hot spot of the viewed slice its box
# is grown by 20 mm instead, chosen by a cross-validation on the 20 training cases (+1.5 Dice
# points over 50 mm; the validation cases, which report only, disagree: -3.1), per the protocol
# benchmarks/protocols/hot_spot_margin_on_viewed_slice.json (docs/methods.md).
PROMPTABLE_HOT_SPOT_MARGIN_MM = 20.0


def hotSpotMargin(studentTakesPrompts: bool) -> float:
    """Margin (mm) of the ROI around the PET hot spot for the student that will Run in it."""
    return PROMPTABLE_HOT_SPOT_MARGIN_MM if studentTakesPrompts else ROI_MARGIN_MM


def suvState(node) -> str:
    """Whether the voxels of a PET node are SUV (one of :data:`SUV`, :data:`NOT_SUV`,
    :data:`DICOM_UNCONVERTED`, :data:`UNKNOWN`)."""
    units = node.GetVoxelValueUnits() if hasattr(node, "GetVoxelValueUnits") else None
    text = f"{units.GetCodeValue()} {units.GetCodeMeaning()}".lower() if units is not None else ""
    if "suv" in text:
        return SUV
    if "bq" in text or "cnts" in text or "counts" in text:
        return NOT_SUV
    if node.GetAttribute(DICOM_UIDS_ATTRIBUTE):
        return DICOM_UNCONVERTED
    if node.GetAttribute(MODALITY_ATTRIBUTE) == "PT":
        return SUV  # loaded by this module, which sets SUV units; kept for nodes saved without units
    return UNKNOWN


def hotSpotBox(petNode, searchBounds: Sequence[float] | None = None, plane=None,
               margin_mm: float = ROI_MARGIN_MM) -> tuple[np.ndarray, np.ndarray]:
    """RAS box ``(low, high)`` around the PET hot spot: the connected region at or above 41%
    of SUVmax that holds the hottest voxel on ``plane`` (the viewed slice), grown by ``margin_mm``.

    Args:
        petNode: PET volume (SUV).
        searchBounds: ``(x0, y0, z0, x1, y1, z1)`` RAS mm where the hot spot is looked for and
            may grow (in Slicer: what the slice view shows), or ``None`` for the whole PET.
        plane: ``(point, normal)`` RAS mm of the viewed slice (:func:`viewedSlice`): the hottest
            voxel is looked for on it, the region grows in 3D; ``None``: anywhere in the PET.
    """
    from DistillSegLib.metrics.baselines import NoHotSpotError, hot_spot_mask
    from DistillSegLib.student.inference import roi_from_mask

    from .Nodes import LogicError

    search = None if searchBounds is None else (searchBounds[:3], searchBounds[3:])
    try:
        hot = hot_spot_mask(volumeFromNode(petNode), search, plane)
    except NoHotSpotError as exc:
        raise LogicError(f"{exc} ({petNode.GetName()}): place the ROI by hand") from exc
    return roi_from_mask(hot, margin_mm)


def viewedSlice(sliceNode) -> tuple[list[float], tuple[np.ndarray, np.ndarray]]:
    """What a slice view shows: its in-plane RAS bounds ``(x0, y0, z0, x1, y1, z1)`` (unbounded
    along its normal) and its plane ``(point, normal)``, RAS mm.

    From the node's XY-to-RAS matrix and its dimensions in pixels (``vtkMRMLSliceNode::GetXYToRAS``,
    ``GetDimensions``, Slicer v5.10.0 and main): pixel ``(x, y)`` of slice 0 is at
    ``XYToRAS @ (x, y, 0, 1)``; the third column is the slice normal.
    """
    matrix = sliceNode.GetXYToRAS()
    xyToRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    width, height = sliceNode.GetDimensions()[:2]
    corners = np.array([xyToRas @ [x, y, 0, 1] for x in (0, width) for y in (0, height)])[:, :3]
    low, high = corners.min(axis=0), corners.max(axis=0)
    normal = xyToRas[:3, 2] / max(float(np.linalg.norm(xyToRas[:3, 2])), 1e-9)
    low[np.abs(normal) > 0.5], high[np.abs(normal) > 0.5] = -1e6, 1e6
    return [*low, *high], (xyToRas[:3, 3].copy(), normal)


def setRoiBox(roiNode, low: Sequence[float], high: Sequence[float]) -> None:
    """Make a markups ROI the axis-aligned box ``low``..``high`` (RAS mm, world coordinates).

    ``SetCenter``/``SetSize`` work in the node's own coordinates: under a parent transform
    (an ROI placed in a registered study) the box would land elsewhere. Under a linear
    transform the ROI's axes are turned so that they are the world's axes; then the centre
    and size are set in world coordinates (``SetCenterWorld``/``SetSizeWorld``,
    vtkMRMLMarkupsROINode, Slicer v5.10.0).
    """
    import vtk

    low, high = np.asarray(low, float), np.asarray(high, float)
    parent = roiNode.GetParentTransformNode()
    if parent is not None and parent.IsTransformToWorldLinear():
        nodeToWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(nodeToWorld)
        worldToNode = np.linalg.inv(np.array([[nodeToWorld.GetElement(r, c) for c in range(4)] for r in range(4)]))
        axes = worldToNode[:3, :3] / np.linalg.norm(worldToNode[:3, :3], axis=0)  # the world's axes, in the node
        objectToNode = vtk.vtkMatrix4x4()
        for r in range(3):
            for c in range(3):
                objectToNode.SetElement(r, c, float(axes[r, c]))
        roiNode.SetAndObserveObjectToNodeMatrix(objectToNode)
    roiNode.SetCenterWorld(*((low + high) / 2.0))
    roiNode.SetSizeWorld(*(high - low))


def showAsPet(petNode) -> None:
    """The PET-Heat colour map Slicer's DICOM plugin gives PT series (when the colour node exists)."""
    display = petNode.GetDisplayNode()
    scene = petNode.GetScene()
    colorId = slicer.vtkMRMLColorLogic.GetPETColorNodeID(slicer.vtkMRMLPETProceduralColorNode.PETheat)
    if display is not None and scene is not None and scene.GetNodeByID(colorId) is not None:
        display.SetAndObserveColorNodeID(colorId)
