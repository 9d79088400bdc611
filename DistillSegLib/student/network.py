"""The student network: MONAI's residual 3D U-Net on 2 channels (CT, PET)."""

from __future__ import annotations

import torch

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
