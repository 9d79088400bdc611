"""Simulated prompts for training a promptable student on labelled cases.

Each labelled patch of a promptable student (``StudentConfig.prompt_channels``) gets, with
probability ``1 - prompt_free_fraction``, a box drawn from its reference, then 0 to
``max_clicks`` clicks placed on the errors of the student's own prediction, the previous
prediction becoming the ``previous`` channel (MONAI DeepEdit's training loop: guidance from
the discrepancy between the current prediction and the label, simulated under ``no_grad``
before the step's forward pass). The rest of the batch has no prompt at all, so the same
model keeps running automatically.

* The box is the reference's bounding box (in the patch, after augmentation), each face
  moved by ``U(face_grow) x extent`` plus ``U(-shift_mm, shift_mm)``: grown by up to 30 %,
  shrunk by up to 10 %, shifted by a few mm (a hand-drawn ROI).
* Crop-to-prompt (SAM-Med3D, nnInteractive): a prompted patch is placed so that the box's
  reach lies inside it whenever it fits, so the network sees the box's edges.
* A click goes to the deepest voxel (Euclidean distance transform in mm) of the largest
  connected error region (missed or false), positive in a miss and negative in a false
  positive: SAM-Med3D's and DeepEdit's rule, deterministic. The same rule places the
  benchmark's simulated clicks (``benchmarks/interactive.py``).

Hook for the teachers' answers to boxes on unlabelled cases: :class:`BoxAnswers` holds,
per unlabelled case, boxes and a teacher's answer for each; :func:`prompted_unlabelled_batch`
turns them into patches whose box channel is that box and whose target is that answer.
Filling it (a teacher round that draws perturbed boxes around the current pseudo-label and
asks the teachers) is the distillation strategy's part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import DistillSegError
from ..student.prompt_channels import GridPrompts, encode_prompts
from .patches import PatchLocation, make_batch

if TYPE_CHECKING:
    import torch

    from ..student.preprocess import PreparedCase
    from .trainer import Trainer


@dataclass(frozen=True)
class PromptSimulation:
    """How prompts are simulated on labelled patches (recorded in the model file).

    Attributes:
        prompt_free_fraction: probability that a patch has no prompt at all.
        max_clicks: clicks per prompted patch are drawn uniformly from 0..max_clicks.
        face_grow: range of the outward move of each box face, as a fraction of the
            box's extent along that axis (negative: shrink).
        shift_mm: each face also moves by ``U(-shift_mm, shift_mm)``.
    """

    prompt_free_fraction: float = 0.5
    max_clicks: int = 3
    face_grow: tuple[float, float] = (-0.05, 0.15)
    shift_mm: float = 3.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.prompt_free_fraction < 1.0:
            raise DistillSegError(f"the prompt-free fraction must be in [0, 1), got {self.prompt_free_fraction}")
        if self.max_clicks < 0:
            raise DistillSegError(f"max clicks must be >= 0, got {self.max_clicks}")
        if len(self.face_grow) != 2 or self.face_grow[0] > self.face_grow[1] or self.face_grow[0] <= -0.5:
            raise DistillSegError(f"face growth must be a range (low, high) with low > -0.5, got {self.face_grow}")
        if self.shift_mm < 0:
            raise DistillSegError(f"the box shift must be >= 0 mm, got {self.shift_mm}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PromptSimulation":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive ``(low, high)`` voxel indices of a mask's non-zero voxels (None when empty)."""
    index = np.argwhere(mask)
    if index.size == 0:
        return None
    return index.min(axis=0), index.max(axis=0)


def perturbed_box(box: tuple[np.ndarray, np.ndarray], shape: Sequence[int], spacing: Sequence[float],
                  rng: np.random.Generator, settings: PromptSimulation) -> tuple[np.ndarray, np.ndarray]:
    """``box`` with each face moved outwards by ``U(face_grow) x extent + U(+-shift_mm)``,
    rounded to voxels and clipped to ``shape``; never empty."""
    low, high = np.asarray(box[0], float), np.asarray(box[1], float)
    extent = high - low + 1.0
    spacing = np.asarray(spacing, float)

    def move() -> np.ndarray:
        return rng.uniform(*settings.face_grow, 3) * extent + rng.uniform(-settings.shift_mm, settings.shift_mm, 3) / spacing

    new_low, new_high = np.round(low - move()), np.round(high + move())
    centre = np.round((low + high) / 2.0)
    swapped = new_high < new_low
    new_low, new_high = np.where(swapped, centre, new_low), np.where(swapped, centre, new_high)
    top = np.asarray(shape) - 1
    return np.clip(new_low, 0, top).astype(int), np.clip(new_high, 0, top).astype(int)


def box_reach(box: tuple[np.ndarray, np.ndarray], shape: Sequence[int], spacing: Sequence[float],
              settings: PromptSimulation) -> tuple[np.ndarray, np.ndarray]:
    """The largest box :func:`perturbed_box` can draw from ``box`` (clipped to ``shape``)."""
    low, high = np.asarray(box[0], float), np.asarray(box[1], float)
    grow = max(settings.face_grow[1], 0.0) * (high - low + 1.0) + settings.shift_mm / np.asarray(spacing, float)
    top = np.asarray(shape) - 1
    return np.clip(np.floor(low - grow), 0, top).astype(int), np.clip(np.ceil(high + grow), 0, top).astype(int)


def crop_to_prompt(case_index: int, case_id: str, shape: Sequence[int], reach: tuple[np.ndarray, np.ndarray],
                   patch_size: Sequence[int], rng: np.random.Generator) -> PatchLocation:
    """A patch location that contains ``reach`` along every axis where it fits (else lies
    inside it), uniformly among such positions and inside the case."""
    starts = []
    for low, high, p, n in zip(reach[0], reach[1], patch_size, shape):
        first, last = (high + 1 - p, low) if high + 1 - low <= p else (low, high + 1 - p)
        first, last = max(int(first), 0), min(int(last), n - p)
        starts.append(int(rng.integers(first, last + 1)) if last >= first else max(min(int(first), n - p), 0))
    box = tuple(slice(s, s + p) for s, p in zip(starts, patch_size))
    return PatchLocation(case_index, case_id, box)  # type: ignore[arg-type]


def next_click(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, bool] | None:
    """Where a simulated radiologist clicks next: ``(voxel index, positive)``, None without errors.

    The largest connected region (6-connectivity) of missed (``truth & ~prediction``) or
    false (``prediction & ~truth``) voxels gets the click, at its deepest voxel (largest
    Euclidean distance to the region's border, in mm); positive for a miss.
    """
    from scipy import ndimage

    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    best: tuple[int, bool, np.ndarray] | None = None
    for positive, region in ((True, truth & ~prediction), (False, prediction & ~truth)):
        if not region.any():
            continue
        components, count = ndimage.label(region)
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), positive, components == largest)
    if best is None:
        return None
    _, positive, component = best
    depth = ndimage.distance_transform_edt(np.pad(component, 1), sampling=tuple(float(s) for s in spacing))
    index = np.unravel_index(int(np.argmax(depth[1:-1, 1:-1, 1:-1])), component.shape)
    return np.asarray(index, float), positive


def prompt_tensor(trainer: "Trainer", prompts: Sequence[GridPrompts | None], shape: Sequence[int]) -> "torch.Tensor":
    """``(B, P, X, Y, Z)`` prompt channels of a batch (``None``: no prompt)."""
    import torch

    config = trainer.config
    return torch.stack([encode_prompts(config.prompt_channels, shape, config.spacing, config.click_sigma_mm, p)
                        for p in prompts])


def add_simulated_clicks(trainer: "Trainer", image: "torch.Tensor", truth: np.ndarray,
                         prompts: list[GridPrompts | None], clicks: int) -> list[GridPrompts | None]:
    """Run the student ``clicks`` times (no gradient) and after each run add one click on its
    largest error to every prompted patch, the run's mask becoming ``previous``.

    Args:
        image: ``(B, 2, X, Y, Z)`` image channels.
        truth: ``(B, X, Y, Z)`` bool references.
    """
    import torch

    shape = tuple(image.shape[2:])
    network = trainer.network
    was_training = network.training
    network.eval()
    try:
        for _ in range(clicks):
            if not any(p is not None for p in prompts):
                break
            inputs = torch.cat([image, prompt_tensor(trainer, prompts, shape)], dim=1).to(trainer.device)
            with torch.no_grad():
                predicted = (network(inputs).argmax(dim=1) > 0).cpu().numpy()
            for b, prompt in enumerate(prompts):
                if prompt is None:
                    continue
                click = next_click(predicted[b], truth[b], trainer.config.spacing)
                prompt = GridPrompts(prompt.box, prompt.points, prompt.labels, predicted[b])
                prompts[b] = prompt if click is None else prompt.with_click(*click)
    finally:
        network.train(was_training)
    return prompts


class LabelledPromptSampler:
    """Locations of labelled patches: prompt-free ones (the trainer's foreground-biased
    sampler) and prompted ones (crop-to-prompt around the reference)."""

    def __init__(self, trainer: "Trainer", settings: PromptSimulation) -> None:
        self.trainer, self.settings = trainer, settings
        self.reach: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}

    def case_reach(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        if index not in self.reach:
            case: PreparedCase = self.trainer.labelled[index]
            box = bounding_box(case.label > 0) if case.label is not None else None
            self.reach[index] = None if box is None else box_reach(box, case.shape, self.trainer.config.spacing,
                                                                   self.settings)
        return self.reach[index]

    def sample(self, rng: np.random.Generator, count: int) -> tuple[list[PatchLocation], list[bool]]:
        trainer = self.trainer
        locations, prompted = [], []
        for _ in range(count):
            with_prompt = bool(rng.random() >= self.settings.prompt_free_fraction)
            reach = None
            if with_prompt:
                index = int(rng.integers(len(trainer.labelled)))
                reach = self.case_reach(index)
            if reach is None:
                locations.extend(trainer.labelled_sampler.sample(rng, 1))
                prompted.append(False)
                continue
            case = trainer.labelled[index]
            locations.append(crop_to_prompt(index, case.case_id, case.shape, reach, trainer.config.patch_size, rng))
            prompted.append(True)
        return locations, prompted


def prompted_labelled_batch(trainer: "Trainer", extra: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                            augment: bool = True) -> dict[str, "torch.Tensor"]:
    """The trainer's labelled batch for a promptable student: ``image`` is ``(B, 2 + P, ...)``
    (image then simulated prompt channels); also ``prompted`` ``(B,)`` bool and ``clicks``."""
    import torch

    settings: PromptSimulation = trainer.prompt_simulation
    sampler = getattr(trainer, "_labelled_prompt_sampler", None)
    if sampler is None:
        sampler = trainer._labelled_prompt_sampler = LabelledPromptSampler(trainer, settings)
    rng = trainer.step_rng
    locations, prompted = sampler.sample(rng, trainer.options.batch_size)
    batch = make_batch(trainer.labelled, locations, rng, extra, augment)
    truth = (batch["label"][:, 0] > 0).numpy()
    shape = tuple(batch["image"].shape[2:])
    prompts: list[GridPrompts | None] = []
    for b, with_prompt in enumerate(prompted):
        box = bounding_box(truth[b]) if with_prompt else None
        prompts.append(None if box is None else
                       GridPrompts(perturbed_box(box, shape, trainer.config.spacing, rng, settings)))
    clicks = int(rng.integers(settings.max_clicks + 1)) if settings.max_clicks else 0
    prompts = add_simulated_clicks(trainer, batch["image"], truth, prompts, clicks)
    batch["image"] = torch.cat([batch["image"], prompt_tensor(trainer, prompts, shape)], dim=1)
    batch["prompted"] = torch.tensor([p is not None for p in prompts])
    batch["clicks"] = torch.tensor([0 if p is None else len(p.points) for p in prompts])
    return batch


@dataclass
class BoxAnswers:
    """Teachers' answers to boxes on unlabelled cases (the hook for box-conditioned pseudo-labels).

    ``answers[case_id]`` is a list of ``(box, target)``: an inclusive index box on the
    case's student grid and the teacher's answer to it, an ``(I, J, K)`` class map on that grid.
    """

    answers: dict[str, list[tuple[tuple[np.ndarray, np.ndarray], np.ndarray]]] = field(default_factory=dict)

    def add(self, case_id: str, box: tuple[np.ndarray, np.ndarray], target: np.ndarray) -> None:
        self.answers.setdefault(case_id, []).append((box, np.asarray(target, np.uint8)))


def prompted_unlabelled_batch(trainer: "Trainer", answers: BoxAnswers, augment: bool = False
                              ) -> dict[str, "torch.Tensor"]:
    """Patches of unlabelled cases, each cropped to one of its teacher-answered boxes: ``image``
    ``(B, 2 + P, ...)`` with that box as the prompt and ``label`` ``(B, 1, ...)`` the teacher's
    answer (the student learns to answer box B as the teachers answer B).

    ``augment`` is off by default: a flip would move the answer but not the box drawn from it.
    """
    import torch

    rng = trainer.step_rng
    cases = [(i, c) for i, c in enumerate(trainer.unlabelled) if answers.answers.get(c.case_id)]
    if not cases:
        raise DistillSegError("no unlabelled case has a teacher's answer to a box yet")
    locations, boxes, targets = [], [], []
    for _ in range(trainer.options.batch_size):
        index, case = cases[int(rng.integers(len(cases)))]
        box, target = answers.answers[case.case_id][int(rng.integers(len(answers.answers[case.case_id])))]
        location = crop_to_prompt(index, case.case_id, case.shape, box, trainer.config.patch_size, rng)
        start = np.array([s.start for s in location.box])
        locations.append(location)
        boxes.append((np.asarray(box[0]) - start, np.asarray(box[1]) - start))
        targets.append(target[location.box])
    batch = make_batch(trainer.unlabelled, locations, rng, None, augment)
    shape = tuple(batch["image"].shape[2:])
    top = np.asarray(shape) - 1
    prompts = [GridPrompts((np.clip(lo, 0, top), np.clip(hi, 0, top))) for lo, hi in boxes]
    batch["image"] = torch.cat([batch["image"], prompt_tensor(trainer, prompts, shape)], dim=1)
    batch["label"] = torch.as_tensor(np.stack(targets)[:, None]).long()
    return batch
