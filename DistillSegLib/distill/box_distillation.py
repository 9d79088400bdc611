"""``boxdistil``: the teachers' promptability distilled into a promptable student.

Unlabelled cases have no reference to draw boxes from. At the start of every round (every
``--refresh-every`` steps) the current student segments each unlabelled case without a
prompt; the bounding box of its foreground, perturbed as the labelled boxes are
(:func:`~.prompt_simulation.perturbed_box`), is drawn ``boxes_per_case`` times, and the
teacher answers each box as it answers a radiologist (LiteMedSAM's slice walk from the box's
middle slice, :func:`~DistillSegLib.teachers.interactive.predict_interactive`). The student
then learns to answer box B as the teacher answers B (:func:`~.prompt_simulation.prompted_unlabelled_batch`),
beside the labelled patches with their simulated boxes and clicks (CE + Dice on both, the
unlabelled term weighted by ``unlabelled_weight``).

The student must take prompts (``distillseg train --promptable``). Two controls without any
teacher: ``--strategy supervised --promptable`` (the labelled cases only) and ``boxself``
(:class:`BoxSelfTrainingStrategy`: the same rounds, boxes and loss, each box answered by the
student itself, prompted as at inference). What ``boxdistil`` gains over ``boxself`` is what
the teacher's answers add.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DistillSegError
from ..io.volume import Volume, apply_affine
from .prompt_simulation import BoxAnswers, bounding_box, perturbed_box, prompted_unlabelled_batch
from .teaching import DEFAULT_TEACHER, student_foreground
from .trainer import Strategy


def index_box_to_ras(box: tuple[np.ndarray, np.ndarray], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RAS ``(low, high)`` mm of an inclusive index box (its voxels' outer edges)."""
    from ..teachers.user_prompts import box_corners

    low, high = np.asarray(box[0], float) - 0.5, np.asarray(box[1], float) + 0.5
    world = apply_affine(affine, box_corners(low, high))
    return world.min(axis=0), world.max(axis=0)


def teacher_answer(teacher, case, grid: Volume, box: tuple[np.ndarray, np.ndarray], modality: str) -> np.ndarray:
    """A teacher's ``(I, J, K)`` uint8 answer on ``grid`` (a prepared case's student grid) to the
    index box ``box`` of that grid, asked as a radiologist's box on the teacher's own image."""
    from ..teachers.interactive import predict_interactive
    from ..teachers.run import modality_image, probability_on_grid
    from ..teachers.user_prompts import UserPrompt

    image = modality_image(case, modality)
    prompt = UserPrompt(box=index_box_to_ras(box, grid.affine)).on_grid(image, modality)
    native, _ = predict_interactive(teacher, image, prompt, modality)
    return (probability_on_grid(native, image, grid) >= 0.5).astype(np.uint8)


class BoxDistillationStrategy(Strategy):
    name = "boxdistil"
    answers_term = "teacher_boxes"  # the name of the unlabelled term in the training log

    def __init__(self, teacher: str = DEFAULT_TEACHER, checkpoint: str | None = None, modality: str = "CT",
                 boxes_per_case: int = 2, unlabelled_weight: float = 1.0) -> None:
        self.teacher_name, self.checkpoint, self.modality = teacher, checkpoint, modality
        self.teacher = teacher
        self.boxes_per_case, self.unlabelled_weight = int(boxes_per_case), float(unlabelled_weight)
        self.answers = BoxAnswers()
        self.model = None

    @classmethod
    def from_args(cls, args: Any) -> "BoxDistillationStrategy":
        modality = getattr(args, "teacher_modality", None) or "CT"
        if modality == "both":
            raise DistillSegError("boxdistil asks one teacher: --teacher-modality CT or PET")
        return cls(getattr(args, "teacher", None) or DEFAULT_TEACHER, getattr(args, "teacher_checkpoint", None),
                   modality)

    def setup(self, trainer) -> None:
        if not trainer.config.takes_prompts:
            raise DistillSegError("--strategy boxdistil trains a promptable student: add --promptable")
        if not trainer.unlabelled:
            raise DistillSegError("--strategy boxdistil needs unlabelled cases (--unlabelled)")
        from ..teachers.registry import load_teacher

        self.model = load_teacher(self.teacher_name, self.checkpoint, self.modality)

    def on_round_start(self, trainer, step: int) -> None:
        """Ask the teacher for its answers to perturbed boxes around each unlabelled case's
        current prediction (the student's, without a prompt)."""
        answers = BoxAnswers()
        network = trainer.prompting_network()
        for case in trainer.unlabelled:
            trainer.cancel.check()
            if case.source is None and self.model is not None:
                raise DistillSegError(f"case {case.case_id}: the teacher needs the case's own images")
            found = bounding_box(student_foreground(trainer, case, network) >= 0.5)
            if found is None:
                continue
            for _ in range(self.boxes_per_case):
                box = perturbed_box(found, case.shape, trainer.config.spacing, trainer.step_rng,
                                    trainer.prompt_simulation)
                answers.add(case.case_id, box, self.answer(trainer, case, box))
        self.answers = answers

    def loss(self, trainer, step: int):
        batch = trainer.labelled_batch()
        loss = trainer.supervised_loss(trainer.model(batch["image"].to(trainer.device)), batch["label"].to(trainer.device))
        logs = {"supervised": float(loss.detach())}
        if self.answers.answers:
            unlabelled = prompted_unlabelled_batch(trainer, self.answers)
            term = trainer.supervised_loss(trainer.model(unlabelled["image"].to(trainer.device)),
                                           unlabelled["label"].to(trainer.device))
            loss = loss + self.unlabelled_weight * term
            logs[self.answers_term] = float(term.detach())
        return loss, logs

    def answer(self, trainer, case, box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The answer to ``box`` on the unlabelled ``case``'s student grid: the teacher's."""
        return teacher_answer(self.model, case.source, case.grid(), box, self.modality)

    def metadata(self) -> dict[str, Any]:
        return {"teacher": self.teacher_name, "modality": self.modality, "boxes_per_case": self.boxes_per_case,
                "unlabelled_weight": self.unlabelled_weight}


def prompt_window(box: tuple[np.ndarray, np.ndarray], shape: tuple[int, ...], config) -> tuple[slice, ...]:
    """The index window of a prepared case the student sees for ``box`` at inference
    (:func:`~DistillSegLib.student.prompt_inference.prompt_region` on the student grid): the box
    with ``PROMPT_MARGIN_MM`` around and at least one training patch per axis, inside the case."""
    from ..student.prompt_inference import PROMPT_MARGIN_MM

    low, high = np.asarray(box[0], float), np.asarray(box[1], float)
    spacing, patch = np.asarray(config.spacing, float), np.asarray(config.patch_size, float)
    half = np.maximum((high - low) / 2.0 + PROMPT_MARGIN_MM / spacing, patch / 2.0)
    centre, size = (low + high) / 2.0, np.asarray(shape)
    begin = np.clip(np.floor(centre - half), 0, None).astype(int)
    end = np.minimum(np.ceil(centre + half).astype(int) + 1, size)
    begin = np.clip(np.minimum(begin, end - 2 * np.ceil(half).astype(int)), 0, None)
    end = np.minimum(np.maximum(end, begin + 2 * np.ceil(half).astype(int)), size)
    return tuple(slice(int(a), int(b)) for a, b in zip(begin, end))


def student_answer(trainer, case, box: tuple[np.ndarray, np.ndarray], network=None) -> np.ndarray:
    """The promptable student's own ``(I, J, K)`` uint8 answer to the index ``box`` of a prepared
    case, as it answers a radiologist's box: one window around the box, the box as its prompt
    channel, the answer kept inside the box (as the teacher's is)."""
    import torch

    from ..student.inference import sliding_window_probabilities
    from ..student.prompt_channels import GridPrompts, encode_prompts

    config = trainer.config
    window = prompt_window(box, case.shape, config)
    start = np.array([s.start for s in window])
    image = torch.as_tensor(np.asarray(case.image)[(slice(None), *window)], dtype=torch.float32)
    local = GridPrompts((np.asarray(box[0]) - start, np.asarray(box[1]) - start))
    channels = encode_prompts(config.prompt_channels, image.shape[1:], config.spacing, config.click_sigma_mm, local)
    probabilities = sliding_window_probabilities(network or trainer.prompting_network(),
                                                 torch.cat([image, channels], dim=0), config, trainer.device)
    answer = np.zeros(case.shape, np.uint8)
    answer[window] = (np.argmax(probabilities.numpy(), axis=0) > 0).astype(np.uint8)
    inside = np.zeros(case.shape, bool)
    inside[tuple(slice(int(a), int(b) + 1) for a, b in zip(box[0], box[1]))] = True
    answer[~inside] = 0
    return answer


class BoxSelfTrainingStrategy(BoxDistillationStrategy):
    """``boxself``: :class:`BoxDistillationStrategy` with no teacher. Each perturbed box on an
    unlabelled case is answered by the student itself (prompted, at the round's start); the
    control that tells what the teacher's answers add to the student's promptable skill."""

    name = "boxself"
    answers_term = "own_boxes"

    @classmethod
    def from_args(cls, args: Any) -> "BoxSelfTrainingStrategy":
        return cls(teacher="none", modality="CT")

    def setup(self, trainer) -> None:
        if not trainer.config.takes_prompts:
            raise DistillSegError("--strategy boxself trains a promptable student: add --promptable")
        if not trainer.unlabelled:
            raise DistillSegError("--strategy boxself needs unlabelled cases (--unlabelled)")
        self.model = None

    def on_round_start(self, trainer, step: int) -> None:
        self._network = trainer.prompting_network()
        try:
            super().on_round_start(trainer, step)
        finally:
            self._network = None

    def answer(self, trainer, case, box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        return student_answer(trainer, case, box, self._network)

    def metadata(self) -> dict[str, Any]:
        return {"teacher": None, "answers": "the student's own, prompted with each box",
                "boxes_per_case": self.boxes_per_case, "unlabelled_weight": self.unlabelled_weight}
