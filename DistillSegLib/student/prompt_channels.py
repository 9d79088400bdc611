"""A student's prompt input channels: the box, the clicks and the previous mask as images.

A promptable student (``StudentConfig.prompt_channels`` not empty) sees, after its CT and PET
channels, one channel per prompt kind, on the same grid (nnInteractive's and MONAI DeepEdit's
design: prompts as images, so that a click acts in 3D):

* ``box``: 1 inside the box, 0 outside (no box: 0 everywhere);
* ``box_distance``: signed distance to the box's surface in mm, negative inside, divided by
  ``BOX_DISTANCE_SCALE_MM`` and clipped to [-1, 1] (no box: 1 everywhere, "far outside");
* ``positive`` / ``negative``: the clicks of each sign as Gaussian maps (MONAI's
  ``GaussianFilter`` on an image of impulses, as ``monai.apps.deepgrow``'s
  ``AddGuidanceSignald`` builds its guidance), each click peaking at 1, sigma
  ``click_sigma_mm`` along every axis;
* ``previous``: the mask being corrected (1 inside), 0 without one.

With every prompt channel at its "no prompt" value the student runs automatically: the
:class:`PromptableStudent` wrapper appends those values when it is given only the image
channels, so every prompt-free path (inference, validation, teachers' rounds) runs a
promptable student unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ..errors import DistillSegError

PROMPT_CHANNELS = ("box", "box_distance", "positive", "negative", "previous")
# What `distillseg train --promptable` gives a student.
DEFAULT_PROMPT_CHANNELS = ("box", "positive", "negative", "previous")
# Distances to the box beyond this (mm) all read as +-1.
BOX_DISTANCE_SCALE_MM = 50.0


def check_prompt_channels(channels: Sequence[str], click_sigma_mm: float) -> None:
    """Refuse unknown or repeated channel names and a non-positive click sigma."""
    unknown = [c for c in channels if c not in PROMPT_CHANNELS]
    if unknown:
        raise DistillSegError(f"unknown prompt channel(s) {unknown}: choose among {', '.join(PROMPT_CHANNELS)}")
    if len(set(channels)) != len(channels):
        raise DistillSegError(f"prompt channels repeat a name: {list(channels)}")
    if "box" in channels and "box_distance" in channels:
        raise DistillSegError("give the box as 'box' (mask) or 'box_distance', not both")
    if not np.isfinite(click_sigma_mm) or click_sigma_mm <= 0:
        raise DistillSegError(f"the click sigma must be a positive number of mm, got {click_sigma_mm}")


@dataclass
class GridPrompts:
    """Prompts on one array's grid, in voxel indices of that array.

    Attributes:
        box: ``(low, high)`` inclusive integer index corners, or None.
        points: ``(N, 3)`` voxel indices (continuous; rounded to the nearest voxel).
        labels: ``(N,)`` 1 positive, 0 negative.
        previous: ``(I, J, K)`` bool mask of the segment being corrected, or None.
    """

    box: tuple[np.ndarray, np.ndarray] | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    previous: np.ndarray | None = None

    def with_click(self, point: Sequence[float], positive: bool) -> "GridPrompts":
        return GridPrompts(self.box, np.vstack([self.points, np.asarray(point, float)[None]]),
                           np.append(self.labels, int(positive)), self.previous)


def no_prompt_value(channel: str) -> float:
    """The value a channel holds everywhere when its prompt is absent."""
    return 1.0 if channel == "box_distance" else 0.0


def no_prompt(channels: Sequence[str], shape: Sequence[int]) -> torch.Tensor:
    """``(P, *shape)`` float32: every channel at its "no prompt" value."""
    return torch.stack([torch.full(tuple(shape), no_prompt_value(c)) for c in channels]) if channels \
        else torch.zeros((0, *shape))


def box_mask(shape: Sequence[int], box: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """``shape`` float32, 1 inside the inclusive index box (clipped to the array)."""
    mask = torch.zeros(tuple(shape))
    low = np.clip(np.asarray(box[0], int), 0, None)
    high = np.asarray(box[1], int)
    mask[low[0]:high[0] + 1, low[1]:high[1] + 1, low[2]:high[2] + 1] = 1.0
    return mask


def box_signed_distance(shape: Sequence[int], box: tuple[np.ndarray, np.ndarray],
                        spacing: Sequence[float]) -> torch.Tensor:
    """Signed distance (mm / ``BOX_DISTANCE_SCALE_MM``, clipped to [-1, 1]) of every voxel centre
    to the surface of the box (its voxels' outer edges), negative inside."""
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    outside = torch.zeros(tuple(shape))
    inside = torch.full(tuple(shape), float("inf"))
    for axis, coordinate in enumerate(axes):
        low = (float(box[0][axis]) - 0.5 - coordinate) * float(spacing[axis])   # > 0 below the box
        high = (coordinate - float(box[1][axis]) - 0.5) * float(spacing[axis])  # > 0 above it
        outside = outside + torch.clamp(torch.maximum(low, high), min=0.0) ** 2
        inside = torch.minimum(inside, torch.minimum(-low, -high))
    distance = torch.where(outside > 0, outside.sqrt(), -inside)
    return (distance / BOX_DISTANCE_SCALE_MM).clamp(-1.0, 1.0)


@lru_cache(maxsize=8)
def _gaussian(sigma_voxels: tuple[float, float, float]):
    """MONAI's separable Gaussian filter and the peak its impulse response reaches."""
    from monai.networks.layers import GaussianFilter

    gaussian = GaussianFilter(3, sigma=list(sigma_voxels))
    size = [int(4 * s) * 2 + 3 for s in sigma_voxels]
    impulse = torch.zeros((1, 1, *size))
    impulse[(0, 0, *[n // 2 for n in size])] = 1.0
    with torch.no_grad():
        peak = float(gaussian(impulse).max())
    return gaussian, peak


def click_map(shape: Sequence[int], points: np.ndarray, spacing: Sequence[float], sigma_mm: float) -> torch.Tensor:
    """``shape`` float32 Gaussian map of clicks (each peaks at 1; overlaps clipped to 1)."""
    impulses = torch.zeros((1, 1, *shape))
    if len(points) == 0:
        return impulses[0, 0]
    index = np.clip(np.round(np.asarray(points, float)).astype(int), 0, np.asarray(shape) - 1)
    for i, j, k in index:
        impulses[0, 0, i, j, k] = 1.0
    gaussian, peak = _gaussian(tuple(float(sigma_mm) / float(s) for s in spacing))
    with torch.no_grad():
        return (gaussian(impulses)[0, 0] / peak).clamp(0.0, 1.0)


def encode_prompts(channels: Sequence[str], shape: Sequence[int], spacing: Sequence[float], sigma_mm: float,
                   prompts: GridPrompts | None) -> torch.Tensor:
    """``(P, *shape)`` float32 prompt channels (``channels`` order) of ``prompts`` on a grid
    of voxel size ``spacing`` (mm); ``None``: no prompt."""
    if prompts is None:
        return no_prompt(channels, shape)
    planes = []
    for channel in channels:
        if channel == "box":
            planes.append(box_mask(shape, prompts.box) if prompts.box is not None else torch.zeros(tuple(shape)))
        elif channel == "box_distance":
            planes.append(box_signed_distance(shape, prompts.box, spacing) if prompts.box is not None
                          else torch.ones(tuple(shape)))
        elif channel in ("positive", "negative"):
            chosen = prompts.points[prompts.labels == (1 if channel == "positive" else 0)]
            planes.append(click_map(shape, chosen, spacing, sigma_mm))
        elif channel == "previous":
            planes.append(torch.as_tensor(np.asarray(prompts.previous, np.float32)) if prompts.previous is not None
                          else torch.zeros(tuple(shape)))
        else:  # checked by the configuration; kept for a direct caller
            raise DistillSegError(f"unknown prompt channel {channel!r}")
    return torch.stack(planes) if planes else torch.zeros((0, *shape))


class PromptableStudent(torch.nn.Module):
    """A segmentation network whose input is the image channels plus prompt channels.

    ``forward`` takes ``(B, image_channels + P, X, Y, Z)``, or only ``(B, image_channels, ...)``
    and then appends the "no prompt" channels: the automatic mode.
    """

    def __init__(self, network: torch.nn.Module, image_channels: int, prompt_channels: Sequence[str]) -> None:
        super().__init__()
        self.network = network
        self.image_channels = int(image_channels)
        self.prompt_channels = tuple(prompt_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wanted = self.image_channels + len(self.prompt_channels)
        if x.shape[1] == self.image_channels:
            fill = torch.tensor([no_prompt_value(c) for c in self.prompt_channels], dtype=x.dtype, device=x.device)
            prompts = fill.view(1, -1, *([1] * (x.ndim - 2))).expand(x.shape[0], -1, *x.shape[2:])
            x = torch.cat([x, prompts], dim=1)
        elif x.shape[1] != wanted:
            raise DistillSegError(f"the promptable student takes {self.image_channels} image channels, optionally "
                                  f"followed by {len(self.prompt_channels)} prompt channels; got {x.shape[1]}")
        return self.network(x)
