"""Training strategies of the one trainer, by name (``distillseg train --strategy NAME``).

A strategy decides what the loss of a step is; the trainer owns everything else (model,
data, optimiser, checkpoints, validation, progress, DDP). To add one, write a module with
a :class:`~DistillSegLib.training.trainer.Strategy` subclass and add one line to
``STRATEGY_MODULES`` below (modules are imported lazily, so a strategy's heavy
dependencies, e.g. a teacher, load only when it is used).
"""

from __future__ import annotations

import importlib

from ...errors import DistillSegError

# name -> "module:ClassName" relative to this package
STRATEGY_MODULES: dict[str, str] = {
    "supervised": "supervised:SupervisedStrategy",
    "muduo": "muduo:MuDuoStrategy",
    "knowsam": "knowsam:KnowSAMStrategy",
    "tskd": "tskd:TSKDStrategy",
}


def strategy_names() -> list[str]:
    return sorted(STRATEGY_MODULES)


def get_strategy_class(name: str) -> type:
    """The strategy class registered under ``name``."""
    if name not in STRATEGY_MODULES:
        raise DistillSegError(f"unknown strategy {name!r}: choose one of {', '.join(strategy_names())}")
    module_name, class_name = STRATEGY_MODULES[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)
