"""The DistillSeg GUI, one section: loading a study and placing its region of interest.

A part of :class:`~DistillSegModuleLib.Widget.DistillSegGui` (which holds ``ui``, ``logic``,
``scene`` and the shared helpers such as ``status`` and ``updateButtons``); its Qt and Slicer
calls are those of the module's widget, moved here unchanged.
"""

from __future__ import annotations

import os

import qt
import slicer
from slicer.i18n import tr as _

from .Logic import LogicError


class StudySection:
    """Loading a study and placing its region of interest."""

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

    def onPlaceRoi(self) -> None:
        roi = self.ui.roiSelector.currentNode()
        if roi is None:
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", _("DistillSeg ROI"))
            self.ui.roiSelector.setCurrentNode(roi)
        self.placeNewRoi(roi)

    def placeNewRoi(self, roi) -> None:
        """A new ROI (the selector's "Create new", or the button) goes around the PET hot spot
        on the slice the red view shows (the lesion the radiologist looks at, not the hottest
        organ of the study), instead of being an empty box."""
        if not self.dependenciesReady():
            return
        pet = self.suvPet()
        if pet is None:
            self.status(_("Select a PET, then press 'Place at PET hot spot', or drag the ROI's handles around the "
                          "lesion."), error=True)
            return
        try:
            self.scene.placeRoiAtHotSpot(roi, pet, _sliceNode("Red"), self.ui.studentModelComboBox.currentData)
        except LogicError as error:
            self.status(str(error), error=True)
            return
        self.status(_("Region of interest placed around the PET hot spot of the red view's slice: check it in the "
                      "slice views."))


def _sliceNode(viewName: str):
    """The MRML slice node of a slice view, or ``None`` when the view is not there."""
    layoutManager = slicer.app.layoutManager()
    widget = layoutManager.sliceWidget(viewName) if layoutManager is not None else None
    return widget.mrmlSliceNode() if widget is not None else None
