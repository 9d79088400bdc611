"""SAM (segment-anything) as a 2D teacher: a tiny random configuration of the real
architecture on a real case with every prompt kind, LoRA adapters, and checkpoint checks.
(The published checkpoints cannot be downloaded here.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DistillSegLib.errors import DistillSegError
from DistillSegLib.teachers.prompts import Prompt
from DistillSegLib.teachers.sam import SamConfig, build_sam_model, load_sam, sam_teacher_from_model
from DistillSegLib.io.volume import Volume

TINY = SamConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                 prompt_embed_dim=32, image_size=64, window_size=4, decoder_mlp_dim=64, decoder_num_heads=2,
                 iou_head_hidden_dim=32)


def crop(volume: Volume, k0: int, k1: int) -> Volume:
    affine = volume.affine.copy()
    affine[:3, 3] += volume.affine[:3, 2] * k0
    return Volume(np.ascontiguousarray(volume.array[:, :, k0:k1]), affine)


@pytest.fixture(scope="module")
def small_case(sts_001):
    """Three tumour slices of STS_001 (CT, PET on the CT grid, GT)."""
    truth = sts_001.label_on_ct.array > 0
    k = int(np.flatnonzero(truth.any(axis=(0, 1))).mean())
    return crop(sts_001.ct, k - 1, k + 2), crop(sts_001.pet_on_ct, k - 1, k + 2), truth[:, :, k - 1:k + 2]


def tiny_teacher(seed: int = 0):
    torch.manual_seed(seed)
    return sam_teacher_from_model(build_sam_model(TINY), TINY, f"{seed:064d}")


@pytest.mark.parametrize("kinds, modality", [(("box",), "CT"), (("points",), "CT"), (("mask",), "CT"),
                                             (("box", "points", "mask"), "PET")])
def test_tiny_sam_runs_with_every_prompt_kind(small_case, kinds, modality):
    ct, pet, truth = small_case
    teacher = tiny_teacher()
    probability = teacher.predict(ct if modality == "CT" else pet, Prompt(truth.astype(np.float32), kinds=kinds), modality)
    assert probability.shape == truth.shape and probability.dtype == np.float32
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    assert probability[truth].min() > 0.0  # every prompted slice was decoded


def test_explicit_points_are_used(small_case):
    ct, pet, truth = small_case
    teacher = tiny_teacher()
    inside = np.argwhere(truth)[:1]
    base = Prompt(truth.astype(np.float32), kinds=("points",))
    explicit = Prompt(truth.astype(np.float32), kinds=("points",), points=inside, point_labels=np.array([1]))
    assert not np.allclose(teacher.predict(ct, base, "CT"), teacher.predict(ct, explicit, "CT"))


def test_lora_trains_only_adapters_and_round_trips(tmp_path, small_case):
    from DistillSegLib.teachers.lora import add_lora, load_lora, lora_parameters, save_lora, update_weights_digest

    ct, pet, truth = small_case
    teacher = tiny_teacher()
    frozen_before = {n: p.detach().clone() for n, p in teacher.model.named_parameters()}
    base_hash = teacher.weights_sha256
    add_lora(teacher, rank=2, alpha=4)
    trainable = [n for n, p in teacher.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".qkv." in n for n in trainable)
    assert len(trainable) == 2 * TINY.encoder_depth  # lora_A and lora_B per attention block
    assert teacher.weights_sha256 != base_hash  # cache keys change with adapters

    # One optimiser step on a real slice moves only the adapters.
    prompt = Prompt(truth.astype(np.float32))
    batch = teacher.prepare_slices(ct, prompt, "CT")
    teacher.model.train()
    optimiser = torch.optim.SGD(lora_parameters(teacher), lr=1.0)
    target = torch.ones(1, 1, *teacher.forward_slices(batch.images[:1], batch.boxes[:1]).shape[-2:])
    for _ in range(2):
        optimiser.zero_grad()
        logits = teacher.forward_slices(batch.images[:1], batch.boxes[:1])
        torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
        optimiser.step()
    teacher.model.eval()
    for name, parameter in teacher.model.named_parameters():
        if "lora_" not in name:
            original = frozen_before[name.replace(".base_layer", "")]
            assert torch.equal(parameter, original), name
    assert any(not torch.all(p == 0) for n, p in teacher.model.named_parameters() if "lora_B" in n)
    expected = teacher.predict(ct, prompt, "CT")
    tuned_hash = update_weights_digest(teacher)
    assert tuned_hash != base_hash

    path = save_lora(teacher, tmp_path / "adapters.pt")
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert saved and all("lora_" in k for k in saved)
    assert sum(v.numel() for v in saved.values()) == sum(p.numel() for p in lora_parameters(teacher))

    fresh = tiny_teacher()
    load_lora(fresh, path)
    np.testing.assert_allclose(fresh.predict(ct, prompt, "CT"), expected, atol=1e-6)
    assert fresh.weights_sha256 == teacher.weights_sha256

    other_base = tiny_teacher(seed=1)
    with pytest.raises(DistillSegError, match="base weights"):
        load_lora(other_base, path)


def test_checkpoint_loads_strictly_and_checks_the_hash_prefix(tmp_path, small_case):
    from DistillSegLib.teachers.base import file_sha256

    ct, pet, truth = small_case
    reference = tiny_teacher()
    state = reference.model.state_dict()
    good = tmp_path / "tiny_sam.pth"
    torch.save(state, good)
    loaded = load_sam(good, config=TINY)
    assert loaded.weights_sha256 == file_sha256(good)
    prompt = Prompt(truth.astype(np.float32))
    np.testing.assert_allclose(loaded.predict(pet, prompt, "PET"), reference.predict(pet, prompt, "PET"), atol=1e-6)

    # Named like a published file, but the content's hash does not start with 01ec64.
    misnamed = tmp_path / "sam_vit_b_01ec64.pth"
    misnamed.write_bytes(good.read_bytes())
    with pytest.raises(DistillSegError, match="SHA-256 prefix 01ec64"):
        load_sam(misnamed, config=TINY)
    # A name whose suffix is the true prefix is accepted.
    honest = tmp_path / f"sam_tiny_{file_sha256(good)[:6]}.pth"
    honest.write_bytes(good.read_bytes())
    assert load_sam(honest, config=TINY).weights_sha256 == file_sha256(good)

    renamed = {("image_encoder.neck.9.weight" if k == "image_encoder.neck.0.weight" else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "wrong_keys.pth")
    with pytest.raises(DistillSegError, match="missing keys: image_encoder.neck.0.weight.*unexpected keys"):
        load_sam(tmp_path / "wrong_keys.pth", config=TINY)
    reshaped = dict(state, **{"mask_decoder.iou_token.weight": torch.zeros(1, 8)})
    torch.save({"model": reshaped}, tmp_path / "wrong_shape.pth")
    with pytest.raises(DistillSegError, match="shape mismatches: mask_decoder.iou_token.weight"):
        load_sam(tmp_path / "wrong_shape.pth", config=TINY)
    with pytest.raises(DistillSegError, match="not found"):
        load_sam(tmp_path / "absent.pth", config=TINY)
