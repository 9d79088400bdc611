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
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DistillSeg"))

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML scene")

from DistillSegLib.io.dataset import find_cases, read_dataset_json  # noqa: E402
from DistillSegLib.io.volume import Volume, read_image, write_image  # noqa: E402
from DistillSegModuleLib import Pet  # noqa: E402
from DistillSegModuleLib.Logic import LogicError, SceneLogic, formatRoi  # noqa: E402
from DistillSegModuleLib.Nodes import findVolume, orientedImageFromArray, volumeFromNode, volumeModality  # noqa: E402
from DistillSegModuleLib.ProcessRunner import SubprocessRunner  # noqa: E402
from test_slicer_process import alive, write_launcher  # noqa: E402  (PythonSlicer's process structure)

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
    assert logic.trainCommand(dataset, "dualview", "new.pt")[-2:] == ["--unlabelled", "rest"]
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
    with pytest.raises(LogicError, match="knowsam also learns from studies without a segmentation, and the training"):
        logic.trainCommand(dataset, "knowsam", "new.pt")  # not the engine's "--unlabelled" advice after a warm-up
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


def test_cancel_leaves_no_engine_process_and_the_job_folder_goes_only_after_it_exits(
        study, scene, tiny_student, tmp_path):
    """Cancel a distillation run through a launcher (``PythonSlicer``'s process structure: the
    real interpreter is its child and gets no signal from it). Nothing of the run may be alive
    when the job folder is removed or when the job is reported finished (then Run is enabled
    again), and neither the scene, the training set nor the models folder changes."""
    import threading

    folder, ct, pet = study
    logic = SceneLogic(scene, SubprocessRunner(), python=str(write_launcher(tmp_path)))
    segmentation = logic.importLabelmap(folder / "CT_mask.nii.gz", ct)
    dataset = tmp_path / "training-set"
    logic.addToTrainingSet(dataset, ct, pet, segmentation)
    scene_before, dataset_before = scene_snapshot(scene), folder_snapshot(dataset)
    models = tmp_path / "models"
    new_model = models / "student-cancelled.pt"
    ended, tree, job_folder, seen = [], [], [], {}

    def on_progress(progress):
        if not tree:  # the engine is running: it has reported its first step
            tree.extend(logic.runner.process_ids())
            job_folder.append(logic.jobFolder())
            threading.Thread(target=watch_folder, daemon=True).start()
            logic.cancel()

    def watch_folder():
        while job_folder[0].exists():
            time.sleep(0.002)
        seen["alive when the folder went"] = alive(tree)

    def on_finished(job):
        ended.append(job)
        seen["alive when finished"] = alive(tree)
        seen["running when finished"] = logic.isRunning()

    logic.startDistillation(dataset, "supervised", new_model, initModel=tiny_student, steps=100000,
                            extra=["--device", "cpu"], onProgress=on_progress, onFinished=on_finished)
    logic.runner.wait(PROCESS_TIMEOUT_S)
    time.sleep(0.05)  # let the watcher record
    assert len(tree) >= 2, f"expected the launcher and the engine, saw {tree}"
    assert ended and ended[0].cancelled and not ended[0].ok
    assert seen == {"alive when the folder went": [], "alive when finished": [], "running when finished": False}
    assert not job_folder[0].exists() and logic.jobFolder() is None
    assert not new_model.exists()
    assert not models.exists() or not any(models.iterdir()), "no half-written model or checkpoint"
    assert scene_snapshot(scene) == scene_before
    assert folder_snapshot(dataset) == dataset_before


def test_closing_the_scene_cancels_the_running_job(study, logic, scene, tiny_student, tmp_path):
    folder, ct, pet = study
    segmentation = logic.importLabelmap(folder / "CT_mask.nii.gz", ct)
    dataset = tmp_path / "training-set"
    logic.addToTrainingSet(dataset, ct, pet, segmentation)
    ended = []

    def on_progress(progress):
        if scene.GetNumberOfNodes() and not ended:
            scene.Clear(0)  # File > Close scene while the engine runs

    logic.startDistillation(dataset, "supervised", tmp_path / "new.pt", initModel=tiny_student, steps=100000,
                            extra=["--device", "cpu"], onProgress=on_progress, onFinished=ended.append)
    logic.runner.wait(PROCESS_TIMEOUT_S)
    assert ended and ended[0].cancelled and "scene was closed" in ended[0].message
    assert not (tmp_path / "new.pt").exists()


# ------------------------------------------------------------------------- PET loaded by Slicer's DICOM module


def dicom_browser_pet(scene, folder: Path):
    """A PET as Slicer's DICOM module loads it (DICOMScalarVolumePlugin, Slicer v5.10.0): the
    series read by the archetype reader in its stored units (here Bq/ml), ``DICOM.instanceUIDs``
    set, no voxel-value units (DICOMPlugin.mapSOPClassUIDToDICOMQuantityAndUnits sets none for
    PT), the series in the subject hierarchy with its modality. Returns the node and the
    instance UID -> file map a DICOM database holds."""
    import pydicom

    files = sorted(folder.glob("*.dcm"))
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("7: PET WB")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(files[0]))
    assert storage.ReadData(node)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    database = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): str(f) for f in files}
    node.SetAttribute("DICOM.instanceUIDs", " ".join(database))
    sh = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    sh.SetItemAttribute(sh.CreateItem(study, node), "DICOM.Modality", "PT")
    return node, database


def test_pet_from_slicers_dicom_module_is_converted_to_suv_or_refused(scene, sts_case_dir, tmp_path):
    from conftest import require_data
    from DistillSegLib.io.case import load_volume

    raw = require_data("raw-pet-dicom", "STS_001", "image")
    ct = SceneLogic(scene).loadVolume(sts_case_dir("STS_001") / "CT_image.nii.gz", "CT")
    pet, database = dicom_browser_pet(scene, raw)
    stored = volumeFromNode(pet).array.copy()
    assert stored.max() > 1e5  # Bq/ml, as stored

    refusing = SceneLogic(scene, python=sys.executable)  # no DICOM database to read the files from
    for attempt in (lambda: refusing.validateInputs(ct, pet), lambda: refusing.suvPet(pet),
                    lambda: refusing.startSegmentation(ct, pet, tmp_path / "any.pt")):
        with pytest.raises(LogicError, match="loaded by Slicer's DICOM module .* not SUV: load the PET series"):
            attempt()
    assert not refusing.isRunning()

    incomplete = dict(list(database.items())[:-1])
    with pytest.raises(LogicError, match="1 of 267 missing"):
        SceneLogic(scene, dicomFiles=incomplete.get).suvPet(pet)

    nodes_before = scene.GetNumberOfNodes()
    converting = SceneLogic(scene, dicomFiles=database.get)
    converted = converting.suvPet(pet)
    assert converted is not pet and scene.GetNumberOfNodes() > nodes_before
    assert "SUV" in converted.GetVoxelValueUnits().GetCodeValue() and volumeModality(converted) == "PT"
    suv = volumeFromNode(converted).array
    np.testing.assert_array_equal(suv, load_volume(raw, "PT").array)  # the engine's QIBA SUVbw
    assert suv.max() == pytest.approx(66.5, abs=0.5)  # shared/data/README.md: about 66.5 (bladder)
    np.testing.assert_array_equal(volumeFromNode(pet).array, stored)  # the loaded node is left as it was
    converting.validateInputs(ct, converted)
    assert converting.suvPet(converted) is converted


# ------------------------------------------------------------------------- scene hygiene


def test_node_lookups_leave_reference_counts_unchanged(study, scene):
    import gc

    _, ct, pet = study
    before = (ct.GetReferenceCount(), pet.GetReferenceCount())
    for _ in range(10):
        assert findVolume(scene, "PT") is pet and findVolume(scene, "CT") is ct
    gc.collect()
    assert (ct.GetReferenceCount(), pet.GetReferenceCount()) == before


def test_pet_gets_slicers_pet_colour_map(scene, sts_case_dir):
    colors = slicer.vtkSlicerColorLogic()  # Slicer adds its colour nodes at startup
    colors.SetMRMLScene(scene)
    folder = sts_case_dir("STS_001")
    ct, pet = SceneLogic(scene).loadStudy(folder / "CT_image.nii.gz", folder / "PET_image.nii.gz")
    heat = slicer.vtkMRMLColorLogic.GetPETColorNodeID(slicer.vtkMRMLPETProceduralColorNode.PETheat)
    assert pet.GetDisplayNode().GetColorNodeID() == heat
    assert ct.GetDisplayNode().GetColorNodeID() != heat
    colors.SetMRMLScene(None)


def test_lesion_table_is_a_table_node_saved_with_the_scene(study, logic, scene, tmp_path):
    folder, ct, pet = study
    segmentation = logic.importLabelmap(folder / "CT_mask.nii.gz", ct)
    rows = logic.lesionStatistics(segmentation, ct, pet)
    table = logic.lesionTable(rows, segmentation)
    assert table.GetScene() is scene and segmentation.GetNodeReference("DistillSeg.LesionTable") is table
    assert table.GetNumberOfRows() == len(rows) >= 1
    column = table.GetTable().GetColumnByName("suv_max")
    assert column.GetValue(0) == pytest.approx(rows[0]["suv_max"])
    assert table.GetColumnTitle("suv_max") == "SUVmax" and table.GetColumnUnitLabel("mtv_ml") == "mL"
    logic.eraseSlices(segmentation, ct, slice(0, 30))
    assert logic.lesionTable(logic.lesionStatistics(segmentation, ct, pet), segmentation, table) is table
    assert table.GetTable().GetColumnByName("mtv_ml").GetValue(0) < rows[0]["mtv_ml"]
    table.AddDefaultStorageNode()
    storage = table.GetStorageNode()
    storage.SetFileName(str(tmp_path / "lesions.tsv"))
    assert storage.WriteData(table)
    text = (tmp_path / "lesions.tsv").read_text()
    assert "suv_max" in text and f"{rows[0]['lesion']}" in text


# ------------------------------------------------------------------------- region of interest and Run


def axial_slice_node(scene, centre, field_of_view_mm: float = 250.0, pixels: int = 400):
    """A red (axial) slice node as a slice view has it: ``pixels`` square, centred on ``centre``
    (RAS mm), its XY-to-RAS matrix computed by MRML itself."""
    node = slicer.vtkMRMLSliceNode()
    node.SetLayoutName("Red")
    scene.AddNode(node)
    node.SetOrientationToAxial()
    node.SetDimensions(pixels, pixels, 1)
    node.SetFieldOfView(field_of_view_mm, field_of_view_mm, 1.0)
    node.JumpSliceByCentering(*[float(v) for v in centre])
    node.UpdateMatrices()
    return node


def test_a_new_roi_is_placed_around_the_pet_hot_spot_and_an_empty_one_is_refused(study, logic, scene, tmp_path):
    from DistillSegLib.io.volume import apply_affine
    from DistillSegLib.student.inference import roi_from_mask

    folder, ct, pet = study
    roi = slicer.vtkMRMLMarkupsROINode()  # as the selector's "Create new" makes it: no extent
    scene.AddNode(roi)
    before = scene_snapshot(scene)
    with pytest.raises(LogicError, match="region of interest .* is empty .* 'Place at PET hot spot'"):
        logic.requireUsableRoi(roi, ct)
    assert scene_snapshot(scene) == before and logic.jobFolder() is None

    # The widget looks on the slice the red view shows: here an axial view scrolled to the
    # tumour's largest slice. (On STS_001 the hottest PET voxel of the whole crop is not in the
    # tumour: without a slice the ROI would go around it.)
    mask = read_image(folder / "CT_mask.nii.gz")
    largest = int(np.argmax((mask.array > 0).sum(axis=(0, 1))))
    centre = apply_affine(mask.affine, np.array([[*(np.array(mask.shape[:2]) / 2), largest]]))[0]
    red = axial_slice_node(scene, centre)
    search, plane = Pet.viewedSlice(red)
    np.testing.assert_allclose(plane[0][2], centre[2], atol=1e-3)  # on the lesion's slice
    hot_low, hot_high = Pet.hotSpotBox(pet, search, plane, margin_mm=0.0)  # the 41%-of-SUVmax region itself
    tumour_low, tumour_high = roi_from_mask(mask, 0.0)
    overlap = np.prod(np.clip(np.minimum(hot_high, tumour_high) - np.maximum(hot_low, tumour_low), 0, None))
    union = np.prod(hot_high - hot_low) + np.prod(tumour_high - tumour_low) - overlap
    assert overlap / union > 0.6, f"the hot-spot region's box overlaps the tumour's box by {overlap / union:.0%}"
    whole_low, whole_high = Pet.hotSpotBox(pet, margin_mm=0.0)  # no slice: the crop's hottest organ
    assert np.any(whole_low >= tumour_high) or np.any(whole_high <= tumour_low)
    logic.placeRoiAtHotSpot(roi, pet, red)
    bounds = np.asarray(logic.requireUsableRoi(roi, ct))
    np.testing.assert_allclose(bounds, [*(hot_low - Pet.ROI_MARGIN_MM), *(hot_high + Pet.ROI_MARGIN_MM)], atol=1e-3)
    tumour = apply_affine(mask.affine, np.argwhere(mask.array > 0))
    assert np.all((tumour >= bounds[:3]) & (tumour <= bounds[3:])), "the hot-spot ROI cuts the tumour"
    ct_low, ct_high = volumeFromNode(ct, withArray=False).world_bounds()

    # A student that reads the ROI as its box gets the closer margin chosen for it.
    from DistillSegModuleLib.Catalogue import bundledStudent

    assert Pet.hotSpotMargin(True) < Pet.hotSpotMargin(False) == Pet.ROI_MARGIN_MM
    logic.placeRoiAtHotSpot(roi, pet, red, str(bundledStudent()))  # the bundled student takes prompts
    close = Pet.PROMPTABLE_HOT_SPOT_MARGIN_MM
    np.testing.assert_allclose(logic.requireUsableRoi(roi, ct), [*(hot_low - close), *(hot_high + close)], atol=1e-3)

    away = axial_slice_node(scene, ct_high + 500.0)  # a view scrolled past the PET
    with pytest.raises(LogicError, match="no PET voxel in the region searched"):
        logic.placeRoiAtHotSpot(roi, pet, away)
    roi.SetCenter(*(ct_low - 300.0))
    with pytest.raises(LogicError, match="lies outside the CT"):
        logic.requireUsableRoi(roi, ct)


def test_run_writes_a_new_segmentation_and_keeps_an_edited_one(study, logic, scene, tiny_student):
    import inspect

    folder, ct, pet = study
    assert "segmentationNode" not in inspect.signature(SceneLogic.startSegmentation).parameters, \
        "Run must not be able to write into an existing segmentation"
    roi = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(roi)
    logic.placeRoiAroundSegmentation(roi, logic.importLabelmap(folder / "CT_mask.nii.gz", ct, name="reference"), ct)
    edited = logic.importLabelmap(folder / "CT_mask.nii.gz", ct, name="corrected by the radiologist")
    kept = logic.eraseSlices(edited, ct)
    ended = []
    logic.startSegmentation(ct, pet, tiny_student, roi, "cpu", onFinished=ended.append)
    logic.runner.wait(PROCESS_TIMEOUT_S)
    assert ended and ended[0].ok, ended[0].message
    assert ended[0].segmentationNode is not edited and ended[0].segmentationNode.GetScene() is scene
    assert edited.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(logic.labelFromSegmentation(edited, ct)[0].array, kept)


def test_teacher_selection_becomes_train_options():
    arguments = SceneLogic.teacherArguments
    assert arguments("supervised", "sam", "sam.pth") == []
    assert arguments("selftrain", "sam", "sam.pth") == []  # the control has no teacher
    assert arguments("knowsam", "litemedsam", None) == []
    assert arguments("tskd", "sam", "sam_vit_b_01ec64.pth") == ["--teacher", "sam", "--teacher-checkpoint",
                                                                 "sam_vit_b_01ec64.pth"]
    assert arguments("dualview", "seganypet", "p.pth") == ["--pet-teacher", "seganypet", "--pet-teacher-checkpoint",
                                                        "p.pth"]
    with pytest.raises(LogicError, match="needs its checkpoint"):
        arguments("dualview", "sam-med3d", "")
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


def test_the_training_set_provenance_keeps_file_names_only(study, logic, tmp_path):
    """A correction's provenance names the previous label, the prompt and the model by path, and
    the segmentation node is named after the patient: none of the folders or names may reach
    ``labelsTr/<case>.provenance.json``."""
    from DistillSegLib.provenance import read_provenance
    from DistillSegModuleLib import Prompts

    folder, ct, pet = study
    segmentation = logic.importLabelmap(folder / "CT_mask.nii.gz", ct)
    segmentation.SetName("Doe^Jane MRN12345 corrected")
    patient = "/data/Doe^Jane_19700101_MRN12345"
    made = {"format": "distillseg-provenance/1", "source": "teacher",
            "inputs": {"ct": f"{patient}/CT.nii.gz", "pet": f"{patient}/PET.nii.gz"},
            "teacher": {"name": "litemedsam", "weights_sha256": "ab" * 32, "checkpoint": f"{patient}/sam.pth"},
            "student": {"model": "C:\\Users\\Doe^Jane_19700101_MRN12345\\student.pt"},
            "prompt": {"kind": "correction", "prompt_from": f"{patient}/student.pt", "box_ras_mm": [1, 2, 3, 4, 5, 6],
                       "previous": {"path": f"{patient}/prev_label.nii.gz", "segment": 1, "sha256": "cd" * 32}}}
    segmentation.SetAttribute(Prompts.PROVENANCE_ATTRIBUTE, json.dumps(made))
    dataset = tmp_path / "training-set"
    case_id = logic.addToTrainingSet(dataset, ct, pet, segmentation)
    text = (dataset / "labelsTr" / f"{case_id}.provenance.json").read_text()
    assert "Doe^Jane" not in text and "MRN12345" not in text and "/" not in text.replace("distillseg-provenance/1", "")
    record = read_provenance(dataset / "labelsTr" / f"{case_id}.nii.gz")
    prompt = record["made_by"]["prompt"]
    assert prompt["previous"] == {"path": "prev_label.nii.gz", "segment": 1, "sha256": "cd" * 32}
    assert prompt["prompt_from"] == "student.pt" and prompt["box_ras_mm"] == [1, 2, 3, 4, 5, 6]
    assert record["made_by"]["teacher"]["checkpoint"] == "sam.pth"
    assert record["made_by"]["student"]["model"] == "student.pt"


def test_roi_and_segmentation_work_in_world_coordinates_under_parent_transforms(study, logic, scene):
    """An ROI or a segmentation under a transform (a study that was registered): the ROI box
    is placed in world coordinates and the segmentation is read where it is shown."""
    import vtk

    from DistillSegLib.student.inference import roi_from_mask

    folder, ct, pet = study
    reference = logic.importLabelmap(folder / "CT_mask.nii.gz", ct, name="reference")
    expected = np.concatenate(roi_from_mask(logic.labelFromSegmentation(reference, ct)[0], Pet.ROI_MARGIN_MM))

    turned = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(turned)
    rotation = vtk.vtkTransform()
    rotation.Translate(30.0, -20.0, 15.0)
    rotation.RotateZ(25.0)
    turned.SetMatrixTransformToParent(rotation.GetMatrix())
    roi = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(roi)
    roi.SetAndObserveTransformNodeID(turned.GetID())
    logic.placeRoiAroundSegmentation(roi, reference, ct)
    np.testing.assert_allclose(logic.roiBounds(roi), expected, atol=1e-3)

    # The same segmentation moved by 10 mm in R, with the move in its parent transform: read on
    # the CT grid, it is where it is shown, 10 mm further right.
    shift = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(shift)
    moved = vtk.vtkTransform()
    moved.Translate(10.0, 0.0, 0.0)
    shift.SetMatrixTransformToParent(moved.GetMatrix())
    reference.SetAndObserveTransformNodeID(shift.GetID())
    logic.placeRoiAroundSegmentation(roi, reference, ct)
    np.testing.assert_allclose(logic.roiBounds(roi), expected + [10, 0, 0, 10, 0, 0], atol=1.5)


def test_a_study_is_exported_for_the_engine_once_per_version_and_uncompressed(study, logic):
    """Loading a study and every Run gave the engine the whole CT and PET again, gzipped, on
    the GUI thread; now a volume is written once (plain NIfTI) until it changes."""
    from DistillSegLib.io.volume import read_image

    folder, ct, pet = study
    first = logic.exportedVolume(ct)
    written = first.stat().st_mtime_ns
    assert first.suffix == ".nii" and logic.exportedVolume(ct) == first and first.stat().st_mtime_ns == written
    np.testing.assert_array_equal(read_image(first).array, read_image(folder / "CT_image.nii.gz").array)
    assert logic.exportedVolume(pet) != first
    ct.GetImageData().GetPointData().GetScalars().SetValue(0, 1234)  # the voxels change
    ct.GetImageData().Modified()
    again = logic.exportedVolume(ct)
    assert again != first and not first.exists() and read_image(again).array.flat[0] == 1234
    logic.cleanup()
    assert not again.exists()


def test_the_exported_volumes_go_with_the_logic_even_without_cleanup(sts_case_dir):
    """A logic dropped without cleanup (a web session ended, a script) left its CT and PET in
    the temporary folder: ~10 MB each time, 90 folders after one day of tests."""
    import gc

    folder = sts_case_dir("STS_001")
    scene = slicer.vtkMRMLScene()
    logic = SceneLogic(scene)
    ct, pet = logic.loadStudy(folder / "CT_image.nii.gz", folder / "PET_image.nii.gz")
    exported = logic.exportedVolume(ct).parent
    assert exported.is_dir()
    del logic, ct, pet, scene
    gc.collect()
    assert not exported.exists()


def test_the_exported_volumes_go_when_python_exits_without_cleanup(sts_case_dir, tmp_path):
    """Slicer closed while the module still holds a study: the folder goes at exit."""
    import subprocess

    folder = sts_case_dir("STS_001")
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'DistillSeg')!r}); import slicer\n"
              "from DistillSegModuleLib.Logic import SceneLogic\n"
              "scene = slicer.vtkMRMLScene(); logic = SceneLogic(scene)\n"
              f"ct, pet = logic.loadStudy({str(folder / 'CT_image.nii.gz')!r}, {str(folder / 'PET_image.nii.gz')!r})\n"
              "print(logic.exportedVolume(ct).parent)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    exported = Path(done.stdout.strip().splitlines()[-1])
    assert exported.name.startswith("DistillSeg-study-") and not exported.exists()


def test_runs_on_one_study_reuse_its_exported_volumes_until_the_ct_changes(study, logic, scene, tiny_student):
    """One trip for the data: the CT and PET are converted and written for the engine once per
    loaded study; a second Run reuses them, a changed CT is written again (only the CT)."""
    folder, ct, pet = study
    roi = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(roi)
    logic.placeRoiAroundSegmentation(roi, logic.importLabelmap(folder / "CT_mask.nii.gz", ct, name="reference"), ct)

    def run() -> None:
        ended = []
        logic.startSegmentation(ct, pet, tiny_student, roi, "cpu", onFinished=ended.append)
        logic.runner.wait(PROCESS_TIMEOUT_S)
        assert ended and ended[0].ok, ended[0].message

    run()
    ct_file, pet_file = logic.exportedVolume(ct), logic.exportedVolume(pet)
    files = {p: p.stat().st_mtime_ns for p in ct_file.parent.iterdir()}
    assert set(files) == {ct_file, pet_file}  # the first Run wrote both, nothing else stays
    stats_volume = logic.study.nodeVolume(pet)
    run()
    assert {p: p.stat().st_mtime_ns for p in ct_file.parent.iterdir()} == files  # nothing written again
    assert logic.study.nodeVolume(pet) is stats_volume  # and nothing converted again
    ct.GetImageData().GetPointData().GetScalars().SetValue(0, -999)  # the CT's voxels change
    ct.GetImageData().Modified()
    run()
    now = {p: p.stat().st_mtime_ns for p in ct_file.parent.iterdir()}
    assert not ct_file.exists() and now[pet_file] == files[pet_file] and len(now) == 2
    assert logic.study.nodeVolume(ct).array.flat[0] == -999
