"""The DistillSeg GUI: every ``slicer.app`` / ``qt`` / ``ctk`` call of the module lives here.

The widget reads the user's choices, hands them to the module's logic (``DistillSegLogic``:
Slicer's parameter node + :class:`~DistillSegModuleLib.Logic.SceneLogic`) and shows what comes
back. Long work runs in engine processes polled by a Qt timer, so the UI stays responsive.
The sections live in their own files, mixed into :class:`DistillSegGui`: ``WidgetStudy.py``
(loading, ROI), ``WidgetSegmentation.py`` (Run, teacher prompts, lesion table) and
``WidgetTraining.py`` (training set, distillation); this file keeps construction, life cycle
and the helpers they share.
Exercised in Slicer only (its self-test, ``DistillSegTest``); the pytest suite checks that every
``self.ui.<name>`` used here exists in ``DistillSeg.ui`` with the class the code expects.

Follows Slicer's scripted-module template (Utilities/Templates/Modules/Scripted/TemplateKey.py,
v5.10.0): parameter node bound on enter, released on exit and when the scene closes.
"""

from __future__ import annotations

from pathlib import Path

import slicer
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from . import Catalogue
from .Logic import LogicError, Progress
from .Nodes import findVolume
from .WidgetSegmentation import SegmentationSection
from .WidgetStudy import StudySection
from .WidgetTraining import TrainingSection


class DistillSegGui(StudySection, SegmentationSection, TrainingSection, VTKObservationMixin):
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
