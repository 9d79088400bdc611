"""The DistillSeg GUI, one section: adding the corrected study to the training set and distilling a new student.

A part of :class:`~DistillSegModuleLib.Widget.DistillSegGui` (which holds ``ui``, ``logic``,
``scene`` and the shared helpers such as ``status`` and ``updateButtons``); its Qt and Slicer
calls are those of the module's widget, moved here unchanged.
"""

from __future__ import annotations

from pathlib import Path

import slicer
from slicer.i18n import tr as _

from . import Catalogue
from .Logic import JobResult, LogicError


class TrainingSection:
    """Adding the corrected study to the training set and distilling a new student."""

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
