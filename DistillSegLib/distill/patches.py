"""Patch sampling (foreground-biased) and augmentation for training on prepared cases.

A :class:`PatchSampler` draws patch *locations*; :func:`crop` cuts any array aligned with a
case (image, label, a teacher's pseudo-label or probabilities) at a location, so the
distillation strategies crop their own arrays exactly where the image was cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..student.preprocess import PreparedCase

if TYPE_CHECKING:  # torch is imported lazily: sampling needs only NumPy
    import torch


@dataclass(frozen=True)
class PatchLocation:
    """Where a patch lies: case index (into the sampler's cases), id and index slices."""

    case_index: int
    case_id: str
    box: tuple[slice, slice, slice]


def crop(array: np.ndarray, location: PatchLocation) -> np.ndarray:
    """``array[..., box]``: works for ``(I, J, K)`` and channel-first ``(C, I, J, K)`` arrays."""
    return np.ascontiguousarray(array[(Ellipsis, *location.box)])


class PatchSampler:
    """Draws patch locations in a list of prepared cases.

    With probability ``pos_fraction`` a patch is centred on a foreground voxel, otherwise
    on a background voxel (MONAI's ``RandCropByPosNegLabel`` rule, through its
    ``generate_pos_neg_label_crop_centers``). Foreground comes from the case's label, or,
    for unlabelled cases, from a mask given with :meth:`set_foreground` (e.g. the current
    pseudo-label); without either, centres are uniform.
    """

    def __init__(self, cases: Sequence[PreparedCase], patch_size: Sequence[int], pos_fraction: float = 0.67):
        self.cases = list(cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.pos_fraction = float(pos_fraction)
        self._indices: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for i, case in enumerate(self.cases):
            if case.label is not None:
                self.set_foreground(i, case.label > 0)

    def __len__(self) -> int:
        return len(self.cases)

    def set_foreground(self, case_index: int, mask: np.ndarray | None) -> None:
        """Bias sampling of one case towards ``mask`` (``(I, J, K)`` bool); ``None``: uniform."""
        if mask is None:
            self._indices.pop(case_index, None)
            return
        flat = np.asarray(mask, bool).ravel()
        self._indices[case_index] = (np.flatnonzero(flat), np.flatnonzero(~flat))

    def sample(self, rng: np.random.Generator, count: int) -> list[PatchLocation]:
        """``count`` locations; cases drawn uniformly with replacement."""
        from monai.transforms.utils import generate_pos_neg_label_crop_centers

        locations = []
        for _ in range(count):
            index = int(rng.integers(len(self.cases)))
            shape = self.cases[index].shape
            fg_bg = self._indices.get(index)
            if fg_bg is not None and len(fg_bg[0]) and len(fg_bg[1]):
                state = np.random.RandomState(int(rng.integers(2**31 - 1)))
                centre = generate_pos_neg_label_crop_centers(
                    self.patch_size, 1, self.pos_fraction, shape, fg_bg[0], fg_bg[1], state
                )[0]
                centre = [int(c) for c in centre]
            else:
                centre = [int(rng.integers(p // 2, n - (p - p // 2) + 1)) for p, n in zip(self.patch_size, shape)]
            start = [c - p // 2 for c, p in zip(centre, self.patch_size)]
            box = tuple(slice(s, s + p) for s, p in zip(start, self.patch_size))
            locations.append(PatchLocation(index, self.cases[index].case_id, box))  # type: ignore[arg-type]
        return locations


def augmentation(keys: Sequence[str], image_key: str = "image"):
    """Random flips along each axis and 90-degree in-plane rotations (all keys alike), plus
    intensity scaling, shift and Gaussian noise on the image only (MONAI dictionary
    transforms, in the spirit of nnU-Net's default augmentation, Isensee et al. 2021).
    """
    from monai.transforms import (
        Compose,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = list(keys)
    return Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1)),
        RandScaleIntensityd(image_key, factors=0.1, prob=0.5),
        RandShiftIntensityd(image_key, offsets=0.1, prob=0.5),
        RandGaussianNoised(image_key, prob=0.15, std=0.05),
    ])


def make_batch(
    cases: Sequence[PreparedCase],
    locations: Sequence[PatchLocation],
    rng: np.random.Generator,
    extra: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    augment: bool = True,
) -> dict[str, "torch.Tensor"]:
    """Crop, augment and stack patches into tensors.

    Args:
        cases: the sampler's cases.
        locations: from :meth:`PatchSampler.sample`.
        extra: ``{key: {case_id: array}}`` more arrays aligned with the cases (3D or
            channel-first 4D), cropped and flipped exactly like the image.
    Returns:
        ``{"image": (B, 2, X, Y, Z), "label": (B, 1, X, Y, Z) long (labelled cases only),
        key: (B, C, X, Y, Z) for each extra key}``.
    """
    import torch

    rotations_ok = augment and locations and location_shape(locations[0])[0] == location_shape(locations[0])[1]
    samples = []
    for location in locations:
        case = cases[location.case_index]
        sample = {"image": crop(case.image, location)}
        if case.label is not None:
            sample["label"] = crop(case.label, location)[None]
        for key, arrays in (extra or {}).items():
            array = crop(arrays[case.case_id], location)
            sample[key] = array[None] if array.ndim == 3 else array
        if augment:
            transform = augmentation([k for k in sample])
            if not rotations_ok:
                transform.transforms = tuple(t for t in transform.transforms if type(t).__name__ != "RandRotate90d")
            transform.set_random_state(seed=int(rng.integers(2**31 - 1)))
            sample = transform(sample)
        samples.append(sample)
    batch = {}
    for key in samples[0]:
        if any(key not in s for s in samples):
            continue
        stacked = torch.stack([torch.as_tensor(np.asarray(s[key])) for s in samples])
        batch[key] = stacked.long() if key == "label" else stacked.float()
    return batch


def location_shape(location: PatchLocation) -> tuple[int, int, int]:
    return tuple(s.stop - s.start for s in location.box)  # type: ignore[return-value]
