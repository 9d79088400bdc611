"""The Slicer module's Logic on a real MRML scene (slicer-core), real sts-petct cases and real
engine processes: no mocks of slicer, vtk or the engine.

The loop under test is the module's: load PET/CT into the scene through storage nodes ->
run the student (``python -m DistillSegLib predict`` in a subprocess) -> correct -> add to
the nnU-Net training set -> distil (``python -m DistillSegLib train``) -> run the new student.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DistillSeg"))

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML scene")

from DistillSegLib.io.dataset import find_cases, read_dataset_json  # noqa: E402
from DistillSegLib.io.volume import Volume, read_image, write_image  # noqa: E402
from DistillSegModuleLib.Logic import LogicError, SceneLogic, formatRoi  # noqa: E402
from DistillSegModuleLib.Nodes import findVolume, orientedImageFromArray, volumeFromNode, volumeModality  # noqa: E402
from DistillSegModuleLib.ProcessRunner import SubprocessRunner  # noqa: E402

# A tiny student (4/8 channels, no residual units): enough to exercise the real model
# file, inference and training code paths in seconds; accuracy is not the point here.
TINY = ["--channels", "4,8", "--patch-size", "32,32,16", "--res-units", "0", "--batch-size", "1",
        "--checkpoint-every", "1000", "--val-every", "1000", "--device", "cpu", "--seed", "0"]
PROCESS_TIMEOUT_S = 300


def scene_snapshot(scene) -> list[tuple[str, str]]:
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return [(n.GetID(), n.GetClassName()) for n in nodes]


def folder_snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def logic(scene):
    return SceneLogic(scene, SubprocessRunner(), python=sys.executable)


@pytest.fixture
def study(logic, sts_case_dir):
    folder = sts_case_dir("STS_001")
    ct, pet = logic.loadStudy(folder / "CT_image.nii.gz", folder / "PET_image.nii.gz")
    return folder, ct, pet


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, sts_dir) -> Path:
    """A 2-step student trained by the engine's own ``train`` command (in-process)."""
    from DistillSegLib.cli import main

    out = tmp_path_factory.mktemp("student") / "tiny.pt"
    assert main(["train", "--data", str(sts_dir), "--labelled", "STS_001", "--steps", "2", "--out", str(out),
                 *TINY]) == 0
    return out


def corrected(segmentation, ct, logic, slab: slice) -> np.ndarray:
    """Emulate a Segment Editor correction: erase the tumour in some CT slices."""
    label, _ = logic.labelFromSegmentation(segmentation, ct)
    array = label.array.copy()
    array[:, :, slab] = 0
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        orientedImageFromArray(array, label.affine), segmentation, segment_id,
        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return array


# ------------------------------------------------------------------------- loading and choosing PET


def test_study_loads_through_storage_nodes_with_modalities(study, scene):
    folder, ct, pet = study
    assert ct.GetStorageNode().GetFileName().endswith("CT_image.nii.gz")
    assert volumeModality(ct) == "CT" and volumeModality(pet) == "PT"
    assert "SUV" in pet.GetVoxelValueUnits().GetCodeValue()
    engine_ct = read_image(folder / "CT_image.nii.gz")
    scene_ct = volumeFromNode(ct)
    np.testing.assert_array_equal(scene_ct.array, engine_ct.array)
    np.testing.assert_allclose(scene_ct.affine, engine_ct.affine, atol=1e-4)
    assert findVolume(scene, "PT") is pet and findVolume(scene, "CT") is ct


def test_dicom_study_loads_with_suv_and_a_uid_based_case_id(logic, scene):
    from conftest import require_data
    from DistillSegLib.io.case import load_volume

    folder = require_data("sts-petct-dicom", "STS_007")
    ct, pet = logic.loadDicomStudy(folder / "CT" / "image", folder / "PET" / "image")
    engine_pet = load_volume(folder / "PET" / "image", "PT")
    scene_pet = volumeFromNode(pet)
    np.testing.assert_array_equal(scene_pet.array, engine_pet.array)
    np.testing.assert_allclose(scene_pet.affine, engine_pet.affine)
    assert scene_pet.array.max() == pytest.approx(25.2, abs=0.1)  # SUVbw, not Bq/ml
    assert volumeModality(pet) == "PT" and volumeModality(ct) == "CT"
    assert findVolume(scene, "PT") is pet
    case_id = logic.caseId(ct, pet)
    from vtk.util import numpy_support

    numpy_support.vtk_to_numpy(pet.GetImageData().GetPointData().GetScalars())[0] += 1.0  # an edit
    assert logic.caseId(ct, pet) == case_id  # from the series UIDs, not the voxels
    assert "STS" not in case_id and "007" not in case_id
    before = scene_snapshot(scene)
    with pytest.raises(LogicError, match="not found"):
        logic.loadDicomStudy(folder / "CT" / "image", folder / "PET" / "missing")
    assert scene_snapshot(scene) == before


def test_pet_in_bq_per_ml_is_refused(study, logic):
    _, ct, pet = study
    units = slicer.vtkCodedEntry()
    units.SetValueSchemeMeaning("Bq/ml", "UCUM", "Becquerels/milliliter")
    pet.SetVoxelValueUnits(units)
    with pytest.raises(LogicError, match="Bq/ml, not SUV"):
        logic.validateInputs(ct, pet)


def test_pet_is_chosen_by_modality_never_by_position(scene, sts_case_dir):
    folder = sts_case_dir("STS_002")
    nodes = []
    for path in (folder / "PET_image.nii.gz", folder / "CT_image.nii.gz"):  # PET first
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(f"Volume_{len(nodes) + 1}")  # names that say nothing
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        assert storage.ReadData(node)
        scene.AddNode(node)
        nodes.append(node)
    assert findVolume(scene, "PT") is None, "a volume of unknown modality must not be picked"
    # As Slicer's DICOM loader does: the series item carries DICOM.Modality.
    sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    study_item = sh.CreateStudyItem(sh.GetSceneItemID(), "study")
    for node, modality in zip(nodes, ("PT", "CT")):
        sh.SetItemAttribute(sh.CreateItem(study_item, node), "DICOM.Modality", modality)
    assert findVolume(scene, "PT") is nodes[0]
    assert findVolume(scene, "CT") is nodes[1]


# ------------------------------------------------------------------------- bad input changes nothing


def test_no_pet_selected_is_a_clear_error_and_changes_nothing(study, logic, scene, tmp_path):
    _, ct, _ = study
    before = scene_snapshot(scene)
    with pytest.raises(LogicError, match="no PET volume selected"):
        logic.startSegmentation(ct, None, tmp_path / "student.pt")  # inputs are checked first
    with pytest.raises(LogicError, match="no CT volume selected"):
        logic.addToTrainingSet("unused", None, ct, None)
    assert not logic.isRunning()
    assert scene_snapshot(scene) == before


def test_non_overlapping_pet_is_a_clear_error_and_changes_nothing(logic, scene, sts_case_dir, tmp_path):
    folder = sts_case_dir("STS_001")
    pet = read_image(folder / "PET_image.nii.gz")
    far = Volume(pet.array, pet.affine.copy())
    far.affine[2, 3] += 5000.0  # 5 m away along S
    far_path = write_image(far, tmp_path / "far_pet.nii.gz")
    before = scene_snapshot(scene)
    with pytest.raises(LogicError, match="do not overlap"):
        logic.loadStudy(folder / "CT_image.nii.gz", far_path)
    assert scene_snapshot(scene) == before
    # The same check guards volumes that are already in the scene.
    ct = logic.loadVolume(folder / "CT_image.nii.gz", "CT")
    far_node = logic.loadVolume(far_path, "PT")
    before = scene_snapshot(scene)
    with pytest.raises(LogicError, match="do not overlap"):
        logic.addToTrainingSet(tmp_path / "dataset", ct, far_node, None)
    assert scene_snapshot(scene) == before and not (tmp_path / "dataset").exists()


# ------------------------------------------------------------------------- training set


def test_corrected_segmentation_round_trips_and_same_case_is_replaced(study, logic, scene, tmp_path):
    folder, ct, pet = study
    segmentation = logic.importLabelmap(folder / "CT_mask.nii.gz", ct)
    first = corrected(segmentation, ct, logic, slice(0, 25))
    dataset = tmp_path / "training-set"

    case_id = logic.addToTrainingSet(dataset, ct, pet)  # no segmentation: added unlabelled
    assert [(c.case_id, c.labelled) for c in find_cases(dataset)] == [(case_id, False)]
    assert logic.trainCommand(dataset, "muduo", "new.pt")[-2:] == ["--unlabelled", "rest"]
    assert "--unlabelled" not in logic.trainCommand(dataset, "supervised", "new.pt")

    assert logic.addToTrainingSet(dataset, ct, pet, segmentation) == case_id
    assert case_id.startswith("DS_") and "STS" not in case_id
    source, = find_cases(dataset)
    np.testing.assert_array_equal(read_image(source.label).array, first)
    written_ct = read_image(source.ct)
    np.testing.assert_array_equal(written_ct.array, volumeFromNode(ct).array)
    np.testing.assert_allclose(written_ct.affine, volumeFromNode(ct).affine, atol=1e-4)
    written_pet = read_image(source.pet)
    assert written_pet.shape == written_ct.shape  # PET on the CT grid, as nnU-Net needs
    assert 0.8 * volumeFromNode(pet).array.max() <= written_pet.array.max()

    second = corrected(segmentation, ct, logic, slice(40, 59))  # a further correction
    assert logic.addToTrainingSet(dataset, ct, pet, segmentation) == case_id
    cases = find_cases(dataset)
    assert [c.case_id for c in cases] == [case_id]
    np.testing.assert_array_equal(read_image(cases[0].label).array, second)
    assert read_dataset_json(dataset)["numTraining"] == 1
    with pytest.raises(LogicError, match="already in .* with a label"):
        logic.addToTrainingSet(dataset, ct, pet)  # never silently drops a label
    np.testing.assert_array_equal(read_image(cases[0].label).array, second)
    leftovers = [p.name for p in dataset.rglob("*") if ".tmp" in p.name]
    assert leftovers == [] and len(list((dataset / "imagesTr").iterdir())) == 2


def test_lesion_table_follows_the_correction(study, logic):
    from DistillSegLib.metrics.lesions import lesion_statistics

    folder, ct, pet = study
    segmentation = logic.importLabelmap(folder / "CT_mask.nii.gz", ct)
    rows = logic.lesionStatistics(segmentation, ct, pet)
    expected = lesion_statistics(read_image(folder / "CT_mask.nii.gz"), read_image(folder / "PET_image.nii.gz"))
    assert [r["mtv_ml"] for r in rows] == pytest.approx([r["mtv_ml"] for r in expected])
    for key in ("suv_max", "suv_mean", "suv_peak", "pet_voxels"):  # from the PET node's own (native) voxels
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in expected])
    kept = corrected(segmentation, ct, logic, slice(0, 30))
    after = logic.lesionStatistics(segmentation, ct, pet)
    assert sum(r["mtv_ml"] for r in after) == pytest.approx(kept.sum() * volumeFromNode(ct).voxel_volume_ml)
    assert sum(r["mtv_ml"] for r in after) < sum(r["mtv_ml"] for r in rows)
    assert {"mtv_ml", "suv_max", "suv_mean", "suv_peak", "tlg"} <= set(after[0])


# ------------------------------------------------------------------------- the loop, end to end


def test_refinement_loop_end_to_end(study, logic, scene, tiny_student, tmp_path):
    """Add a corrected case, distil a new student from it, segment with that student: the
    segmentation node has the expected segment on the CT geometry and the very voxels of
    ``distillseg predict`` on the same files."""
    from DistillSegLib.cli import main
    from DistillSegLib.student.inference import roi_from_mask

    folder, ct, pet = study
    reference = logic.importLabelmap(folder / "CT_mask.nii.gz", ct, name="reference")
    dataset = tmp_path / "training-set"
    logic.addToTrainingSet(dataset, ct, pet, reference)

    new_model = tmp_path / "models" / "student-new.pt"
    ended = []
    lines = []
    logic.startDistillation(dataset, "supervised", new_model, initModel=tiny_student, steps=2,
                            extra=["--device", "cpu", "--val-every", "1000"],
                            onProgress=lines.append, onFinished=ended.append)
    logic.runner.wait(PROCESS_TIMEOUT_S)
    assert ended and ended[0].ok, ended[0].message if ended else "no result"
    assert ended[0].modelPath == new_model and new_model.is_file()
    assert any(p.stage == "train" and p.total == 2 for p in lines)
    assert not list(new_model.parent.glob("*.checkpoint.pt")), "checkpoints stay out of the models folder"

    with pytest.raises(LogicError, match="trained on crops.*region of interest"):
        logic.startSegmentation(ct, pet, new_model, None, "cpu")  # never silently on a whole study
    roi = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(roi)
    low, high = roi_from_mask(read_image(folder / "CT_mask.nii.gz"), 10.0)
    roi.SetXYZ(*((low + high) / 2))
    roi.SetRadiusXYZ(*((high - low) / 2))
    nodes_before = scene.GetNumberOfNodes()
    ended.clear()
    logic.startSegmentation(ct, pet, new_model, roi, "cpu", onFinished=ended.append)
    logic.runner.wait(PROCESS_TIMEOUT_S)
    job = ended[0]
    assert job.ok, job.message
    segmentation = job.segmentationNode
    assert scene.GetNumberOfNodes() == nodes_before + 2  # the segmentation and its display node
    segments = segmentation.GetSegmentation()
    assert [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())] == ["tumour"]
    assert "SCT^108369006^Neoplasm" in segments.GetNthSegment(0).GetTerminology()
    geometry = segments.GetConversionParameter(slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert geometry == slicer.vtkSegmentationConverter.SerializeImageGeometry(
        *_ijk_to_ras_and_image(ct))
    result, _ = logic.labelFromSegmentation(segmentation, ct)
    assert result.shape == volumeFromNode(ct).shape

    cli_out = tmp_path / "cli-label.nii.gz"
    assert main(["predict", "--model", str(new_model), "--ct", str(folder / "CT_image.nii.gz"),
                 "--pet", str(folder / "PET_image.nii.gz"), "--out", str(cli_out), "--device", "cpu",
                 f"--roi={formatRoi(logic.roiBounds(roi))}"]) == 0
    expected = read_image(cli_out)
    np.testing.assert_allclose(expected.affine, result.affine, atol=1e-4)
    np.testing.assert_array_equal(result.array, expected.array)
    from DistillSegLib.metrics.lesions import lesion_statistics

    rows = lesion_statistics(expected, read_image(folder / "PET_image.nii.gz"))
    assert job.statistics is not None and len(job.statistics) == len(rows)


def _ijk_to_ras_and_image(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix, node.GetImageData()


def test_cancelled_distillation_changes_neither_scene_nor_training_set(study, logic, scene, tiny_student, tmp_path):
    folder, ct, pet = study
    segmentation = logic.importLabelmap(folder / "CT_mask.nii.gz", ct)
    dataset = tmp_path / "training-set"
    logic.addToTrainingSet(dataset, ct, pet, segmentation)
    scene_before, dataset_before = scene_snapshot(scene), folder_snapshot(dataset)
    models = tmp_path / "models"
    new_model = models / "student-cancelled.pt"
    ended, stages = [], []

    def on_progress(progress):
        stages.append(progress.stage)
        if len(stages) == 1:
            logic.cancel()  # the engine is running: it has reported its first step

    logic.startDistillation(dataset, "supervised", new_model, initModel=tiny_student, steps=100000,
                            extra=["--device", "cpu"], onProgress=on_progress, onFinished=ended.append)
    logic.runner.wait(PROCESS_TIMEOUT_S)
    assert stages, "the process was cancelled before it reported anything"
    assert ended and ended[0].cancelled and not ended[0].ok
    assert not new_model.exists()
    assert not models.exists() or not any(models.iterdir()), "no half-written model or checkpoint"
    assert scene_snapshot(scene) == scene_before
    assert folder_snapshot(dataset) == dataset_before


def test_teacher_selection_becomes_train_options():
    arguments = SceneLogic.teacherArguments
    assert arguments("supervised", "sam", "sam.pth") == []
    assert arguments("knowsam", "litemedsam", None) == []
    assert arguments("tskd", "sam", "sam_vit_b_01ec64.pth") == ["--teacher", "sam", "--teacher-checkpoint",
                                                                 "sam_vit_b_01ec64.pth"]
    assert arguments("muduo", "seganypet", "p.pth") == ["--pet-teacher", "seganypet", "--pet-teacher-checkpoint",
                                                        "p.pth"]
    with pytest.raises(LogicError, match="needs its checkpoint"):
        arguments("muduo", "sam-med3d", "")
    with pytest.raises(LogicError, match="cannot use teacher"):
        arguments("knowsam", "seganypet", "p.pth")


def test_progress_lines_are_parsed():
    from DistillSegModuleLib.Logic import Progress

    line = json.dumps({"stage": "train", "step": 40, "total": 1200, "loss": 0.41, "metrics": {}, "eta": 312.5})
    progress = Progress.parse(line)
    assert (progress.stage, progress.step, progress.total, progress.loss) == ("train", 40, 1200, 0.41)
    assert progress.fraction == pytest.approx(40 / 1200)
    assert Progress.parse("WARNING: something on stdout") is None
    assert Progress.parse("[1, 2]") is None
