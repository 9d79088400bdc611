"""The supervised warm-up before a strategy's first round.

A distillation strategy's first round is prompted by the student (its foreground is the
teachers' box; selftrain's pseudo-label is its mask). An untrained student prompts
nothing worth asking, so ``distillseg train --strategy X`` without ``--init`` first trains
the student supervised on the labelled cases for ``warmup_steps`` steps (its own AdamW and
polynomial schedule, the strategy's seed), then starts the strategy from those weights with
a fresh optimiser: the protocol of ``benchmarks/distillation.py`` (200 warm-up steps).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import torch

# Supervised steps before the first round of a strategy started without --init.
DEFAULT_WARMUP_STEPS = 200


def warmup_steps_for(strategy: str, requested: int | None, has_init: bool) -> int:
    """Steps of supervised warm-up: ``requested`` when given, else
    :data:`DEFAULT_WARMUP_STEPS` for any strategy but ``supervised`` started without ``--init``."""
    if requested is not None:
        return int(requested)
    return 0 if strategy == "supervised" or has_init else DEFAULT_WARMUP_STEPS


def warm_up(config, labelled: Sequence, steps: int, *, batch_size: int, learning_rate: float, seed: int,
            device: str, progress=None, cancel=None,
            init_weights: Mapping[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the student supervised for ``steps`` steps on ``labelled``.

    Returns ``(weights, record)``: the student's weights (CPU copies) and
    ``{"steps", "seconds", "loss_last"}`` for the model file.
    """
    from .supervised import SupervisedStrategy
    from .trainer import Trainer, TrainingOptions

    options = TrainingOptions(steps=steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                              val_every=steps + 1, checkpoint_every=steps + 1, device=device)
    if progress is not None:
        progress.message(f"supervised warm-up: {steps} steps on {len(labelled)} labelled case(s) before the "
                         "first round")
    start = time.perf_counter()
    trainer = Trainer(config, options, SupervisedStrategy(), labelled, progress=progress, cancel=cancel,
                      init_weights=init_weights)
    result = trainer.train()
    weights = {k: v.detach().cpu().clone() for k, v in trainer.network.state_dict().items()}
    return weights, {"steps": steps, "seconds": round(time.perf_counter() - start, 1),
                     "loss_last": round(result.losses[-1], 5) if result.losses else None}
