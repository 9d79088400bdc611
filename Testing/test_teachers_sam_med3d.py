"""SAM-Med3D / SegAnyPET (3D teachers, medim's architecture): the full layout against the
reference repository's, a tiny random configuration on a real case with every prompt kind,
and strict checkpoint loading. (The real checkpoints cannot be downloaded here.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from DistillSegLib.errors import DistillSegError
from DistillSegLib.teachers.prompts import Prompt
from DistillSegLib.teachers.sam_med3d import (SamMed3DConfig, SamMed3DTeacher, build_sam_med3d_model,
                                              corrective_click, load_sam_med3d, roi_grid)
from DistillSegLib.io.volume import apply_affine

FIXTURE = Path(__file__).parent / "fixtures" / "sam_med3d_turbo_layout.json"
TINY = SamMed3DConfig(encoder_embed_dim=48, encoder_depth=2, encoder_num_heads=2,
                      encoder_global_attn_indexes=(0, 1), prompt_embed_dim=48, image_size=32)


def tiny_teacher(seed: int = 0, name: str = "sam-med3d", **kwargs) -> SamMed3DTeacher:
    torch.manual_seed(seed)
    return SamMed3DTeacher(name, build_sam_med3d_model(TINY), TINY, f"{seed:064d}", **kwargs)


@pytest.fixture(scope="module")
def case_arrays(sts_002):
    return sts_002.ct, sts_002.pet_on_ct, sts_002.label_on_ct.array > 0


@pytest.fixture(scope="module")
def sts_002(sts_dir):
    from DistillSegLib.io.case import load_case_folder

    return load_case_folder(sts_dir / "STS_002")


def test_full_configuration_matches_the_reference_layout():
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["source"]["repository"].endswith("uni-medical/SAM-Med3D")
    with torch.device("meta"):
        model = build_sam_med3d_model(SamMed3DConfig())
    layout = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    expected = fixture["layout"]
    assert sorted(set(layout) ^ set(expected)) == []
    assert {k: v for k, v in layout.items() if expected[k] != v} == {}
    assert sum(int(np.prod(s)) for s in layout.values()) == fixture["num_values"]


@pytest.mark.parametrize("kinds, modality", [(("points",), "CT"), (("mask",), "PET"), (("points", "mask"), "CT")])
def test_tiny_model_runs_with_every_prompt_kind(case_arrays, kinds, modality):
    ct, pet, truth = case_arrays
    teacher = tiny_teacher(iterations=2)
    probability = teacher.predict(ct if modality == "CT" else pet, Prompt(truth.astype(np.float32), kinds=kinds), modality)
    assert probability.shape == truth.shape and probability.dtype == np.float32
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    # Non-zero only inside the 32^3 x 1.5 mm region around the prompt.
    roi = roi_grid(truth, ct.affine, TINY.image_size)
    world = apply_affine(ct.affine, np.argwhere(probability > 0))
    lo, hi = roi.world_bounds()
    assert len(world) and np.all(world >= lo - 1.0) and np.all(world <= hi + 1.0)


def test_explicit_points_and_refinement_change_the_output(case_arrays):
    ct, pet, truth = case_arrays
    prompt = Prompt(truth.astype(np.float32), kinds=("points", "mask"))
    once = tiny_teacher(iterations=1).predict(ct, prompt, "CT")
    refined = tiny_teacher(iterations=3).predict(ct, prompt, "CT")
    assert not np.allclose(once, refined)  # later iterations add clicks and feed logits back
    centre = np.argwhere(truth).mean(axis=0).round().astype(int)[None]
    explicit = Prompt(truth.astype(np.float32), kinds=("points",), points=centre, point_labels=np.array([1]))
    sampled = Prompt(truth.astype(np.float32), kinds=("points",))
    teacher = tiny_teacher(iterations=1)
    assert not np.allclose(teacher.predict(ct, explicit, "CT"), teacher.predict(ct, sampled, "CT"))


def test_roi_is_ras_at_1_5_mm_centred_on_the_prompt(case_arrays):
    ct, _, truth = case_arrays
    roi = roi_grid(truth, ct.affine, 128)
    assert roi.shape == (128, 128, 128) and roi.orientation == "RAS"
    np.testing.assert_allclose(roi.spacing, (1.5, 1.5, 1.5))
    index = np.argwhere(truth)
    box_centre = apply_affine(ct.affine, ((index.min(0) + index.max(0)) / 2)[None])[0]
    np.testing.assert_allclose(apply_affine(roi.affine, np.array([[63.5, 63.5, 63.5]]))[0], box_centre, atol=1e-6)


def test_corrective_click_targets_the_largest_disagreement():
    reference = np.zeros((20, 20, 20), np.float32)
    reference[5:15, 5:15, 5:15] = 1.0
    prediction = np.zeros((20, 20, 20), bool)
    point, label = corrective_click(prediction, reference)
    assert label == 1 and np.all((point >= 5) & (point < 15))
    prediction = reference >= 0.5
    assert corrective_click(prediction, reference) is None
    prediction[0:3, 0:3, 0:3] = True
    point, label = corrective_click(prediction, reference)
    assert label == 0 and np.all(point < 3)


@pytest.mark.parametrize("wrapped", [True, False])
def test_checkpoints_load_wrapped_or_flat_and_strictly(tmp_path, case_arrays, wrapped):
    from DistillSegLib.teachers.base import file_sha256

    ct, pet, truth = case_arrays
    reference = tiny_teacher(name="seganypet", modality="PET", iterations=1)
    state = reference.model.state_dict()
    path = tmp_path / "seganypet.pth"
    torch.save({"model_state_dict": state, "epoch": 3} if wrapped else state, path)
    loaded = load_sam_med3d(path, name="seganypet", config=TINY, iterations=1)
    assert loaded.modality == "PET" and loaded.weights_sha256 == file_sha256(path)
    prompt = Prompt(truth.astype(np.float32), kinds=("points", "mask"))
    np.testing.assert_allclose(loaded.predict(ct, prompt), reference.predict(ct, prompt), atol=1e-6)

    broken = dict(state)
    broken.pop("mask_decoder.iou_token.weight")
    broken["mask_decoder.extra_token.weight"] = torch.zeros(1, TINY.prompt_embed_dim)
    torch.save({"model_state_dict": broken}, tmp_path / "broken.pth")
    with pytest.raises(DistillSegError, match="missing keys: mask_decoder.iou_token.weight.*unexpected keys"):
        load_sam_med3d(tmp_path / "broken.pth", config=TINY)
    misnamed = tmp_path / "sam_med3d_turbo_abcdef.pth"
    misnamed.write_bytes(path.read_bytes())
    with pytest.raises(DistillSegError, match="SHA-256 prefix abcdef"):
        load_sam_med3d(misnamed, config=TINY)
    with pytest.raises(DistillSegError, match="does not match the SAM_Med3D architecture"):
        load_sam_med3d(path, config=SamMed3DConfig(encoder_embed_dim=48, encoder_depth=3, encoder_num_heads=2,
                                                    encoder_global_attn_indexes=(0, 1), prompt_embed_dim=48,
                                                    image_size=32))
