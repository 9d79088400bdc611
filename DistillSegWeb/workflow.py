"""The browser front end's workflow on the Slicer module's :class:`SceneLogic` (no trame, no Qt).

One study at a time, as the module's widget does it: load CT + PET (PET as SUV over the CT),
place the ROI at the PET hot spot, Run the student on the warm engine, the lesion table,
Save the segmentation as NIfTI on the CT grid, Add to training set, Distil a new student.
Every computation is the module's logic (``DistillSeg/DistillSegModuleLib/Logic.py``) or the
engine's; this class only keeps which nodes are selected and what to tell the user, and
reports every change through ``onChange`` (the trame app pushes it to the browser).

Jobs (Run, teacher, Distil) end through the runner's callbacks, which arrive on the thread
that polls the runner: the app gives :class:`EngineRunner` an asyncio scheduler, so they
arrive on the server's event loop like a button click.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .paths import ensure_module_logic_importable

ensure_module_logic_importable()

from DistillSegModuleLib import Catalogue  # noqa: E402
from DistillSegModuleLib.Logic import (DEFAULT_STRATEGY, STRATEGIES, JobResult, LogicError, Progress,  # noqa: E402
                                        SceneLogic, formatRoi, modelTakesPrompts)
from DistillSegModuleLib.Logic import TABLE_COLUMNS as MODULE_TABLE_COLUMNS  # noqa: E402

# Columns of the on-screen lesion table: (engine key, title, unit, decimals); the titles and
# units are the module's lesion table's, the browser picks the columns and rounds them.
TABLE_COLUMNS = tuple((key, *MODULE_TABLE_COLUMNS[key], decimals) for key, decimals in
                      (("lesion", 0), ("mtv_ml", 2), ("suv_max", 2), ("suv_mean", 2), ("suv_peak", 2), ("tlg", 1)))
DEFAULT_TEACHER = "litemedsam"


@dataclass
class Settings:
    """What ``distillseg web`` was started with."""

    out: Path
    models: Path
    trainingSet: Path | None = None
    device: str = "cpu"
    threads: int = 0  # torch threads of the engine and of training (0: all cores)
    python: str = field(default_factory=lambda: sys.executable)


class Workflow:
    """The module's workflow on one MRML scene, for a front end without Qt.

    Attributes read by the front end (all plain Python values): ``status``, ``error``,
    ``busy`` (``"run"``, ``"teacher"``, ``"correct"``, ``"distil"`` or ``""``), ``progress``
    (0..1 or ``None``), ``rows`` (lesion table rows), ``roiText`` (the ROI as the engine's
    ``--roi``), ``savedPath``, ``caseId``, ``modelPath`` (the student used by Run), ``clicks``
    (the positive and negative click lists, by sign).
    """

    def __init__(self, logic: SceneLogic, settings: Settings, onChange: Callable[[], None] = lambda: None) -> None:
        self.logic = logic
        self.settings = settings
        self.onChange = onChange
        self.ct = self.pet = self.roi = self.segmentation = None
        self.clicks: dict[bool, object] = {}  # point lists: True -> positive clicks, False -> negative
        self._studyNodes: list = []  # what to remove when the next study is loaded
        self.status = "load a CT and a PET"
        self.error = False
        self.busy = ""
        self.progress: float | None = None
        self.rows: list[dict] = []
        self.roiText = ""
        self.savedPath: Path | None = None
        self.caseId = ""
        self.runSeconds: float | None = None
        models = self.studentModels()
        self.modelPath: Path | None = models[0].path if models else None

    # ----------------------------------------------------------------- helpers

    def _say(self, text: str, error: bool = False) -> None:
        self.status, self.error = text, error
        self.onChange()

    def _requireStudy(self) -> None:
        if self.ct is None or self.pet is None:
            raise LogicError("load a CT and a PET first")

    def _requireSegmentation(self) -> None:
        self._requireStudy()
        if self.segmentation is None:
            raise LogicError("no segmentation yet: place the ROI and press Run")

    def _requireIdle(self) -> None:
        if self.busy:
            raise LogicError(f"wait for the running job ({self.busy}) or cancel it")

    def studentModels(self) -> list[Catalogue.ModelEntry]:
        """The students Run can use: the models folder's (newest first), then the bundled ones."""
        return Catalogue.studentModels(self.settings.models)

    def selectModel(self, path: str | os.PathLike) -> None:
        self.modelPath = Path(path)
        self._say(f"student {self.modelPath.name} selected")

    # ----------------------------------------------------------------- actions

    def load(self, ctPath: str | os.PathLike, petPath: str | os.PathLike) -> None:
        """Load CT and PET files (or DICOM folders: PET converted to SUVbw); the previous study's
        nodes (volumes, ROI, segmentations, tables) are removed once the new one is loaded.

        Raises:
            LogicError: unreadable or non-overlapping inputs (the scene is left as it was).
        """
        self._requireIdle()
        dicom = Path(ctPath).is_dir() or Path(petPath).is_dir()
        ct, pet = (self.logic.loadDicomStudy(ctPath, petPath) if dicom else self.logic.loadStudy(ctPath, petPath))
        for node in self._studyNodes:
            if node.GetScene() is not None:
                self.logic.scene.RemoveNode(node)
        self.ct, self.pet = ct, self.logic.suvPet(pet)
        self._studyNodes = [ct, pet] + ([self.pet] if self.pet is not pet else [])
        self.roi = self.segmentation = None
        self.clicks = {}
        self.rows, self.roiText, self.savedPath, self.caseId = [], "", None, ""
        self._say(f"loaded {ct.GetName()} and {pet.GetName()} (PET in SUV over the CT)")

    def placeRoi(self) -> tuple[float, ...]:
        """A new (or the current) ROI around the PET hot spot on the slice the axial (red) view
        shows, as in Slicer; its RAS bounds (mm)."""
        self._requireStudy()
        if self.roi is None:
            self.roi = self.logic.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "DistillSeg ROI")
            self._studyNodes.append(self.roi)
        self.logic.placeRoiAtHotSpot(self.roi, self.pet, self.axialSliceNode(), self.modelPath)
        bounds = self.logic.requireUsableRoi(self.roi, self.ct)
        self.roiText = formatRoi(bounds)
        self._say("region of interest placed around the PET hot spot of the axial view's slice: check it in the "
                  "slice views")
        return bounds

    def axialSliceNode(self):
        """The red (axial) view's slice node: the hot spot is looked for on the slice it shows.

        Raises:
            LogicError: the layout has no red view (the hottest voxel of the whole study, often
                an organ, is never taken instead).
        """
        nodes = self.logic.scene.GetNodesByClass("vtkMRMLSliceNode")
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if node.GetLayoutName() == "Red":
                return node
        raise LogicError("no axial (red) slice view to look for the PET hot spot on: draw the ROI by hand")

    def run(self, onDone: Callable[[JobResult], None] = lambda job: None) -> None:
        """Segment with the selected student on the ROI (the warm engine runs it)."""
        self._requireStudy()
        self._requireIdle()
        if self.modelPath is None:
            raise LogicError("no student model: distil one or install the bundled student")
        if self.roi is not None:
            self.roiText = formatRoi(self.logic.requireUsableRoi(self.roi, self.ct))
        self._startJob("run", lambda progress, finished: self.logic.startSegmentation(
            self.ct, self.pet, self.modelPath, self.roi, self.settings.device,
            onProgress=progress, onFinished=finished), onDone, f"segmenting with {self.modelPath.name}...")

    def segmentWithTeacher(self, teacher: str = DEFAULT_TEACHER,
                           onDone: Callable[[JobResult], None] = lambda job: None) -> None:
        """Segment with a teacher prompted by the ROI box (a new segmentation)."""
        self._requireStudy()
        self._requireIdle()
        if self.roi is None:
            raise LogicError("place the ROI first: it is the teacher's box prompt")
        self._startJob("teacher", lambda progress, finished: self.logic.startTeacherSegmentation(
            self.ct, self.pet, teacher, roiNode=self.roi, device=self.settings.device,
            onProgress=progress, onFinished=finished), onDone, f"the teacher {teacher} is segmenting...")

    def takesPrompts(self) -> bool:
        """Whether the selected student takes a box and clicks (trained with ``--promptable``)."""
        return modelTakesPrompts(self.modelPath)

    def clickList(self, positive: bool):
        """The markups point list of the positive (or negative) clicks, made on first use."""
        self._requireStudy()
        if positive not in self.clicks:
            name = "DistillSeg positive clicks" if positive else "DistillSeg negative clicks"
            node = self.logic.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetPointLabelsVisibility(False)  # the colour says which: green +, red -
            node.GetDisplayNode().SetSelectedColor(*((0.2, 0.9, 0.2) if positive else (0.95, 0.2, 0.2)))
            self.clicks[positive] = node
            self._studyNodes.append(node)
        return self.clicks[positive]

    def clickCounts(self) -> tuple[int, int]:
        """How many positive and negative clicks are placed."""
        return tuple(self.clicks[sign].GetNumberOfDefinedControlPoints() if sign in self.clicks else 0
                     for sign in (True, False))

    def clearClicks(self) -> None:
        for node in self.clicks.values():
            node.RemoveAllControlPoints()
        self._say("clicks cleared")

    def correctWithClicks(self, onDone: Callable[[JobResult], None] = lambda job: None) -> None:
        """The selected promptable student corrects the result's first segment: the ROI as its
        box, every click placed so far, the segment as its previous mask (only it is replaced).

        Raises:
            LogicError: no result yet, no click, or a student that takes no prompts.
        """
        self._requireSegmentation()
        self._requireIdle()
        positive, negative = self.clickCounts()  # none: the logic refuses, naming what to do
        self._startJob("correct", lambda progress, finished: self.logic.startStudentPromptSegmentation(
            self.ct, self.pet, self.modelPath, roiNode=self.roi, pointsNode=self.clicks.get(True),
            negativePointsNode=self.clicks.get(False), correct=self.segmentation, device=self.settings.device,
            onProgress=progress, onFinished=finished), onDone,
            f"the student is correcting with {positive} positive and {negative} negative click(s)...")

    def _startJob(self, kind: str, start, onDone: Callable[[JobResult], None], message: str) -> None:
        def progressed(progress: Progress) -> None:
            if progress.fraction is not None:
                self.progress = progress.fraction
                self.onChange()

        def finished(job: JobResult) -> None:
            self.busy = ""
            if job.ok:
                self.progress = 1.0
                if job.segmentationNode is not None:
                    self._adoptSegmentation(job.segmentationNode, job.statistics)
                if job.modelPath is not None:
                    self.modelPath = job.modelPath
                self._say(f"done: {job.message}")
            else:
                self.progress = None
                self._say("cancelled: nothing was changed" if job.cancelled else f"failed: {job.message}",
                          error=not job.cancelled)
            onDone(job)

        self.progress = 0.0
        self.busy = kind
        try:
            start(progressed, finished)
        except Exception:
            self.busy, self.progress = "", None
            raise
        self._say(message)

    def _adoptSegmentation(self, node, statistics: list[dict] | None) -> None:
        if self.segmentation is not node:
            for clicks in self.clicks.values():
                clicks.RemoveAllControlPoints()  # they corrected the previous result, not this one
            if self.segmentation is not None:
                self.segmentation.SetDisplayVisibility(False)  # the newest result is the one shown and saved
        self.segmentation = node
        self.savedPath = None
        self.rows = statistics if statistics is not None else self.logic.lesionStatistics(node, self.ct, self.pet)
        table = self.logic.lesionTable(self.rows, node, node.GetNodeReference("DistillSeg.LesionTable"))
        self._studyNodes += [node, table]

    def refreshTable(self) -> list[dict]:
        """Recompute the lesion table from the (corrected) segmentation."""
        self._requireSegmentation()
        self.rows = self.logic.lesionStatistics(self.segmentation, self.ct, self.pet)
        self.logic.lesionTable(self.rows, self.segmentation, self.segmentation.GetNodeReference("DistillSeg.LesionTable"))
        self._say(f"lesion table updated: {len(self.rows)} lesion(s)")
        return self.rows

    def cancel(self) -> None:
        self.logic.cancel()
        self._say("cancelling: waiting for the engine to stop...")

    def save(self) -> Path:
        """Write the segmentation (corrections included) as a NIfTI label map on the CT grid
        into the output folder: ``<case id>.nii.gz`` (segment n -> label n), written atomically."""
        from DistillSegLib.io.volume import write_image

        self._requireSegmentation()
        label, _ = self.logic.labelFromSegmentation(self.segmentation, self.ct)
        self.settings.out.mkdir(parents=True, exist_ok=True)
        path = self.settings.out / f"{self.logic.caseId(self.ct, self.pet)}.nii.gz"
        self.savedPath = write_image(label, path)
        self._say(f"saved {path}")
        return path

    def addToTrainingSet(self, labelled: bool = True) -> str:
        """The study and its (corrected) segmentation into the training set (nnU-Net layout);
        with ``labelled=False`` the study alone, for the strategies that also learn from
        studies without a segmentation (every one but ``supervised``)."""
        if labelled:
            self._requireSegmentation()
        else:
            self._requireStudy()
        if self.settings.trainingSet is None:
            raise LogicError("no training set: start `distillseg web` with --training-set FOLDER")
        segmentation = self.segmentation if labelled else None
        self.caseId = self.logic.addToTrainingSet(self.settings.trainingSet, self.ct, self.pet, segmentation)
        what = "" if labelled else " (no segmentation)"
        self._say(f"added case {self.caseId}{what} to {self.settings.trainingSet}")
        return self.caseId

    def distil(self, steps: int, strategy: str = DEFAULT_STRATEGY,
               onDone: Callable[[JobResult], None] = lambda job: None) -> Path:
        """Distil a new student from the training set, starting from the selected student; it
        is selected for Run when it is done. Returns the file it will be written to."""
        self._requireIdle()
        if self.settings.trainingSet is None:
            raise LogicError("no training set: start `distillseg web` with --training-set FOLDER")
        if strategy not in STRATEGIES:
            raise LogicError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        if steps < 1:
            raise LogicError(f"steps must be at least 1 (got {steps})")
        self.settings.models.mkdir(parents=True, exist_ok=True)
        outModel = Catalogue.newModelPath(self.settings.models, strategy)
        extra = ["--device", self.settings.device, "--val-every", str(max(steps, 1) + 1)]
        extra += ["--threads", str(self.settings.threads)] if self.settings.threads else []
        self._startJob("distil", lambda progress, finished: self.logic.startDistillation(
            self.settings.trainingSet, strategy, outModel, initModel=self.modelPath, steps=steps, extra=extra,
            onProgress=progress, onFinished=finished), onDone, f"distilling ({strategy}, {steps} steps)...")
        return outModel


def tableRows(rows: list[dict]) -> list[dict]:
    """Engine lesion rows as display strings keyed by column title (for the web table)."""
    shown = []
    for row in rows:
        shown.append({title: (f"{row[key]:.{decimals}f}" if isinstance(row.get(key), (int, float)) and decimals
                              else str(row.get(key, ""))) for key, title, _, decimals in TABLE_COLUMNS})
    return shown
