"""DistillSeg: PET/CT tumour segmentation with a small student distilled from foundation models.

The module is thin: the GUI lives in ``DistillSegModuleLib/Widget.py``, the work in
``DistillSegModuleLib/Logic.py`` and, below it, in the engine package ``DistillSegLib``
(run as ``PythonSlicer -m DistillSegLib ...`` for anything long). Not for clinical use.
"""

import os
import sys

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

# In a source checkout (Developer mode, module path = <repo>/DistillSeg) the engine sits one
# folder up; in an installed extension CMake copies it beside this file.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_REPO_ROOT, "DistillSegLib")) and _REPO_ROOT not in sys.path:
    sys.path.append(_REPO_ROOT)

from DistillSegModuleLib.Logic import DistillSegLogic as _SceneLogic  # noqa: E402
from DistillSegModuleLib.Logic import LogicError  # noqa: E402,F401  (re-exported)


class DistillSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DistillSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["DistillSeg contributors"]
        self.parent.helpText = (
            "<b>Not for clinical use.</b> Research software, not cleared by any regulator.<br><br>"
            "Automatic PET/CT tumour segmentation with a small 3D student network distilled from "
            "segmentation foundation models (LiteMedSAM, SAM, SAM-Med3D, SegAnyPET). Load a CT and a PET "
            "(SUV), draw a region of interest for crop models, run the student, correct the result in the "
            "Segment Editor, add the corrected case to the training set and distil a better student.<br>"
            'See the <a href="https://github.com/distillseg/DistillSeg#use-in-3d-slicer">documentation</a>.')
        self.parent.acknowledgementText = (
            "Methods: MuDuo (mutual distillation of modality-specific SAM-Med3D and SegAnyPET teachers), "
            "KnowSAM (SAM-guided co-training with SAM-induced knowledge distillation) and TS-KD "
            "(task-specific knowledge distillation of a LoRA-fine-tuned foundation model). "
            "Data: The Cancer Imaging Archive (TCIA), CC BY 3.0: Vallieres M et al., Soft-tissue-Sarcoma, "
            "DOI 10.7937/K9/TCIA.2015.7GO2GSKS; Fedorov A et al., QIN-HEADNECK, "
            "DOI 10.7937/K9/TCIA.2015.K0F5CGLI; Clark K et al., J Digit Imaging 26(6):1045-1057 (2013).")


class DistillSegWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from DistillSegModuleLib.Widget import DistillSegGui, QProcessRunner

        self.logic = DistillSegLogic(runner=QProcessRunner())
        self.gui = DistillSegGui(self.parent, self.resourcePath, self.logic)

    def enter(self):
        self.gui.initializeParameterNode()

    def cleanup(self):
        self.gui.cleanup()


class DistillSegLogic(ScriptedLoadableModuleLogic, _SceneLogic):
    """The scene logic of ``DistillSegModuleLib.Logic`` with Slicer's parameter-node support."""

    def __init__(self, scene=None, runner=None, python=None):
        ScriptedLoadableModuleLogic.__init__(self)
        _SceneLogic.__init__(self, scene if scene is not None else slicer.mrmlScene, runner, python)


class DistillSegTest(ScriptedLoadableModuleTest):
    """In-Slicer smoke test of the logic on a real scene (the full suite is pytest, Testing/)."""

    def runTest(self):
        self.setUp()
        self.test_bad_input_changes_nothing()

    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_bad_input_changes_nothing(self):
        logic = DistillSegLogic()
        before = slicer.mrmlScene.GetNumberOfNodes()
        try:
            logic.validateInputs(None, None)
        except LogicError as error:
            self.assertIn("no CT volume selected", str(error))
        else:
            self.fail("no error for missing inputs")
        self.assertEqual(before, slicer.mrmlScene.GetNumberOfNodes())
        self.delayDisplay("DistillSeg logic test passed")
