"""DistillSeg scene logic: MRML scene <-> engine, without Qt and without ``slicer.app``.

Only what ``slicer-core`` provides is used here (``vtkMRMLScene``, volume, segmentation,
markups, table and storage nodes, ``vtkSlicerSegmentationsModuleLogic``, VTK), so the same
code runs in Slicer and in the pytest suite on a real scene. Every computation lives in
:mod:`DistillSegLib`; long work (inference, distillation) runs as ``python -m DistillSegLib
...`` in a separate process.

The work is split by concern, one file each:

* :mod:`.Study`: loading CT and PET, SUV, checks, the ROI, the volumes handed to the engine;
* :mod:`.Jobs`: the engine's commands, starting, cancelling and following a job;
* :mod:`.Results`: segmentations in and out of the scene, lesion statistics and their table;
* :mod:`.TrainingSet`: adding corrected studies with their provenance, distilling.

:class:`SceneLogic` is the one object a front end holds (the Qt widget, the in-Slicer self
test, a browser front end, the tests): the same methods as before the split, each handed to
its room. In Slicer, ``DistillSeg.DistillSegLogic`` (Slicer's ``ScriptedLoadableModuleLogic``)
holds one :class:`SceneLogic` on ``slicer.mrmlScene``; the tests build it on a new
``vtkMRMLScene``. Geometry and modality helpers are in ``Nodes.py``, PET specifics in
``Pet.py``. Files are written by Slicer's storage nodes, which write correct (LPS) NIfTI
headers from the RAS matrix.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import slicer

from . import Pet
# The names front ends and tests import from here, wherever they now live.
from .Jobs import (DEVICES, FinishedCallback, JobResult, Jobs, Progress, ProgressCallback,  # noqa: F401
                   formatRoi, modelInfo, modelTakesPrompts)
from .Nodes import LogicError  # noqa: F401
from .ProcessRunner import ProcessRunner, SubprocessRunner, python_executable
from .Results import ANATOMIC_CONTEXT, DEFAULT_CLASSES, TABLE_COLUMNS, TERMINOLOGY_CONTEXT, Results  # noqa: F401
from .Results import terminologyEntry  # noqa: F401
from .Study import DicomFileLookup, Study
from .TrainingSet import DEFAULT_STRATEGY, STRATEGIES, TrainingSet  # noqa: F401

__all__ = ["ANATOMIC_CONTEXT", "DEFAULT_CLASSES", "DEFAULT_STRATEGY", "DEVICES", "STRATEGIES", "TABLE_COLUMNS",
           "TERMINOLOGY_CONTEXT", "FinishedCallback", "JobResult", "LogicError", "Progress", "ProgressCallback",
           "SceneLogic", "formatRoi", "modelInfo", "modelTakesPrompts", "terminologyEntry"]


class SceneLogic:
    """Everything the module does, on one MRML scene: a facade over its four rooms
    (:attr:`study`, :attr:`jobs`, :attr:`results`, :attr:`trainingSet`).

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
        self.study = Study(scene, dicomFiles)
        self.results = Results(scene, self.study)
        self.jobs = Jobs(scene, self.study, self.results, runner if runner is not None else SubprocessRunner(),
                         python or python_executable(), baseEnvironment or (lambda: os.environ))
        self.trainingSet = TrainingSet(self.study, self.results, self.jobs)
        # Closing the scene (File > Close scene) removes the nodes a running job would import into.
        # The observer holds only a weak reference: the scene must not keep this logic alive.
        onClose = weakref.WeakMethod(self._onSceneStartClose)
        self._closeObserver = scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent,
                                                lambda caller, event: onClose() and onClose()())

    @property
    def runner(self) -> ProcessRunner:
        return self.jobs.runner

    @property
    def python(self) -> str:
        return self.jobs.python

    @property
    def dicomFiles(self) -> DicomFileLookup | None:
        return self.study.dicomFiles

    def cleanup(self) -> None:
        """Stop observing the scene and cancel a running job (the module is being unloaded)."""
        if self._closeObserver is not None:
            self.scene.RemoveObserver(self._closeObserver)
            self._closeObserver = None
        self.cancel()
        shutdown = getattr(self.runner, "shutdown", None)
        if shutdown is not None:  # the warm engine stops with the module
            shutdown()
        self.study.forgetExports()

    def __del__(self) -> None:
        if getattr(self, "_closeObserver", None) is not None:
            self.scene.RemoveObserver(self._closeObserver)

    def _onSceneStartClose(self) -> None:
        if self.isRunning():
            self.jobs.cancelForClosedScene()  # a running job still reads its inputs
        else:
            self.study.forgetExports()

    def loadVolume(self, path: str | os.PathLike, modality: str, name: str | None = None):
        """See :meth:`Study.loadVolume`."""
        return self.study.loadVolume(path, modality, name)

    def addVolumeNode(self, volume, modality: str, name: str):
        """See :meth:`Study.addVolumeNode`."""
        return self.study.addVolumeNode(volume, modality, name)

    def loadDicomStudy(self, ctFolder: str | os.PathLike, petFolder: str | os.PathLike):
        """See :meth:`Study.loadDicomStudy`."""
        return self.study.loadDicomStudy(ctFolder, petFolder)

    def loadStudy(self, ctPath: str | os.PathLike, petPath: str | os.PathLike):
        """See :meth:`Study.loadStudy`."""
        return self.study.loadStudy(ctPath, petPath)

    def suvPet(self, petNode):
        """See :meth:`Study.suvPet`."""
        return self.study.suvPet(petNode)

    def convertDicomPetToSuv(self, petNode):
        """See :meth:`Study.convertDicomPetToSuv`."""
        return self.study.convertDicomPetToSuv(petNode)

    def validateInputs(self, ctNode, petNode) -> None:
        """See :meth:`Study.validateInputs`."""
        return self.study.validateInputs(ctNode, petNode)

    @staticmethod
    def roiBounds(roiNode) -> tuple[float, ...] | None:
        """See :meth:`Study.roiBounds`."""
        return Study.roiBounds(roiNode)

    def requireUsableRoi(self, roiNode, ctNode) -> tuple[float, ...]:
        """See :meth:`Study.requireUsableRoi`."""
        return self.study.requireUsableRoi(roiNode, ctNode)

    def placeRoiAtHotSpot(self, roiNode, petNode, sliceNode=None, studentModel=None) -> None:
        """See :meth:`Study.placeRoiAtHotSpot`; the margin suits ``studentModel``, the student that
        will Run in the ROI (``Pet.hotSpotMargin``: closer for one that reads the ROI as its box)."""
        return self.study.placeRoiAtHotSpot(roiNode, petNode, sliceNode,
                                            Pet.hotSpotMargin(modelTakesPrompts(studentModel)))

    def placeRoiAroundSegmentation(self, roiNode, segmentationNode, ctNode,
                                   margin_mm: float = Pet.ROI_MARGIN_MM) -> None:
        """See :meth:`Results.placeRoiAroundSegmentation`."""
        return self.results.placeRoiAroundSegmentation(roiNode, segmentationNode, ctNode, margin_mm)

    @staticmethod
    def exportVolume(node, path: str | os.PathLike, compress: bool = True) -> Path:
        """See :meth:`Study.exportVolume`."""
        return Study.exportVolume(node, path, compress)

    def exportedVolume(self, node) -> Path:
        """See :meth:`Study.exportedVolume`."""
        return self.study.exportedVolume(node)

    def engineCommand(self, *args: str) -> list[str]:
        """See :meth:`Jobs.engineCommand`."""
        return self.jobs.engineCommand(*args)

    def engineEnvironment(self) -> dict[str, str]:
        """See :meth:`Jobs.engineEnvironment`."""
        return self.jobs.engineEnvironment()

    def predictCommand(self, model: str | os.PathLike, ctPath: Path, petPath: Path, outPath: Path,
                       roi: Sequence[float] | None = None, device: str = "auto",
                       statsPath: Path | None = None) -> list[str]:
        """See :meth:`Jobs.predictCommand`."""
        return self.jobs.predictCommand(model, ctPath, petPath, outPath, roi, device, statsPath)

    def warmUpEngine(self) -> bool:
        """See :meth:`Jobs.warmUpEngine`."""
        return self.jobs.warmUpEngine()

    def embedStudyInBackground(self, ctNode, petNode, teacher: str = "litemedsam") -> bool:
        """See :meth:`Jobs.embedStudyInBackground`."""
        return self.jobs.embedStudyInBackground(ctNode, petNode, teacher)

    def isRunning(self) -> bool:
        """See :meth:`Jobs.isRunning`."""
        return self.jobs.isRunning()

    def cancel(self) -> None:
        """See :meth:`Jobs.cancel`."""
        return self.jobs.cancel()

    def jobFolder(self) -> Path | None:
        """See :meth:`Jobs.jobFolder`."""
        return self.jobs.jobFolder()

    def startSegmentation(self, ctNode, petNode, model: str | os.PathLike, roiNode=None, device: str = "auto",
                          onProgress: ProgressCallback | None = None,
                          onFinished: FinishedCallback | None = None) -> None:
        """See :meth:`Jobs.startSegmentation`."""
        return self.jobs.startSegmentation(ctNode, petNode, model, roiNode, device, onProgress, onFinished)

    def startTeacherSegmentation(self, ctNode, petNode, teacher: str, roiNode=None, pointsNode=None,
                                 negativePointsNode=None, modality: str | None = None,
                                 checkpoint: str | os.PathLike | None = None, correct=None, segmentIndex: int = 0,
                                 device: str = "auto", onProgress: ProgressCallback | None = None,
                                 onFinished: FinishedCallback | None = None) -> None:
        """See :meth:`Jobs.startTeacherSegmentation`."""
        return self.jobs.startTeacherSegmentation(ctNode, petNode, teacher, roiNode, pointsNode,
                                                  negativePointsNode, modality, checkpoint, correct, segmentIndex,
                                                  device, onProgress, onFinished)

    def startStudentPromptSegmentation(self, ctNode, petNode, model: str | os.PathLike, roiNode=None,
                                       pointsNode=None, negativePointsNode=None, correct=None,
                                       segmentIndex: int = 0, device: str = "auto",
                                       onProgress: ProgressCallback | None = None,
                                       onFinished: FinishedCallback | None = None) -> None:
        """See :meth:`Jobs.startStudentPromptSegmentation`."""
        return self.jobs.startStudentPromptSegmentation(ctNode, petNode, model, roiNode, pointsNode,
                                                        negativePointsNode, correct, segmentIndex, device,
                                                        onProgress, onFinished)

    def importLabelmap(self, labelPath: str | os.PathLike, ctNode, classes: dict | None = None,
                       name: str = "DistillSeg"):
        """See :meth:`Results.importLabelmap`."""
        return self.results.importLabelmap(labelPath, ctNode, classes, name)

    def labelFromSegmentation(self, segmentationNode, ctNode):
        """See :meth:`Results.labelFromSegmentation`."""
        return self.results.labelFromSegmentation(segmentationNode, ctNode)

    def eraseSlices(self, segmentationNode, ctNode, slab: slice | None = None) -> np.ndarray:
        """See :meth:`Results.eraseSlices`."""
        return self.results.eraseSlices(segmentationNode, ctNode, slab)

    @staticmethod
    def setSegmentMask(segmentationNode, mask, segmentIndex: int = 0) -> None:
        """See :meth:`Results.setSegmentMask`."""
        return Results.setSegmentMask(segmentationNode, mask, segmentIndex)

    def dice(self, segmentationNode, referenceNode, ctNode) -> float:
        """See :meth:`Results.dice`."""
        return self.results.dice(segmentationNode, referenceNode, ctNode)

    def lesionStatistics(self, segmentationNode, ctNode, petNode) -> list[dict]:
        """See :meth:`Results.lesionStatistics`."""
        return self.results.lesionStatistics(segmentationNode, ctNode, petNode)

    def lesionTable(self, rows: list[dict], segmentationNode, tableNode=None):
        """See :meth:`Results.lesionTable`."""
        return self.results.lesionTable(rows, segmentationNode, tableNode)

    @staticmethod
    def caseId(ctNode, petNode) -> str:
        """See :meth:`TrainingSet.caseId`."""
        return TrainingSet.caseId(ctNode, petNode)

    def addToTrainingSet(self, dataset: str | os.PathLike, ctNode, petNode, segmentationNode=None) -> str:
        """See :meth:`TrainingSet.addToTrainingSet`."""
        return self.trainingSet.addToTrainingSet(dataset, ctNode, petNode, segmentationNode)

    @staticmethod
    def teacherArguments(strategy: str, teacher: str | None, checkpoint: str | os.PathLike | None) -> list[str]:
        """See :meth:`TrainingSet.teacherArguments`."""
        return TrainingSet.teacherArguments(strategy, teacher, checkpoint)

    def trainCommand(self, dataset: str | os.PathLike, strategy: str, outModel: str | os.PathLike,
                     initModel: str | os.PathLike | None = None, steps: int | None = None,
                     extra: Sequence[str] = ()) -> list[str]:
        """See :meth:`TrainingSet.trainCommand`."""
        return self.trainingSet.trainCommand(dataset, strategy, outModel, initModel, steps, extra)

    def startDistillation(self, dataset: str | os.PathLike, strategy: str, outModel: str | os.PathLike,
                          initModel: str | os.PathLike | None = None, steps: int | None = None,
                          extra: Sequence[str] = (), onProgress: ProgressCallback | None = None,
                          onFinished: FinishedCallback | None = None) -> None:
        """See :meth:`TrainingSet.startDistillation`."""
        return self.trainingSet.startDistillation(dataset, strategy, outModel, initModel, steps, extra, onProgress,
                                                  onFinished)
