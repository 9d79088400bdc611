"""DistillSeg module logic: MRML scene <-> engine, without Qt and without ``slicer.app``.

Only what ``slicer-core`` provides is used here (``vtkMRMLScene``, volume, segmentation and
storage nodes, ``vtkSlicerSegmentationsModuleLogic``, VTK), so the same code runs in Slicer
and in the pytest suite on a real scene. Every computation lives in :mod:`DistillSegLib`;
long work (inference, distillation) runs as ``python -m DistillSegLib ...`` through a
:class:`~DistillSegModuleLib.ProcessRunner.ProcessRunner` that reports JSON progress lines
(``DistillSegLib/progress.py``). A failed or cancelled run changes nothing in the scene or
the training set: results are imported only when the process succeeded.

Geometry and modality helpers are in ``Nodes.py``. Files are written by Slicer's storage
nodes, which write correct (LPS) NIfTI headers from the RAS matrix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .Nodes import (DICOM_UIDS_ATTRIBUTE, HU_UNITS, MODALITY_ATTRIBUTE, SERIES_UID_ATTRIBUTE, SUV_UNITS,
                    LogicError, arrayFromImageData, ensureSegmentationConverters, ijkToRasArray,
                    orientedImageFromArray, requireOverlap, volumeFromNode, volumeModality)
from .ProcessRunner import ProcessResult, ProcessRunner, SubprocessRunner, python_executable

STRATEGIES = ("supervised", "muduo", "knowsam", "tskd")
DEVICES = ("auto", "cpu", "cuda")

# Slicer terminology entry string: "context~category~type~typeModifier~anatomicContext~region~regionModifier",
# each coded item as "scheme^value^meaning" (Slicer vtkSlicerTerminologiesModuleLogic,
# SerializeTerminologyEntry; codes from SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json).
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
DEFAULT_CLASSES = {
    1: {"name": "tumour", "category": ["SCT", "49755003", "Morphologically Altered Structure"],
        "type": ["SCT", "108369006", "Neoplasm"], "color": [216, 101, 79]},
}


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


class DistillSegLogic:
    """Everything the module does, on one MRML scene.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in Slicer, a new ``vtkMRMLScene`` in tests).
        runner: how ``python -m DistillSegLib`` is run (QProcess in Slicer, subprocess otherwise).
        python: the interpreter for the engine (``PythonSlicer`` in Slicer).
    """

    def __init__(self, scene, runner: ProcessRunner | None = None, python: str | None = None) -> None:
        self.scene = scene
        self.runner = runner if runner is not None else SubprocessRunner()
        self.python = python or python_executable()
        self._tempDir: Path | None = None

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

    def loadDicomStudy(self, ctFolder: str | os.PathLike, petFolder: str | os.PathLike):
        """Read a CT and a PET DICOM series with the engine (HU; PET converted to SUVbw from
        its header, ``DistillSegLib/suv.py``) into new volume nodes, and check they overlap.

        Returns ``(ctNode, petNode)``; on any error nothing is added to the scene.
        """
        from DistillSegLib.io.case import load_volume
        from DistillSegLib.errors import DistillSegError

        try:
            volumes = [load_volume(ctFolder, "CT"), load_volume(petFolder, "PT")]
        except DistillSegError as exc:
            raise LogicError(str(exc)) from exc
        before = self.scene.GetNumberOfNodes()
        try:
            nodes = []
            for volume, modality in zip(volumes, ("CT", "PT")):
                # The series description names the node: never the patient's name or id.
                node = self.addVolumeNode(volume, modality,
                                          f"{modality} {volume.meta.get('series_description') or 'series'}")
                node.SetAttribute(SERIES_UID_ATTRIBUTE, str(volume.meta.get("series_instance_uid", "")))
                nodes.append(node)
            self.validateInputs(*nodes)
        except Exception:
            self._removeNodesAddedAfter(before)
            raise
        return tuple(nodes)

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
        units = petNode.GetVoxelValueUnits()
        if units is not None and "bq" in f"{units.GetCodeValue()} {units.GetCodeMeaning()}".lower():
            raise LogicError(f"the PET {petNode.GetName()} is in Bq/ml, not SUV: load its DICOM series with "
                             "'Load DICOM series...' of this module, which converts it to SUVbw")
        requireOverlap(ctNode, petNode)

    @staticmethod
    def roiBounds(roiNode) -> tuple[float, ...] | None:
        """``(x0, y0, z0, x1, y1, z1)`` RAS mm of a markups ROI (``None`` when no ROI)."""
        if roiNode is None:
            return None
        bounds = [0.0] * 6
        roiNode.GetRASBounds(bounds)
        return (bounds[0], bounds[2], bounds[4], bounds[1], bounds[3], bounds[5])

    # ----------------------------------------------------------------- export

    @staticmethod
    def exportVolume(node, path: str | os.PathLike) -> Path:
        """Write a volume node to ``path`` (NIfTI/NRRD by extension) with a storage node
        that is not added to the scene (so the scene is not modified)."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise LogicError(f"cannot write {node.GetName()} to {path}")
        return Path(path)

    def engineCommand(self, *args: str) -> list[str]:
        return [self.python, "-m", "DistillSegLib", *args]

    @staticmethod
    def engineEnvironment() -> dict[str, str]:
        """Environment for the engine process: DistillSegLib importable wherever it lives."""
        import importlib.util

        env = dict(os.environ)
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

    # ----------------------------------------------------------------- segmentation

    def isRunning(self) -> bool:
        return self.runner.is_running()

    def cancel(self) -> None:
        """Stop the running job; its ``on_finished`` reports ``cancelled`` and nothing changes."""
        self.runner.cancel()

    def startSegmentation(self, ctNode, petNode, model: str | os.PathLike, roiNode=None, device: str = "auto",
                          segmentationNode=None, onProgress: ProgressCallback | None = None,
                          onFinished: FinishedCallback | None = None) -> None:
        """Segment the selected study with a student model in a separate process.

        Inputs are validated first (``LogicError``, nothing started). The result is imported
        into ``segmentationNode`` (or a new node) only when the process succeeds.
        """
        self.validateInputs(ctNode, petNode)
        info = modelInfo(model)
        if info.get("field_of_view") == "crop" and roiNode is None:
            raise LogicError(f"model {Path(model).name} was trained on crops around the tumour: draw a region "
                             "of interest (markups ROI) around the lesion and select it")
        if self.isRunning():
            raise LogicError("another DistillSeg job is running: wait for it or cancel it")
        work = self._newTempDir()
        try:
            ctPath = self.exportVolume(ctNode, work / "ct.nii.gz")
            petPath = self.exportVolume(petNode, work / "pet.nii.gz")
        except Exception:
            self._cleanTempDir()
            raise
        outPath, statsPath = work / "label.nii.gz", work / "stats.json"
        command = self.predictCommand(model, ctPath, petPath, outPath, self.roiBounds(roiNode), device, statsPath)
        classes = info.get("classes") or DEFAULT_CLASSES

        def finished(result: ProcessResult) -> None:
            try:
                if not result.ok:
                    job = JobResult(False, result.cancelled, "cancelled" if result.cancelled
                                    else result.error_message())
                else:
                    node = self.importLabelmap(outPath, ctNode, classes, segmentationNode,
                                               name=f"{ctNode.GetName()} DistillSeg")
                    stats = json.loads(statsPath.read_text())["lesions"] if statsPath.exists() else None
                    job = JobResult(True, message="segmentation done", segmentationNode=node,
                                    statistics=stats)
            except Exception as exc:  # report, never leave the caller waiting
                job = JobResult(False, message=str(exc))
            finally:
                self._cleanTempDir()
            if onFinished is not None:
                onFinished(job)

        self._start(command, onProgress, finished)

    def _start(self, command: list[str], onProgress: ProgressCallback | None,
               finished: Callable[[ProcessResult], None]) -> None:
        try:
            self.runner.start(command, self._progressHandler(onProgress), finished, env=self.engineEnvironment())
        except OSError as exc:  # e.g. the interpreter is missing
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

    def importLabelmap(self, labelPath: str | os.PathLike, ctNode, classes: dict | None = None,
                       segmentationNode=None, name: str = "DistillSeg"):
        """Import a label-map file as named segments (terminology, colour) on the CT geometry.

        Each label value ``v`` becomes one segment described by ``classes[v]`` (name,
        category/type codes, colour 0-255). An existing ``segmentationNode`` has its
        segments replaced; otherwise a new node is added to the scene.
        """
        ensureSegmentationConverters()
        classes = {int(k): v for k, v in (classes or DEFAULT_CLASSES).items()}
        labelNode = slicer.vtkMRMLLabelMapVolumeNode()  # not added to the scene
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(labelPath))
        if not storage.ReadData(labelNode) or labelNode.GetImageData() is None:
            raise LogicError(f"cannot read the label map {labelPath}")
        labels = arrayFromImageData(labelNode.GetImageData())
        affine = ijkToRasArray(labelNode)
        if segmentationNode is None:
            segmentationNode = slicer.vtkMRMLSegmentationNode()
            segmentationNode.SetName(name)
            self.scene.AddNode(segmentationNode)
            segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.GetSegmentation().RemoveAllSegments()
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
        geometry.SetImageToWorldMatrix(matrix)
        merged = slicer.vtkOrientedImageData()
        if not segmentationNode.GenerateMergedLabelmapForAllSegments(
                merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, geometry, ids):
            raise LogicError(f"cannot convert segmentation {segmentationNode.GetName()} to a label map")
        array = arrayFromImageData(merged).astype(np.uint8)
        names = {i + 1: segmentationNode.GetSegmentation().GetSegment(ids.GetValue(i)).GetName()
                 for i in range(ids.GetNumberOfValues())}
        return Volume(array, ijkToRasArray(ctNode), {"label_names": names}), names

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
        from DistillSegLib.io.case import Case
        from DistillSegLib.io.dataset import write_nnunet_case
        from DistillSegLib.errors import DistillSegError

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
        return caseId

    @staticmethod
    def teacherArguments(strategy: str, teacher: str | None, checkpoint: str | os.PathLike | None) -> list[str]:
        """``distillseg train`` options that give ``strategy`` the selected teacher.

        knowsam and tskd take one 2D teacher (litemedsam or sam); muduo takes a CT teacher
        (litemedsam or sam-med3d) and a PET teacher (litemedsam or seganypet), the one not
        selected staying LiteMedSAM (options of ``DistillSegLib/distill/options.py``).
        """
        if strategy == "supervised" or not teacher or teacher == "litemedsam":
            return []
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
        training set's unlabelled studies (``--unlabelled rest``)."""
        if strategy not in STRATEGIES:
            raise LogicError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        command = self.engineCommand("train", "--data", str(dataset), "--strategy", strategy,
                                     "--out", str(outModel), "--json-progress")
        if initModel:
            command += ["--init", str(initModel)]
        if strategy != "supervised" and "--unlabelled" not in extra:
            from DistillSegLib.io.dataset import find_cases

            if any(not case.labelled for case in find_cases(dataset)):
                command += ["--unlabelled", "rest"]  # the training set's unlabelled studies
        if steps is not None:
            command += ["--steps", str(int(steps))]
        return command + list(extra)

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

        def finished(result: ProcessResult) -> None:
            self._cleanTempDir()
            if result.ok and outModel.is_file():
                job = JobResult(True, message=f"new student {outModel.name}", modelPath=outModel)
            elif result.ok:
                job = JobResult(False, message=f"training ended but wrote no model at {outModel}")
            else:
                job = JobResult(False, result.cancelled, "cancelled" if result.cancelled else result.error_message())
            if onFinished is not None:
                onFinished(job)

        self._start(command, onProgress, finished)


# --------------------------------------------------------------------------- models and terminology


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
