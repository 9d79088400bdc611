"""Automatic component prompts, box-level decoding with the IoU head, and decoder-only tuning.

The component logic runs on a tiny random SAM of the real architecture (fast); extension
past a component's end and decoder tuning run on the real LiteMedSAM on a few slices of
STS_001 (a few encoder passes, then decoder only).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from DistillSegLib.io.volume import Volume
from DistillSegLib.teachers.auto_prompt import (AutoPromptSettings, assemble, component_map, margin_pixels,
                                                prompt_components)
from DistillSegLib.teachers.embeddings import EmbeddingStore
from DistillSegLib.teachers.slicewise import SliceSession


def crop(volume: Volume, k0: int, k1: int) -> Volume:
    affine = volume.affine.copy()
    affine[:3, 3] += volume.affine[:3, 2] * k0
    return Volume(np.ascontiguousarray(volume.array[:, :, k0:k1]), affine)


@pytest.fixture(scope="module")
def tiny():
    from DistillSegLib.teachers.sam import SamConfig, build_sam_model, sam_teacher_from_model

    config = SamConfig(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2, encoder_global_attn_indexes=(0,),
                       prompt_embed_dim=32, image_size=64, decoder_mlp_dim=64, decoder_num_heads=2,
                       iou_head_hidden_dim=32)
    torch.manual_seed(0)
    teacher = sam_teacher_from_model(build_sam_model(config), config, "c" * 64)
    teacher.embedding_store = EmbeddingStore(None)
    return teacher


@pytest.fixture(scope="module")
def tumour_end(sts_001):
    """STS_001's CT and label over the tumour's last 4 slices and 2 tumour-free ones after."""
    truth = sts_001.label_on_ct.array > 0
    last = int(np.flatnonzero(truth.any(axis=(0, 1))).max())
    k0, k1 = last - 3, last + 3
    return crop(sts_001.ct, k0, k1), truth[:, :, k0:k1]


def test_component_map_orders_by_size_and_drops_small_ones():
    probability = np.zeros((10, 10, 4), np.float32)
    probability[0:2, 0:2, 0] = 0.9      # 4 voxels
    probability[5:9, 5:9, 1:3] = 0.8    # 32 voxels
    probability[0, 9, 3] = 0.7          # 1 voxel
    labels = component_map(probability, 0.5, min_voxels=2)
    assert labels.max() == 2 and labels[6, 6, 1] == 1 and labels[0, 0, 0] == 2 and labels[0, 9, 3] == 0
    assert component_map(probability, 0.5, max_components=1).max() == 1
    assert component_map(np.zeros_like(probability)).max() == 0


def test_one_box_per_component_and_slice(tiny, tumour_end):
    ct, truth = tumour_end
    session = SliceSession(tiny, ct, "CT")
    components = np.zeros(truth.shape, np.int32)
    components[truth] = 1
    k = int(np.flatnonzero(truth.any(axis=(0, 1)))[0])
    components[2:8, 2:8, k] = 2  # a "false positive" far from the tumour, on a tumour slice
    answers = prompt_components(session, components, AutoPromptSettings(margin_mm=2.0))
    assert [a.label for a in answers] == [1, 2]
    assert len(answers[0].slices) == 4 and len(answers[1].slices) == 1
    for answer in answers:
        assert set(answer.slice_iou) == set(answer.slices) and answer.extended == 0
        assert all(p.shape == session.shape[1:] for p in answer.probability.values())
    both, confidence, answered = assemble(session, answers)
    only_tumour, _, answered_tumour = assemble(session, answers, keep={1})
    assert both.shape == truth.shape and answered.sum() == answered_tumour.sum()  # same slices answered
    assert (both >= only_tumour - 1e-6).all() and not np.allclose(both, only_tumour)  # component 2 adds its answer
    assert confidence[answered].min() == confidence[answered].min()  # finite IoU predictions
    assert margin_pixels(session, 5.0) == 5  # 0.98 mm pixels


def test_extension_grows_a_truncated_tumour_along_the_axis(tumour_end):
    from DistillSegLib.teachers.litemedsam import load_litemedsam

    ct, truth = tumour_end
    teacher = copy.copy(load_litemedsam())
    teacher.embedding_store = EmbeddingStore(None)
    session = SliceSession(teacher, ct, "CT")
    tumour_slices = np.flatnonzero(truth.any(axis=(0, 1)))
    shown = np.zeros(truth.shape, np.int32)
    shown[:, :, tumour_slices[:2]] = truth[:, :, tumour_slices[:2]]  # the student saw only 2 of 4 slices
    settings = AutoPromptSettings(extend_slices=1, extend_min_iou=0.0, extend_min_overlap=0.3)
    answer = prompt_components(session, shown, settings)[0]
    assert answer.extended >= 1
    grown = answer.slices[2]  # the first accepted extension slice (canonical index)
    mask, target = answer.probability[grown] >= 0.5, session.to_canonical(truth)[grown]
    assert target.any()  # the slice beyond the student's extent is tumour ...
    assert 2 * (mask & target).sum() / (mask.sum() + target.sum()) > 0.5  # ... and the teacher found most of it
    strict = prompt_components(session, shown, AutoPromptSettings(extend_slices=2, extend_min_iou=1.01))[0]
    assert strict.extended == 0  # an IoU bar above 1 accepts nothing


def test_decoder_tuning_keeps_the_encoder_and_its_embeddings(tiny, tumour_end):
    from DistillSegLib.teachers.tuning import (DecoderTuningConfig, labelled_image, sample_prompt, tunable_copy,
                                               tune_decoder, tuning_loss)

    ct, truth = tumour_end
    base = tiny
    tuned = tunable_copy(base, "decoder")
    assert tuned.encoder_sha256 == base.encoder_sha256 and tuned.weights_sha256 != base.weights_sha256
    config = DecoderTuningConfig(steps=30, batch_size=4, lr=1e-3, negative_fraction=0.5)
    image = labelled_image(tuned, ct, truth, "CT", config)
    assert len(image.tumour_slices) == 4 and len(image.end_slices) == 2
    rng = np.random.default_rng(0)
    samples = [sample_prompt(image, rng, config) for _ in range(40)]
    negatives = [s for s in samples if not s[2].any()]
    assert negatives and len(negatives) < len(samples)
    for k, box, target in samples:
        if target.any():  # a positive target is whole tumour components the box touches
            assert image.truth[k][target].all()
        assert 0 <= box[0] < box[2] < image.truth.shape[2] and 0 <= box[1] < box[3] < image.truth.shape[1]

    def loss_on(teacher, chosen):
        with torch.no_grad():
            embeddings = torch.cat([image.session.embeddings([k]) for k, _, _ in chosen])
            boxes = torch.cat([image.session.model_boxes(b[None]) for _, b, _ in chosen])
            targets = torch.cat([image.session.padded(t[None]) for _, _, t in chosen])
            logits, iou = teacher.decode(embeddings, boxes=boxes, with_iou=True)
            positive = torch.tensor([bool(t.any()) for _, _, t in chosen])
            return float(tuning_loss(logits, iou, targets, positive)[0])

    chosen = samples[:8]
    before = loss_on(tuned, chosen)
    encoder = {k: v.clone() for k, v in tuned.model.image_encoder.state_dict().items()}
    digest = tuned.weights_sha256
    losses = tune_decoder(tuned, [image], config, seed=0)
    assert len(losses) == 30 and tuned.weights_sha256 != digest
    assert all(torch.equal(v, tuned.model.image_encoder.state_dict()[k]) for k, v in encoder.items())
    assert not any(p.requires_grad for p in tuned.model.image_encoder.parameters())
    assert loss_on(tuned, chosen) < before  # it learnt from the labelled slices
    assert loss_on(base, chosen) == pytest.approx(before)  # the shipped teacher is untouched
