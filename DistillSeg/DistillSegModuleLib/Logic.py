"""DistillSeg scene logic: MRML scene <-> engine, without Qt and without ``slicer.app``.

Only what ``slicer-core`` provides is used here (``vtkMRMLScene``, volume, segmentation,
markups, table and storage nodes, ``vtkSlicerSegmentationsModuleLogic``, VTK), so the same
code runs in Slicer and in the pytest suite on a real scene. Every computation lives in
:mod:`DistillSegLib`; long work (inference, distillation) runs as ``python -m DistillSegLib
...`` through a :class:`~DistillSegModuleLib.ProcessRunner.ProcessRunner` that reports JSON
progress lines (``DistillSegLib/progress.py``). A failed or cancelled run changes nothing in
the scene or the training set: results are imported only when the process succeeded, always
into a new segmentation node (a segmentation the radiologist corrected is never
overwritten).

In Slicer, ``DistillSeg.DistillSegLogic`` (Slicer's ``ScriptedLoadableModuleLogic``) holds one
:class:`SceneLogic` on ``slicer.mrmlScene``; the tests build it on a new ``vtkMRMLScene``.
Geometry and modality helpers are in ``Nodes.py``, PET specifics in ``Pet.py``. Files are
written by Slicer's storage nodes, which write correct (LPS) NIfTI headers from the RAS matrix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from . import Catalogue, Pet, Prompts
from .Nodes import (DICOM_UIDS_ATTRIBUTE, HU_UNITS, MODALITY_ATTRIBUTE, SERIES_UID_ATTRIBUTE, SUV_UNITS,
                    LogicError, arrayFromImageData, ensureSegmentationConverters, ijkToRasArray,
                    orientedImageFromArray, requireOverlap, volumeFromNode, volumeModality)
from .ProcessRunner import ProcessResult, ProcessRunner, SubprocessRunner, python_executable

STRATEGIES = ("supervised", "selftrain", "muduo", "knowsam", "tskd")
DEVICES = ("auto", "cpu", "cuda")

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

# ``dicomFiles(sopInstanceUid) -> file path or None`` (in Slicer: ``slicer.dicomDatabase.fileForInstance``).
DicomFileLookup = Callable[[str], "str | None"]


@dataclass
class Progress:
    """One JSON progress line of the engine (see ``DistillSegLib/progress.py``)."""

    stage: str
    step: int = 0
    total: int = 0
    loss: float | None = None
    eta: float | None = None
    message: str = ""
    metrics: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        return self.step / self.total if self.total else None

    @classmethod
    def parse(cls, line: str) -> "Progress | None":
        """Parse one stdout line; ``None`` for anything that is not a JSON object."""
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(record, dict) or "stage" not in record:
            return None
        return cls(
            stage=str(record["stage"]), step=int(record.get("step") or 0), total=int(record.get("total") or 0),
            loss=record.get("loss"), eta=record.get("eta"), message=str(record.get("message") or ""),
            metrics=record.get("metrics") or {},
        )


@dataclass
class JobResult:
    """How a segmentation or distillation job ended (passed to ``on_finished``)."""

    ok: bool
    cancelled: bool = False
    message: str = ""
    segmentationNode: Any = None
    modelPath: Path | None = None
    statistics: list[dict] | None = None


ProgressCallback = Callable[[Progress], None]
FinishedCallback = Callable[[JobResult], None]


# --------------------------------------------------------------------------- the logic


class SceneLogic:
    """Everything the module does, on one MRML scene.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in Slicer, a new ``vtkMRMLScene`` in tests).
        runner: how ``python -m DistillSegLib`` is run (a :class:`SubprocessRunner` polled by a
            Qt timer in Slicer; polled by the caller otherwise).
        python: the interpreter for the engine (``PythonSlicer`` in Slicer).
        baseEnvironment: the environment the engine starts from (Slicer: the environment
            Slicer was started with, ``slicer.util.startupEnvironment``, as
            ``slicer.util.launchConsoleProcess`` uses; otherwise ``os.environ``).
        dicomFiles: the file of a DICOM instance UID (Slicer: the DICOM database), used to
            convert a PET loaded with Slicer's DICOM module to SUV; ``None``: such a PET is refused.
    """

    def __init__(self, scene, runner: ProcessRunner | None = None, python: str | None = None,
                 baseEnvironment: Callable[[], Mapping[str, str]] | None = None,
                 dicomFiles: DicomFileLookup | None = None) -> None:
        self.scene = scene
        self.runner = runner if runner is not None else SubprocessRunner()
        self.python = python or python_executable()
        self.baseEnvironment = baseEnvironment or (lambda: os.environ)
        self.dicomFiles = dicomFiles
        self._tempDir: Path | None = None
        self._studyDir: Path | None = None  # the volumes exported for the engine (see exportedVolume)
        self._exported: dict[str, tuple[tuple[int, ...], Path]] = {}  # node ID -> (version, file)
        self._sceneClosed = False
        # Closing the scene (File > Close scene) removes the nodes a running job would import into.
        # The observer holds only a weak reference: the scene must not keep this logic alive.
        onClose = weakref.WeakMethod(self._onSceneStartClose)
        self._closeObserver = scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent,
                                                lambda caller, event: onClose() and onClose()())

    def cleanup(self) -> None:
        """Stop observing the scene and cancel a running job (the module is being unloaded)."""
        if self._closeObserver is not None:
            self.scene.RemoveObserver(self._closeObserver)
            self._closeObserver = None
        self.cancel()
        shutdown = getattr(self.runner, "shutdown", None)
        if shutdown is not None:  # the warm engine stops with the module
            shutdown()
        self._forgetExports()

    def __del__(self) -> None:
        if getattr(self, "_closeObserver", None) is not None:
            self.scene.RemoveObserver(self._closeObserver)

    def _onSceneStartClose(self) -> None:
        if not self.isRunning():
            self._forgetExports()  # a running job still reads its inputs
        if self.isRunning():
            self._sceneClosed = True
            self.cancel()

    # ----------------------------------------------------------------- loading

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

    # ----------------------------------------------------------------- PET in SUV

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

    # ----------------------------------------------------------------- validation

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

    def placeRoiAtHotSpot(self, roiNode, petNode, searchBounds: Sequence[float] | None = None) -> None:
        """Give a (new) markups ROI the box around the PET hot spot (``Pet.hotSpotBox``),
        searched in ``searchBounds`` (RAS mm; in Slicer what the slice view shows)."""
        if petNode is None:
            raise LogicError("no PET volume selected: the region of interest is placed around the PET hot spot")
        Pet.setRoiBox(roiNode, *Pet.hotSpotBox(self.suvPet(petNode), searchBounds))

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

    # ----------------------------------------------------------------- export

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
        (its own or its voxels' modification time); removed with the scene or the module.
        """
        image = node.GetImageData()
        version = (node.GetMTime(), image.GetMTime() if image is not None else 0)
        cached = self._exported.get(node.GetID())
        if cached is not None and cached[0] == version and cached[1].is_file():
            return cached[1]
        if self._studyDir is None:
            self._studyDir = Path(tempfile.mkdtemp(prefix="DistillSeg-study-"))
        path = self._studyDir / f"{len(self._exported)}-{''.join(c for c in node.GetID() if c.isalnum())}.nii"
        path = self.exportVolume(node, path, compress=False)
        if cached is not None:
            cached[1].unlink(missing_ok=True)
        self._exported[node.GetID()] = (version, path)
        return path

    def _forgetExports(self) -> None:
        self._exported.clear()
        if self._studyDir is not None:
            shutil.rmtree(self._studyDir, ignore_errors=True)
            self._studyDir = None

    def engineCommand(self, *args: str) -> list[str]:
        return [self.python, "-m", "DistillSegLib", *args]

    def engineEnvironment(self) -> dict[str, str]:
        """Environment for the engine process: DistillSegLib importable wherever it lives."""
        import importlib.util

        env = dict(self.baseEnvironment())
        spec = importlib.util.find_spec("DistillSegLib")
        if spec is not None and spec.origin:
            root = str(Path(spec.origin).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def predictCommand(self, model: str | os.PathLike, ctPath: Path, petPath: Path, outPath: Path,
                       roi: Sequence[float] | None = None, device: str = "auto",
                       statsPath: Path | None = None) -> list[str]:
        """``python -m DistillSegLib predict ...`` for one study (ROI in RAS mm)."""
        if device not in DEVICES:
            raise LogicError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
        command = self.engineCommand("predict", "--model", str(model), "--ct", str(ctPath), "--pet", str(petPath),
                                     "--out", str(outPath), "--json-progress", "--device", device)
        if roi is not None:
            command.append(f"--roi={formatRoi(roi)}")  # one token: argparse reads "-9.0,..." as an option
        if statsPath is not None:
            command += ["--stats", str(statsPath)]
        return command

    # ----------------------------------------------------------------- jobs

    def warmUpEngine(self) -> bool:
        """Start the warm engine now (when the runner is an ``EngineRunner``), so the first Run
        does not wait for torch and MONAI to import. False when the runner has no engine."""
        warmUp = getattr(self.runner, "warmUp", None)
        if warmUp is None:
            return False
        warmUp(self.python, self.engineEnvironment())
        return True

    def embedStudyInBackground(self, ctNode, petNode, teacher: str = "litemedsam") -> bool:
        """Queue the teacher's slice embeddings of the study in the warm engine, behind any Run
        or click, so that a box or a click later costs only the prompt decoder. False when the
        runner has no engine. The exported volumes stay until the scene or the module closes."""
        embed = getattr(self.runner, "embedStudy", None)
        if embed is None:
            return False
        self.validateInputs(ctNode, petNode)
        ctPath, petPath = self.exportedVolume(ctNode), self.exportedVolume(petNode)
        embed(self.python, str(ctPath), str(petPath), teacher, env=self.engineEnvironment())
        return True

    def isRunning(self) -> bool:
        """True while a job's process (or any process it started) is alive."""
        return self.runner.is_running()

    def cancel(self) -> None:
        """Stop the running job; its ``on_finished`` reports ``cancelled`` and nothing changes."""
        self.runner.cancel()

    def jobFolder(self) -> Path | None:
        """The running job's temporary folder (removed once no process of the job is left)."""
        return self._tempDir

    def startSegmentation(self, ctNode, petNode, model: str | os.PathLike, roiNode=None, device: str = "auto",
                          onProgress: ProgressCallback | None = None,
                          onFinished: FinishedCallback | None = None) -> None:
        """Segment the selected study with a student model in a separate process.

        Inputs are validated first (``LogicError``, nothing started). The result is imported
        into a new segmentation node only when the process succeeds; existing segmentations
        (a corrected one included) are never modified.
        """
        self.validateInputs(ctNode, petNode)
        info = modelInfo(model)
        if info["metadata"].get("takes_prompts") and roiNode is not None:  # the ROI is the student's box
            self.startStudentPromptSegmentation(ctNode, petNode, model, roiNode=roiNode, device=device,
                                                onProgress=onProgress, onFinished=onFinished)
            return
        if info.get("field_of_view") == "crop" and roiNode is None:
            raise LogicError(f"model {Path(model).name} was trained on crops around the tumour: draw a region "
                             "of interest (markups ROI) around the lesion and select it")
        roi = self.requireUsableRoi(roiNode, ctNode) if roiNode is not None else None
        work, ctPath, petPath, _ = self._exportJobInputs(ctNode, petNode)
        outPath, statsPath = work / "label.nii.gz", work / "stats.json"
        command = self.predictCommand(model, ctPath, petPath, outPath, roi, device, statsPath)
        classes = info.get("classes") or DEFAULT_CLASSES

        def imported() -> JobResult:
            name = self.scene.GenerateUniqueName(f"{ctNode.GetName()} DistillSeg")
            node = self.importLabelmap(outPath, ctNode, classes, name=name)
            _keepProvenance(node, outPath)
            stats = json.loads(statsPath.read_text())["lesions"] if statsPath.exists() else None
            return JobResult(True, message="segmentation done", segmentationNode=node, statistics=stats)

        self._start(command, onProgress, onFinished, imported)

    def startTeacherSegmentation(self, ctNode, petNode, teacher: str, roiNode=None, pointsNode=None,
                                 negativePointsNode=None, modality: str | None = None,
                                 checkpoint: str | os.PathLike | None = None, correct=None, segmentIndex: int = 0,
                                 device: str = "auto", onProgress: ProgressCallback | None = None,
                                 onFinished: FinishedCallback | None = None) -> None:
        """Segment with a teacher prompted by the radiologist: the ROI as a box, the point
        lists as clicks (:mod:`.Prompts`), on the warm engine when the runner is an ``EngineRunner``.

        Without ``correct`` the result goes into a new segmentation. With ``correct`` (a
        segmentation) the clicks correct its segment ``segmentIndex``: the teacher re-runs with
        that segment as the mask prompt and only that segment is replaced. Either way the
        result's provenance (teacher, prompt) is kept on the node for :meth:`addToTrainingSet`.
        """
        self.validateInputs(ctNode, petNode)
        clicks, box, (work, ctPath, petPath, previous) = self._promptedJobInputs(
            ctNode, petNode, roiNode, pointsNode, negativePointsNode, correct)
        outPath = work / "label.nii.gz"
        command = self.engineCommand("predict", "--teacher", teacher, "--ct", str(ctPath), "--pet", str(petPath),
                                     "--out", str(outPath), "--json-progress", "--device", device)
        command += ["--modality", modality] if modality else []
        checkpoint = Catalogue.teacherCheckpoint(teacher, checkpoint)
        command += ["--checkpoint", checkpoint] if checkpoint else []
        command += _promptOptions(box, clicks, previous, segmentIndex)

        imported = self._promptedResultImporter(outPath, ctNode, DEFAULT_CLASSES, f"{ctNode.GetName()} {teacher}",
                                                correct, segmentIndex, f"{teacher} done")
        self._start(command, onProgress, onFinished, imported)

    def startStudentPromptSegmentation(self, ctNode, petNode, model: str | os.PathLike, roiNode=None,
                                       pointsNode=None, negativePointsNode=None, correct=None,
                                       segmentIndex: int = 0, device: str = "auto",
                                       onProgress: ProgressCallback | None = None,
                                       onFinished: FinishedCallback | None = None) -> None:
        """Segment with a promptable student (``distillseg train --promptable``) guided by the
        radiologist: the ROI as its box, the point lists as clicks, on the warm engine when the
        runner is an ``EngineRunner``. With ``correct`` (a segmentation) the clicks re-run the
        student with that segment as its previous mask and only that segment is replaced; the
        clicks given are all the clicks of the correction so far (the student takes them all).

        Raises:
            LogicError: a student that takes no prompts, or no box and no click.
        """
        self.validateInputs(ctNode, petNode)
        info = modelInfo(model)
        if not info["metadata"].get("takes_prompts"):
            raise LogicError(f"model {Path(model).name} takes no prompts: run it on the ROI (Run), or use a teacher "
                             "for clicks")
        clicks, box, (work, ctPath, petPath, previous) = self._promptedJobInputs(
            ctNode, petNode, roiNode, pointsNode, negativePointsNode, correct)
        outPath = work / "label.nii.gz"
        command = self.engineCommand("predict", "--model", str(model), "--ct", str(ctPath), "--pet", str(petPath),
                                     "--out", str(outPath), "--json-progress", "--device", device)
        command += _promptOptions(box, clicks, previous, segmentIndex)
        classes = info.get("classes") or DEFAULT_CLASSES

        imported = self._promptedResultImporter(outPath, ctNode, classes, f"{ctNode.GetName()} DistillSeg",
                                                correct, segmentIndex, "segmentation done")
        self._start(command, onProgress, onFinished, imported)

    def _promptedJobInputs(self, ctNode, petNode, roiNode, pointsNode, negativePointsNode, correct):
        """The clicks, the ROI box (RAS mm) and the exported job inputs of a prompted job.

        Raises:
            LogicError: no box and no click, or a correction without clicks.
        """
        clicks = Prompts.clicksFromMarkups(pointsNode, negativePointsNode)
        if roiNode is None and not clicks:
            raise LogicError("draw a box (markups ROI) around the lesion or click on it (markups points) first")
        if correct is not None and not clicks:
            raise LogicError("a correction needs clicks: place points on what was missed (positive) "
                             "or wrongly included (negative)")
        box = self.requireUsableRoi(roiNode, ctNode) if roiNode is not None else None
        work, ctPath, petPath, previous = self._exportJobInputs(ctNode, petNode, correct)
        return clicks, box, (work, ctPath, petPath, previous)

    def _promptedResultImporter(self, outPath: Path, ctNode, classes, name: str, correct, segmentIndex: int,
                                message: str) -> Callable[[], JobResult]:
        """What a prompted job (teacher or promptable student) does with its label when it ends:
        a new segmentation named ``name``, or, for a correction, only segment ``segmentIndex``
        of ``correct`` replaced; the label's provenance is kept on the node."""

        def imported() -> JobResult:
            if correct is None:
                node = self.importLabelmap(outPath, ctNode, classes, name=self.scene.GenerateUniqueName(name))
            else:
                from DistillSegLib.io.volume import read_image

                node, label = correct, read_image(outPath)
                self.setSegmentMask(node, label.with_array(label.array == segmentIndex + 1), segmentIndex)
            _keepProvenance(node, outPath)
            return JobResult(True, message=message, segmentationNode=node)

        return imported

    def _exportJobInputs(self, ctNode, petNode, segmentationNode=None) -> tuple[Path, Path, Path, Path | None]:
        """A new job folder with the CT, the PET (and a segmentation as a label map) exported
        for the engine: ``(folder, ct, pet, label or None)``; nothing is left when it fails."""
        if self.isRunning():
            raise LogicError("another DistillSeg job is running: wait for it or cancel it")
        work = self._newTempDir()
        try:
            ctPath, petPath = self.exportedVolume(ctNode), self.exportedVolume(petNode)
            label = (self._exportSegmentation(segmentationNode, ctNode, work / "previous.nii.gz")
                     if segmentationNode is not None else None)
        except Exception:
            self._cleanTempDir()
            raise
        return work, ctPath, petPath, label

    def _exportSegmentation(self, segmentationNode, ctNode, path: Path) -> Path:
        """The segmentation as a label-map file on the CT grid (segment n -> label n+1)."""
        from DistillSegLib.io.volume import write_image

        label, _ = self.labelFromSegmentation(segmentationNode, ctNode)
        return write_image(label, path)

    def _start(self, command: list[str], onProgress: ProgressCallback | None, onFinished: FinishedCallback | None,
               succeeded: Callable[[], JobResult]) -> None:
        """Run ``command``; when every process of it has ended: ``succeeded()`` on success,
        remove the job's temporary folder, then report to ``onFinished``."""
        self._sceneClosed = False

        def finished(result: ProcessResult) -> None:
            try:
                if self._sceneClosed:
                    job = JobResult(False, True, "cancelled: the scene was closed")
                elif not result.ok:
                    job = JobResult(False, result.cancelled, "cancelled" if result.cancelled else result.error_message())
                else:
                    job = succeeded()
            except Exception as exc:  # report, never leave the caller waiting
                job = JobResult(False, message=str(exc))
            finally:
                self._cleanTempDir()
            if onFinished is not None:
                onFinished(job)

        try:
            self.runner.start(command, self._progressHandler(onProgress), finished, env=self.engineEnvironment())
        except OSError as exc:  # e.g. the interpreter is missing: no process, no "finished"
            self._cleanTempDir()
            raise LogicError(f"cannot start {command[0]}: {exc}") from exc

    def _progressHandler(self, onProgress: ProgressCallback | None) -> Callable[[str], None]:
        def handle(line: str) -> None:
            progress = Progress.parse(line)
            if progress is not None and onProgress is not None:
                onProgress(progress)
        return handle

    def _newTempDir(self) -> Path:
        self._cleanTempDir()
        self._tempDir = Path(tempfile.mkdtemp(prefix="DistillSeg-"))
        return self._tempDir

    def _cleanTempDir(self) -> None:
        if self._tempDir is not None:
            shutil.rmtree(self._tempDir, ignore_errors=True)
            self._tempDir = None

    # ----------------------------------------------------------------- segmentations

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

    # ----------------------------------------------------------------- statistics

    def lesionStatistics(self, segmentationNode, ctNode, petNode) -> list[dict]:
        """MTV (mL), SUVmax, SUVmean, SUVpeak, TLG per lesion of the (corrected) segmentation.

        Computed by the engine (:func:`DistillSegLib.metrics.lesions.lesion_statistics`, the table of
        ``distillseg stats`` and ``predict --stats``: one row per connected lesion of at least
        0.1 mL), so it follows every correction made in the Segment Editor. MTV is counted on the CT
        grid; the SUV figures come from the PET node's own (native) voxels, each lesion brought onto
        the PET grid by the IBSI partial-volume rule, never from a PET resampled onto the CT.
        """
        from DistillSegLib.metrics.lesions import lesion_statistics

        self.validateInputs(ctNode, petNode)
        label, names = self.labelFromSegmentation(segmentationNode, ctNode)
        return lesion_statistics(label, volumeFromNode(petNode), names)

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

    # ----------------------------------------------------------------- training set

    @staticmethod
    def caseId(ctNode, petNode) -> str:
        """``DS_<12 hex>``: a hash of the DICOM instance UIDs, or of the voxels and geometry.

        Never derived from the patient's name or id; the same study always gets the same id,
        so adding it again replaces it instead of duplicating it.
        """
        digest = hashlib.sha256()
        for node in (ctNode, petNode):
            uids = node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or node.GetAttribute(SERIES_UID_ATTRIBUTE)
            if uids:
                digest.update(uids.encode())
            else:
                image = node.GetImageData()
                digest.update(str(image.GetDimensions()).encode())
                digest.update(np.round(ijkToRasArray(node), 4).tobytes())
                digest.update(numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).tobytes())
            digest.update(b"|")
        return f"DS_{digest.hexdigest()[:12]}"

    def addToTrainingSet(self, dataset: str | os.PathLike, ctNode, petNode, segmentationNode=None) -> str:
        """Write CT, PET on the CT grid and the (corrected) label into an nnU-Net raw dataset.

        Without a segmentation the study is added unlabelled (for the semi-supervised
        strategies). Returns the generated case id; adding the same study again replaces
        its files (each one written atomically by the engine) instead of adding a second
        case. A labelled case is never silently turned into an unlabelled one.
        """
        from DistillSegLib.errors import DistillSegError
        from DistillSegLib.io.case import Case
        from DistillSegLib.io.dataset import write_nnunet_case

        self.validateInputs(ctNode, petNode)
        label, names = self.labelFromSegmentation(segmentationNode, ctNode) if segmentationNode else (None, None)
        caseId = self.caseId(ctNode, petNode)
        if label is None and (Path(dataset) / "labelsTr" / f"{caseId}.nii.gz").exists():
            raise LogicError(f"case {caseId} is already in {dataset} with a label: select its segmentation "
                             "to replace the label")
        try:
            case = Case(caseId, volumeFromNode(ctNode), volumeFromNode(petNode), label)
            write_nnunet_case(dataset, caseId, case.ct, case.pet_on_ct, label, names)
        except DistillSegError as exc:
            raise LogicError(str(exc)) from exc
        if label is not None:
            self._recordProvenance(Path(dataset) / "labelsTr" / f"{caseId}.nii.gz", segmentationNode)
        return caseId

    @staticmethod
    def _recordProvenance(labelPath: Path, segmentationNode) -> None:
        """``labelsTr/<case>.provenance.json``: where the label came from (the student or the
        teacher and prompt that made the segmentation, when DistillSeg made it), and that it is
        the segmentation as saved from Slicer, with the radiologist's corrections. File names
        at most, never folders or the node's name (both often name the patient)."""
        from DistillSegLib.provenance import for_training_set, write_provenance

        made = json.loads(segmentationNode.GetAttribute(Prompts.PROVENANCE_ATTRIBUTE) or "null")
        record = {"source": "3D Slicer segmentation",
                  "edited_in_slicer": "the label is the segmentation as it was when added, corrections included",
                  "made_by": {k: v for k, v in made.items() if k not in ("format", "created", "inputs", "outputs")}
                  if made else "drawn or imported in Slicer (not made by DistillSeg)"}
        write_provenance(labelPath, for_training_set(record))

    @staticmethod
    def teacherArguments(strategy: str, teacher: str | None, checkpoint: str | os.PathLike | None) -> list[str]:
        """``distillseg train`` options that give ``strategy`` the selected teacher.

        knowsam and tskd take one 2D teacher (litemedsam or sam); muduo takes a CT teacher
        (litemedsam or sam-med3d) and a PET teacher (litemedsam or seganypet), the one not
        selected staying LiteMedSAM (options of ``DistillSegLib/distill/options.py``).
        """
        if strategy in ("supervised", "selftrain") or not teacher or teacher == "litemedsam":
            return []  # selftrain: the control without a teacher
        file = [str(checkpoint)] if checkpoint else []
        if not file:
            raise LogicError(f"teacher {teacher} needs its checkpoint file")
        if strategy in ("knowsam", "tskd") and teacher == "sam":
            return ["--teacher", "sam", "--teacher-checkpoint", *file]
        if strategy == "muduo" and teacher == "sam-med3d":
            return ["--ct-teacher", "sam-med3d", "--ct-teacher-checkpoint", *file]
        if strategy == "muduo" and teacher == "seganypet":
            return ["--pet-teacher", "seganypet", "--pet-teacher-checkpoint", *file]
        raise LogicError(f"strategy {strategy} cannot use teacher {teacher} (knowsam/tskd: litemedsam or sam; "
                         "muduo: litemedsam, sam-med3d or seganypet)")

    # ----------------------------------------------------------------- distillation

    def trainCommand(self, dataset: str | os.PathLike, strategy: str, outModel: str | os.PathLike,
                     initModel: str | os.PathLike | None = None, steps: int | None = None,
                     extra: Sequence[str] = ()) -> list[str]:
        """``python -m DistillSegLib train ...``; distillation strategies also learn from the
        training set's unlabelled studies (``--unlabelled rest``). Without ``initModel`` the
        engine first warms the student up supervised (``--warmup-steps``, 200 by default), so
        the first round is not prompted by an untrained network."""
        from DistillSegLib.commands.train import distil_arguments

        if strategy not in STRATEGIES:
            raise LogicError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        return self.engineCommand("train", *distil_arguments(dataset, strategy, outModel, initModel, steps, extra))

    def startDistillation(self, dataset: str | os.PathLike, strategy: str, outModel: str | os.PathLike,
                          initModel: str | os.PathLike | None = None, steps: int | None = None,
                          extra: Sequence[str] = (), onProgress: ProgressCallback | None = None,
                          onFinished: FinishedCallback | None = None) -> None:
        """Distil a new student from the training set in a separate process.

        The engine writes ``outModel`` atomically, so a cancelled or failed run leaves no
        model behind; the training set is only read.
        """
        dataset = Path(dataset)
        if not (dataset / "imagesTr").is_dir():
            raise LogicError(f"training set {dataset} is not an nnU-Net dataset (no imagesTr/): "
                             "add corrected cases first")
        if self.isRunning():
            raise LogicError("another DistillSeg job is running: wait for it or cancel it")
        outModel = Path(outModel)
        # Checkpoints go to a private folder removed at the end: a cancelled run leaves
        # nothing in the models folder (the engine writes the model itself atomically).
        checkpoint = self._newTempDir() / "distillation.checkpoint.pt"
        command = self.trainCommand(dataset, strategy, outModel, initModel, steps,
                                    ["--checkpoint", str(checkpoint), *extra])

        def trained() -> JobResult:
            if not outModel.is_file():
                return JobResult(False, message=f"training ended but wrote no model at {outModel}")
            return JobResult(True, message=f"new student {outModel.name}", modelPath=outModel)

        self._start(command, onProgress, onFinished, trained)


# --------------------------------------------------------------------------- models and terminology

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


def _promptOptions(box, clicks, previous, segmentIndex: int) -> list[str]:
    """``predict``'s prompt options: the ROI box (RAS mm), the clicks, and the previous label
    whose segment ``segmentIndex`` (0-based) is corrected."""
    options = [f"--prompt-box={formatRoi(box)}"] if box is not None else []
    options += [Prompts.pointsOption(clicks)] if clicks else []
    options += ["--prompt-mask", str(previous), "--prompt-segment", str(segmentIndex + 1)] if previous else []
    return options


def _keepProvenance(segmentationNode, labelPath: Path) -> None:
    """Keep the engine's ``LABEL.provenance.json`` on the node (for Add to training set)."""
    from DistillSegLib.provenance import read_provenance

    record = read_provenance(labelPath)
    if record is not None:
        segmentationNode.SetAttribute(Prompts.PROVENANCE_ATTRIBUTE, json.dumps(record))


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


def formatRoi(bounds: Sequence[float]) -> str:
    """``x0,y0,z0,x1,y1,z1`` (RAS mm, 0.001 mm precision): the engine's ``--roi`` syntax."""
    return ",".join(f"{float(v):.3f}" for v in bounds)


def modelInfo(model: str | os.PathLike) -> dict:
    """``{"field_of_view": ..., "classes": {value: spec}}`` from a student model file's metadata.

    Raises:
        LogicError: the file is missing or not a DistillSeg student model.
    """
    from DistillSegLib.errors import DistillSegError
    from DistillSegLib.student.model_file import read_payload

    try:
        metadata = read_payload(model)["metadata"]
    except DistillSegError as exc:
        raise LogicError(str(exc)) from exc
    classes = {int(k): v for k, v in (metadata.get("classes") or {}).items()}
    return {"field_of_view": metadata.get("field_of_view"), "classes": classes or DEFAULT_CLASSES,
            "metadata": metadata}


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
