"""Memory of the teachers: one bounded embedding store per process, entries that own their
bytes, and freed memory handed back to the system after teacher work."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from conftest import ROOT
from DistillSegLib.io.volume import Volume


def test_a_stored_slice_does_not_keep_its_encoder_batch_alive():
    from DistillSegLib.teachers.embeddings import EmbeddingStore

    slice_bytes = 1 << 20
    store = EmbeddingStore(None, memory_bytes=2 * slice_bytes)  # room for 2 of the 8 slices
    tracemalloc.start()
    try:
        batch = np.random.default_rng(0).random((8, slice_bytes // 4), dtype=np.float32)  # one encoder batch
        for n, embedding in enumerate(batch):  # views into the batch, as encode_with_store gets them
            store.put(f"k{n}", embedding)
        del batch, embedding
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(store) == 2 and store.memory_used == 2 * slice_bytes
    assert all(array.base is None for array in store._memory.values())  # each entry owns its bytes
    # What the store accounts for is what it holds: not the 8 MiB batch behind two 1 MiB views.
    assert held < 3 * slice_bytes, f"{held / 2**20:.1f} MiB still held for {store.memory_used / 2**20:.0f} MiB accounted"


def test_one_store_per_process_for_prompts_tuning_and_the_demo(monkeypatch, tmp_path):
    from DistillSegLib.demo.run import timing_teacher
    from DistillSegLib.distill.teaching import tuned_teacher
    from DistillSegLib.teachers import embeddings
    from DistillSegLib.teachers.litemedsam import load_litemedsam

    monkeypatch.setenv("DISTILLSEG_CACHE", str(tmp_path))
    store = embeddings.default_store()
    assert embeddings.default_store() is store
    teacher = load_litemedsam()
    assert teacher.store() is store
    # A teacher tuned with LoRA (its embeddings change with every step) and the demo's timing
    # teacher (no embeddings from disk) share that store's bounded memory, never a store of their own.
    lora = tuned_teacher(teacher, suffix="lora", encoder=True)
    assert lora.store().store is store
    assert timing_teacher().store().store is store
    lora.store().put("lora-key", np.ones((4, 4), np.float32))
    assert store.get("lora-key", from_disk=False) is not None
    assert not list(tmp_path.rglob("*.npy"))  # and what they put there never reaches the disk
    # Other settings replace the store; two bounded stores never live side by side.
    monkeypatch.setenv(embeddings.MEMORY_ENV, "64")
    assert embeddings.default_store() is not store and embeddings._STORE[1].memory_bytes == 64 << 20


@pytest.fixture(scope="module")
def tiny_teacher():
    from DistillSegLib.teachers.sam import SamConfig, build_sam_model, sam_teacher_from_model

    config = SamConfig(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2, encoder_global_attn_indexes=(0,),
                       prompt_embed_dim=32, image_size=64, decoder_mlp_dim=64, decoder_num_heads=2,
                       iou_head_hidden_dim=32)
    torch.manual_seed(0)
    return sam_teacher_from_model(build_sam_model(config), config, "b" * 64)


def test_slice_sessions_keep_no_embeddings_beyond_the_shared_bound(tiny_teacher, sts_001):
    import copy

    from DistillSegLib.teachers.embeddings import EmbeddingStore
    from DistillSegLib.teachers.slicewise import SliceSession

    teacher = copy.copy(tiny_teacher)
    k = int(np.flatnonzero(sts_001.label_on_ct.array.any(axis=(0, 1))).mean())
    ct = sts_001.ct
    affine = ct.affine.copy()
    affine[:3, 3] += ct.affine[:3, 2] * (k - 3)
    image = Volume(np.ascontiguousarray(ct.array[:, :, k - 3:k + 3]), affine)  # 6 axial slices
    first = SliceSession(teacher, image, "CT")
    one = first.embeddings([0]).numpy()
    teacher.embedding_store = EmbeddingStore(None, memory_bytes=2 * one.nbytes)  # room for 2 slices
    store = teacher.embedding_store

    encoded = []
    hook = teacher.model.image_encoder.register_forward_hook(lambda module, inputs, output: encoded.append(len(output)))
    first.embeddings([0, 1])
    assert sum(encoded) == 2  # the new store is empty
    second = SliceSession(teacher, image, "CT")
    misses = store.misses
    np.testing.assert_allclose(second.embeddings([1, 0]).numpy()[1], one[0], atol=1e-5)  # batch-size rounding
    # Another session on the same image (the next round's) reuses the shared entries: no encoding.
    assert store.misses == misses and sum(encoded) == 2
    hook.remove()
    first.embeddings(range(6))
    assert store.memory_used <= 2 * one.nbytes
    misses = store.misses
    first.embeddings([0])  # evicted from the bounded store: encoded again, not kept by the session
    assert store.misses == misses + 1

    # An encoder that changes (LoRA being tuned) gets new embeddings, never the session's old ones.
    with torch.no_grad():
        for parameter in teacher.model.image_encoder.parameters():
            parameter.add_(0.05)
    teacher.encoder_sha256 = "changed"
    assert not np.allclose(first.embeddings([0]).numpy()[0], one[0])


PROBE = """
import ctypes, json, sys
sys.path.insert(0, {root!r})
import psutil
from DistillSegLib.allocator import release_free_memory, tune_allocator
tune_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
blocks = [libc.malloc(16 << 20) for _ in range(24)]  # 384 MiB from the heap (below the raised thresholds)
for block in blocks:
    ctypes.memset(block, 1, 16 << 20)
used = psutil.Process().memory_info().rss
for block in blocks:
    libc.free(ctypes.c_void_p(block))
freed = psutil.Process().memory_info().rss
release_free_memory()
trimmed = psutil.Process().memory_info().rss
print(json.dumps({{"used": used, "freed": freed, "trimmed": trimmed}}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_memory_goes_back_to_the_system_after_a_trim():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=str(ROOT))], capture_output=True, text=True,
                         env=env, check=True).stdout
    rss = json.loads(out)
    mib = 2 ** 20
    assert rss["freed"] > rss["used"] - 64 * mib  # the raised trim threshold keeps freed memory resident
    assert rss["trimmed"] < rss["freed"] - 300 * mib  # until it is trimmed


def test_peak_rss_is_at_least_the_current_rss():
    from DistillSegLib.allocator import peak_rss_bytes, rss_bytes

    now, peak = rss_bytes(), peak_rss_bytes()
    assert now is not None and peak is not None and peak >= now > 10 * 2 ** 20


def test_litemedsam_encodes_one_slice_at_a_time_on_a_cpu_and_batches_on_a_gpu():
    """Batches of 16 slices cost 3.5 GiB of encoder activations on a CPU and are slower than
    one slice at a time (benchmarks/encoder_batch.py); a GPU keeps its batches."""
    from DistillSegLib.teachers.litemedsam import encoder_batch_for, load_litemedsam

    assert encoder_batch_for("cpu") == 1 and encoder_batch_for("cuda:0") == 16
    assert load_litemedsam().batch_size == 1
    assert load_litemedsam(batch_size=4).batch_size == 4


def test_a_later_round_or_process_reads_slice_embeddings_from_disk(tiny_teacher, sts_001, tmp_path):
    """Each distillation round opens new sessions, and the next Distil is a new process: the
    embeddings on disk must be found by hashing the slice, not only by a session's memory."""
    import copy

    from DistillSegLib.teachers.embeddings import EmbeddingStore
    from DistillSegLib.teachers.slicewise import SliceSession

    teacher = copy.copy(tiny_teacher)
    image = sts_001.pet
    teacher.embedding_store = EmbeddingStore(tmp_path, memory_bytes=1 << 30)
    before = SliceSession(teacher, image, "PET").embeddings([3, 5, 8]).numpy()
    assert len(list(tmp_path.rglob("*.npy"))) == 3

    encoded = []
    hook = teacher.model.image_encoder.register_forward_hook(lambda module, inputs, output: encoded.append(len(output)))
    try:
        teacher.embedding_store = EmbeddingStore(tmp_path, memory_bytes=1 << 30)  # a new process
        after = SliceSession(teacher, image, "PET").embeddings([8, 3, 5, 9]).numpy()
    finally:
        hook.remove()
    assert sum(encoded) == 1  # only slice 9 was new
    np.testing.assert_array_equal(after[[1, 2, 0]], before)
