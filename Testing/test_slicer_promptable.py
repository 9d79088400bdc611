"""A promptable student in the module, on a real MRML scene and real engine processes: Run
gives the ROI as its box, markups points correct one segment with the previous mask, and a
student that takes no prompts refuses clicks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DistillSeg"))

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML scene")

from DistillSegLib.io.volume import apply_affine  # noqa: E402
from DistillSegModuleLib import Prompts  # noqa: E402
from DistillSegModuleLib.Logic import LogicError, SceneLogic  # noqa: E402
from DistillSegModuleLib.ProcessRunner import SubprocessRunner  # noqa: E402
from test_interactive import ras_box  # noqa: E402
from test_slicer_logic import scene_snapshot  # noqa: E402
from test_slicer_prompts import points_node  # noqa: E402

TIMEOUT_S = 300
TINY = ["--spacing", "4,4,4", "--patch-size", "32,32,16", "--channels", "8,16,32", "--res-units", "1",
        "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def promptable_student(tmp_path_factory, sts_dir) -> Path:
    from DistillSegLib.cli import main

    out = tmp_path_factory.mktemp("promptable") / "p.pt"
    assert main(["train", "--data", str(sts_dir), "--labelled", "STS_001", "--steps", "2", "--promptable",
                 "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def study(sts_case_dir, sts_001):
    scene = slicer.vtkMRMLScene()
    logic = SceneLogic(scene, SubprocessRunner(), python=sys.executable)
    folder = sts_case_dir("STS_001")
    ct, pet = logic.loadStudy(folder / "CT_image.nii.gz", folder / "PET_image.nii.gz")
    truth = sts_001.label_on_ct.array > 0
    index = np.argwhere(truth)
    low, high = ras_box(sts_001.ct, index.min(axis=0), index.max(axis=0))
    roi = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(roi)
    roi.SetXYZ(*((low + high) / 2))
    roi.SetRadiusXYZ(*((high - low) / 2))
    centre = apply_affine(sts_001.ct.affine, index.mean(axis=0)[None])[0]
    return scene, logic, ct, pet, roi, centre, (low, high)


def run(logic, start, *args, **kwargs):
    ended = []
    start(*args, onFinished=ended.append, **kwargs)
    logic.runner.wait(TIMEOUT_S)
    assert ended and ended[0].ok, ended and ended[0].message
    return ended[0]


def test_run_gives_the_roi_as_the_box_and_clicks_correct_one_segment(study, promptable_student):
    scene, logic, ct, pet, roi, centre, (low, high) = study
    job = run(logic, logic.startSegmentation, ct, pet, promptable_student, roi, "cpu")
    segmentation = job.segmentationNode
    made = json.loads(segmentation.GetAttribute(Prompts.PROVENANCE_ATTRIBUTE))
    assert made["source"] == "student"
    np.testing.assert_allclose(made["prompt"]["box_ras_mm"], np.concatenate([low, high]), atol=0.01)

    # the radiologist adds a second segment by hand, then clicks to correct the first one
    label, _ = logic.labelFromSegmentation(segmentation, ct)
    segmentation.GetSegmentation().AddEmptySegment("other")
    other = np.zeros(label.shape, bool)
    other[:2, :2, :2] = True
    logic.setSegmentMask(segmentation, label.with_array(other), 1)
    clicks = points_node(scene, [(tuple(centre), "F-1", "")])
    job = run(logic, logic.startStudentPromptSegmentation, ct, pet, promptable_student, roiNode=roi,
              pointsNode=clicks, correct=segmentation, segmentIndex=0, device="cpu")
    assert job.segmentationNode is segmentation
    made = json.loads(segmentation.GetAttribute(Prompts.PROVENANCE_ATTRIBUTE))
    assert made["prompt"]["kind"] == "correction" and made["prompt"]["point_labels"] == [1]
    corrected, _ = logic.labelFromSegmentation(segmentation, ct)
    assert (corrected.array[other] == 2).all()  # the other segment is untouched
    assert (corrected.array == 1).any()


def test_clicks_need_a_student_that_takes_prompts(study, tmp_path, sts_dir):
    from DistillSegLib.student.config import StudentConfig
    from DistillSegLib.student.model_file import save_model
    from DistillSegLib.student.network import build_student

    scene, logic, ct, pet, roi, centre, _ = study
    prompt_free = save_model(tmp_path / "prompt-free.pt", build_student(StudentConfig()), StudentConfig(), {})
    before = scene_snapshot(scene)
    with pytest.raises(LogicError, match="takes no prompts"):
        logic.startStudentPromptSegmentation(ct, pet, prompt_free, roiNode=roi)
    assert scene_snapshot(scene) == before and not logic.isRunning()
