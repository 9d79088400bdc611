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

The student must take prompts (``distillseg train --promptable``). Its control, the same
student without any teacher, is ``--strategy supervised --promptable`` on the labelled cases.
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
            if case.source is None:
                raise DistillSegError(f"case {case.case_id}: the teacher needs the case's own images")
            found = bounding_box(student_foreground(trainer, case, network) >= 0.5)
            if found is None:
                continue
            for _ in range(self.boxes_per_case):
                box = perturbed_box(found, case.shape, trainer.config.spacing, trainer.step_rng,
                                    trainer.prompt_simulation)
                answers.add(case.case_id, box, teacher_answer(self.model, case.source, case.grid(), box, self.modality))
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
            logs["teacher_boxes"] = float(term.detach())
        return loss, logs

    def metadata(self) -> dict[str, Any]:
        return {"teacher": self.teacher_name, "modality": self.modality, "boxes_per_case": self.boxes_per_case,
                "unlabelled_weight": self.unlabelled_weight}
