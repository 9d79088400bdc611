"""The student network: MONAI's residual 3D U-Net on 2 channels (CT, PET)."""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import DistillSegError
from .config import StudentConfig


def build_student(config: StudentConfig) -> torch.nn.Module:
    """A MONAI ``UNet`` (Kerfoot et al., 2018 residual units) for ``config``.

    Input ``(B, 2, X, Y, Z)`` (CT, PET at ``config.spacing``), output logits
    ``(B, config.num_classes, X, Y, Z)`` with background as class 0. A promptable config
    (``config.prompt_channels``) also takes ``(B, 2 + P, X, Y, Z)``
    (:class:`~.prompt_channels.PromptableStudent`).
    """
    from monai.networks.nets import UNet

    network = UNet(
        spatial_dims=3,
        in_channels=config.in_channels + len(config.prompt_channels),
        out_channels=config.num_classes,
        channels=tuple(config.channels),
        strides=tuple(config.strides),
        num_res_units=config.num_res_units,
        dropout=config.dropout,
    )
    if config.takes_prompts:  # prompt channels after CT and PET; runs without them too
        from .prompt_channels import PromptableStudent

        return PromptableStudent(network, config.in_channels, config.prompt_channels)
    return network


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def promptable_weights_from(prompt_free: Mapping[str, torch.Tensor],
                            config: StudentConfig) -> dict[str, torch.Tensor]:
    """Weights of the promptable student ``config`` that answer exactly as a prompt-free student.

    ``prompt_free`` is the state dict of the prompt-free network of the same configuration
    (``config`` without its prompt channels). Every layer that reads the input, shape
    ``(out, image_channels, k, k, k)``, gets zero weights for the ``P`` prompt channels
    appended after the image channels (ControlNet's "zero convolution" start): the new
    student's output equals the old one's whatever the prompt channels hold, and training
    learns from there what the prompts add, without first unlearning a random start.

    Raises:
        DistillSegError: the weights are not those of that prompt-free network.
    """
    if not config.takes_prompts:
        raise DistillSegError("promptable_weights_from needs a configuration with prompt channels")
    target = build_student(config).state_dict()
    extra = len(config.prompt_channels)
    source = {f"network.{name}": tensor for name, tensor in prompt_free.items()}
    if set(source) != set(target):
        raise DistillSegError("the --init model is not the prompt-free form of this student: its layers differ "
                              f"({len(set(source) ^ set(target))} names)")
    widened = {}
    for name, tensor in source.items():
        wanted = target[name].shape
        if tensor.shape == wanted:
            widened[name] = tensor.clone()
        elif (tensor.ndim == len(wanted) >= 2 and tensor.shape[1] == config.in_channels
              and wanted[1] == config.in_channels + extra and tensor.shape[0] == wanted[0]
              and tensor.shape[2:] == wanted[2:]):
            zeros = torch.zeros((tensor.shape[0], extra, *tensor.shape[2:]), dtype=tensor.dtype)
            widened[name] = torch.cat([tensor, zeros], dim=1)
        else:
            raise DistillSegError(f"the --init model's layer {name[len('network.'):]} has shape {tuple(tensor.shape)}, "
                                  f"not that of this student's ({tuple(wanted)})")
    return widened
