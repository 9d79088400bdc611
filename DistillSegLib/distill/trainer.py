"""The one training loop of DistillSeg students, with pluggable strategies.

The :class:`Trainer` owns the student, the prepared cases, patch samplers, optimiser,
learning-rate schedule, validation, checkpoints, progress, cancellation and DDP. A
:class:`Strategy` only says what a step's loss is, and may add parameters (a second
student, a prompt module), refresh pseudo-labels at the start of each round
(``refresh_every`` steps) and keep state across checkpoints.

Reproducibility: every step draws from its own generators seeded by ``(seed, rank,
step)``, so a run resumed from a checkpoint takes exactly the same steps as one that was
never interrupted.

DDP: when ``torch.distributed`` is initialised (``torchrun``; see
:func:`init_distributed`), the student is wrapped in ``DistributedDataParallel``, the
labelled and unlabelled cases are sharded by rank, and only rank 0 validates and writes.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import DistillSegError
from ..progress import CancelToken, Progress
from ..student.config import StudentConfig
from ..student.model_file import read_payload, save_model
from ..student.network import build_student
from ..student.preprocess import PreparedCase
from .patches import PatchLocation, PatchSampler, make_batch


@dataclass
class TrainingOptions:
    """Settings of a training run (stored in checkpoints and model files).

    ``learning_rate`` decays with nnU-Net's polynomial schedule ``(1 - t/T)^0.9``
    (Isensee et al., Nature Methods 2021) under AdamW. ``ema_decay`` > 0 keeps an
    exponential moving average of the student's weights (the mean teacher of Tarvainen &
    Valpola, NeurIPS 2017), which then prompts the teachers at each round
    (:meth:`Trainer.prompting_network`); 0 keeps none.
    """

    steps: int = 400
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0
    val_every: int = 250
    checkpoint_every: int = 100
    refresh_every: int = 100
    pos_fraction: float = 0.67
    ema_decay: float = 0.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_every", "checkpoint_every", "refresh_every"):
            if int(getattr(self, name)) < 1:
                raise DistillSegError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingOptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Strategy:
    """What a training step optimises. Subclass it and register it in ``strategies``.

    Hooks, in the order the trainer calls them:

    * :meth:`setup` once, after the student and data exist, before the optimiser.
    * :meth:`extra_parameters`: more trainable parameters for the optimiser.
    * :meth:`on_round_start` at step 1, every ``refresh_every`` steps, and on resume.
    * :meth:`loss` every step, in training mode, inside the step's seeded RNG.
    * :meth:`state_dict` / :meth:`load_state_dict` with every checkpoint (tensors,
      numbers, strings, lists and dicts only: checkpoints load with ``weights_only``).
    """

    name = "base"
    teacher: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> "Strategy":
        """Build from ``distillseg train``'s parsed arguments (read your own options with
        ``getattr(args, "name", default)``; add them in ``commands/train.py``)."""
        return cls()

    def setup(self, trainer: "Trainer") -> None:
        """Build what the strategy needs (teachers, extra networks)."""

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def on_round_start(self, trainer: "Trainer", step: int) -> None:
        """Refresh pseudo-labels etc. with the current student."""

    def loss(self, trainer: "Trainer", step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def metadata(self) -> dict[str, Any]:
        """Facts recorded in the model file (hyper-parameters, teacher ...)."""
        return {}


@dataclass
class TrainingResult:
    """What a finished (or resumed-and-finished) run produced."""

    steps_done: int
    losses: list[float]
    validation: dict[str, Any]
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)


def init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` etc.).

    gloo on CPU, nccl on CUDA. Returns whether the run is distributed.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ or not dist.is_available():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True


def _seed_from(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _shard(cases: Sequence[PreparedCase], rank: int, world: int) -> list[PreparedCase]:
    # Fewer cases than ranks: every rank sees all cases (its own RNG still differs).
    return list(cases[rank::world]) if len(cases) >= world else list(cases)


class Trainer:
    """Trains one student with one strategy.

    Attributes other code (strategies, the CLI) may use:
        config, options, strategy, progress, cancel.
        network: the bare student (``nn.Module``) -- for inference and saving.
        warm_started: whether it started from given weights (``--init``, a warm-up).
        model: what the loss is computed with (``network`` wrapped in DDP when distributed).
        device, rank, world_size.
        labelled, unlabelled, validation: :class:`PreparedCase` lists (this rank's shard
            for the first two), whole volumes at the student's spacing.
        labelled_sampler, unlabelled_sampler: :class:`PatchSampler` over them.
        prompt_simulation: how prompts are simulated on labelled patches
            (:class:`~.prompt_simulation.PromptSimulation`; None for a prompt-free student).
        step_rng: the current step's ``np.random.Generator``.
    """

    def __init__(
        self,
        config: StudentConfig,
        options: TrainingOptions,
        strategy: Strategy,
        labelled: Sequence[PreparedCase],
        unlabelled: Sequence[PreparedCase] = (),
        validation: Sequence[PreparedCase] = (),
        progress: Progress | None = None,
        cancel: CancelToken | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        init_weights: Mapping[str, torch.Tensor] | None = None,
        metadata: Mapping[str, Any] | None = None,
        prompt_simulation: Any = None,
    ) -> None:
        import torch.distributed as dist

        if not labelled:
            raise DistillSegError("training needs at least one labelled case")
        self.config, self.options, self.strategy = config, options, strategy
        self.progress = progress or Progress(enabled=False)
        self.cancel = cancel or CancelToken()
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.metadata = dict(metadata or {})
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.device = torch.device(options.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", torch.cuda.current_device())

        self.all_labelled = list(labelled)
        self.all_unlabelled = list(unlabelled)
        self.labelled = _shard(self.all_labelled, self.rank, self.world_size)
        self.unlabelled = _shard(self.all_unlabelled, self.rank, self.world_size)
        self.validation = list(validation)
        self.labelled_sampler = PatchSampler(self.labelled, config.patch_size, options.pos_fraction)
        self.unlabelled_sampler = PatchSampler(self.unlabelled, config.patch_size, options.pos_fraction)
        # A promptable student learns from simulated prompts on its labelled patches.
        if prompt_simulation is None and config.takes_prompts:
            from .prompt_simulation import PromptSimulation

            prompt_simulation = PromptSimulation()
        self.prompt_simulation = prompt_simulation

        torch.manual_seed(_seed_from(options.seed, 0))  # identical initial weights on every rank
        self.network = build_student(config).to(self.device)
        self.warm_started = init_weights is not None
        if init_weights is not None:
            try:
                self.network.load_state_dict(dict(init_weights))
            except RuntimeError as exc:
                raise DistillSegError(f"--init model does not fit this student configuration: {exc}") from exc
        self.model: torch.nn.Module = self.wrap(self.network)
        self.ema_network = None
        if options.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema_network = AveragedModel(self.network, multi_avg_fn=get_ema_multi_avg_fn(options.ema_decay),
                                             use_buffers=True)

        from monai.losses import DiceCELoss

        self._dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        self.step_rng = np.random.default_rng(_seed_from(options.seed, self.rank, 0))
        self.strategy.setup(self)
        parameters = list(self.network.parameters()) + list(self.strategy.extra_parameters())
        self.optimizer = torch.optim.AdamW(parameters, lr=options.learning_rate, weight_decay=options.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(1.0 - s / self.options.steps, 0.0) ** 0.9
        )
        self.step = 0
        self.losses: list[float] = []
        self.validation_metrics: dict[str, Any] = {}
        self.callbacks: list[Callable[["Trainer", int], None]] = []

    # -- helpers for strategies -------------------------------------------------------
    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in ``DistributedDataParallel`` when distributed, else itself."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def labelled_batch(
        self, extra: Mapping[str, Mapping[str, np.ndarray]] | None = None, augment: bool = True
    ) -> dict[str, torch.Tensor]:
        """A batch of ``options.batch_size`` labelled patches (``image``, ``label`` + extras)."""
        if self.prompt_simulation is not None:  # image channels then simulated prompt channels
            from .prompt_simulation import prompted_labelled_batch

            return prompted_labelled_batch(self, extra, augment)
        locations = self.labelled_sampler.sample(self.step_rng, self.options.batch_size)
        return make_batch(self.labelled, locations, self.step_rng, extra, augment)

    def unlabelled_batch(
        self, extra: Mapping[str, Mapping[str, np.ndarray]] | None = None, augment: bool = True,
        count: int | None = None,
    ) -> tuple[list[PatchLocation], dict[str, torch.Tensor]]:
        """Patches of unlabelled cases, with ``extra`` arrays (``{key: {case_id: array}}``,
        e.g. pseudo-labels) cropped and augmented at the same locations."""
        if not self.unlabelled:
            raise DistillSegError(f"strategy {self.strategy.name!r} needs unlabelled cases (--unlabelled)")
        locations = self.unlabelled_sampler.sample(self.step_rng, count or self.options.batch_size)
        return locations, make_batch(self.unlabelled, locations, self.step_rng, extra, augment)

    def supervised_loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """CE + Dice of ``(B, C, ...)`` logits against a ``(B, 1, ...)`` class map."""
        return self._dice_ce(logits, label)

    def prompting_network(self) -> torch.nn.Module:
        """The network whose predictions prompt the teachers: the EMA student when
        ``options.ema_decay`` > 0 (smoother across a round than the last step's weights),
        else the student itself."""
        return self.ema_network.module if self.ema_network is not None else self.network

    def predict(self, case: PreparedCase, network: torch.nn.Module | None = None) -> np.ndarray:
        """Softmax ``(C, I, J, K)`` of the current student (sliding window) on a prepared case."""
        from ..student.inference import sliding_window_probabilities

        return sliding_window_probabilities(network or self.network, case.image, self.config, self.device).numpy()

    # -- the loop ---------------------------------------------------------------------
    def validate(self) -> dict[str, Any]:
        """Dice per validation case (on the student grid, valid region), and their mean."""
        from ..metrics.segmentation import dice

        per_case = {}
        for case in self.validation:
            self.cancel.check()
            probabilities = self.predict(case)
            valid = tuple(slice(0, n) for n in case.valid_shape)
            per_case[case.case_id] = round(float(dice(np.argmax(probabilities, 0)[valid] > 0, case.label[valid] > 0)), 4)
        mean = float(np.mean(list(per_case.values()))) if per_case else float("nan")
        return {"val_dice": round(mean, 4), "val_dice_per_case": per_case}

    def training_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "strategy_name": self.strategy.name,
            "strategy": self.strategy.state_dict(),
            "losses": list(self.losses),
            "validation": self.validation_metrics,
            "options": self.options.to_dict(),
            **({"ema": self.ema_network.state_dict()} if self.ema_network is not None else {}),
        }

    def model_metadata(self) -> dict[str, Any]:
        return {
            **self.metadata,
            "strategy": self.strategy.name,
            "strategy_settings": self.strategy.metadata(),
            "teacher": self.strategy.teacher,
            "training_cases": {
                "labelled": [c.case_id for c in self.all_labelled],
                "unlabelled": [c.case_id for c in self.all_unlabelled],
                "validation": [c.case_id for c in self.validation],
            },
            "training": {**self.options.to_dict(), "steps_done": self.step, "world_size": self.world_size},
            "validation_metrics": self.validation_metrics,
            **({"prompt_simulation": self.prompt_simulation.to_dict()} if self.prompt_simulation is not None else {}),
        }

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is None or self.rank != 0:
            return
        save_model(self.checkpoint_path, self.network, self.config, self.model_metadata(), self.training_state())

    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Continue from a checkpoint (default: ``checkpoint_path``). False when none exists."""
        path = Path(path) if path else self.checkpoint_path
        if path is None or not path.exists():
            return False
        payload = read_payload(path)
        state = payload.get("training_state")
        if not state:
            raise DistillSegError(f"{path} is a model, not a training checkpoint (use --init to start from it)")
        saved_config = StudentConfig.from_dict(payload["metadata"]["config"])
        if saved_config != self.config:
            raise DistillSegError(f"checkpoint {path} was trained with another student configuration")
        saved = TrainingOptions.from_dict(state["options"])
        if (saved.seed, saved.batch_size, state["strategy_name"]) != (self.options.seed, self.options.batch_size, self.strategy.name):
            raise DistillSegError(
                f"checkpoint {path} used seed {saved.seed}, batch size {saved.batch_size}, strategy "
                f"{state['strategy_name']!r}: resume with the same settings"
            )
        self.network.load_state_dict(payload["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema_network is not None and "ema" in state:
            self.ema_network.load_state_dict(state["ema"])
        self.strategy.load_state_dict(state["strategy"])
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"]]
        self.validation_metrics = dict(state["validation"])
        return True

    def train(self) -> TrainingResult:
        """Run from ``self.step`` to ``options.steps``; raises ``CancelledError`` on cancel
        (the last checkpoint stays as it was: complete and loadable)."""
        options = self.options
        start = time.perf_counter()
        first = self.step + 1
        self.progress.start("train", options.steps)
        if self.step:
            self.progress.update(self.step, loss=self.losses[-1] if self.losses else None)
        for step in range(first, options.steps + 1):
            self.cancel.check()
            self.step_rng = np.random.default_rng(_seed_from(options.seed, self.rank, step))
            torch.manual_seed(_seed_from(options.seed, self.rank, step, 1))
            if step == first or (step - 1) % options.refresh_every == 0:
                self.strategy.on_round_start(self, step)
                if self.progress.stage != "train":  # a round showed its own progress: back to training
                    self.progress.start("train", options.steps)
                    self.progress.update(step - 1)
            self.model.train()
            loss, logs = self.strategy.loss(self, step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            if self.ema_network is not None:
                self.ema_network.update_parameters(self.network)
            self.step = step
            self.losses.append(float(loss.detach()))
            metrics = {k: round(float(v), 5) for k, v in logs.items()}
            if self.validation and self.rank == 0 and (step % options.val_every == 0 or step == options.steps):
                self.validation_metrics = {"step": step, **self.validate()}
                metrics["val_dice"] = self.validation_metrics["val_dice"]
                if self.progress.json_lines:
                    metrics["val_dice_per_case"] = self.validation_metrics["val_dice_per_case"]
            if self.rank == 0:
                self.progress.update(step, loss=round(self.losses[-1], 5), **metrics)
            if step % options.checkpoint_every == 0 or step == options.steps:
                self.save_checkpoint()
            for callback in self.callbacks:
                callback(self, step)
        self.progress.close()
        return TrainingResult(self.step, self.losses, self.validation_metrics, time.perf_counter() - start,
                              self.model_metadata())
