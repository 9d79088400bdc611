"""The DistillSeg GUI: every ``slicer.app`` / ``qt`` / ``ctk`` call of the module lives here.

The widget reads the user's choices, hands them to the module's logic (``DistillSegLogic``:
Slicer's parameter node + :class:`~DistillSegModuleLib.Logic.SceneLogic`) and shows what comes
back. Long work runs in engine processes polled by a Qt timer, so the UI stays responsive.
Exercised in Slicer only (its self-test, ``DistillSegTest``); the pytest suite checks that every
``self.ui.<name>`` used here exists in ``DistillSeg.ui`` with the class the code expects.

Follows Slicer's scripted-module template (Utilities/Templates/Modules/Scripted/TemplateKey.py,
v5.10.0): parameter node bound on enter, released on exit and when the scene closes.
"""

from __future__ import annotations

import os
from pathlib import Path

import qt
import slicer
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from . import Catalogue
from .Logic import JobResult, LogicError, Progress
from .Nodes import findVolume


class DistillSegGui(VTKObservationMixin):
    """Builds the UI from ``Resources/UI/DistillSeg.ui`` into ``parent`` and wires it to the logic.

    Args:
        parent: the module widget's ``parent`` (a ``qSlicerScriptedLoadableModuleWidget``).
        resourcePath: ``ScriptedLoadableModuleWidget.resourcePath``.
        logic: ``DistillSeg.DistillSegLogic`` (``getParameterNode()`` and ``sceneLogic``).
    """

    def __init__(self, parent, resourcePath, logic) -> None:
        VTKObservationMixin.__init__(self)
        from .Parameters import DistillSegParameterNode

        uiWidget = slicer.util.loadUI(resourcePath("UI/DistillSeg.ui"))
        parent.layout().addWidget(uiWidget)
        self.parent = parent
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic
        self.scene = logic.sceneLogic
        self.catalogue = Catalogue.bundledCatalogue()
        self._parameterNodeClass = DistillSegParameterNode
        self._parameterNode = None
        self._connections = None
        self._dependenciesReady = False

        self.ui.statusLabel.setText(_("Not for clinical use."))
        if not self.ui.modelsFolderPathLineEdit.currentPath:  # else the last path of its history
            self.ui.modelsFolderPathLineEdit.currentPath = str(Catalogue.defaultModelsFolder())
        for teacher in self.catalogue["teachers"]:
            self.ui.teacherComboBox.addItem(teacher["title"], teacher["name"])

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.loadFilesButton.connect("clicked(bool)", self.onLoadFiles)
        self.ui.loadDicomButton.connect("clicked(bool)", self.onLoadDicom)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.placeRoiButton.connect("clicked(bool)", self.onPlaceRoi)
        self.ui.roiSelector.connect("nodeAddedByUser(vtkMRMLNode*)", self.placeNewRoi)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.modelsFolderPathLineEdit.connect("currentPathChanged(QString)", lambda _: self.refreshModels())
        self.ui.teacherComboBox.connect("currentIndexChanged(int)", lambda _: self.updateTeacherAvailability())
        self.ui.teacherCheckpointPathLineEdit.connect("currentPathChanged(QString)",
                                                      lambda _: self.updateTeacherAvailability())
        self.ui.runButton.connect("clicked(bool)", self.onRun)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.cancelDistilButton.connect("clicked(bool)", self.onCancel)
        self.ui.updateStatisticsButton.connect("clicked(bool)", self.updateStatistics)
        self.ui.editSegmentationButton.connect("clicked(bool)", self.onEditSegmentation)
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSet)
        self.ui.distilButton.connect("clicked(bool)", self.onDistil)
        for selector in (self.ui.ctSelector, self.ui.petSelector, self.ui.segmentationSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _: self.updateButtons())
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.showLesionTable)

        self.buildPromptSection(parent.layout())

        self.refreshModels()
        self.updateTeacherAvailability()
        self.initializeParameterNode()

    def buildPromptSection(self, layout) -> None:
        """Interactive segmentation: the teacher chosen under Distil, prompted by the ROI (a box)
        and clicks (markups points), run by the warm engine."""
        import ctk

        section = ctk.ctkCollapsibleButton()
        section.text = _("Interactive segmentation (teacher)")
        form = qt.QFormLayout(section)
        self.pointsSelector = _markupsSelector(_("Clicks on the lesion (a point whose description is '-' is "
                                                 "a background click)"))
        self.negativePointsSelector = _markupsSelector(_("Optional list of background (negative) clicks"))
        self.promptModalityComboBox = qt.QComboBox()
        self.promptModalityComboBox.addItems(["CT", "PET"])
        self.promptModalityComboBox.toolTip = _("The image the teacher sees")
        self.segmentWithTeacherButton = qt.QPushButton(_("Segment with teacher (ROI box and clicks)"))
        self.correctWithClicksButton = qt.QPushButton(_("Correct the selected segmentation with the clicks"))
        self.clicksToStudentCheckBox = qt.QCheckBox(_("Clicks re-run the selected student when it takes prompts"))
        self.clicksToStudentCheckBox.checked = True
        self.clicksToStudentCheckBox.toolTip = _("A promptable student (trained with --promptable) answers the "
                                                 "clicks in 3D, in about a second; otherwise the teacher does")
        form.addRow(_("Clicks:"), self.pointsSelector)
        form.addRow(_("Background clicks:"), self.negativePointsSelector)
        form.addRow(_("Teacher sees:"), self.promptModalityComboBox)
        form.addRow(self.segmentWithTeacherButton)
        form.addRow(self.correctWithClicksButton)
        form.addRow(self.clicksToStudentCheckBox)
        layout.addWidget(section)
        self.segmentWithTeacherButton.connect("clicked(bool)", lambda _: self.onSegmentWithTeacher(correct=False))
        self.correctWithClicksButton.connect("clicked(bool)", lambda _: self.onSegmentWithTeacher(correct=True))

    # ----------------------------------------------------------------- life cycle

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def cleanup(self) -> None:
        self.scene.cleanup()  # cancels a running job, stops the warm engine
        self.setParameterNode(None)
        self.removeObservers()

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)  # the scene logic itself cancels a running job
        self.ui.lesionTableView.setMRMLTableNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Bind the GUI to the scene's parameter node; pick CT/PET by modality if unset."""
        node = self._parameterNodeClass(self.logic.getParameterNode())
        if node.ctVolume is None:
            node.ctVolume = findVolume(slicer.mrmlScene, "CT")
        if node.petVolume is None:
            node.petVolume = findVolume(slicer.mrmlScene, "PT")
        self.setParameterNode(node)

    def setParameterNode(self, node) -> None:
        # Folders and checkpoint paths are per-user history of their ctkPathLineEdits
        # (settingKey + addCurrentPathToHistory); the scene's parameter node keeps the rest.
        if self._parameterNode is not None and self._connections is not None:
            self._parameterNode.disconnectGui(self._connections)
            self._connections = None
        self._parameterNode = node
        if node is not None:
            self._connections = node.connectParametersToGui({
                "ctVolume": self.ui.ctSelector, "petVolume": self.ui.petSelector, "roi": self.ui.roiSelector,
                "segmentation": self.ui.segmentationSelector, "device": self.ui.deviceComboBox,
                "strategy": self.ui.strategyComboBox, "steps": self.ui.stepsSpinBox,
            })
        self.updateButtons()

    # ----------------------------------------------------------------- helpers

    def status(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.setText(text)
        self.ui.statusLabel.setStyleSheet("color: #c0392b" if error else "")
        slicer.util.showStatusMessage(text, 5000)

    def dependenciesReady(self) -> bool:
        if not self._dependenciesReady:
            from .Install import ensureDependencies

            self._dependenciesReady = ensureDependencies()
        return self._dependenciesReady

    def updateButtons(self) -> None:
        running = self.scene.isRunning()  # until no process of the job is left
        haveStudy = self.ui.ctSelector.currentNode() is not None and self.ui.petSelector.currentNode() is not None
        haveSegmentation = self.ui.segmentationSelector.currentNode() is not None
        self.ui.runButton.enabled = haveStudy and self.ui.studentModelComboBox.count > 0 and not running
        self.ui.cancelButton.enabled = running
        self.ui.cancelDistilButton.enabled = running
        self.ui.updateStatisticsButton.enabled = haveStudy and haveSegmentation and not running
        self.ui.editSegmentationButton.enabled = haveSegmentation
        self.ui.addToTrainingSetButton.enabled = haveStudy and not running  # no segmentation: unlabelled
        self.ui.distilButton.enabled = not running
        self.ui.placeRoiButton.enabled = self.ui.petSelector.currentNode() is not None
        self.segmentWithTeacherButton.enabled = haveStudy and not running
        self.correctWithClicksButton.enabled = haveStudy and haveSegmentation and not running

    def refreshModels(self) -> None:
        current = self.ui.studentModelComboBox.currentData
        self.ui.studentModelComboBox.clear()
        for entry in Catalogue.studentModels(self.ui.modelsFolderPathLineEdit.currentPath, self.catalogue):
            source = _("bundled") if entry.source == "bundled" else _("your models")
            self.ui.studentModelComboBox.addItem(f"{entry.title} ({source})", str(entry.path))
        index = self.ui.studentModelComboBox.findData(current) if current else -1
        self.ui.studentModelComboBox.currentIndex = max(index, 0)
        self.updateButtons()

    def selectModel(self, path: Path) -> None:
        self.refreshModels()
        index = self.ui.studentModelComboBox.findData(str(path))
        if index >= 0:
            self.ui.studentModelComboBox.currentIndex = index

    def updateTeacherAvailability(self) -> None:
        name = self.ui.teacherComboBox.currentData
        teacher = next((t for t in self.catalogue["teachers"] if t["name"] == name), None)
        if teacher is None:
            self.ui.teacherAvailabilityLabel.setText("")
            return
        self.ui.teacherCheckpointPathLineEdit.enabled = teacher.get("checkpoint") != "embedded"
        ok, message = Catalogue.teacherAvailability(teacher, self.ui.teacherCheckpointPathLineEdit.currentPath)
        self.ui.teacherAvailabilityLabel.setText(message)
        self.ui.teacherAvailabilityLabel.setStyleSheet("" if ok else "color: #c0392b")

    def showProgress(self, bar, progress: Progress) -> None:
        if progress.message:
            self.status(progress.message)
        if progress.total:
            bar.maximum = progress.total
            bar.value = progress.step
            loss = _(", loss {loss:.4f}").format(loss=progress.loss) if progress.loss is not None else ""
            eta = _(", {seconds:.0f} s left").format(seconds=progress.eta) if progress.eta is not None else ""
            self.status(f"{progress.stage}: {progress.step}/{progress.total}{loss}{eta}")

    def suvPet(self):
        """The selected PET in SUV; a PET loaded by Slicer's DICOM module is converted once
        (a new node, then selected). ``None`` (message shown) when it cannot be used."""
        pet = self.ui.petSelector.currentNode()
        try:
            with slicer.util.WaitCursor():
                converted = self.scene.suvPet(pet) if pet is not None else None
        except LogicError as error:
            self.status(str(error), error=True)
            return None
        if converted is not pet:
            self.ui.petSelector.setCurrentNode(converted)
            self.status(_("{name}: converted to SUVbw from its DICOM files").format(name=converted.GetName()))
        return converted

    # ----------------------------------------------------------------- loading

    def onLoadFiles(self) -> None:
        ctPath = qt.QFileDialog.getOpenFileName(None, _("CT image (HU)"), "", "Images (*.nii *.nii.gz *.nrrd *.mha)")
        if not ctPath:
            return
        petPath = qt.QFileDialog.getOpenFileName(None, _("PET image (SUVbw)"), os.path.dirname(ctPath),
                                                 "Images (*.nii *.nii.gz *.nrrd *.mha)")
        if not petPath:
            return
        try:
            ct, pet = self.scene.loadStudy(ctPath, petPath)
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.showStudy(ct, pet)

    def onLoadDicom(self) -> None:
        """Read a CT and a PET DICOM series folder with the engine (PET converted to SUVbw)."""
        ctFolder = qt.QFileDialog.getExistingDirectory(None, _("Folder of the CT DICOM series"))
        if not ctFolder:
            return
        petFolder = qt.QFileDialog.getExistingDirectory(None, _("Folder of the PET DICOM series"),
                                                        os.path.dirname(ctFolder))
        if not petFolder or not self.dependenciesReady():
            return
        try:
            with slicer.util.WaitCursor():
                ct, pet = self.scene.loadDicomStudy(ctFolder, petFolder)
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.showStudy(ct, pet, _(" (PET in SUVbw)"))

    def onLoadSample(self) -> None:
        from .Samples import downloadSample

        with slicer.util.tryWithErrorDisplay(_("Could not load the sample data"), waitCursor=True):
            ct, pet, reference = downloadSample()
            reference.SetDisplayVisibility(False)
            self.showStudy(ct, pet, _(" (sample; its reference segmentation is hidden)"))

    def showStudy(self, ct, pet, note: str = "") -> None:
        """Select the loaded CT/PET, show the PET (PET colour map) fused over the CT and start
        the teacher's slice embeddings in the warm engine's background."""
        from .Pet import showAsPet

        self.ui.ctSelector.setCurrentNode(ct)
        self.ui.petSelector.setCurrentNode(pet)
        showAsPet(pet)
        slicer.util.setSliceViewerLayers(background=ct, foreground=pet, foregroundOpacity=0.4, fit=True)
        self.status(_("loaded {ct} and {pet}{note}").format(ct=ct.GetName(), pet=pet.GetName(), note=note))
        if self.dependenciesReady():
            try:  # a box or a click then costs only the prompt decoder
                self.scene.embedStudyInBackground(ct, pet, self.ui.teacherComboBox.currentData or "litemedsam")
            except LogicError as error:
                self.status(str(error), error=True)

    # ----------------------------------------------------------------- region of interest

    def onPlaceRoi(self) -> None:
        roi = self.ui.roiSelector.currentNode()
        if roi is None:
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", _("DistillSeg ROI"))
            self.ui.roiSelector.setCurrentNode(roi)
        self.placeNewRoi(roi)

    def placeNewRoi(self, roi) -> None:
        """A new ROI (the selector's "Create new", or the button) goes around the PET hot spot
        that the red slice view shows, instead of being an empty box."""
        if not self.dependenciesReady():
            return
        pet = self.suvPet()
        if pet is None:
            self.status(_("Select a PET, then press 'Place at PET hot spot', or drag the ROI's handles around the "
                          "lesion."), error=True)
            return
        try:
            self.scene.placeRoiAtHotSpot(roi, pet, _viewBounds("Red"))
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.status(_("Region of interest placed around the PET hot spot: check it in the slice views."))

    # ----------------------------------------------------------------- segmentation

    def onRun(self) -> None:
        def start(pet, onProgress, onFinished):
            self.ui.modelsFolderPathLineEdit.addCurrentPathToHistory()
            self.scene.startSegmentation(
                self.ui.ctSelector.currentNode(), pet, self.ui.studentModelComboBox.currentData,
                self.ui.roiSelector.currentNode(), self.ui.deviceComboBox.currentText,
                onProgress=onProgress, onFinished=onFinished)

        self.startSegmentationJob(start, _("segmenting..."))

    def startSegmentationJob(self, start, message: str) -> None:
        """Check the dependencies and the PET, then ``start(pet, onProgress, onFinished)`` a
        segmentation job shown on the Run progress bar (a logic error is shown, nothing starts)."""
        if not self.dependenciesReady():
            return
        pet = self.suvPet()
        if pet is None:
            return
        self.ui.runProgressBar.value = 0
        try:
            start(pet, lambda p: self.showProgress(self.ui.runProgressBar, p), self.onSegmentationFinished)
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.status(message)
        self.updateButtons()

    def onSegmentationFinished(self, job: JobResult) -> None:
        self.updateButtons()
        if not job.ok:
            self.status(_("Cancelled: nothing was changed.") if job.cancelled else _("Failed: {message}").format(
                message=job.message), error=not job.cancelled)
            return
        self.ui.segmentationSelector.setCurrentNode(job.segmentationNode)
        job.segmentationNode.CreateClosedSurfaceRepresentation()
        self.ui.runProgressBar.value = self.ui.runProgressBar.maximum
        if job.statistics is None:  # a teacher's result: the table is computed here
            self.updateStatistics()
        else:
            self.showLesionTable(job.segmentationNode, job.statistics)
        self.status(_("Done ({what}). Correct it in the Segment Editor or with clicks, then update the table.").format(
            what=job.message))

    def selectedStudentTakesPrompts(self) -> bool:
        """Whether the selected student model is promptable (False when none is selected)."""
        from .Logic import modelInfo

        model = self.ui.studentModelComboBox.currentData
        if not model:
            return False
        try:
            return bool(modelInfo(model)["metadata"].get("takes_prompts"))
        except LogicError:
            return False

    def onSegmentWithTeacher(self, correct: bool) -> None:
        """The teacher on the ROI box and clicks: a new segmentation, or (``correct``) the
        selected segmentation's first segment corrected with the clicks -- by the selected
        student instead when it takes prompts and the radiologist asked for it."""
        if correct and self.clicksToStudentCheckBox.checked and self.selectedStudentTakesPrompts():
            def startStudent(pet, onProgress, onFinished):
                self.scene.startStudentPromptSegmentation(
                    self.ui.ctSelector.currentNode(), pet, self.ui.studentModelComboBox.currentData,
                    roiNode=self.ui.roiSelector.currentNode(), pointsNode=self.pointsSelector.currentNode(),
                    negativePointsNode=self.negativePointsSelector.currentNode(),
                    correct=self.ui.segmentationSelector.currentNode(), device=self.ui.deviceComboBox.currentText,
                    onProgress=onProgress, onFinished=onFinished)

            self.startSegmentationJob(startStudent, _("the student is correcting..."))
            return

        def start(pet, onProgress, onFinished):
            self.scene.startTeacherSegmentation(
                self.ui.ctSelector.currentNode(), pet, self.ui.teacherComboBox.currentData,
                roiNode=self.ui.roiSelector.currentNode(), pointsNode=self.pointsSelector.currentNode(),
                negativePointsNode=self.negativePointsSelector.currentNode(),
                modality=self.promptModalityComboBox.currentText,
                checkpoint=self.ui.teacherCheckpointPathLineEdit.currentPath or None,
                correct=self.ui.segmentationSelector.currentNode() if correct else None,
                device=self.ui.deviceComboBox.currentText, onProgress=onProgress, onFinished=onFinished)

        self.startSegmentationJob(start, _("the teacher is segmenting..."))

    def onCancel(self) -> None:
        self.scene.cancel()
        self.status(_("Cancelling: waiting for the engine to stop..."))

    def updateStatistics(self) -> None:
        if not self.dependenciesReady():
            return
        segmentation = self.ui.segmentationSelector.currentNode()
        try:
            rows = self.scene.lesionStatistics(segmentation, self.ui.ctSelector.currentNode(), self.suvPet())
        except (LogicError, ImportError) as error:
            self.status(str(error), error=True)
            return
        self.showLesionTable(segmentation, rows)

    def showLesionTable(self, segmentation, rows: list[dict] | None = None) -> None:
        """Show (and with ``rows``, refill) the segmentation's lesion table node."""
        table = segmentation.GetNodeReference("DistillSeg.LesionTable") if segmentation is not None else None
        if rows is not None and segmentation is not None:
            table = self.scene.lesionTable(rows, segmentation, table)
        self.ui.lesionTableView.setMRMLTableNode(table)

    def onEditSegmentation(self) -> None:
        segmentation = self.ui.segmentationSelector.currentNode()
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(self.ui.petSelector.currentNode())

    # ----------------------------------------------------------------- training set and distillation

    def onAddToTrainingSet(self) -> None:
        folder = self.ui.trainingSetPathLineEdit.currentPath
        if not folder:
            self.status(_("choose a training-set folder first"), error=True)
            return
        if not self.dependenciesReady():
            return
        pet = self.suvPet()
        if pet is None:
            return
        try:
            with slicer.util.WaitCursor():
                caseId = self.scene.addToTrainingSet(folder, self.ui.ctSelector.currentNode(), pet,
                                                     self.ui.segmentationSelector.currentNode())
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.ui.trainingSetPathLineEdit.addCurrentPathToHistory()
        self.status(_("added case {case} to {folder}").format(case=caseId, folder=folder))

    def onDistil(self) -> None:
        if not self.dependenciesReady():
            return
        folder = Path(self.ui.modelsFolderPathLineEdit.currentPath or Catalogue.defaultModelsFolder())
        folder.mkdir(parents=True, exist_ok=True)
        strategy = self.ui.strategyComboBox.currentText
        outModel = Catalogue.newModelPath(folder, strategy)
        self.ui.distilProgressBar.value = 0
        try:
            teacherOptions = self.scene.teacherArguments(strategy, self.ui.teacherComboBox.currentData,
                                                         self.ui.teacherCheckpointPathLineEdit.currentPath)
            self.scene.startDistillation(
                self.ui.trainingSetPathLineEdit.currentPath, strategy, outModel,
                initModel=self.ui.studentModelComboBox.currentData or None, steps=self.ui.stepsSpinBox.value,
                extra=teacherOptions,
                onProgress=lambda p: self.showProgress(self.ui.distilProgressBar, p),
                onFinished=self.onDistillationFinished)
        except LogicError as error:
            self.status(str(error), error=True)
            return
        for pathLineEdit in (self.ui.modelsFolderPathLineEdit, self.ui.trainingSetPathLineEdit,
                             self.ui.teacherCheckpointPathLineEdit):
            pathLineEdit.addCurrentPathToHistory()  # ctkPathLineEdit keeps no history otherwise
        self.status(_("distilling ({strategy})...").format(strategy=strategy))
        self.updateButtons()

    def onDistillationFinished(self, job: JobResult) -> None:
        self.updateButtons()
        if not job.ok:
            self.status(_("Cancelled: no model was written.") if job.cancelled else _("Failed: {message}").format(
                message=job.message), error=not job.cancelled)
            return
        self.selectModel(job.modelPath)
        self.status(_("New student {name} selected.").format(name=job.modelPath.name))


def _markupsSelector(toolTip: str):
    """A selector of markups point lists (with "Create new") on the scene."""
    selector = slicer.qMRMLNodeComboBox()
    selector.nodeTypes = ["vtkMRMLMarkupsFiducialNode"]
    selector.noneEnabled = True
    selector.addEnabled = True
    selector.removeEnabled = False
    selector.renameEnabled = True
    selector.toolTip = toolTip
    selector.setMRMLScene(slicer.mrmlScene)
    return selector


def _viewBounds(viewName: str) -> list[float] | None:
    """RAS box ``(x0, y0, z0, x1, y1, z1)`` of what a slice view shows (unbounded along its
    normal), or ``None`` when the view is not there."""
    import numpy as np

    layoutManager = slicer.app.layoutManager()
    widget = layoutManager.sliceWidget(viewName) if layoutManager is not None else None
    if widget is None:
        return None
    sliceNode = widget.mrmlSliceNode()
    width, height = sliceNode.GetDimensions()[:2]
    xyToRas = slicer.util.arrayFromVTKMatrix(sliceNode.GetXYToRAS())
    corners = np.array([xyToRas @ [x, y, 0, 1] for x in (0, width) for y in (0, height)])[:, :3]
    low, high = corners.min(axis=0), corners.max(axis=0)
    normal = np.abs(xyToRas[:3, 2]) / max(np.linalg.norm(xyToRas[:3, 2]), 1e-9)
    low[normal > 0.5], high[normal > 0.5] = -1e6, 1e6
    return [*low, *high]
