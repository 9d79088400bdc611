"""DistillSeg: PET/CT tumour segmentation with a small student distilled from foundation models.

The module file is thin, as KitwareMedical/SlicerNNUnet's: the GUI lives in
``DistillSegModuleLib/Widget.py``, the work in ``DistillSegModuleLib/Logic.py`` (a
:class:`SceneLogic` that :class:`DistillSegLogic` holds as a member) and, below it, in the
engine package ``DistillSegLib`` (run as ``PythonSlicer -m DistillSegLib ...`` for anything
long). Slicer constructs ``DistillSeg(parent)`` and ``DistillSegWidget(parent)``; the widget,
other modules and the tests construct ``DistillSegLogic()`` and ``DistillSegTest()`` with no
arguments (Base/Python/slicer/ScriptedLoadableModule.py). Not for clinical use.
"""

import logging
import os
import sys

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

# In a source checkout (module path = <repo>/DistillSeg) the engine sits one folder up; in an
# installed extension CMake copies it beside this file.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_REPO_ROOT, "DistillSegLib")) and _REPO_ROOT not in sys.path:
    sys.path.append(_REPO_ROOT)

from DistillSegModuleLib.Logic import LogicError, SceneLogic  # noqa: E402
from DistillSegModuleLib.EngineRunner import EngineRunner  # noqa: E402
from DistillSegModuleLib.ProcessRunner import python_executable  # noqa: E402


class DistillSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DistillSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["DistillSeg contributors"]
        self.parent.helpText = _(
            "<b>Not for clinical use.</b> Research software, not cleared by any regulator.<br><br>"
            "Automatic PET/CT tumour segmentation with a small 3D student network distilled from "
            "segmentation foundation models (LiteMedSAM, SAM, SAM-Med3D, SegAnyPET). Load a CT and a PET "
            "(SUV), draw a region of interest for crop models, run the student, correct the result in the "
            "Segment Editor, add the corrected case to the training set and distil a better student.<br>"
            "Runs in Slicer on Windows and Linux; not supported on macOS (Slicer's macOS Python gets no "
            "PyTorch 2.8).<br>"
            'See the <a href="https://github.com/distillseg/SlicerDistillSeg#use-in-3d-slicer">documentation</a>.')
        self.parent.acknowledgementText = _(
            "Methods built on: MuDuo (dualview: mutual distillation of modality-specific SAM-Med3D and SegAnyPET teachers), "
            "KnowSAM (SAM-guided co-training with SAM-induced knowledge distillation) and TS-KD "
            "(task-specific knowledge distillation of a LoRA-fine-tuned foundation model). "
            "Data: The Cancer Imaging Archive (TCIA), CC BY 3.0: Vallieres M et al., Soft-tissue-Sarcoma, "
            "DOI 10.7937/K9/TCIA.2015.7GO2GSKS; Fedorov A et al., QIN-HEADNECK, "
            "DOI 10.7937/K9/TCIA.2015.K0F5CGLI; Clark K et al., J Digit Imaging 26(6):1045-1057 (2013); "
            "sample data: IBSI validation set (Zwanenburg A et al., Radiology 295(2), 2020).")
        slicer.app.connect("startupCompleted()", _registerSampleData)


def _registerSampleData():
    from DistillSegModuleLib.Samples import registerSampleData

    registerSampleData()


class DistillSegWidget(ScriptedLoadableModuleWidget):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.gui = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from DistillSegModuleLib.Widget import DistillSegGui

        self.logic = DistillSegLogic()
        self.gui = DistillSegGui(self.parent, self.resourcePath, self.logic)

    def enter(self):
        self.gui.enter()

    def exit(self):
        self.gui.exit()

    def cleanup(self):
        if self.gui is not None:
            self.gui.cleanup()


class DistillSegLogic(ScriptedLoadableModuleLogic):
    """Slicer's parameter-node logic; the module's work is done by :attr:`sceneLogic`.

    Args:
        sceneLogic: injected (tests, other modules); by default a :class:`SceneLogic` on
            ``slicer.mrmlScene`` whose jobs go to one warm engine (``distillseg serve``; training to
            its own process), polled by a Qt timer, started
            from Slicer's startup environment, with PET files looked up in Slicer's DICOM database.
    """

    def __init__(self, sceneLogic=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self.sceneLogic = sceneLogic if sceneLogic is not None else SceneLogic(
            slicer.mrmlScene, EngineRunner(schedule=_qtSingleShot, onEngineStopped=_engineStopped), python_executable(),
            baseEnvironment=_startupEnvironment, dicomFiles=_dicomDatabaseFile)


def _qtSingleShot(seconds, function):
    import qt

    qt.QTimer.singleShot(int(seconds * 1000), function)


def _engineStopped(reason):
    """The engine died between jobs (it has been restarted): say so in Slicer's log."""
    logging.warning(f"DistillSeg: {reason}")


def _startupEnvironment():
    """The environment Slicer was started with: PythonSlicer (a launcher) sets Slicer's own
    again, as for ``slicer.util.launchConsoleProcess``."""
    return slicer.util.startupEnvironment()


def _dicomDatabaseFile(instanceUid):
    database = getattr(slicer, "dicomDatabase", None)
    return database.fileForInstance(instanceUid) if database is not None else None


class DistillSegTest(ScriptedLoadableModuleTest):
    """The whole loop inside Slicer, on the sample case: load it, place the ROI, run the bundled
    student (Dice >= 0.6 against the sample's label), correct one slice, add the case to a
    training set, distil a few steps, run the new student (``DistillSegModuleLib/SelfTest.py``).

    Run by the extension's CTest (``slicer_add_python_unittest``) and by the module's Test
    button. The same loop runs on slicer-core in the pytest suite
    (``Testing/test_slicer_selftest.py``); this test adds Slicer's own parts: the first-use
    installer, Sample Data download, the Qt timer that polls the engine processes,
    PythonSlicer, the widget.
    """

    TIMEOUT_S = 900

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_widget_builds()
        self.setUp()
        self.test_refinement_loop_on_the_sample()

    def test_widget_builds(self):
        slicer.util.selectModule("DistillSeg")
        widget = slicer.modules.DistillSegWidget
        self.assertIsNotNone(widget.logic.getParameterNode())
        self.assertTrue(widget.gui.ui.runButton is not None)

    def test_refinement_loop_on_the_sample(self):
        import tempfile
        from pathlib import Path

        from DistillSegModuleLib import Install, Samples
        from DistillSegModuleLib.SelfTest import refinementLoop

        self.assertTrue(Install.ensureDependencies(), "the engine's dependencies are not installed")
        logic = DistillSegLogic().sceneLogic
        try:
            self.delayDisplay("Loading the sample PET/CT")
            ct, pet, reference = Samples.downloadSample()
            self.delayDisplay("Run, correct, add to the training set, distil, run again")
            result = refinementLoop(logic, ct, pet, reference, Path(tempfile.mkdtemp(prefix="DistillSegTest-")),
                                    lambda start: self._wait(logic, start))
        finally:
            logic.cleanup()  # the test's own warm engine: not left running after each Test or Reload
        self.assertGreater(result.newSegmentationNode.GetSegmentation().GetNumberOfSegments(), 0)
        self.delayDisplay(f"DistillSeg self-test passed (bundled student Dice {result.dice:.3f})")

    def _wait(self, logic, start):
        """Start a job and process Qt events until it ends (its processes are polled by a QTimer)."""
        import time

        ended = []
        start(ended.append)
        deadline = time.monotonic() + self.TIMEOUT_S
        while not ended and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        if not ended:
            logic.cancel()
            self.fail(f"job still running after {self.TIMEOUT_S} s")
        return ended[0]


__all__ = ["DistillSeg", "DistillSegWidget", "DistillSegLogic", "DistillSegTest", "LogicError"]
