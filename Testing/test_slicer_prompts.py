"""The radiologist's prompts in the module, on a real MRML scene and the warm engine: a markups
ROI as the box, markups points as clicks (negatives marked in the point table or in a second
list), a correction that replaces only the corrected segment, and Add to training set
recording which teacher and prompt made the label."""

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
from DistillSegLib.provenance import read_provenance  # noqa: E402
from DistillSegModuleLib import Prompts  # noqa: E402
from DistillSegModuleLib.EngineRunner import EngineRunner  # noqa: E402
from DistillSegModuleLib.Logic import LogicError, SceneLogic  # noqa: E402
from DistillSegModuleLib.ProcessRunner import SubprocessRunner  # noqa: E402
from test_interactive import ras_box  # noqa: E402
from test_slicer_logic import scene_snapshot  # noqa: E402

TIMEOUT_S = 300


def points_node(scene, points, name="clicks"):
    node = slicer.vtkMRMLMarkupsFiducialNode()
    node.SetName(name)
    scene.AddNode(node)
    for position, label, description in points:
        index = node.AddControlPoint(*position, label)
        node.SetNthControlPointDescription(index, description)
    return node


def test_clicks_are_read_from_point_lists_with_their_sign():
    scene = slicer.vtkMRMLScene()
    first = points_node(scene, [((1, 2, 3), "F-1", ""), ((4, 5, 6), "F-2", "negative"), ((7, 8, 9), "F-3-", ""),
                                ((-1.5, 0, 2), "F-4", "-")])
    second = points_node(scene, [((10, 11, 12), "B-1", "")], "background")
    first.AddControlPoint(0, 0, 0, "unplaced")
    first.UnsetNthControlPointPosition(4)  # a point without a position (not placed yet): not a click
    clicks = Prompts.clicksFromMarkups(first, second)
    assert [c.positive for c in clicks] == [True, False, False, False, False]
    assert clicks[0][:3] == (1.0, 2.0, 3.0) and clicks[-1][:3] == (10.0, 11.0, 12.0)
    assert Prompts.pointsOption(clicks[:2]) == "--prompt-points=1.00,2.00,3.00,+;4.00,5.00,6.00,-"
    assert Prompts.clicksFromMarkups(None, None) == []


@pytest.fixture(scope="module")
def engine():
    runner = EngineRunner(engine_args=["--threads", "1"])
    yield runner
    runner.shutdown()


@pytest.fixture
def prompted(engine, sts_case_dir, sts_001):
    """STS_001 in a scene, an ROI 10% larger than the tumour on its 3 largest CT slices, one
    positive click at the tumour's centre on the middle one."""
    scene = slicer.vtkMRMLScene()
    logic = SceneLogic(scene, engine, python=sys.executable)
    folder = sts_case_dir("STS_001")
    ct, pet = logic.loadStudy(folder / "CT_image.nii.gz", folder / "PET_image.nii.gz")
    truth = sts_001.label_on_ct.array > 0
    middle = int(np.argmax(truth.sum(axis=(0, 1))))
    index = np.argwhere(truth[:, :, middle - 1:middle + 2])
    low, high = index.min(axis=0), index.max(axis=0)
    low[2], high[2] = middle - 1, middle + 1
    box_low, box_high = ras_box(sts_001.ct, low, high)
    roi = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(roi)
    roi.SetXYZ(*((box_low + box_high) / 2))
    roi.SetRadiusXYZ(*((box_high - box_low) / 2))
    centre = np.argwhere(truth[:, :, middle]).mean(axis=0)
    click = apply_affine(sts_001.ct.affine, np.array([[centre[0], centre[1], middle]]))[0]
    clicks = points_node(scene, [(tuple(click), "F-1", "")])
    return scene, logic, ct, pet, roi, clicks, truth, middle


def run_teacher(logic, engine, ct, pet, **kwargs):
    ended = []
    logic.startTeacherSegmentation(ct, pet, "litemedsam", modality="CT", device="cpu", onFinished=ended.append,
                                   **kwargs)
    engine.wait(TIMEOUT_S)
    assert ended and ended[0].ok, ended and ended[0].message
    return ended[0]


def test_box_and_click_segment_then_a_click_corrects_only_that_segment_and_the_label_says_where_it_came_from(
        prompted, engine, tmp_path):
    scene, logic, ct, pet, roi, clicks, truth, middle = prompted
    job = run_teacher(logic, engine, ct, pet, roiNode=roi, pointsNode=clicks)
    segmentation = job.segmentationNode
    label, _ = logic.labelFromSegmentation(segmentation, ct)
    predicted = label.array == 1
    slab = slice(middle - 1, middle + 2)
    overlap = 2 * (predicted[:, :, slab] & truth[:, :, slab]).sum() / (predicted[:, :, slab].sum() + truth[:, :, slab].sum())
    assert overlap > 0.7
    assert not predicted[:, :, middle + 3:].any()  # only inside the box
    made = json.loads(segmentation.GetAttribute(Prompts.PROVENANCE_ATTRIBUTE))
    assert made["teacher"]["name"] == "litemedsam" and made["prompt"]["box_ras_mm"]

    # the radiologist erased the middle slice by mistake; a positive click there brings it back
    array = label.array.copy()
    array[:, :, middle] = 0
    logic.setSegmentMask(segmentation, label.with_array(array == 1))
    nodes_before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    job = run_teacher(logic, engine, ct, pet, pointsNode=clicks, correct=segmentation)
    assert job.segmentationNode is segmentation
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nodes_before
    corrected, _ = logic.labelFromSegmentation(segmentation, ct)
    assert corrected.array[:, :, middle].any()
    assert (corrected.array[:, :, middle - 1] == array[:, :, middle - 1]).all()  # a click stays on its slice

    case_id = logic.addToTrainingSet(tmp_path / "training", ct, pet, segmentation)
    record = read_provenance(tmp_path / "training" / "labelsTr" / f"{case_id}.nii.gz")
    assert record["made_by"]["teacher"]["name"] == "litemedsam"
    assert "segmentation" not in record  # node names often name the patient: never in a training set


def test_prompts_that_cannot_work_are_refused_and_change_nothing(prompted, engine):
    scene, logic, ct, pet, roi, clicks, truth, middle = prompted
    before = scene_snapshot(scene)
    with pytest.raises(LogicError, match="draw a box"):
        logic.startTeacherSegmentation(ct, pet, "litemedsam")
    segmentation = slicer.vtkMRMLSegmentationNode()
    with pytest.raises(LogicError, match="needs clicks"):
        logic.startTeacherSegmentation(ct, pet, "litemedsam", roiNode=roi, correct=segmentation)
    far = points_node(scene, [((9000.0, 9000.0, 9000.0), "F-1", "")], "far")
    before = scene_snapshot(scene)
    ended = []
    logic.startTeacherSegmentation(ct, pet, "litemedsam", roiNode=roi, pointsNode=far, onFinished=ended.append)
    engine.wait(TIMEOUT_S)
    assert not ended[0].ok and "outside" in ended[0].message
    assert scene_snapshot(scene) == before
    assert not engine.is_running()


def test_the_loaded_study_is_embedded_in_the_warm_engines_background(prompted, engine):
    scene, logic, ct, pet, roi, clicks, truth, middle = prompted
    assert logic.embedStudyInBackground(ct, pet)
    job = engine._background
    assert engine.client.is_pending(job)  # queued behind any Run, not a Run itself
    assert not engine.is_running()
    engine.client.cancel(job)
    plain = SceneLogic(scene, SubprocessRunner(), python=sys.executable)
    assert not plain.embedStudyInBackground(ct, pet) and not plain.warmUpEngine()


def test_a_checkpoint_left_from_another_teacher_is_not_given_to_litemedsam(prompted, engine, tmp_path):
    """The module's one checkpoint field still holds SAM's file after a Distil with SAM: the
    embedded LiteMedSAM runs with its own weights, a teacher that takes files gets it."""
    from DistillSegModuleLib import Catalogue

    scene, logic, ct, pet, roi, clicks, truth, middle = prompted
    sam_file = tmp_path / "sam_vit_b_01ec64.pth"
    sam_file.write_bytes(b"not LiteMedSAM's weights")
    job = run_teacher(logic, engine, ct, pet, roiNode=roi, checkpoint=str(sam_file))
    assert job.ok
    assert Catalogue.teacherCheckpoint("litemedsam", sam_file) is None
    assert Catalogue.teacherCheckpoint("sam", sam_file) == str(sam_file)
    assert Catalogue.teacherCheckpoint("sam-med3d", None) is None
