"""The demo's report: ``report.json`` (everything, machine-readable) and ``report.md``.

The accuracy numbers in both come verbatim from the evaluation of the saved prediction
folders by :func:`DistillSegLib.commands.evaluate.evaluate_folders`, the function behind
``distillseg evaluate``, so ``distillseg evaluate --pred OUT/predictions/<method> --gt
OUT/labels --json`` reproduces them exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic, write_text_atomic

# Copied from ../shared/data/README.md ("Attribution"): the data is CC BY 3.0.
DATA_ATTRIBUTION = (
    "Vallieres M, Freeman CR, Skamene SR, El Naqa I. (2015). A radiomics model from joint FDG-PET and MRI "
    "texture features for the prediction of lung metastases in soft-tissue sarcomas of the extremities. "
    "The Cancer Imaging Archive. DOI 10.7937/K9/TCIA.2015.7GO2GSKS",
    "Vallieres M, et al. Physics in Medicine and Biology 60(14):5471 (2015).",
    "Clark K, et al. The Cancer Imaging Archive (TCIA). J Digit Imaging 26(6):1045-1057 (2013).",
    "Zwanenburg A, et al. Image Biomarker Standardisation Initiative, Radiology 295(2) (2020).",
)
DATA_LICENSE = (
    "Real, de-identified FDG-PET/CT of the TCIA Soft-tissue-Sarcoma collection (IBSI validation crops), "
    "Creative Commons Attribution 3.0 (CC BY 3.0)."
)


def write_report(out: str | os.PathLike, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out`` (atomically); returns both paths."""
    out = Path(out)
    json_path = write_json_atomic(out / "report.json", report)
    md_path = write_text_atomic(out / "report.md", format_markdown(report))
    return json_path, md_path


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def loop_section(loop: dict[str, Any] | None) -> list[str]:
    """Markdown lines of the ``--loop`` section (none without it)."""
    if not loop:
        return []
    settings = loop["settings"]
    target = loop["summary"]["targets"].get("supervised", {})
    fall = target.get("effort_fall_first_to_last_round")
    return [
        "", "## Refinement loop (`--loop`)", "",
        f"The supervised student segments the next {settings['round_size']} cases of a seeded order of the "
        "unlabelled pool (never a validation case); a simulated radiologist corrects each to its reference label "
        "(effort: mL added + removed, fraction of the tumour drawn, axial slices touched); the corrected cases join "
        f"the training set and a new student is distilled `--init` from the previous one ({settings['round_steps']} "
        f"steps, the Slicer module's Distil); {settings['rounds']} rounds. Validation columns: the validation cases "
        "above. `benchmarks/refinement_loop.py` measures both arms (supervised, distillation) over seeds with "
        "from-scratch comparisons.", "",
        loop["table"], "",
        f"Effort per case from round 1 to round {target.get('last_round')}: "
        + ("n/a" if fall is None else f"{-100 * fall:+.0f} %") + "; longest Distil "
        f"{_fmt(target.get('longest_round_distil_seconds'), 0)} s; the loop took {_fmt(loop.get('seconds'), 0)} s "
        "in all.",
    ]


def format_markdown(report: dict[str, Any]) -> str:
    """The human-readable report (GitHub-flavoured Markdown, figures linked relatively)."""
    settings, split, methods = report["settings"], report["split"], report["methods"]
    lines = [
        "# DistillSeg demo report",
        "",
        f"Created {report['created']} by `{report['command']}` (DistillSeg {report['version']}), "
        f"{report['device']}, total {report['total_seconds']:.0f} s wall-clock, "
        f"{report.get('cpu_seconds', float('nan')):.0f} s CPU time.",
        "",
        "> Research software, not for clinical use.",
        "",
        "## Split (fixed, seeded; never tuned on the validation cases)",
        "",
        f"- rule: {split['rule']} (seed {split['seed']})",
        f"- labelled ({len(split['labelled'])}): {', '.join(split['labelled'])}",
        f"- validation used ({len(split['validation_used'])} of {len(split['validation'])}): "
        f"{', '.join(split['validation_used'])}",
        f"- unlabelled used ({len(split['unlabelled_used'])} of {len(split['unlabelled'])}): "
        f"{', '.join(split['unlabelled_used']) or 'none'}",
        f"- settings: {', '.join(f'{k}={v}' for k, v in settings.items())}",
        "",
        "## Validation results",
        "",
        "Dice, HD95 and surface Dice (2 mm) are means over the validation cases, computed by "
        "`distillseg evaluate` on the saved predictions (`predictions/<method>/`) against "
        "`labels/`. Times are wall-clock seconds on this machine.",
        "",
        "| method | what it is | cases | Dice | HD95 mm | surface Dice | train s | inference s/case |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        lines.append(
            f"| `{name}` | {m['description']} | {m.get('cases', 'n/a')} | {_fmt(m['dice'])} | {_fmt(m['hd95'], 1)} | "
            f"{_fmt(m['surface_dice'])} | {_fmt(m.get('train_seconds'), 0)} | "
            f"{_fmt(m.get('inference_seconds_per_case'), 2)} |"
        )
    speed = report.get("speed") or {}
    if speed:
        lines += [
            "",
            "## Speed: student vs teacher",
            "",
            f"Per validation case, the student `{speed['student']}` takes "
            f"{_fmt(speed['student_seconds_per_case'], 2)} s; the LiteMedSAM teacher on both modalities "
            f"(CT + PET, boxes from the student) takes {_fmt(speed['teacher_seconds_per_case'], 2)} s: "
            f"the student is **{_fmt(speed['ratio'], 1)}x** faster "
            f"(the teacher also needs the student's prompts on top of that).",
        ]
    rounds = {m: [a for a in r if "mean" in a] for m, r in (report.get("pseudo_label_rounds") or {}).items()}
    if any(rounds.values()):
        lines += ["", "## Pseudo-label quality, round by round", "",
                  "At each round the student prompts the teachers on the unlabelled cases; their answers and the "
                  "strategy's pseudo-label are scored against the unlabelled cases' labels, which training never "
                  "reads (mean Dice):", "",
                  "| method | step | prompting student | " + "teachers | pseudo-label | kept/offered components |",
                  "|---|---|---|---|---|---|"]
        for name, audits in rounds.items():
            for a in audits:
                teachers = ", ".join(f"{k} {_fmt(v)}" for k, v in a["mean"].items() if k not in ("student", "pseudo_label"))
                components = a.get("components") or {}
                lines.append(f"| `{name}` | {a['step']} | {_fmt(a['mean'].get('student'))} | {teachers} | "
                             f"{_fmt(a['mean'].get('pseudo_label'))} | "
                             f"{components.get('kept', 'n/a')}/{components.get('offered', 'n/a')} |")
    per_case = report.get("per_case_dice") or {}
    if per_case:
        cases = split["validation_used"]
        lines += ["", "## Dice per validation case", "", "| method | " + " | ".join(cases) + " |",
                  "|---|" + "---|" * len(cases)]
        for name, values in per_case.items():
            lines.append(f"| `{name}` | " + " | ".join(_fmt(values.get(c)) for c in cases) + " |")
    lines += loop_section(report.get("loop"))
    figures = report.get("figures") or {}
    if figures:
        lines += ["", "## Figures", ""]
        captions = {
            "overlays": "CT (left) and PET (right), axial slice through the tumour centre: ground truth "
            "(green) and each method's contour.",
            "dice": "Dice per validation case and method.",
            "training_curves": "Training loss and validation Dice of the students against the step (distilled "
            "students branch off the supervised run at the warm-up step; their loss adds the distillation terms, "
            "so the loss curves are not on one scale). Validation Dice here is on the student's grid and only "
            "drawn, never used to choose a model.",
            "pseudo_labels": "Pseudo-label quality at each teacher round: Dice against the unlabelled cases' "
            "held-out labels of the prompting student (dashed), each teacher and the strategy's pseudo-label (red).",
            "refinement_loop": "Refinement loop (`--loop`): validation Dice after each round, correction effort per "
            "case (the round's new cases, and the validation cases as a fixed yardstick) and Distil time, against "
            "the number of labelled cases the student was trained on.",
        }
        for key, path in figures.items():
            lines += [f"![{key}]({path})", "", f"*{captions.get(key, key)}*", ""]
    notes = report.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines += [
        "",
        "## Reproduce the numbers",
        "",
        "    distillseg evaluate --pred predictions/<method> --gt labels --json",
        "",
        "## Data and attribution",
        "",
        DATA_LICENSE,
        "",
        *[f"- {ref}" for ref in DATA_ATTRIBUTION],
        "",
        "The SUV-threshold baseline follows the EANM procedure guideline v2.0 (Boellaard R, et al., "
        "Eur J Nucl Med Mol Imaging 42:328-354 (2015)): 41% of SUVmax inside the region of interest.",
        "",
    ]
    return "\n".join(lines)
