"""Results: segmentations in and out of the scene, the lesion statistics and their table.

A label map from the engine always becomes a new segmentation node, one named segment per
label value with Slicer terminology; segmentations go back to the engine as label maps on
the CT grid, and their lesion statistics come from the engine's code.
"""

from __future__ import annotations

import os
import re

import numpy as np
import slicer
import vtk

from . import Pet
from .Nodes import LogicError, arrayFromImageData, ensureSegmentationConverters, ijkToRasArray, orientedImageFromArray

# Slicer terminology entry string: "context~category~type~typeModifier~anatomicContext~region~regionModifier",
# each coded item "scheme^value^meaning" (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry,
# Slicer v5.10.0 and main). SCT 108369006 "Neoplasm" under 49755003 "Morphologically Altered
# Structure" is in the DICOM master list (Modules/Loadable/Terminologies/Resources/
# SegmentationCategoryTypeModifier-DICOM-Master.json), which Slicer loads at startup; it is not in
# the "3D Slicer General Anatomy list".
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"

ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

DEFAULT_CLASSES = {
    1: {"name": "tumour", "category": ["SCT", "49755003", "Morphologically Altered Structure"],
        "type": ["SCT", "108369006", "Neoplasm"], "color": [216, 101, 79]},
}

# Column titles (and units) of the lesion table node; other engine columns keep their key.
TABLE_COLUMNS = {
    "lesion": ("Lesion", ""), "class": ("Class", ""), "mtv_ml": ("MTV", "mL"), "suv_max": ("SUVmax", "g/mL"),
    "suv_mean": ("SUVmean", "g/mL"), "suv_peak": ("SUVpeak", "g/mL"), "tlg": ("TLG", "g"),
    "pet_coverage": ("Inside PET", "fraction"),
}


class Results:
    """Segmentations, lesion statistics and lesion tables of a study (``study``: :class:`Study`)."""

    def __init__(self, scene, study) -> None:
        self.scene = scene
        self.study = study

    def importLabelmap(self, labelPath: str | os.PathLike, ctNode, classes: dict | None = None,
                       name: str = "DistillSeg"):
        """Import a label-map file as a new segmentation node on the CT geometry, one named
        segment per label value (terminology, colour from ``classes[value]``)."""
        ensureSegmentationConverters()
        classes = {int(k): v for k, v in (classes or DEFAULT_CLASSES).items()}
        labelNode = slicer.vtkMRMLLabelMapVolumeNode()  # not added to the scene
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(labelPath))
        if not storage.ReadData(labelNode) or labelNode.GetImageData() is None:
            raise LogicError(f"cannot read the label map {labelPath}")
        labels = arrayFromImageData(labelNode.GetImageData())
        affine = ijkToRasArray(labelNode)
        segmentationNode = slicer.vtkMRMLSegmentationNode()
        segmentationNode.SetName(name)
        self.scene.AddNode(segmentationNode)
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
        for value in sorted(set(classes) | {int(v) for v in np.unique(labels) if v != 0}):
            spec = classes.get(value, {"name": f"label {value}"})
            binary = orientedImageFromArray((labels == value).astype(np.uint8), affine)
            segmentId = segmentationNode.GetSegmentation().AddEmptySegment(
                _segmentId(spec["name"], value), spec["name"], _color01(spec))
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                binary, segmentationNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
            segmentationNode.GetSegmentation().GetSegment(segmentId).SetTerminology(terminologyEntry(spec))
        return segmentationNode

    def labelFromSegmentation(self, segmentationNode, ctNode):
        """The segmentation as an engine label :class:`Volume` on the CT grid (segment n -> n+1)
        and its ``{value: name}`` map; the scene is not modified."""
        from DistillSegLib.io.volume import Volume

        if segmentationNode is None or segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise LogicError("no segmentation selected, or it has no segments")
        ids = vtk.vtkStringArray()
        segmentationNode.GetSegmentation().GetSegmentIDs(ids)
        geometry = slicer.vtkOrientedImageData()
        geometry.SetExtent(ctNode.GetImageData().GetExtent())
        matrix = vtk.vtkMatrix4x4()
        ctNode.GetIJKToRASMatrix(matrix)
        # The segments are stored in the segmentation node's coordinates: under a parent
        # transform other than the CT's (a segmentation moved or registered onto the study),
        # the CT grid is expressed in those coordinates first.
        ctToSegmentation = vtk.vtkMatrix4x4()
        if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
                ctNode.GetParentTransformNode(), segmentationNode.GetParentTransformNode(), ctToSegmentation):
            raise LogicError(f"the segmentation {segmentationNode.GetName()} is under a non-linear transform: "
                             "harden it (Transforms module) first")
        vtk.vtkMatrix4x4.Multiply4x4(ctToSegmentation, matrix, matrix)
        geometry.SetImageToWorldMatrix(matrix)
        merged = slicer.vtkOrientedImageData()
        if not segmentationNode.GenerateMergedLabelmapForAllSegments(
                merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, geometry, ids):
            raise LogicError(f"cannot convert segmentation {segmentationNode.GetName()} to a label map")
        array = arrayFromImageData(merged).astype(np.uint8)
        names = {i + 1: segmentationNode.GetSegmentation().GetSegment(ids.GetValue(i)).GetName()
                 for i in range(ids.GetNumberOfValues())}
        return Volume(array, ijkToRasArray(ctNode), {"label_names": names}), names

    def eraseSlices(self, segmentationNode, ctNode, slab: slice | None = None) -> np.ndarray:
        """Erase the first segment in the CT slices ``slab`` (default: the middle slice of the
        segment), as a correction in the Segment Editor would; returns the new label array."""
        label, _ = self.labelFromSegmentation(segmentationNode, ctNode)
        array = label.array.copy()
        if slab is None:
            slices = np.flatnonzero(array.any(axis=(0, 1)))
            if slices.size == 0:
                raise LogicError(f"segmentation {segmentationNode.GetName()} is empty: nothing to erase")
            middle = int(slices[slices.size // 2])
            slab = slice(middle, middle + 1)
        array[:, :, slab] = 0
        self.setSegmentMask(segmentationNode, label.with_array((array == 1).astype(np.uint8)))
        return array

    @staticmethod
    def setSegmentMask(segmentationNode, mask, segmentIndex: int = 0) -> None:
        """Replace the voxels of the segmentation's segment ``segmentIndex`` with ``mask`` (an
        engine :class:`Volume`, non-zero = inside), as an edit in the Segment Editor replaces them."""
        segmentId = segmentationNode.GetSegmentation().GetNthSegmentID(segmentIndex)
        if not segmentId:
            raise LogicError(f"segmentation {segmentationNode.GetName()} has no segment {segmentIndex + 1}")
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            orientedImageFromArray((mask.array > 0).astype(np.uint8), mask.affine), segmentationNode, segmentId,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    def dice(self, segmentationNode, referenceNode, ctNode) -> float:
        """Dice of two segmentations' foreground (all segments merged) on the CT grid."""
        from DistillSegLib.metrics.segmentation import dice

        result, _ = self.labelFromSegmentation(segmentationNode, ctNode)
        reference, _ = self.labelFromSegmentation(referenceNode, ctNode)
        return float(dice(result.array > 0, reference.array > 0))

    def lesionStatistics(self, segmentationNode, ctNode, petNode) -> list[dict]:
        """MTV (mL), SUVmax, SUVmean, SUVpeak, TLG per lesion of the (corrected) segmentation.

        Computed by the engine (:func:`DistillSegLib.metrics.lesions.lesion_statistics`, the table of
        ``distillseg stats`` and ``predict --stats``: one row per connected lesion of at least
        0.1 mL), so it follows every correction made in the Segment Editor. MTV is counted on the CT
        grid; the SUV figures come from the PET node's own (native) voxels, each lesion brought onto
        the PET grid by the IBSI partial-volume rule, never from a PET resampled onto the CT.
        """
        from DistillSegLib.metrics.lesions import lesion_statistics

        self.study.validateInputs(ctNode, petNode)
        label, names = self.labelFromSegmentation(segmentationNode, ctNode)
        return lesion_statistics(label, self.study.nodeVolume(petNode), names)

    def lesionTable(self, rows: list[dict], segmentationNode, tableNode=None):
        """The lesion statistics as a ``vtkMRMLTableNode`` (saved with the scene, exportable
        from the Tables module): one row per lesion, column titles and units set.

        ``tableNode`` is refilled when given, else a new node named after the segmentation
        is added and referenced from it.
        """
        if tableNode is None:
            tableNode = slicer.vtkMRMLTableNode()
            tableNode.SetName(self.scene.GenerateUniqueName(f"{segmentationNode.GetName()} lesions"))
            self.scene.AddNode(tableNode)
            segmentationNode.SetNodeReferenceID("DistillSeg.LesionTable", tableNode.GetID())
        keys = list(rows[0]) if rows else list(TABLE_COLUMNS)
        table = vtk.vtkTable()
        for key in keys:
            numeric = rows and all(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in rows)
            column = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
            column.SetName(key)
            for row in rows:
                column.InsertNextValue(float(row[key]) if numeric else str(row.get(key, "")))
            table.AddColumn(column)
        tableNode.SetAndObserveTable(table)
        for key in keys:
            title, unit = TABLE_COLUMNS.get(key, (key, ""))
            tableNode.SetColumnTitle(key, title)
            if unit:
                tableNode.SetColumnUnitLabel(key, unit)
        tableNode.SetUseColumnTitleAsColumnHeader(True)
        return tableNode

    def placeRoiAroundSegmentation(self, roiNode, segmentationNode, ctNode,
                                   margin_mm: float = Pet.ROI_MARGIN_MM) -> None:
        """Give a markups ROI the bounding box of a segmentation plus ``margin_mm`` (as the
        engine's ``predict --roi-from``, with the margin crop students need, ``Pet.ROI_MARGIN_MM``)."""
        from DistillSegLib.errors import DistillSegError
        from DistillSegLib.student.inference import roi_from_mask

        label, _ = self.labelFromSegmentation(segmentationNode, ctNode)
        try:
            Pet.setRoiBox(roiNode, *roi_from_mask(label, margin_mm))
        except DistillSegError as exc:
            raise LogicError(str(exc)) from exc


def terminologyEntry(spec: dict) -> str:
    """Slicer terminology string for a class spec with SNOMED CT category/type triples."""
    def coded(triple):
        return "^".join(str(x) for x in triple) if triple else "^^"

    category = spec.get("category", DEFAULT_CLASSES[1]["category"])
    kind = spec.get("type", DEFAULT_CLASSES[1]["type"])
    return f"{TERMINOLOGY_CONTEXT}~{coded(category)}~{coded(kind)}~^^~{ANATOMIC_CONTEXT}~^^~^^"

def _color01(spec: dict) -> tuple[float, float, float]:
    color = spec.get("color", DEFAULT_CLASSES[1]["color"])
    return tuple(float(c) / 255.0 for c in color)  # type: ignore[return-value]

def _segmentId(name: str, value: int) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or f"label_{value}"
