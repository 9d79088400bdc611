"""KnowSAM's prompting network: the fusion of a warm U-Net and a background-biased
co-student (the untrained fusion head is their mean) prompts nothing; the labelled cases
choose the network that does.

Real sts-petct crops, a tiny U-Net warmed up by a few supervised steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from DistillSegLib.distill.trainer import Trainer, TrainingOptions
from DistillSegLib.student.config import StudentConfig

CONFIG = StudentConfig(patch_size=(16, 16, 8), channels=(8, 16, 32), strides=(2, 2), num_res_units=1)


class Background(torch.nn.Module):
    """A co-student that has learnt only background: logits (+6, -6) everywhere."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros((image.shape[0], 2, *image.shape[2:]), dtype=image.dtype)
        logits[:, 0], logits[:, 1] = 6.0, -6.0
        return logits


def cropped(case, in_plane: int = 40, slices: int = 8):
    centre = np.argwhere(case.label_on_ct.array > 0).mean(axis=0).astype(int)
    start = np.maximum(centre - np.array([in_plane // 2, in_plane // 2, slices // 2]), 0)
    return tuple(slice(int(s), int(s) + int(n)) for s, n in zip(start, (in_plane, in_plane, slices)))


def test_the_labelled_cases_choose_the_network_that_prompts(sts_dir):
    from DistillSegLib.distill.knowsam import FusedStudents, FusionHead, KnowSAMConfig, best_prompting_network
    from DistillSegLib.distill.supervised import SupervisedStrategy
    from DistillSegLib.io.case import load_case_folder
    from DistillSegLib.student.preprocess import prepare_case

    source = load_case_folder(sts_dir / "STS_001")
    labelled = prepare_case(source, CONFIG, box=cropped(source))
    options = TrainingOptions(steps=15, batch_size=2, learning_rate=2e-2, val_every=1000, checkpoint_every=1000)
    trainer = Trainer(CONFIG, options, SupervisedStrategy(), [labelled])
    trainer.train()
    fused = FusedStudents(trainer.network, Background(), FusionHead())  # the fusion head as it starts
    candidates = {"fused": fused, "unet": trainer.network, "co-student": Background()}
    chosen, scores = best_prompting_network(trainer, candidates, [labelled])
    assert scores["unet"] > 0.3, scores  # the warm U-Net finds the tumour ...
    assert scores["fused"] < scores["unet"] and scores["co-student"] == 0.0  # ... the plain mean loses it
    assert chosen == "unet"
    assert KnowSAMConfig().prompt_from == "best"
    with pytest.raises(ValueError, match="prompt_from"):
        KnowSAMConfig(prompt_from="teacher")
