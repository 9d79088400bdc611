"""The DistillSeg GUI, one section: segmenting (Run, the teacher's box and clicks), cancelling,
the lesion table and the Segment Editor.

A part of :class:`~DistillSegModuleLib.Widget.DistillSegGui` (which holds ``ui``, ``logic``,
``scene`` and the shared helpers such as ``status`` and ``updateButtons``); its Qt and Slicer
calls are those of the module's widget, moved here unchanged.
"""

from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _

from .Logic import JobResult, LogicError


class SegmentationSection:
    """Segmenting (Run, the teacher's box and clicks), cancelling, the lesion table and the Segment Editor."""

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

    def onRun(self) -> None:
        def start(pet, onProgress, onFinished):
            self.ui.modelsFolderPathLineEdit.addCurrentPathToHistory()
            self.scene.startSegmentation(
                self.ui.ctSelector.currentNode(), pet, self.ui.studentModelComboBox.currentData,
                self.ui.roiSelector.currentNode(), self.ui.deviceComboBox.currentText,
                onProgress=onProgress, onFinished=onFinished)

        # A promptable student reads the ROI as its box: a loose one (the hot-spot button's 50 mm
        # margin) costs it much more than it costs a prompt-free student (docs/slicer.md).
        self.startSegmentationJob(start, _("segmenting from the ROI as the student's box (keep it close around "
                                           "the lesion)...") if self.selectedStudentTakesPrompts()
                                  else _("segmenting..."))

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
        from .Logic import modelTakesPrompts

        return modelTakesPrompts(self.ui.studentModelComboBox.currentData)

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
