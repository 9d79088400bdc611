"""The study: loading CT and PET into the scene, SUV, checks, the ROI, and the volumes on disk.

The engine reads files; each volume is written for it once per version of its node
(:meth:`Study.exportedVolume`) and turned into an engine :class:`Volume` once per version
(:meth:`Study.nodeVolume`), so that every job on a loaded study reuses them and only a changed
node (its own or its voxels' modification time) is converted and written again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from . import Pet
from .Nodes import (DICOM_UIDS_ATTRIBUTE, HU_UNITS, MODALITY_ATTRIBUTE, SERIES_UID_ATTRIBUTE, SUV_UNITS,
                    LogicError, requireOverlap, volumeFromNode, volumeModality)

# ``dicomFiles(sopInstanceUid) -> file path or None`` (in Slicer: ``slicer.dicomDatabase.fileForInstance``).
DicomFileLookup = Callable[[str], "str | None"]


class Study:
    """Loading, SUV and checks of a CT/PET study, and its volumes for the engine.

    Args:
        scene: the MRML scene.
        dicomFiles: the file of a DICOM instance UID (Slicer: the DICOM database), used to
            convert a PET loaded with Slicer's DICOM module to SUV; ``None``: such a PET is refused.
    """

    def __init__(self, scene, dicomFiles: DicomFileLookup | None = None) -> None:
        self.scene = scene
        self.dicomFiles = dicomFiles
        self._studyDir: Path | None = None  # the volumes exported for the engine (see exportedVolume)
        self._removeStudyDir: weakref.finalize | None = None
        self._exported: dict[str, tuple[tuple[int, ...], Path]] = {}  # node ID -> (version, file)
        self._volumes: dict[str, tuple[tuple[int, ...], object]] = {}  # node ID -> (version, Volume)

    @staticmethod
    def nodeVersion(node) -> tuple[int, ...]:
        """What changes when the node or its voxels change: their modification times."""
        image = node.GetImageData()
        return (node.GetMTime(), image.GetMTime() if image is not None else 0)

    def nodeVolume(self, node):
        """The node as an engine :class:`Volume` (voxels and RAS geometry), copied out of VTK once
        per version of the node and shared by the jobs that read it (treat it as read-only)."""
        version = self.nodeVersion(node)
        cached = self._volumes.get(node.GetID())
        if cached is not None and cached[0] == version:
            return cached[1]
        volume = volumeFromNode(node)
        volume.array.setflags(write=False)  # shared: a caller that writes into it would change every job's input
        self._volumes[node.GetID()] = (version, volume)
        return volume

    def forgetExports(self) -> None:
        """Drop the exported files and converted volumes (the scene or the module closes)."""
        self._volumes.clear()
        self._forgetExports()

    def loadVolume(self, path: str | os.PathLike, modality: str, name: str | None = None):
        """Read an image file into a new scalar volume node (with its storage node).

        Raises:
            LogicError: the file is missing or unreadable (the scene is left unchanged).
        """
        path = Path(path)
        if not path.is_file():
            raise LogicError(f"file not found: {path}")
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(name or f"{modality} {path.name.split('.')[0]}")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node) or node.GetImageData() is None:
            raise LogicError(f"cannot read image {path}")
        self.scene.AddNode(storage)
        self.scene.AddNode(node)
        node.SetAndObserveStorageNodeID(storage.GetID())
        self._describe(node, modality)
        return node

    def addVolumeNode(self, volume, modality: str, name: str):
        """A new scalar volume node holding an engine :class:`Volume` (RAS geometry kept)."""
        image = vtk.vtkImageData()
        image.SetDimensions(*volume.shape)
        flat = np.ascontiguousarray(volume.array.transpose(2, 1, 0)).ravel()
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(name)
        node.SetAndObserveImageData(image)
        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, float(volume.affine[r, c]))
        node.SetIJKToRASMatrix(matrix)
        self.scene.AddNode(node)
        self._describe(node, modality)
        return node

    def _describe(self, node, modality: str) -> None:
        node.SetAttribute(MODALITY_ATTRIBUTE, modality)
        units = SUV_UNITS if modality == "PT" else HU_UNITS
        coded = slicer.vtkCodedEntry()
        coded.SetValueSchemeMeaning(*units)
        node.SetVoxelValueUnits(coded)
        node.CreateDefaultDisplayNodes()
        if modality == "PT":
            Pet.showAsPet(node)

    def loadDicomStudy(self, ctFolder: str | os.PathLike, petFolder: str | os.PathLike):
        """Read a CT and a PET DICOM series with the engine (HU; PET converted to SUVbw from
        its header, ``DistillSegLib/io/suv.py``) into new volume nodes, and check they overlap.

        Returns ``(ctNode, petNode)``; on any error nothing is added to the scene.
        """
        volumes = [_engineVolume(ctFolder, "CT"), _engineVolume(petFolder, "PT")]
        before = self.scene.GetNumberOfNodes()
        try:
            nodes = [self._addDicomVolume(volume, modality, f"{modality} {volume.meta.get('series_description') or 'series'}")
                     for volume, modality in zip(volumes, ("CT", "PT"))]
            self.validateInputs(*nodes)
        except Exception:
            self._removeNodesAddedAfter(before)
            raise
        return tuple(nodes)

    def _addDicomVolume(self, volume, modality: str, name: str):
        # The series description names the node: never the patient's name or id.
        node = self.addVolumeNode(volume, modality, name)
        node.SetAttribute(SERIES_UID_ATTRIBUTE, str(volume.meta.get("series_instance_uid", "")))
        return node

    def loadStudy(self, ctPath: str | os.PathLike, petPath: str | os.PathLike):
        """Load a CT and a PET file and check that they overlap.

        Returns:
            ``(ctNode, petNode)``.
        Raises:
            LogicError: unreadable files or non-overlapping volumes; nothing is added then.
        """
        before = self.scene.GetNumberOfNodes()
        added = []
        try:
            added.append(self.loadVolume(ctPath, "CT"))
            added.append(self.loadVolume(petPath, "PT"))
            self.validateInputs(*added)
        except Exception:
            self._removeNodesAddedAfter(before)
            raise
        return tuple(added)

    def _removeNodesAddedAfter(self, count: int) -> None:
        while self.scene.GetNumberOfNodes() > count:
            self.scene.RemoveNode(self.scene.GetNthNode(self.scene.GetNumberOfNodes() - 1))

    def suvPet(self, petNode):
        """A PET node whose voxels are SUVbw: ``petNode`` itself, or for a PET that Slicer's
        DICOM module loaded (stored values, no SUV) a new node converted from its DICOM files
        with the engine's QIBA SUVbw code.

        Raises:
            LogicError: the PET is not SUV and cannot be converted here (the message says how
                to load it).
        """
        state = Pet.suvState(petNode)
        if state in (Pet.SUV, Pet.UNKNOWN):
            return petNode
        if state == Pet.DICOM_UNCONVERTED and self.dicomFiles is not None:
            return self.convertDicomPetToSuv(petNode)
        raise LogicError(_notSuvMessage(petNode))

    def convertDicomPetToSuv(self, petNode):
        """Read the DICOM files of a PET loaded by Slicer's DICOM module (``DICOM.instanceUIDs``
        -> :attr:`dicomFiles`) with the engine, in SUVbw, into a new volume node.

        Raises:
            LogicError: the files are not found, the series is split across folders, or the
                header lacks what SUVbw needs (the engine names the field).
        """
        uids = (petNode.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
        files = [self.dicomFiles(uid) if self.dicomFiles else None for uid in uids]
        missing = [uid for uid, file in zip(uids, files) if not file or not Path(file).is_file()]
        if not uids or missing:
            raise LogicError(f"the DICOM files of the PET {petNode.GetName()} are not in the DICOM database "
                             f"({len(missing)} of {len(uids)} missing): {_HOW_TO_LOAD_PET}")
        volume = _engineVolume(files[0], "PT")  # the series of that file, in SUVbw
        read = {Path(f).resolve() for f in volume.meta.get("dicom_files", [])}
        if not all(Path(f).resolve() in read for f in files):
            raise LogicError(f"the DICOM files of the PET {petNode.GetName()} are not all in one folder "
                             f"({Path(files[0]).parent}): {_HOW_TO_LOAD_PET}")
        node = self._addDicomVolume(volume, "PT", f"{petNode.GetName()} SUVbw")
        node.SetAttribute("DistillSeg.ConvertedFrom", petNode.GetID())
        _placeBeside(node, petNode)
        return node

    def validateInputs(self, ctNode, petNode) -> None:
        """Raise :class:`LogicError` with a message for the user unless CT and PET are usable."""
        if ctNode is None:
            raise LogicError("no CT volume selected: load a CT or select it in the CT selector")
        if petNode is None:
            raise LogicError("no PET volume selected: load a PET (SUV) or select it in the PET selector")
        if ctNode is petNode:
            raise LogicError(f"the same volume ({ctNode.GetName()}) is selected as CT and as PET")
        if volumeModality(petNode) == "CT":
            raise LogicError(f"the volume selected as PET ({petNode.GetName()}) is a CT")
        if Pet.suvState(petNode) in (Pet.NOT_SUV, Pet.DICOM_UNCONVERTED):
            raise LogicError(_notSuvMessage(petNode))
        requireOverlap(ctNode, petNode)

    @staticmethod
    def roiBounds(roiNode) -> tuple[float, ...] | None:
        """``(x0, y0, z0, x1, y1, z1)`` RAS mm of a markups ROI (``None`` when no ROI)."""
        if roiNode is None:
            return None
        bounds = [0.0] * 6
        roiNode.GetRASBounds(bounds)
        return (bounds[0], bounds[2], bounds[4], bounds[1], bounds[3], bounds[5])

    def requireUsableRoi(self, roiNode, ctNode) -> tuple[float, ...]:
        """The ROI's RAS bounds, or :class:`LogicError` saying what to do when it has no
        extent or lies outside the CT."""
        bounds = np.asarray(self.roiBounds(roiNode), float)
        size = bounds[3:] - bounds[:3]
        if not np.all(np.isfinite(size)) or np.any(size <= 0.5):
            raise LogicError(f"the region of interest {roiNode.GetName()} is empty ({_mm(size)}): press 'Place at "
                             "PET hot spot', or drag its handles in the slice views around the lesion")
        low, high = volumeFromNode(ctNode, withArray=False).world_bounds()
        if np.any(bounds[3:] <= low) or np.any(bounds[:3] >= high):
            raise LogicError(f"the region of interest {roiNode.GetName()} lies outside the CT {ctNode.GetName()}: "
                             "move it onto the lesion")
        return tuple(float(v) for v in bounds)

    def placeRoiAtHotSpot(self, roiNode, petNode, sliceNode=None, margin_mm: float = Pet.ROI_MARGIN_MM) -> None:
        """Give a (new) markups ROI the box around the PET hot spot (``Pet.hotSpotBox``) on the
        slice ``sliceNode`` shows (the hottest voxel of that slice inside the view, its region
        grown in 3D), or anywhere in the PET without a slice node, grown by ``margin_mm``. The
        slice keeps it on the lesion the radiologist looks at: the hottest voxel of a whole
        study is often elsewhere (benchmarks/results/hot_spot_search.json)."""
        if petNode is None:
            raise LogicError("no PET volume selected: the region of interest is placed around the PET hot spot")
        searchBounds, plane = Pet.viewedSlice(sliceNode) if sliceNode is not None else (None, None)
        Pet.setRoiBox(roiNode, *Pet.hotSpotBox(self.suvPet(petNode), searchBounds, plane, margin_mm))

    @staticmethod
    def exportVolume(node, path: str | os.PathLike, compress: bool = True) -> Path:
        """Write a volume node to ``path`` (NIfTI/NRRD by extension) with a storage node
        that is not added to the scene (so the scene is not modified)."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(1 if compress else 0)
        if not storage.WriteData(node):
            raise LogicError(f"cannot write {node.GetName()} to {path}")
        return Path(path)

    def exportedVolume(self, node) -> Path:
        """The volume as a file for the engine, written once per version of the node.

        Loading a study and every Run used to write the whole CT and PET again, gzipped, on
        the GUI thread (seconds per study). The engine reads these files once and they are
        temporary, so they are written uncompressed, and again only when the node changed
        (its own or its voxels' modification time); removed with the scene, the module or the
        study object, and at exit.
        """
        version = self.nodeVersion(node)
        cached = self._exported.get(node.GetID())
        if cached is not None and cached[0] == version and cached[1].is_file():
            return cached[1]
        if self._studyDir is None:
            self._studyDir = Path(tempfile.mkdtemp(prefix="DistillSeg-study-"))
            # Removed with the study, or when Python exits, even if nobody calls cleanup (a
            # session dropped by the web server, a logic made by a script): a CT and PET each time.
            self._removeStudyDir = weakref.finalize(self, shutil.rmtree, str(self._studyDir), ignore_errors=True)
        path = self._studyDir / f"{len(self._exported)}-{''.join(c for c in node.GetID() if c.isalnum())}.nii"
        path = self.exportVolume(node, path, compress=False)
        if cached is not None:
            cached[1].unlink(missing_ok=True)
        self._exported[node.GetID()] = (version, path)
        return path

    def _forgetExports(self) -> None:
        self._exported.clear()
        if self._removeStudyDir is not None:
            self._removeStudyDir()  # runs once: also detached from exit
            self._removeStudyDir = None
        self._studyDir = None


_HOW_TO_LOAD_PET = ("load the PET series with this module's 'Load DICOM series...', which converts it to SUVbw "
                    "from its header")

def _notSuvMessage(petNode) -> str:
    if Pet.suvState(petNode) == Pet.DICOM_UNCONVERTED:
        return (f"the PET {petNode.GetName()} was loaded by Slicer's DICOM module in its stored units (Bq/ml), "
                f"not SUV: {_HOW_TO_LOAD_PET}")
    return f"the PET {petNode.GetName()} is in Bq/ml, not SUV: {_HOW_TO_LOAD_PET}"

def _engineVolume(path: str | os.PathLike, modality: str):
    """An engine volume (file or DICOM series; PET in SUVbw); engine errors as :class:`LogicError`."""
    from DistillSegLib.errors import DistillSegError
    from DistillSegLib.io.case import load_volume

    try:
        return load_volume(path, modality)
    except DistillSegError as exc:
        raise LogicError(str(exc)) from exc

def _placeBeside(node, sibling) -> None:
    """Put ``node`` under the subject-hierarchy parent of ``sibling`` (its study)."""
    scene = node.GetScene()
    shNode = scene.GetSubjectHierarchyNode() if scene is not None else None
    if shNode is None:
        return
    parent = shNode.GetItemParent(shNode.GetItemByDataNode(sibling))
    item = shNode.GetItemByDataNode(node)
    if parent and item:
        shNode.SetItemParent(item, parent)

def _mm(size: np.ndarray) -> str:
    return " x ".join(f"{v:.0f}" for v in size) + " mm"
