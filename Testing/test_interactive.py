"""Interactive segmentation on a real case: LiteMedSAM from a box, a correction by a click, the
CLI options with their provenance and bad input, and the 3D teachers' box/click prompts."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from DistillSegLib.errors import DistillSegError
from DistillSegLib.io.volume import apply_affine, read_image
from DistillSegLib.provenance import provenance_path, read_provenance
from DistillSegLib.teachers.interactive import predict_interactive, prepare_interactive, segment_interactively
from DistillSegLib.teachers.user_prompts import UserPrompt

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def ras_box(volume, low_index, high_index, grow: float = 0.1):
    """RAS corners of an index box (voxel edges), each side grown by ``grow`` of its extent / 2."""
    low, high = np.asarray(low_index, float) - 0.5, np.asarray(high_index, float) + 0.5
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    world = apply_affine(volume.affine, corners)
    a, b = world.min(axis=0), world.max(axis=0)
    centre, half = (a + b) / 2, (b - a) / 2 * (1 + grow)
    return centre - half, centre + half


@pytest.fixture(scope="module")
def three_slices(sts_001):
    """A box 10% larger than the tumour on the 3 CT slices where it is largest."""
    truth = sts_001.label_on_ct.array > 0
    middle = int(np.argmax(truth.sum(axis=(0, 1))))
    index = np.argwhere(truth[:, :, middle - 1:middle + 2])
    low, high = index.min(axis=0), index.max(axis=0)
    low[2], high[2] = middle - 1, middle + 1
    return ras_box(sts_001.ct, low, high), middle, truth


@pytest.fixture(scope="module")
def small_case(sts_001):
    from test_teachers_sam import crop

    truth = sts_001.label_on_ct.array > 0
    k = int(np.flatnonzero(truth.any(axis=(0, 1))).mean())
    return crop(sts_001.ct, k - 1, k + 2), None, truth[:, :, k - 1:k + 2]


@pytest.fixture(scope="module")
def box_result(sts_001, three_slices):
    box, _, _ = three_slices
    request = prepare_interactive(sts_001, "litemedsam", None, UserPrompt(box=box), "CT")
    return segment_interactively(request)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_litemedsam_segments_inside_a_loose_box(sts_001, three_slices, box_result):
    box, middle, truth = three_slices
    result, provenance = box_result
    predicted = result.label.array == 1
    assert result.label.shape == sts_001.ct.shape and result.slices == 3
    inside = slice(middle - 1, middle + 2)
    assert dice(predicted[..., inside], truth[..., inside]) > 0.75
    assert not predicted[..., :middle - 1].any() and not predicted[..., middle + 2:].any()
    on_ct = UserPrompt(box=box).on_grid(sts_001.ct, "CT")
    assert not (predicted & ~on_ct.box_mask()).any()  # never outside the drawn box
    assert provenance["teacher"]["name"] == "litemedsam" and provenance["prompt"]["kind"] == "user"
    assert len(provenance["prompt"]["box_ras_mm"]) == 6


def test_a_negative_click_corrects_only_that_segment(sts_001, three_slices, box_result):
    box, middle, truth = three_slices
    result, _ = box_result
    previous = result.label.array.copy()
    previous[:5, :5, :5] = 2  # another segment the correction must keep
    wrong = np.argwhere((previous[..., middle] == 1))
    click_index = [*wrong[np.argmax(wrong[:, 0])], middle]  # the lesion's edge on the middle slice
    click = apply_affine(sts_001.ct.affine, np.array([click_index], float))[0]
    prompt = UserPrompt(box=box, points=[click], labels=[0], previous=sts_001.ct.with_array(previous))
    corrected, provenance = segment_interactively(prepare_interactive(sts_001, "litemedsam", None, prompt, "CT"))
    after = corrected.label.array
    assert (after == 2).sum() == 125 and ((after == 2) == (previous == 2)).all()
    assert (after[..., middle] == 1).sum() < (previous[..., middle] == 1).sum()
    assert after[tuple(click_index)] == 0
    np.testing.assert_array_equal(after[..., :middle - 1], previous[..., :middle - 1])
    assert provenance["prompt"]["kind"] == "correction" and provenance["prompt"]["point_labels"] == [0]


def cli(capsys, *args):
    from DistillSegLib.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def box_text(box) -> str:
    return "=" + ",".join(f"{v:.2f}" for v in np.concatenate(box))


def test_cli_box_prompt_writes_the_label_and_its_provenance(capsys, sts_case_dir, three_slices, tmp_path):
    folder = sts_case_dir("STS_001")
    box, middle, _ = three_slices
    out = tmp_path / "box.nii.gz"
    result = cli(capsys, "predict", "--teacher", "litemedsam", "--prompt-box" + box_text(box),
                 "--ct", str(folder / "CT_image.nii.gz"), "--pet", str(folder / "PET_image.nii.gz"),
                 "--out", str(out), "--json-progress")
    assert result.returncode == 0, result.stderr
    label = read_image(out).array
    assert label[..., middle].any() and not label[..., middle + 2:].any()
    record = read_provenance(out)
    assert provenance_path(out).name == "box.provenance.json"
    assert record["source"] == "teacher" and record["teacher"]["name"] == "litemedsam"
    np.testing.assert_allclose(record["prompt"]["box_ras_mm"], np.round(np.concatenate(box), 2), atol=0.01)
    assert record["inputs"]["ct"].endswith("CT_image.nii.gz")
    assert json.loads(result.stdout.strip().splitlines()[-1])["stage"] == "done"


@pytest.mark.parametrize("extra, message", [
    (["--teacher", "litemedsam", "--prompt-box=1000,1000,1000,1100,1100,1100"], "lies outside the CT image"),
    (["--teacher", "litemedsam", "--prompt-box=0,0,0,1,1,1", "--prompt-points=50,50,50,+"], "outside the prompt box"),
    (["--teacher", "litemedsam", "--prompt-from", "x.nii.gz", "--prompt-box=0,0,0,1,1,1"], "not both"),
    (["--teacher", "litemedsam"], "--teacher needs a prompt"),
    (["--teacher", "litemedsam", "--prompt-points=1,2,3,*"], "R,A,S,+ or R,A,S,-"),
])
def test_cli_bad_prompts_are_one_error_line(capsys, sts_case_dir, tmp_path, extra, message):
    folder = sts_case_dir("STS_001")
    out = tmp_path / "x.nii.gz"
    result = cli(capsys, "predict", *extra, "--ct", str(folder / "CT_image.nii.gz"),
                 "--pet", str(folder / "PET_image.nii.gz"), "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not out.exists() and not provenance_path(out).exists()


def test_cli_teacher_without_its_weights_is_one_error_line(capsys, sts_case_dir, tmp_path, monkeypatch, sts_001):
    monkeypatch.setenv("DISTILLSEG_WEIGHTS", str(tmp_path))
    folder = sts_case_dir("STS_001")
    centre = apply_affine(sts_001.ct.affine, np.array([np.array(sts_001.ct.shape) / 2.0]))[0]
    result = cli(capsys, "predict", "--teacher", "seganypet", "--prompt-points=" + ",".join(f"{v:.1f}" for v in centre) + ",+",
                 "--ct", str(folder / "CT_image.nii.gz"), "--pet", str(folder / "PET_image.nii.gz"),
                 "--out", str(tmp_path / "x.nii.gz"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a checkpoint" in lines[0]


def test_a_box_only_teacher_refuses_clicks_alone(sts_001):
    click = apply_affine(sts_001.ct.affine, np.array([np.array(sts_001.ct.shape) / 2.0]))[0]
    with pytest.raises(DistillSegError, match="takes boxes only"):
        prepare_interactive(sts_001, "litemedsam", None, UserPrompt(points=[click], labels=[1]), "CT")


def test_3d_teacher_takes_the_box_centre_as_a_click_and_stays_in_the_box(sts_001, three_slices):
    from test_teachers_sam_med3d import tiny_teacher

    box, middle, truth = three_slices
    teacher = tiny_teacher()
    image = sts_001.pet
    on_grid = UserPrompt(box=box).on_grid(image, "PET")
    probability, slices = predict_interactive(teacher, image, on_grid, "PET")
    assert probability.shape == image.shape and slices == 0 and probability.dtype == np.float32
    assert probability.max() > 0 and not (probability[~on_grid.box_mask()] > 0).any()
    # a correction around the same centre reuses the region's embedding
    from DistillSegLib.teachers.embeddings import default_store

    store = default_store()
    hits = store.hits
    click = apply_affine(image.affine, on_grid.centre()[None])[0]
    correction = UserPrompt(box=box, points=[click], labels=[0], previous=image.with_array((probability >= 0.5).astype(np.uint8)))
    second, _ = predict_interactive(teacher, image, correction.on_grid(image, "PET"), "PET")
    assert store.hits == hits + 1
    assert not np.array_equal(second, probability)


def test_clicks_end_a_lesion_or_bring_back_a_missed_slice(sts_001, three_slices, box_result):
    box, middle, truth = three_slices
    result, _ = box_result
    previous = result.label.array.copy()
    # a negative click on the lesion's last slice removes that slice (LiteMedSAM takes no clicks)
    last = middle + 1
    on_last = np.argwhere(previous[..., last] == 1)[0]
    click = apply_affine(sts_001.ct.affine, np.array([[*on_last, last]], float))[0]
    prompt = UserPrompt(box=box, points=[click], labels=[0], previous=sts_001.ct.with_array(previous))
    ended, _ = segment_interactively(prepare_interactive(sts_001, "litemedsam", None, prompt, "CT"))
    assert not ended.label.array[..., last].any() and ended.slices == 0
    np.testing.assert_array_equal(ended.label.array[..., :last], previous[..., :last])
    # a positive click on a slice the result missed brings it back
    missed = previous.copy()
    missed[..., last] = 0
    on_truth = np.argwhere(truth[..., last])
    centre = on_truth[np.argmin(np.linalg.norm(on_truth - on_truth.mean(axis=0), axis=1))]
    click = apply_affine(sts_001.ct.affine, np.array([[*centre, last]], float))[0]
    prompt = UserPrompt(box=box, points=[click], labels=[1], previous=sts_001.ct.with_array(missed))
    back, _ = segment_interactively(prepare_interactive(sts_001, "litemedsam", None, prompt, "CT"))
    assert dice(back.label.array[..., last] == 1, truth[..., last]) > 0.6


def test_sam_takes_clicks_as_points_and_the_previous_mask_as_mask_prompt(small_case):
    """SAM's path (points, mask prompt) on a tiny random SAM: it runs, the clicks and the
    previous mask reach the decoder, and the result stays in the box."""
    from test_teachers_sam import tiny_teacher as tiny_sam

    ct, _, truth = small_case
    teacher = tiny_sam()
    teacher.embedding_store = None
    index = np.argwhere(truth)
    low, high = index.min(axis=0), index.max(axis=0)
    box = ras_box(ct, low, high)
    click = apply_affine(ct.affine, index[len(index) // 2][None].astype(float))[0]
    plain, _ = predict_interactive(teacher, ct, UserPrompt(box=box).on_grid(ct, "CT"), "CT")
    clicked, _ = predict_interactive(teacher, ct, UserPrompt(box=box, points=[click], labels=[1]).on_grid(ct, "CT"), "CT")
    previous = ct.with_array(truth.astype(np.uint8))
    corrected, decoded = predict_interactive(
        teacher, ct, UserPrompt(box=box, points=[click], labels=[0], previous=previous).on_grid(ct, "CT"), "CT")
    on_grid = UserPrompt(box=box).on_grid(ct, "CT")
    for probability in (plain, clicked, corrected):
        assert probability.shape == ct.shape and not (probability[~on_grid.box_mask()] > 0).any()
    assert not np.allclose(plain, clicked) and decoded >= 1


def test_a_walked_slice_box_towards_the_images_edge_never_shrinks_below_the_drawn_box(sts_001, three_slices):
    """One under-segmented slice must not shrink every later box (the walk's collapse on large tumours)."""
    from DistillSegLib.teachers import interactive
    from DistillSegLib.teachers.interactive import SlicePropagation

    box, middle, _ = three_slices
    request = prepare_interactive(sts_001, "litemedsam", None, UserPrompt(box=box), "CT")
    walk = SlicePropagation(request.teacher, request.image, request.on_grid, "CT")
    first, last = walk.box_slices
    centre = (walk.box[:2] + walk.box[2:]) / 2.0
    collapsed = np.concatenate([centre - 1.0, centre + 1.0]).astype(np.float32)  # a 2-pixel neighbour mask
    k = (first + last) // 2
    assert interactive.WALK_FLOOR == "edge" and walk.floor_box(k) is None  # a box inside the image: no floor
    before = interactive.WALK_FLOOR
    interactive.WALK_FLOOR = "ellipsoid"
    try:
        floored = walk.with_floor(collapsed, k)
    finally:
        interactive.WALK_FLOOR = before
    width = (walk.box[2:] - walk.box[:2])
    t = (k - (first + last) / 2.0) / ((last - first + 1) / 2.0)
    np.testing.assert_allclose(floored[2:] - floored[:2], width * np.sqrt(1 - t * t), atol=1.0)
    assert np.all(floored[:2] >= walk.box[:2] - 1e-3) and np.all(floored[2:] <= walk.box[2:] + 1e-3)
    assert walk.floor_box(last + 1) is None  # beyond the drawn box's slices: no floor
    # A box ending on the image's edge: the lesion is cut there, the floor keeps the full width.
    low, high = UserPrompt(box=box).on_grid(sts_001.ct, "CT").box
    edge = ras_box(sts_001.ct, [low[0], low[1], 0], [high[0], high[1], high[2]], grow=0.0)
    cut = SlicePropagation(request.teacher, request.image, UserPrompt(box=edge).on_grid(sts_001.ct, "CT"), "CT")
    end = cut.box_slices[0] if cut.box_slices[0] == 0 else cut.box_slices[1]
    assert end in (0, cut.stack.shape[0] - 1)
    np.testing.assert_allclose(cut.floor_box(end), cut.box, atol=1e-3)  # the default rule
    np.testing.assert_allclose(cut.with_floor(collapsed, end), cut.box, atol=1e-3)
    try:
        interactive.WALK_FLOOR = "none"      # MedSAM's rule: the neighbour's mask alone
        np.testing.assert_array_equal(walk.with_floor(collapsed, k), collapsed)
    finally:
        interactive.WALK_FLOOR = before
