"""Automatic prompts on a real case, the teacher-output cache, and `distillseg teachers`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import require_data
from DistillSegLib.errors import DistillSegError
from DistillSegLib.teachers.cache import TeacherCache, cached_predict
from DistillSegLib.teachers.prompts import Prompt, mask_prompt, probability_to_logits, sample_points, slice_boxes
from DistillSegLib.io.volume import Volume


@pytest.fixture(scope="module")
def truth(sts_001):
    return sts_001.label_on_ct.array > 0


def test_per_slice_boxes_cover_each_slice_with_the_margin(truth):
    stack = truth.transpose(2, 1, 0)  # (K, J, I): rows j, columns i
    boxes = slice_boxes(stack, margin=2)
    assert sorted(boxes) == list(np.flatnonzero(stack.any(axis=(1, 2))))
    for k, (x0, y0, x1, y1) in boxes.items():
        rows, cols = np.nonzero(stack[k])
        assert (x0, y0) == (max(cols.min() - 2, 0), max(rows.min() - 2, 0))
        assert (x1, y1) == (min(cols.max() + 2, stack.shape[2] - 1), min(rows.max() + 2, stack.shape[1] - 1))


def test_points_come_from_confident_regions_and_are_seeded(truth):
    # A soft map like a student's: confident core, uncertain rim.
    from scipy import ndimage

    core = ndimage.binary_erosion(truth, iterations=2)
    probability = np.where(core, 0.95, np.where(truth, 0.6, 0.02)).astype(np.float32)
    coords, labels = sample_points(probability, 5, 5, seed=3)
    assert labels.tolist() == [1] * 5 + [0] * 5
    positive, negative = coords[labels == 1], coords[labels == 0]
    assert np.all(probability[tuple(positive.T)] >= 0.9)
    assert np.all(probability[tuple(negative.T)] <= 0.1)
    # negatives lie in a band near the object, not anywhere in the volume
    distance = ndimage.distance_transform_edt(~(probability >= 0.9))
    assert np.all(distance[tuple(negative.T)] <= 5)
    again, _ = sample_points(probability, 5, 5, seed=3)
    other, _ = sample_points(probability, 5, 5, seed=4)
    np.testing.assert_array_equal(coords, again)
    assert not np.array_equal(coords, other)


def test_mask_prompt_is_logits_at_the_teacher_resolution(truth):
    k = int(np.flatnonzero(truth.any(axis=(0, 1))).mean())
    slice_prompt = mask_prompt(truth[:, :, k].astype(np.float32), (256, 256))
    assert slice_prompt.shape == (256, 256)
    assert slice_prompt.max() > 5 and slice_prompt.min() < -5  # confident in and out
    volume_prompt = mask_prompt(truth.astype(np.float32), (32, 32, 32))
    assert volume_prompt.shape == (32, 32, 32) and (volume_prompt > 0).any()
    np.testing.assert_allclose(probability_to_logits(np.array([0.5])), [0.0])


def test_prompt_digest_follows_arrays_and_settings(truth):
    base = Prompt(truth.astype(np.float32))
    assert base.digest() == Prompt(truth.astype(np.float32)).digest()
    changed = truth.copy()
    changed[tuple(np.argwhere(truth)[0])] = False
    assert Prompt(changed.astype(np.float32)).digest() != base.digest()
    assert Prompt(truth.astype(np.float32), box_margin=5).digest() != base.digest()
    with pytest.raises(DistillSegError, match="unknown prompt kinds"):
        Prompt(truth.astype(np.float32), kinds=("scribble",))


@pytest.fixture(scope="module")
def tiny_sam_case(sts_001):
    from DistillSegLib.teachers.sam import SamConfig, build_sam_model, sam_teacher_from_model

    config = SamConfig(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2, encoder_global_attn_indexes=(0,),
                       prompt_embed_dim=32, image_size=64, decoder_mlp_dim=64, decoder_num_heads=2,
                       iou_head_hidden_dim=32)
    torch.manual_seed(0)
    teacher = sam_teacher_from_model(build_sam_model(config), config, "a" * 64)
    truth = sts_001.label_on_ct.array > 0
    k = int(np.flatnonzero(truth.any(axis=(0, 1))).mean())

    def cut(volume: Volume) -> Volume:
        affine = volume.affine.copy()
        affine[:3, 3] += volume.affine[:3, 2] * k
        return Volume(np.ascontiguousarray(volume.array[:, :, k:k + 2]), affine)

    return teacher, cut(sts_001.ct), cut(sts_001.pet_on_ct), truth[:, :, k:k + 2]


def test_cache_returns_identical_outputs_and_misses_on_any_change(tmp_path, tiny_sam_case, monkeypatch):
    teacher, ct, pet, truth = tiny_sam_case
    monkeypatch.setenv("DISTILLSEG_CACHE", str(tmp_path / "env-cache"))
    cache = TeacherCache()
    assert cache.root == tmp_path / "env-cache"
    prompt = Prompt(truth.astype(np.float32))
    first = cached_predict(teacher, ct, prompt, "CT", "STS_001", cache)
    second = cached_predict(teacher, ct, Prompt(truth.astype(np.float32)), "CT", "STS_001", cache)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(first, second)
    assert list(cache.root.rglob("*.npz")) and not list(cache.root.rglob(".*tmp*"))

    changed = truth.copy()
    changed[tuple(np.argwhere(truth)[-1])] = False
    cached_predict(teacher, ct, Prompt(changed.astype(np.float32)), "CT", "STS_001", cache)
    assert (cache.misses, cache.hits) == (2, 1)  # changed prompt
    cached_predict(teacher, pet, prompt, "PET", "STS_001", cache)
    assert (cache.misses, cache.hits) == (3, 1)  # other modality
    teacher.weights_sha256 = "b" * 64
    try:
        cached_predict(teacher, ct, prompt, "CT", "STS_001", cache)
    finally:
        teacher.weights_sha256 = "a" * 64
    assert (cache.misses, cache.hits) == (4, 1)  # other weights
    other_ct = ct.with_array(ct.array + 1)
    cached_predict(teacher, other_ct, prompt, "CT", "STS_001", cache)
    assert (cache.misses, cache.hits) == (5, 1)  # other image content, same case id


def test_teacher_rejects_mismatched_inputs(tiny_sam_case):
    teacher, ct, pet, truth = tiny_sam_case
    with pytest.raises(DistillSegError, match="prompt mask shape"):
        teacher.predict(ct, Prompt(truth[:-1].astype(np.float32)))
    with pytest.raises(DistillSegError, match="unknown modality"):
        teacher.predict(ct, Prompt(truth.astype(np.float32)), "MR")


def test_teachers_command_lists_the_registry(capsys, tmp_path, monkeypatch):
    from DistillSegLib.cli import main

    monkeypatch.setenv("DISTILLSEG_WEIGHTS", str(tmp_path))
    torch.save({"weight": torch.zeros(1)}, tmp_path / "sam_med3d_turbo.pth")  # a PyTorch file (not checked further)
    (tmp_path / "SegAnyPET.pth").write_bytes(os.urandom(4096))  # random bytes: not "present"
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"PK\x03\x04" + b"\0" * 60)  # a zip, with the wrong SHA-256
    assert main(["teachers", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"litemedsam", "sam", "sam-med3d", "seganypet"}
    assert rows["litemedsam"]["weights_present"] and not rows["litemedsam"]["needs_checkpoint"]
    assert rows["sam-med3d"]["weights_present"] and rows["sam-med3d"]["dims"] == 3
    assert not rows["seganypet"]["weights_present"] and rows["seganypet"]["default_modality"] == "PET"
    assert "not a PyTorch checkpoint" in rows["seganypet"]["weights_problem"]
    assert not rows["sam"]["weights_present"] and "SHA-256 prefix 01ec64" in rows["sam"]["weights_problem"]
    assert main(["teachers"]) == 0
    table = capsys.readouterr().out
    assert "litemedsam" in table and "invalid" in table


def test_a_text_file_as_checkpoint_says_what_it_is(tmp_path, capsys):
    from DistillSegLib.cli import main

    checkpoint = tmp_path / "sam_med3d_turbo.pth"
    checkpoint.write_text("hello world\n")
    folder = require_data("sts-petct", "STS_001")
    assert main(["predict", "--teacher", "sam-med3d", "--checkpoint", str(checkpoint),
                 "--prompt-from", str(folder / "CT_mask.nii.gz"), "--ct", str(folder / "CT_image.nii.gz"),
                 "--pet", str(folder / "PET_image.nii.gz"), "--out", str(tmp_path / "x.nii.gz")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"error: cannot read checkpoint {checkpoint}: not a PyTorch checkpoint: it starts with "
                     "b'hello wo', neither a zip archive nor a pickle")


def test_missing_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    from DistillSegLib.teachers.registry import load_teacher

    monkeypatch.setenv("DISTILLSEG_WEIGHTS", str(tmp_path))
    with pytest.raises(DistillSegError, match="needs a checkpoint.*sam_med3d_turbo.pth"):
        load_teacher("sam-med3d")
    with pytest.raises(DistillSegError, match="unknown teacher"):
        load_teacher("medsam2")


def test_embedding_store_memory_is_bounded_and_keyed_by_weights_and_image(tmp_path):
    from DistillSegLib.teachers.embeddings import EmbeddingStore, slice_digest

    image = np.zeros((3, 8, 8), np.float32)
    other = image.copy()
    other[0, 0, 0] = 1e-6
    keys = {slice_digest("w1", image), slice_digest("w2", image), slice_digest("w1", other)}
    assert len(keys) == 3  # another weight or a one-voxel change never reuses an entry
    embedding = np.ones((4, 16, 16), np.float32)  # 4 KiB
    store = EmbeddingStore(None, memory_bytes=3 * embedding.nbytes)
    for n in range(5):
        store.put(f"k{n}", embedding * n)
    assert store.get("k0") is None and store.get("k1") is None  # least recently used dropped
    np.testing.assert_array_equal(store.get("k4"), embedding * 4)
    disk = EmbeddingStore(tmp_path, memory_bytes=0)
    disk.put("abc", embedding)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["abc.npy"]  # atomic: no leftovers
    np.testing.assert_array_equal(EmbeddingStore(tmp_path).get("abc"), embedding)
    # The disk part stays under its limit, dropping the oldest files first.
    size = (tmp_path / "ab" / "abc.npy").stat().st_size
    capped = EmbeddingStore(tmp_path / "capped", memory_bytes=0, disk_bytes=int(2.5 * size))
    for n in range(4):
        capped.put(f"k{n}", embedding)
        os.utime(capped._path(f"k{n}"), (1000 + n, 1000 + n))  # distinct write times
    assert sorted(p.stem for p in (tmp_path / "capped").rglob("*.npy")) == ["k2", "k3"]


def test_teacher_sees_the_pet_on_its_native_grid(tiny_sam_case, sts_001):
    """teacher_on_case runs a PET teacher on the native PET grid (not the PET resampled onto
    the 1 mm CT grid) and brings only its output onto the CT grid."""
    from DistillSegLib.io.resample import resample_to
    from DistillSegLib.teachers.run import teacher_on_case

    teacher = tiny_sam_case[0]
    truth = sts_001.label_on_ct
    k = int(np.flatnonzero(truth.array.any(axis=(0, 1))).mean())
    prompt_map = truth.with_array(np.zeros_like(truth.array))
    prompt_map.array[:, :, k] = truth.array[:, :, k]  # one prompted slice keeps the tiny model fast
    on_ct = teacher_on_case(teacher, sts_001, prompt_map, "PET", ("box",))
    assert on_ct.shape == sts_001.ct.shape

    on_pet_grid = resample_to(prompt_map, sts_001.pet, "nearest", fill=0).array.astype(np.float32)
    native = teacher.predict(sts_001.pet, Prompt(on_pet_grid, kinds=("box",)), "PET")
    assert native.shape == sts_001.pet.shape != sts_001.ct.shape
    expected = resample_to(sts_001.pet.with_array(native), sts_001.ct, "linear", fill=0.0).array
    np.testing.assert_allclose(on_ct, np.clip(expected, 0, 1), atol=1e-6)
    # The same teacher on the PET resampled onto the CT grid sees other pixels: another answer.
    on_ct_grid = teacher.predict(sts_001.pet_on_ct, Prompt(prompt_map.array.astype(np.float32), kinds=("box",)), "PET")
    assert not np.allclose(on_ct_grid, on_ct, atol=1e-3)


def test_embedding_a_volume_ahead_makes_prompts_decoder_only(tiny_sam_case, tmp_path):
    import copy

    from DistillSegLib.teachers.embeddings import EmbeddingStore

    teacher, ct, _, truth = tiny_sam_case
    teacher = copy.copy(teacher)
    teacher.embedding_store = EmbeddingStore(tmp_path)
    seen = []
    assert teacher.embed_volume(ct, "CT", on_batch=lambda done, total: seen.append((done, total))) == ct.shape[2]
    assert seen[-1] == (ct.shape[2], ct.shape[2])
    misses = teacher.embedding_store.misses
    teacher.predict(ct, Prompt(truth.astype(np.float32)), "CT")
    assert teacher.embedding_store.misses == misses  # every prompted slice was already embedded
