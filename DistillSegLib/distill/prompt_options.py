"""Command-line options of a promptable student (``distillseg train --promptable``).

Kept free of heavy imports: ``distillseg --help`` builds every parser.
"""

from __future__ import annotations

import argparse


def add_prompt_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "promptable student (box, clicks and previous mask as input channels; trained with simulated prompts)")
    group.add_argument("--promptable", action="store_true",
                       help="the student takes prompts: channels box,positive,negative,previous after CT and PET; "
                            "it still runs without a prompt")
    group.add_argument("--prompt-channels", metavar="LIST",
                       help="prompt channels, comma-separated among box, box_distance, positive, negative, previous "
                            "(implies --promptable)")
    group.add_argument("--click-sigma-mm", type=float, metavar="MM", help="Gaussian sigma of a click's map (default 6)")
    group.add_argument("--prompt-free-fraction", type=float, metavar="F",
                       help="fraction of labelled patches trained without any prompt (default 0.5)")
    group.add_argument("--max-clicks", type=int, metavar="N",
                       help="simulated clicks per prompted patch: uniform in 0..N, each on the largest error of the "
                            "student's own prediction (default 3)")


def prompt_config_values(args: argparse.Namespace) -> dict:
    """``StudentConfig`` fields of the options (empty for a prompt-free student)."""
    from ..student.prompt_channels import DEFAULT_PROMPT_CHANNELS

    channels = getattr(args, "prompt_channels", None)
    if channels:
        values: dict = {"prompt_channels": tuple(c.strip() for c in channels.split(",") if c.strip())}
    elif getattr(args, "promptable", False):
        values = {"prompt_channels": DEFAULT_PROMPT_CHANNELS}
    else:
        values = {}
    if getattr(args, "click_sigma_mm", None) is not None:
        values["click_sigma_mm"] = float(args.click_sigma_mm)
    return values


def prompt_simulation_from_args(args: argparse.Namespace, config):
    """The :class:`~.prompt_simulation.PromptSimulation` of the options (None: prompt-free student).

    Raises:
        DistillSegError: simulation options for a student that takes no prompts.
    """
    from ..errors import DistillSegError
    from .prompt_simulation import PromptSimulation

    given = {name: getattr(args, name, None) for name in ("prompt_free_fraction", "max_clicks")}
    given = {k: v for k, v in given.items() if v is not None}
    if not config.takes_prompts:
        if given or getattr(args, "promptable", False) or getattr(args, "prompt_channels", None):
            raise DistillSegError("--prompt-free-fraction/--max-clicks need a student that takes prompts; the --init "
                                  "model takes none: add --promptable to make it promptable")
        return None
    return PromptSimulation(**given)
