"""The promptable student: prompt channels, simulated prompts in training, model files, predict.

A tiny configuration (4 mm voxels, 8-16-32 channels) keeps every test to seconds; accuracy
is measured in ``benchmarks/interactive.py`` and ``benchmarks/bundled_student.py --promptable``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from DistillSegLib.errors import DistillSegError
from DistillSegLib.io.volume import apply_affine
from DistillSegLib.student.config import StudentConfig
from DistillSegLib.student.model_file import load_model, read_payload, save_model
from DistillSegLib.student.network import build_student, promptable_weights_from
from DistillSegLib.student.prompt_channels import (
    BOX_DISTANCE_SCALE_MM, DEFAULT_PROMPT_CHANNELS, GridPrompts, PromptableStudent, box_signed_distance,
    encode_prompts,
)
from DistillSegLib.distill import get_strategy_class
from DistillSegLib.distill.prompt_simulation import (
    BoxAnswers, PromptSimulation, box_reach, crop_to_prompt, next_click, perturbed_box, prompted_labelled_batch,
    prompted_unlabelled_batch,
)
from DistillSegLib.distill.trainer import Trainer, TrainingOptions

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = StudentConfig(spacing=(4.0, 4.0, 4.0), patch_size=(32, 32, 16), channels=(8, 16, 32), strides=(2, 2),
                     num_res_units=1, prompt_channels=DEFAULT_PROMPT_CHANNELS)


# ------------------------------------------------------------------ channels and network
def test_prompt_channels_encode_box_clicks_and_previous():
    shape, spacing = (40, 30, 20), (2.0, 2.0, 4.0)
    previous = np.zeros(shape, bool)
    previous[5:9, 5:9, 5:9] = True
    prompts = GridPrompts(box=(np.array([10, 5, 2]), np.array([19, 14, 11])),
                          points=np.array([[15.0, 10.0, 6.0], [30.0, 20.0, 10.0]]), labels=np.array([1, 0]),
                          previous=previous)
    channels = encode_prompts(DEFAULT_PROMPT_CHANNELS, shape, spacing, 6.0, prompts).numpy()
    assert channels.shape == (4, *shape)
    box, positive, negative, prev = channels
    assert box.sum() == 10 * 10 * 10 and box[10:20, 5:15, 2:12].all()
    # Each click peaks at 1 on its voxel; one sigma (6 mm = 3 voxels in i) away: exp(-1/2).
    assert positive[15, 10, 6] == pytest.approx(1.0) and negative[30, 20, 10] == pytest.approx(1.0)
    assert positive[18, 10, 6] == pytest.approx(np.exp(-0.5), abs=0.03)
    assert positive[30, 20, 10] < 1e-3 and negative[15, 10, 6] < 1e-3  # each sign in its own channel
    assert np.array_equal(prev > 0, previous)
    empty = encode_prompts(DEFAULT_PROMPT_CHANNELS, shape, spacing, 6.0, None)
    assert not empty.any()


def test_box_signed_distance_is_negative_inside_in_mm():
    distance = box_signed_distance((30, 30, 30), (np.array([10, 10, 10]), np.array([19, 19, 19])), (1.0, 1.0, 2.0))
    assert distance[15, 15, 15] < 0 < distance[0, 15, 15]
    # 3 voxels (3 mm) below the box's lower face in i: the face is at index 9.5.
    assert float(distance[7, 15, 15]) == pytest.approx(2.5 / BOX_DISTANCE_SCALE_MM)
    assert float(distance[15, 15, 7]) == pytest.approx(5.0 / BOX_DISTANCE_SCALE_MM)  # 2.5 voxels x 2 mm in k


def test_promptable_network_runs_with_and_without_prompts():
    torch.manual_seed(0)
    network = build_student(TINY)
    assert isinstance(network, PromptableStudent)
    image = torch.randn(1, 2, 32, 32, 16)
    without = network(image)
    explicit = network(torch.cat([image, encode_prompts(TINY.prompt_channels, (32, 32, 16), TINY.spacing, 6.0,
                                                        None)[None]], dim=1))
    assert torch.allclose(without, explicit)  # no prompt = the "no prompt" channels
    with pytest.raises(DistillSegError, match="2 image channels"):
        network(torch.randn(1, 3, 32, 32, 16))


def test_config_refuses_bad_prompt_channels_and_prompt_free_files_stay_as_they_were():
    with pytest.raises(DistillSegError, match="unknown prompt channel"):
        StudentConfig(prompt_channels=("box", "scribble"))
    with pytest.raises(DistillSegError, match="not both"):
        StudentConfig(prompt_channels=("box", "box_distance"))
    assert "prompt_channels" not in StudentConfig().to_dict()  # readable by older DistillSeg
    assert StudentConfig.from_dict(TINY.to_dict()) == TINY


def test_a_model_file_written_before_prompts_loads_as_prompt_free(prompt_free_model):
    # The file's configuration has no prompt keys, exactly as every file written before prompts.
    assert not {"prompt_channels", "click_sigma_mm"} & set(read_payload(prompt_free_model)["metadata"]["config"])
    model = load_model(prompt_free_model)
    assert not model.takes_prompts and not isinstance(model.network, PromptableStudent)


def test_a_promptable_model_file_records_its_prompt_channels(tmp_path):
    path = save_model(tmp_path / "p.pt", build_student(TINY), TINY, {})
    model = load_model(path)
    assert model.takes_prompts and model.config.prompt_channels == DEFAULT_PROMPT_CHANNELS
    assert model.metadata["takes_prompts"] is True
    assert model.metadata["channels"] == ["CT", "PET", "box", "positive", "negative", "previous"]


# ------------------------------------------------------------------ simulated prompts
def test_next_click_goes_to_the_deepest_voxel_of_the_largest_error():
    truth = np.zeros((30, 30, 30), bool)
    truth[5:25, 5:25, 5:25] = True
    prediction = truth.copy()
    prediction[5:15, 5:25, 5:25] = False      # a large miss ...
    prediction[26:29, 26:29, 26:29] = True    # ... and a small false positive
    point, positive = next_click(prediction, truth, (1.0, 1.0, 1.0))
    assert positive and 5 <= point[0] < 15 and 9 <= point[1] <= 20 and 9 <= point[2] <= 20
    assert point[0] in (9, 10)  # the middle of the missed slab, the farthest from its border
    point, positive = next_click(truth | (np.indices(truth.shape)[0] < 3), truth, (1.0, 1.0, 1.0))
    assert not positive and point[0] < 3       # only a false positive left: a negative click in it
    assert next_click(truth, truth, (1.0, 1.0, 1.0)) is None


def test_perturbed_boxes_and_crop_to_prompt():
    rng = np.random.default_rng(0)
    settings = PromptSimulation()
    box = (np.array([20, 20, 10]), np.array([39, 29, 19]))
    shape, spacing, patch = (80, 80, 40), (2.5, 2.5, 3.27), (32, 32, 16)
    reach = box_reach(box, shape, spacing, settings)
    sizes = []
    for _ in range(200):
        low, high = perturbed_box(box, shape, spacing, rng, settings)
        assert np.all(low <= high) and np.all(low >= reach[0]) and np.all(high <= reach[1])
        sizes.append((high - low + 1) / (box[1] - box[0] + 1))
        location = crop_to_prompt(0, "x", shape, reach, patch, rng)
        starts = np.array([s.start for s in location.box])
        assert np.all(starts >= 0) and np.all(starts + patch <= shape)
        fits = reach[1] - reach[0] + 1 <= np.array(patch)
        assert np.all(~fits | ((starts <= reach[0]) & (reach[1] < starts + patch)))  # the box's reach is in view
    sizes = np.array(sizes)
    assert sizes.min() < 0.95 and sizes.max() > 1.2 and 1.0 < sizes.mean() < 1.3  # shrunk, grown, mostly grown


@pytest.fixture(scope="module")
def prepared(sts_001):
    from DistillSegLib.student.preprocess import prepare_case

    return prepare_case(sts_001, TINY)


def make_trainer(cases, steps=10, **kwargs):
    options = TrainingOptions(steps=steps, batch_size=4, learning_rate=5e-3, seed=0, val_every=10**6,
                              checkpoint_every=10**6)
    return Trainer(TINY, options, get_strategy_class("supervised")(), cases, **kwargs)


def test_labelled_batches_carry_simulated_prompts(prepared):
    trainer = make_trainer([prepared], prompt_simulation=PromptSimulation(prompt_free_fraction=0.5, max_clicks=2))
    seen_prompted = seen_free = seen_clicks = 0
    for step in range(6):
        trainer.step_rng = np.random.default_rng(step)
        batch = prompted_labelled_batch(trainer)
        image, truth = batch["image"], batch["label"][:, 0] > 0
        assert image.shape == (4, 6, 32, 32, 16)
        for b in range(4):
            box = image[b, 2] > 0
            if batch["prompted"][b]:
                seen_prompted += 1
                assert box.any() and (truth[b] & box).sum() >= 0.8 * truth[b].sum()  # the box holds the lesion
                seen_clicks += int(batch["clicks"][b])
                assert (image[b, 3].max() > 0.99) or (image[b, 4].max() > 0.99) or batch["clicks"][b] == 0
            else:
                seen_free += 1
                assert not image[b, 2:].any()  # no prompt at all
    assert seen_prompted and seen_free and seen_clicks


def test_promptable_training_writes_a_model_that_runs_both_ways(prepared, sts_001, tmp_path):
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.student.prompt_inference import predict_with_prompt
    from DistillSegLib.teachers.user_prompts import UserPrompt

    trainer = make_trainer([prepared], steps=8)
    assert trainer.prompt_simulation == PromptSimulation()  # a promptable config trains with prompts by default
    result = trainer.train()
    path = save_model(tmp_path / "p.pt", trainer.network, TINY, result.metadata)
    model = load_model(path)
    assert model.metadata["prompt_simulation"]["prompt_free_fraction"] == PromptSimulation().prompt_free_fraction
    automatic = predict_case(model, sts_001, roi="all", device="cpu")
    assert automatic.label.shape == sts_001.ct.shape
    box = box_around(sts_001.label_on_ct)
    boxed = predict_with_prompt(model, sts_001, UserPrompt(box=box))
    assert boxed.label.shape == sts_001.ct.shape and boxed.box is not None
    outside = np.ones(sts_001.ct.shape, bool)
    outside[boxed.box] = False
    assert not boxed.label.array[outside].any()  # nothing outside the region cropped to the prompt
    drawn = UserPrompt(box=box).on_grid(sts_001.ct, "CT").box_mask()
    assert not (boxed.label.array[~drawn]).any() and not boxed.probability.array[~drawn].any()  # nor the box
    # A correction replaces only its segment and keeps the others.
    previous = sts_001.label_on_ct.with_array((boxed.label.array > 0).astype(np.uint8) * 2)
    previous.array[0, 0, 0] = 5
    click = apply_affine(sts_001.ct.affine, np.argwhere(sts_001.label_on_ct.array > 0)[:1].astype(float))[0]
    corrected = predict_with_prompt(model, sts_001, UserPrompt(points=[click], labels=[1], previous=previous,
                                                               segment=2))
    assert corrected.label.array[0, 0, 0] == 5 and set(np.unique(corrected.label.array)) <= {0, 2, 5}


def test_box_answers_of_unlabelled_cases_become_prompted_targets(prepared):
    """The hook for the teachers' answers to boxes: the box is the prompt, the answer the target."""
    from dataclasses import replace

    unlabelled = replace(prepared, label=None)
    trainer = make_trainer([prepared], unlabelled=[unlabelled])
    answer = np.zeros(prepared.shape, np.uint8)
    answer[30:40, 30:40, 10:15] = 1
    answers = BoxAnswers()
    answers.add(prepared.case_id, (np.array([28, 28, 8]), np.array([41, 41, 16])), answer)
    trainer.step_rng = np.random.default_rng(0)
    batch = prompted_unlabelled_batch(trainer, answers)
    assert batch["image"].shape == (4, 6, 32, 32, 16) and batch["label"].shape == (4, 1, 32, 32, 16)
    for b in range(4):
        box, target = batch["image"][b, 2] > 0, batch["label"][b, 0] > 0
        assert int(box.sum()) == 14 * 14 * 9 and int(target.sum()) == 10 * 10 * 5 and not (target & ~box).any()


def box_around(mask, grow: float = 0.10):
    index = np.argwhere(np.asarray(mask.array) > 0)
    low, high = index.min(axis=0) - 0.5, index.max(axis=0) + 0.5
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    world = apply_affine(mask.affine, corners)
    a, b = world.min(axis=0), world.max(axis=0)
    centre, half = (a + b) / 2.0, (b - a) / 2.0 * (1.0 + grow)
    return centre - half, centre + half


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def prompt_free_model(tmp_path_factory):
    from dataclasses import replace

    config = replace(TINY, prompt_channels=())
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("prompt-free") / "free.pt", build_student(config), config, {})


@pytest.fixture(scope="module")
def promptable_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("promptable") / "p.pt"
    torch.manual_seed(0)
    return save_model(path, build_student(TINY), TINY, {"strategy": "supervised"})


def case_args(sts_case_dir, case_id="STS_001"):
    folder = sts_case_dir(case_id)
    return ["--ct", str(folder / "CT_image.nii.gz"), "--pet", str(folder / "PET_image.nii.gz"), "--threads", "1"]


def test_cli_promptable_student_answers_a_box_and_records_it(cli, sts_case_dir, sts_001, promptable_model, tmp_path):
    from DistillSegLib.provenance import read_provenance
    from DistillSegLib.io.volume import read_image

    low, high = box_around(sts_001.label_on_ct)
    text = ",".join(f"{v:.2f}" for v in [*low, *high])
    out = tmp_path / "box.nii.gz"
    result = cli("predict", "--model", promptable_model, f"--prompt-box={text}", *case_args(sts_case_dir),
                 "--out", out)
    assert result.returncode == 0, result.stderr
    assert read_image(out).shape == sts_001.ct.shape
    record = read_provenance(out)
    assert record["source"] == "student" and record["prompt"]["box_ras_mm"] == pytest.approx(
        [float(v) for v in text.split(",")], abs=1e-3)


def test_the_bundled_student_answers_a_box_by_name(cli, sts_case_dir, sts_001, tmp_path):
    """The bundled ``sts-petct-crop`` takes prompts: found by name, it answers a 10 %-grown box
    on a real case inside that box (it was trained on this case: the figure checks the wiring,
    its validation accuracy is in the catalogue)."""
    from DistillSegLib.io.volume import read_image
    from DistillSegLib.metrics.segmentation import dice

    low, high = box_around(sts_001.label_on_ct)
    out = tmp_path / "bundled-box.nii.gz"
    result = cli("predict", "--model", "sts-petct-crop",
                 "--prompt-box=" + ",".join(f"{v:.2f}" for v in [*low, *high]), *case_args(sts_case_dir), "--out", out)
    assert result.returncode == 0, result.stderr
    answer = read_image(out).array > 0
    assert dice(answer, sts_001.label_on_ct.array > 0) >= 0.7
    inside = apply_affine(np.linalg.inv(sts_001.ct.affine), np.array([low, high]))
    index = np.argwhere(answer)
    assert (index.min(axis=0) >= np.floor(inside.min(axis=0)) - 1).all()
    assert (index.max(axis=0) <= np.ceil(inside.max(axis=0)) + 1).all()


@pytest.mark.parametrize("model, extra, message", [
    ("prompt-free", ["--prompt-box=0,0,0,1,1,1"], "takes no prompts"),
    ("prompt-free", ["--prompt-points=0,0,0,+"], "takes no prompts"),
    ("promptable", ["--prompt-box=1000,1000,1000,1100,1100,1100"], "lies outside the CT image"),
    ("promptable", ["--prompt-points=1000,1000,1000,+"], "lies outside the CT image"),
    ("promptable", ["--prompt-box=0,0,0,1,1,1", "--roi", "all"], "drop --roi"),
])
def test_cli_refuses_bad_student_prompts_with_one_error_line(cli, sts_case_dir, promptable_model, prompt_free_model,
                                                           tmp_path, model, extra, message):
    out = tmp_path / "x.nii.gz"
    result = cli("predict", "--model", promptable_model if model == "promptable" else prompt_free_model, *extra,
                 *case_args(sts_case_dir), "--out", out)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not out.exists()


def test_train_cli_makes_a_promptable_student(cli, sts_dir, tmp_path, prompt_free_model):
    out = tmp_path / "p.pt"
    result = cli("train", "--data", sts_dir, "--labelled", "STS_001", "--steps", "3", "--threads", "1",
                 "--spacing", "4,4,4", "--patch-size", "32,32,16", "--channels", "8,16,32", "--res-units", "1",
                 "--promptable", "--max-clicks", "1", "--out", out)
    assert result.returncode == 0, result.stderr
    model = load_model(out)
    assert model.takes_prompts and model.metadata["prompt_simulation"]["max_clicks"] == 1
    refused = cli("train", "--data", sts_dir, "--labelled", "STS_001", "--steps", "1", "--init", prompt_free_model,
                  "--max-clicks", "1", "--out", tmp_path / "q.pt")
    assert refused.returncode == 2 and "takes none: add --promptable" in refused.stderr
    assert json.loads(json.dumps(model.metadata["prompt_simulation"]))  # JSON-ready


def test_a_prompt_free_student_becomes_promptable_answering_as_before():
    torch.manual_seed(0)
    prompt_free_config = dataclasses.replace(TINY, prompt_channels=())
    prompt_free = build_student(prompt_free_config)
    for parameter in prompt_free.parameters():  # trained-looking weights, not MONAI's initial ones
        parameter.data.normal_(0.0, 0.2)
    promptable = build_student(TINY)
    promptable.load_state_dict(promptable_weights_from(prompt_free.state_dict(), TINY))
    image = torch.randn(1, 2, 32, 32, 16)
    prompts = torch.rand(1, len(TINY.prompt_channels), 32, 32, 16)  # any prompt at all
    prompt_free.eval(), promptable.eval()
    with torch.no_grad():
        expected = prompt_free(image)
        assert torch.allclose(promptable(torch.cat([image, prompts], dim=1)), expected, atol=1e-5)
        assert torch.allclose(promptable(image), expected, atol=1e-5)
    other = build_student(dataclasses.replace(prompt_free_config, channels=(8, 16, 24))).state_dict()
    with pytest.raises(DistillSegError, match="has shape"):
        promptable_weights_from(other, TINY)


def test_train_cli_makes_a_prompt_free_student_promptable(cli, sts_dir, tmp_path, prompt_free_model):
    out = tmp_path / "p.pt"
    result = cli("train", "--data", sts_dir, "--labelled", "STS_001", "--steps", "2", "--threads", "1",
                 "--init", prompt_free_model, "--promptable", "--max-clicks", "1", "--out", out)
    assert result.returncode == 0, result.stderr
    model, before = load_model(out), load_model(prompt_free_model)
    assert model.takes_prompts and model.config.prompt_channels == DEFAULT_PROMPT_CHANNELS
    assert dataclasses.replace(model.config, prompt_channels=()) == before.config
    assert model.metadata["init_from"]["prompt_channels_added"] == list(DEFAULT_PROMPT_CHANNELS)


def test_boxdistil_learns_the_teachers_answer_to_a_box(prepared, sts_001):
    """The teacher answers a box drawn on the student grid as a radiologist's box; the answer
    becomes the target of that box on the unlabelled case."""
    from dataclasses import replace

    from DistillSegLib.distill.box_distillation import BoxDistillationStrategy, teacher_answer
    from DistillSegLib.metrics.segmentation import dice

    truth = prepared.label > 0
    middle = int(np.argmax(truth.sum(axis=(0, 1))))
    low, high = bounding_box_of(truth[:, :, middle:middle + 1])
    box = (np.array([low[0] - 1, low[1] - 1, middle]), np.array([high[0] + 1, high[1] + 1, middle]))
    unlabelled = replace(prepared, label=None)
    strategy = BoxDistillationStrategy(boxes_per_case=1)
    trainer = make_trainer([prepared], unlabelled=[unlabelled], steps=2)
    strategy.setup(trainer)
    answer = teacher_answer(strategy.model, sts_001, prepared.grid(), box, "CT")
    assert answer.shape == prepared.shape
    inside = np.zeros(prepared.shape, bool)
    inside[box[0][0]:box[1][0] + 1, box[0][1]:box[1][1] + 1, middle] = True
    assert answer[inside].any() and not answer[~inside].any()  # the teacher stays in the box's slice and extent
    assert dice(answer[:, :, middle] > 0, truth[:, :, middle]) > 0.6
    strategy.answers.add(prepared.case_id, box, answer)
    trainer.strategy = strategy
    trainer.step_rng = np.random.default_rng(0)
    loss, logs = strategy.loss(trainer, 1)
    assert torch.isfinite(loss) and "teacher_boxes" in logs


def test_boxself_answers_each_box_with_the_student_itself(prepared):
    """The control without a teacher: no teacher is loaded, the answer to a box is the
    student's own prompted answer, inside the box, and it trains like boxdistil's."""
    from dataclasses import replace

    from DistillSegLib.distill import get_strategy_class
    from DistillSegLib.distill.box_distillation import BoxSelfTrainingStrategy, prompt_window, student_answer

    truth = prepared.label > 0
    low, high = bounding_box_of(truth)
    box = (low, high)
    window = prompt_window(box, prepared.shape, TINY)
    for axis, piece in enumerate(window):  # the box and a patch of context, inside the case
        assert piece.start <= low[axis] and piece.stop > high[axis] and piece.stop <= prepared.shape[axis]
        assert piece.stop - piece.start >= min(TINY.patch_size[axis], prepared.shape[axis])
    unlabelled = replace(prepared, label=None, source=None)  # the student needs no image of the source case
    trainer = make_trainer([prepared], unlabelled=[unlabelled], steps=2,
                           prompt_simulation=PromptSimulation(prompt_free_fraction=0.0, max_clicks=0))
    assert get_strategy_class("boxself") is BoxSelfTrainingStrategy
    strategy = BoxSelfTrainingStrategy(boxes_per_case=2)
    strategy.setup(trainer)
    assert strategy.model is None
    answer = student_answer(trainer, unlabelled, box)
    inside = np.zeros(prepared.shape, bool)
    inside[tuple(slice(a, b + 1) for a, b in zip(low, high))] = True
    assert answer.shape == prepared.shape and not answer[~inside].any()

    class Says(torch.nn.Module):  # a network that answers one class everywhere, and checks its input
        def __init__(self, foreground: bool):
            super().__init__()
            self.foreground = foreground

        def forward(self, x):
            assert x.shape[1] == 2 + len(TINY.prompt_channels)  # image + the box as prompt channels
            logits = torch.zeros((x.shape[0], 2, *x.shape[2:]))
            logits[:, int(self.foreground)] = 1.0
            return logits

    assert np.array_equal(student_answer(trainer, unlabelled, box, Says(True)) > 0, inside)  # the whole box
    assert not student_answer(trainer, unlabelled, box, Says(False)).any()
    trainer.step_rng = np.random.default_rng(0)
    trainer.prompt_simulation = PromptSimulation(prompt_free_fraction=0.0, max_clicks=0)
    strategy.on_round_start(trainer, 0)
    assert len(strategy.answers.answers.get(prepared.case_id, [])) in (0, 2)
    strategy.answers.add(prepared.case_id, box, truth.astype(np.uint8))
    trainer.strategy = strategy
    loss, logs = strategy.loss(trainer, 1)
    assert torch.isfinite(loss) and "own_boxes" in logs
    assert strategy.metadata()["teacher"] is None


def test_boxdistil_needs_a_promptable_student(prepared):
    from dataclasses import replace

    from DistillSegLib.distill.box_distillation import BoxDistillationStrategy

    options = TrainingOptions(steps=1, batch_size=2)
    with pytest.raises(DistillSegError, match="--promptable"):
        Trainer(replace(TINY, prompt_channels=()), options, BoxDistillationStrategy(),
                [replace(prepared, image=prepared.image)], unlabelled=[replace(prepared, label=None)])


def bounding_box_of(mask):
    index = np.argwhere(mask)
    return index.min(axis=0), index.max(axis=0)
