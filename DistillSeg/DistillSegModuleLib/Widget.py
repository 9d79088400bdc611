"""The DistillSeg GUI: every ``slicer.app`` / ``qt`` / ``ctk`` call of the module lives here.

The widget reads the user's choices, hands them to :class:`~DistillSegModuleLib.Logic.DistillSegLogic`
and shows what comes back; long work runs in a separate process through
:class:`QProcessRunner`, so the UI stays responsive. Exercised in Slicer only (the pytest
suite checks that every ``self.ui.<name>`` used here exists in ``DistillSeg.ui``).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import qt
import slicer
from slicer.util import VTKObservationMixin

from . import Catalogue
from .Logic import DistillSegLogic, JobResult, LogicError, Progress
from .Nodes import findVolume
from .ProcessRunner import EXIT_CANCELLED, TERMINATE_GRACE_S, ProcessResult

STAT_COLUMNS = ("class", "mtv_ml", "suv_max", "suv_mean", "suv_peak", "tlg")


class QProcessRunner:
    """:class:`~DistillSegModuleLib.ProcessRunner.ProcessRunner` on ``qt.QProcess``:
    output and the end of the run arrive through the Qt event loop (main thread)."""

    def __init__(self) -> None:
        self._process = None
        self._cancelled = False
        self._stderr: deque[str] = deque(maxlen=40)
        self._buffer = ""

    def start(self, command, on_line, on_finished, env=None) -> None:
        if self.is_running():
            raise RuntimeError("a process is already running")
        process = qt.QProcess()
        if env is not None:
            environment = qt.QProcessEnvironment()
            for key, value in env.items():
                environment.insert(key, value)
            process.setProcessEnvironment(environment)
        self._cancelled, self._buffer = False, ""
        self._stderr.clear()

        def readStdout():
            self._buffer += bytes(process.readAllStandardOutput()).decode("utf-8", "replace")
            *lines, self._buffer = self._buffer.split("\n")
            for line in lines:
                on_line(line.rstrip("\r"))

        def readStderr():
            text = bytes(process.readAllStandardError()).decode("utf-8", "replace")
            self._stderr.extend(line for line in text.splitlines() if line.strip())

        def finished(exitCode, exitStatus=None):
            readStdout()
            readStderr()
            if self._buffer:
                on_line(self._buffer)
            self._process = None
            cancelled = self._cancelled or exitCode == EXIT_CANCELLED
            on_finished(ProcessResult(EXIT_CANCELLED if cancelled else int(exitCode), cancelled,
                                      "\n".join(self._stderr)))

        process.connect("readyReadStandardOutput()", readStdout)
        process.connect("readyReadStandardError()", readStderr)
        process.connect("finished(int,QProcess::ExitStatus)", finished)
        self._process = process
        process.start(command[0], list(command[1:]))

    def is_running(self) -> bool:
        return self._process is not None

    def cancel(self) -> None:
        if self._process is None:
            return
        self._cancelled = True
        self._process.terminate()  # SIGTERM: the engine rolls back its atomic writes
        if not self._process.waitForFinished(int(TERMINATE_GRACE_S * 1000)):
            self._process.kill()


class DistillSegGui(VTKObservationMixin):
    """Builds the UI from ``Resources/UI/DistillSeg.ui`` into ``parent`` and wires it to the logic."""

    def __init__(self, parent, resourcePath, logic: DistillSegLogic) -> None:
        """``logic`` is the module's logic (``DistillSeg.DistillSegLogic``, with a
        ``getParameterNode()``) running its processes through a :class:`QProcessRunner`."""
        VTKObservationMixin.__init__(self)
        from .Parameters import DistillSegParameterNode

        uiWidget = slicer.util.loadUI(resourcePath("UI/DistillSeg.ui"))
        parent.layout().addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = logic
        self.catalogue = Catalogue.bundledCatalogue()
        self._parameterNodeClass = DistillSegParameterNode
        self._parameterNode = None
        self._dependenciesReady = False
        self._connections = None

        self.ui.statusLabel.setText("Not for clinical use.")
        if not self.ui.modelsFolderPathLineEdit.currentPath:  # else the path remembered in the settings
            self.ui.modelsFolderPathLineEdit.currentPath = str(Catalogue.defaultModelsFolder())
        for teacher in self.catalogue["teachers"]:
            self.ui.teacherComboBox.addItem(teacher["title"], teacher["name"])
        self.ui.lesionTableWidget.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)

        self.ui.loadFilesButton.connect("clicked(bool)", self.onLoadFiles)
        self.ui.loadDicomButton.connect("clicked(bool)", self.onLoadDicom)
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
        self.ui.ctSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _: self.updateButtons())
        self.ui.petSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _: self.updateButtons())
        self.ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda _: self.updateButtons())

        self.refreshModels()
        self.updateTeacherAvailability()
        self.initializeParameterNode()

    # ----------------------------------------------------------------- parameter node

    def initializeParameterNode(self) -> None:
        """Bind the GUI to the scene's parameter node; pick CT/PET by modality if unset."""
        node = self._parameterNodeClass(self.logic.getParameterNode())
        if node.ctVolume is None:
            node.ctVolume = findVolume(slicer.mrmlScene, "CT")
        if node.petVolume is None:
            node.petVolume = findVolume(slicer.mrmlScene, "PT")
        if self._parameterNode is not None and self._connections is not None:
            self._parameterNode.disconnectGui(self._connections)
        self._parameterNode = node
        # Folders and checkpoint paths are remembered by the ctkPathLineEdits' settingKey
        # (per user, across scenes); the scene's parameter node keeps the rest.
        self._connections = node.connectParametersToGui({
            "ctVolume": self.ui.ctSelector, "petVolume": self.ui.petSelector, "roi": self.ui.roiSelector,
            "segmentation": self.ui.segmentationSelector, "device": self.ui.deviceComboBox,
            "strategy": self.ui.strategyComboBox, "steps": self.ui.stepsSpinBox,
        })
        self.updateButtons()

    def cleanup(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
        if self._parameterNode is not None and self._connections is not None:
            self._parameterNode.disconnectGui(self._connections)
        self.removeObservers()

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
        running = self.logic.isRunning()
        haveStudy = self.ui.ctSelector.currentNode() is not None and self.ui.petSelector.currentNode() is not None
        haveSegmentation = self.ui.segmentationSelector.currentNode() is not None
        self.ui.runButton.enabled = haveStudy and self.ui.studentModelComboBox.count > 0 and not running
        self.ui.cancelButton.enabled = running
        self.ui.cancelDistilButton.enabled = running
        self.ui.updateStatisticsButton.enabled = haveStudy and haveSegmentation and not running
        self.ui.editSegmentationButton.enabled = haveSegmentation
        self.ui.addToTrainingSetButton.enabled = haveStudy and not running  # no segmentation: unlabelled
        self.ui.distilButton.enabled = not running

    def refreshModels(self) -> None:
        current = self.ui.studentModelComboBox.currentData
        self.ui.studentModelComboBox.clear()
        for entry in Catalogue.studentModels(self.ui.modelsFolderPathLineEdit.currentPath, self.catalogue):
            self.ui.studentModelComboBox.addItem(f"{entry.title} ({entry.source})", str(entry.path))
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
            loss = f", loss {progress.loss:.4f}" if progress.loss is not None else ""
            eta = f", {progress.eta:.0f} s left" if progress.eta is not None else ""
            self.status(f"{progress.stage}: {progress.step}/{progress.total}{loss}{eta}")

    # ----------------------------------------------------------------- loading

    def onLoadFiles(self) -> None:
        ctPath = qt.QFileDialog.getOpenFileName(None, "CT image (HU)", "", "Images (*.nii *.nii.gz *.nrrd *.mha)")
        if not ctPath:
            return
        petPath = qt.QFileDialog.getOpenFileName(None, "PET image (SUVbw)", os.path.dirname(ctPath),
                                                 "Images (*.nii *.nii.gz *.nrrd *.mha)")
        if not petPath:
            return
        try:
            ct, pet = self.logic.loadStudy(ctPath, petPath)
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.showStudy(ct, pet)

    def onLoadDicom(self) -> None:
        """Read a CT and a PET DICOM series folder with the engine (PET converted to SUVbw).

        Series loaded through Slicer's DICOM module are picked up too (by their DICOM
        modality), as long as the PET is in SUV units.
        """
        ctFolder = qt.QFileDialog.getExistingDirectory(None, "Folder of the CT DICOM series")
        if not ctFolder:
            return
        petFolder = qt.QFileDialog.getExistingDirectory(None, "Folder of the PET DICOM series",
                                                        os.path.dirname(ctFolder))
        if not petFolder or not self.dependenciesReady():
            return
        try:
            with slicer.util.WaitCursor():
                ct, pet = self.logic.loadDicomStudy(ctFolder, petFolder)
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.showStudy(ct, pet, " (PET in SUVbw)")

    def showStudy(self, ct, pet, note: str = "") -> None:
        """Select the loaded CT/PET and show PET fused over CT in the slice views."""
        self.ui.ctSelector.setCurrentNode(ct)
        self.ui.petSelector.setCurrentNode(pet)
        slicer.util.setSliceViewerLayers(background=ct, foreground=pet, foregroundOpacity=0.4, fit=True)
        self.status(f"loaded {ct.GetName()} and {pet.GetName()}{note}")

    # ----------------------------------------------------------------- segmentation

    def onRun(self) -> None:
        if not self.dependenciesReady():
            return
        self.ui.runProgressBar.value = 0
        try:
            self.logic.startSegmentation(
                self.ui.ctSelector.currentNode(), self.ui.petSelector.currentNode(),
                self.ui.studentModelComboBox.currentData, self.ui.roiSelector.currentNode(),
                self.ui.deviceComboBox.currentText, self.ui.segmentationSelector.currentNode(),
                onProgress=lambda p: self.showProgress(self.ui.runProgressBar, p),
                onFinished=self.onSegmentationFinished)
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.status("segmenting...")
        self.updateButtons()

    def onSegmentationFinished(self, job: JobResult) -> None:
        self.updateButtons()
        if not job.ok:
            self.status("Cancelled: nothing was changed." if job.cancelled else f"Failed: {job.message}",
                        error=not job.cancelled)
            return
        self.ui.segmentationSelector.setCurrentNode(job.segmentationNode)
        job.segmentationNode.CreateClosedSurfaceRepresentation()
        self.ui.runProgressBar.value = self.ui.runProgressBar.maximum
        self.showStatistics(job.statistics or [])
        self.status("Done. Correct the result in the Segment Editor, then update the table.")

    def onCancel(self) -> None:
        self.logic.cancel()

    def updateStatistics(self) -> None:
        if not self.dependenciesReady():
            return
        try:
            rows = self.logic.lesionStatistics(self.ui.segmentationSelector.currentNode(),
                                               self.ui.ctSelector.currentNode(), self.ui.petSelector.currentNode())
        except (LogicError, ImportError) as error:
            self.status(str(error), error=True)
            return
        self.showStatistics(rows)

    def showStatistics(self, rows: list[dict]) -> None:
        table = self.ui.lesionTableWidget
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(STAT_COLUMNS):
                value = row.get(key, "")
                text = f"{row.get('lesion', r + 1)}: {value}" if key == "class" else f"{value:.2f}"
                table.setItem(r, c, qt.QTableWidgetItem(text))

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
            self.status("choose a training-set folder first", error=True)
            return
        if not self.dependenciesReady():
            return
        try:
            with slicer.util.tryWithErrorDisplay("Could not add the case", waitCursor=True):
                caseId = self.logic.addToTrainingSet(folder, self.ui.ctSelector.currentNode(),
                                                     self.ui.petSelector.currentNode(),
                                                     self.ui.segmentationSelector.currentNode())
        except LogicError:
            return
        self.status(f"added case {caseId} to {folder}")

    def onDistil(self) -> None:
        if not self.dependenciesReady():
            return
        folder = Path(self.ui.modelsFolderPathLineEdit.currentPath or Catalogue.defaultModelsFolder())
        folder.mkdir(parents=True, exist_ok=True)
        strategy = self.ui.strategyComboBox.currentText
        outModel = Catalogue.newModelPath(folder, strategy)
        self.ui.distilProgressBar.value = 0
        try:
            teacherOptions = self.logic.teacherArguments(strategy, self.ui.teacherComboBox.currentData,
                                                         self.ui.teacherCheckpointPathLineEdit.currentPath)
            self.logic.startDistillation(
                self.ui.trainingSetPathLineEdit.currentPath, strategy, outModel,
                initModel=self.ui.studentModelComboBox.currentData or None, steps=self.ui.stepsSpinBox.value,
                extra=teacherOptions,
                onProgress=lambda p: self.showProgress(self.ui.distilProgressBar, p),
                onFinished=self.onDistillationFinished)
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.status(f"distilling ({strategy})...")
        self.updateButtons()

    def onDistillationFinished(self, job: JobResult) -> None:
        self.updateButtons()
        if not job.ok:
            self.status("Cancelled: no model was written." if job.cancelled else f"Failed: {job.message}",
                        error=not job.cancelled)
            return
        self.selectModel(job.modelPath)
        self.status(f"New student {job.modelPath.name} selected.")
