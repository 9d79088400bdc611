"""The in-Slicer self-test's loop (``DistillSegModuleLib/SelfTest.py``) on slicer-core: the sample
case loaded as Slicer's Sample Data module loads it (volumes by the archetype reader, no units;
the label as a segmentation), the bundled student, real engine processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DistillSeg"))

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML scene")

from DistillSegModuleLib import Samples  # noqa: E402
from DistillSegModuleLib.Logic import SceneLogic  # noqa: E402
from DistillSegModuleLib.Nodes import ensureSegmentationConverters, findVolume  # noqa: E402
from DistillSegModuleLib.ProcessRunner import SubprocessRunner  # noqa: E402
from DistillSegModuleLib.SelfTest import MINIMUM_DICE, refinementLoop  # noqa: E402

TIMEOUT_S = 600


def load_sample_like_sample_data(scene, folder: Path):
    """CT, PET (VolumeFile: archetype reader) and reference (SegmentationFile) named as Sample Data names them."""
    nodes = []
    for sample in Samples.FILES:
        volume = sample.loadFileType == "VolumeFile"
        node = slicer.vtkMRMLScalarVolumeNode() if volume else slicer.vtkMRMLSegmentationNode()
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode() if volume else slicer.vtkMRMLSegmentationStorageNode()
        node.SetName(sample.nodeName)
        storage.SetFileName(str(folder / sample.name))
        scene.AddNode(node)
        assert storage.ReadData(node), sample.name
        node.CreateDefaultDisplayNodes()
        nodes.append(node)
    return nodes


def test_the_self_test_loop_runs_on_slicer_core(sts_case_dir, tmp_path):
    ensureSegmentationConverters()
    scene = slicer.vtkMRMLScene()
    ct, pet, reference = load_sample_like_sample_data(scene, sts_case_dir(Samples.CASE))
    assert findVolume(scene, "PT") is pet and findVolume(scene, "CT") is ct  # picked by name, no units
    logic = SceneLogic(scene, SubprocessRunner(), python=sys.executable)

    def wait(start):
        ended = []
        start(ended.append)
        logic.runner.wait(TIMEOUT_S)
        return ended[0]

    result = refinementLoop(logic, ct, pet, reference, tmp_path, wait, device="cpu")
    print(f"bundled student Dice on the sample {Samples.CASE}: {result.dice:.3f}")
    assert result.dice >= MINIMUM_DICE
    assert result.newModel.is_file()
    assert result.newSegmentationNode is not result.segmentationNode
    assert result.newSegmentationNode.GetSegmentation().GetNumberOfSegments() == 1
    assert reference.GetSegmentation().GetNumberOfSegments() == 1  # the reference is left alone
    logic.cleanup()
