"""The student trainer on real sts-petct cases: learning, resume, cancel, DDP, --init, inference.

A tiny configuration (4 mm voxels, 8-16-32 channels) keeps every test to seconds; the
full-size student is measured in ``benchmarks/student_supervised.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DistillSegLib.errors import CancelledError, DistillSegError
from DistillSegLib.progress import CancelToken
from DistillSegLib.student.config import StudentConfig
from DistillSegLib.student.model_file import load_model, read_payload, save_model
from DistillSegLib.student.preprocess import prepare_case
from DistillSegLib.distill import get_strategy_class
from DistillSegLib.distill.trainer import Trainer, TrainingOptions

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = StudentConfig(spacing=(4.0, 4.0, 4.0), patch_size=(32, 32, 16), channels=(8, 16, 32), strides=(2, 2),
                     num_res_units=1)



@pytest.fixture(scope="module")
def prepared_001(sts_001):
    return prepare_case(sts_001, TINY)


def make_trainer(cases, steps, seed=0, **kwargs):
    options = TrainingOptions(steps=steps, batch_size=2, learning_rate=5e-3, seed=seed, val_every=10**6,
                              checkpoint_every=kwargs.pop("checkpoint_every", 10**6))
    return Trainer(TINY, options, get_strategy_class("supervised")(), cases, **kwargs)


@pytest.fixture(scope="module")
def overfitted(prepared_001, tmp_path_factory):
    """40 steps on STS_001 alone, saved as a model file."""
    trainer = make_trainer([prepared_001], steps=40)
    result = trainer.train()
    path = tmp_path_factory.mktemp("model") / "student.pt"
    save_model(path, trainer.network, TINY, result.metadata)
    return result, path


def test_prepared_case_is_two_channel_at_student_spacing(prepared_001, sts_001):
    assert prepared_001.image.shape[0] == 2 and prepared_001.image.dtype == np.float32
    assert np.allclose(np.linalg.norm(prepared_001.affine[:3, :3], axis=0), TINY.spacing)
    assert prepared_001.label.shape == prepared_001.shape and prepared_001.label.max() == 1
    # PET channel: SUV / scale; the tumour is hotter than the rest.
    pet, label = prepared_001.image[1], prepared_001.label > 0
    assert pet[label].mean() > 2 * pet[~label].mean()


def test_training_lowers_the_loss_and_finds_the_tumour(overfitted, sts_001):
    from DistillSegLib.student.inference import predict_case
    from DistillSegLib.metrics.segmentation import dice

    result, path = overfitted
    assert np.mean(result.losses[-8:]) < np.mean(result.losses[:8]) - 0.2
    prediction = predict_case(load_model(path), sts_001, roi="all", device="cpu")
    assert prediction.label.shape == sts_001.ct.shape
    assert np.array_equal(prediction.label.affine, sts_001.ct.affine)
    overlap = dice(prediction.label.array > 0, sts_001.label_on_ct.array > 0)
    assert overlap > 0.3, f"Dice {overlap:.3f} with the tumour after 40 steps"


def test_crop_model_refuses_to_run_without_roi(overfitted, sts_001):
    from DistillSegLib.student.inference import predict_case

    with pytest.raises(DistillSegError, match="trained on crops.*--roi"):
        predict_case(load_model(overfitted[1]), sts_001, roi=None)


def test_roi_limits_the_output_and_keeps_the_ct_grid(overfitted, sts_001):
    from DistillSegLib.student.inference import predict_case, roi_from_mask

    low, high = roi_from_mask(sts_001.label_on_ct, margin_mm=0.0)
    half = (low + high) / 2
    roi = (low, np.array([half[0], high[1], high[2]]))  # the tumour's half with the lower R coordinates
    prediction = predict_case(load_model(overfitted[1]), sts_001, roi=roi, device="cpu")
    assert prediction.label.shape == sts_001.ct.shape
    centres = np.argwhere(prediction.label.array > 0)
    world = centres @ sts_001.ct.affine[:3, :3].T + sts_001.ct.affine[:3, 3]
    assert len(world) > 0 and world[:, 0].max() <= half[0] + 1.0


def test_resume_after_cancel_gives_the_same_weights(prepared_001, tmp_path):
    reference = make_trainer([prepared_001], steps=4)
    reference.train()

    checkpoint = tmp_path / "run.checkpoint.pt"
    cancel = CancelToken()
    first = make_trainer([prepared_001], steps=4, cancel=cancel, checkpoint_path=checkpoint, checkpoint_every=2)
    first.callbacks.append(lambda trainer, step: cancel.cancel("test stop") if step == 2 else None)
    with pytest.raises(CancelledError):
        first.train()
    # The checkpoint of step 2 is a complete model file.
    assert load_model(checkpoint).metadata["training"]["steps_done"] == 2

    second = make_trainer([prepared_001], steps=4, checkpoint_path=checkpoint, checkpoint_every=2)
    assert second.resume() and second.step == 2
    second.train()
    for (name, a), b in zip(reference.network.state_dict().items(), second.network.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert second.losses == pytest.approx(reference.losses, abs=1e-6)


def test_ddp_world_size_one_matches_the_plain_loop(prepared_001, tmp_path):
    import torch.distributed as dist

    plain = make_trainer([prepared_001], steps=3).train().losses
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        trainer = make_trainer([prepared_001], steps=3)
        assert trainer.distributed and isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
        distributed = trainer.train().losses
    finally:
        dist.destroy_process_group()
    assert distributed == pytest.approx(plain, abs=1e-6)


def test_init_continues_from_an_existing_model(overfitted, prepared_001):
    weights = read_payload(overfitted[1])["weights"]
    trainer = make_trainer([prepared_001], steps=1, init_weights=weights)
    for name, value in trainer.network.state_dict().items():
        assert torch.equal(value, weights[name]), name
    # Its first loss is already low: it starts from the trained student, not from scratch.
    assert trainer.train().losses[0] < overfitted[0].losses[0] - 0.2
