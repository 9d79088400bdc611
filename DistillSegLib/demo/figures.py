"""PNG figures of the demo report (matplotlib, Agg backend: no display needed).

* :func:`plot_overlays`: per case, the axial slice through the tumour centre, CT (grey,
  soft-tissue window) and PET (hot colormap, SUV) side by side, with the contour of the
  ground truth and of each method's prediction.
* :func:`plot_dice`: Dice per validation case and method (box plot + the cases as points).
* :func:`plot_training_curves`: training loss and validation Dice against the step, from
  the trainer's history records.

Slices are shown in the radiological convention (patient right on the image's left,
anterior at the top), whatever the orientation of the file: the arrays are reoriented
to LPS index order with nibabel before slicing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_path
from ..io.volume import Volume

CT_WINDOW_HU = (-160.0, 240.0)  # soft-tissue window (level 40, width 400)
GT_COLOUR = "#00e000"
METHOD_COLOURS = ("#1f77ff", "#ff3fbf", "#ffd700", "#00ffff", "#ff7f0e", "#9467bd", "#e377c2", "#8c564b")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_lps(volume: Volume, array: np.ndarray | None = None) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` (default ``volume.array``) reoriented so that i->L, j->P, k->S; and its spacing."""
    import nibabel.orientations as nio

    array = volume.array if array is None else array
    transform = nio.ornt_transform(nio.io_orientation(volume.affine), nio.axcodes2ornt(("L", "P", "S")))
    spacing = [0.0, 0.0, 0.0]
    for source_axis, (target_axis, _flip) in enumerate(transform):
        spacing[int(target_axis)] = volume.spacing[source_axis]
    return nio.apply_orientation(array, transform), (spacing[0], spacing[1], spacing[2])


def tumour_centre_slice(label_lps: np.ndarray) -> int:
    """Axial index (k, LPS order) through the centre of mass of the foreground; middle if empty."""
    k = np.nonzero(label_lps.any(axis=(0, 1)))[0]
    if k.size == 0:
        return label_lps.shape[2] // 2
    weights = label_lps.sum(axis=(0, 1))
    return int(round(float((np.arange(label_lps.shape[2]) * weights).sum() / weights.sum())))


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    return {m: METHOD_COLOURS[i % len(METHOD_COLOURS)] for i, m in enumerate(methods)}


def plot_overlays(
    ct: Sequence[Volume],
    pet_on_ct: Sequence[Volume],
    ground_truth: Sequence[Volume],
    predictions: Mapping[str, Sequence[Volume | None]],
    case_ids: Sequence[str],
    path: str | os.PathLike,
) -> Path:
    """One row per case: CT | PET, ground truth and each method's contour on both.

    Args:
        ct, pet_on_ct, ground_truth: per case, on the CT grid (HU, SUV, 0/1).
        predictions: method name -> per case label map on the CT grid (``None``: the
            method did not run on that case, no contour).
        case_ids: row titles.
        path: PNG file to write.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    colours = method_colours(list(predictions))
    rows = len(case_ids)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4.6 * rows), squeeze=False)
    for row, case_id in enumerate(case_ids):
        gt, spacing = to_lps(ground_truth[row])
        k = tumour_centre_slice(gt > 0)
        ct_lps, _ = to_lps(ct[row])
        pet_lps, _ = to_lps(pet_on_ct[row])
        # rows of the image = j (anterior at the top), columns = i (patient right on the left)
        aspect = spacing[1] / spacing[0]
        suv_max = float(pet_lps[..., k].max()) or 1.0
        for col, (image, cmap, vmin, vmax, unit) in enumerate((
            (ct_lps, "gray", *CT_WINDOW_HU, "HU"),
            (pet_lps, "hot", 0.0, suv_max, "SUV"),
        )):
            ax = axes[row, col]
            shown = ax.imshow(image[:, :, k].T, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect,
                              interpolation="nearest")
            fig.colorbar(shown, ax=ax, fraction=0.04, pad=0.01, label=unit)
            _contour(ax, gt[:, :, k], GT_COLOUR, 2.2)
            for method, masks in predictions.items():
                if masks[row] is not None:
                    _contour(ax, to_lps(ground_truth[row], masks[row].array)[0][:, :, k], colours[method], 1.3)
            ax.set_title(f"{case_id}  {'CT' if col == 0 else 'PET'}  axial slice k={k}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Line2D([], [], color=GT_COLOUR, lw=2.2, label="ground truth")]
    handles += [Line2D([], [], color=colours[m], lw=1.3, label=m) for m in predictions]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=9, frameon=False)
    fig.suptitle("Ground truth and predictions (radiological view: patient right on the left)", fontsize=11)
    fig.tight_layout(rect=(0, 0.035 + 0.01 * (len(handles) // 4), 1, 0.98))
    return _save(fig, path)


def _contour(ax, mask: np.ndarray, colour: str, width: float) -> None:
    if mask.any() and not mask.all():
        ax.contour((mask > 0).T.astype(float), levels=[0.5], colors=[colour], linewidths=width)


def plot_dice(dice: Mapping[str, Sequence[float]], path: str | os.PathLike, title: str = "") -> Path:
    """Box plot of per-case Dice for each method with the individual cases as jittered points."""
    plt = _pyplot()
    methods = list(dice)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(methods) + 2), 4.6))
    values = [np.asarray(dice[m], dtype=float) for m in methods]
    ax.boxplot(values, showmeans=True, widths=0.55, medianprops={"color": "black"},
               meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"})
    jitter = np.random.default_rng(0)
    colours = method_colours(methods)
    for i, (method, v) in enumerate(zip(methods, values), start=1):
        ax.scatter(i + jitter.uniform(-0.12, 0.12, v.size), v, s=18, color=colours[method], edgecolor="black",
                   linewidth=0.4, zorder=3)
        ax.annotate(f"{np.nanmean(v):.3f}" if v.size else "n/a", (i, 1.02), ha="center", fontsize=8,
                    xycoords=("data", "axes fraction"))
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel("Dice (validation cases)")
    ax.set_ylim(-0.02, 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Dice per method (box: quartiles, diamond: mean; numbers: mean)", fontsize=10, pad=18)
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curves(histories: Mapping[str, Sequence[Mapping]], path: str | os.PathLike) -> Path:
    """Loss (left) and validation Dice (right) against the training step, one line per student.

    Args:
        histories: method -> list of records with ``step`` and any of ``loss`` and
            ``val_dice`` (records without a value are skipped for that curve).
    """
    plt = _pyplot()
    colours = method_colours(list(histories))
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, records in histories.items():
        for ax, key in ((ax_loss, "loss"), (ax_dice, "val_dice")):
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if not points:
                continue
            steps, values = (np.asarray(v, dtype=float) for v in zip(*points))
            if key == "loss" and len(values) >= 20:
                # per-step losses are noisy (2 random patches): raw faded, running mean on top
                window = max(5, len(values) // 20)
                smooth = np.convolve(values, np.ones(window) / window, mode="valid")
                ax.plot(steps, values, color=colours[method], lw=0.6, alpha=0.25)
                ax.plot(steps[window - 1:], smooth, color=colours[method], lw=1.4,
                        label=f"{method} (running mean of {window})")
            else:
                ax.plot(steps, values, color=colours[method], marker="o" if key == "val_dice" else None,
                        markersize=3, lw=1.2, label=method)
    ax_loss.set_title("training loss")
    ax_dice.set_title("validation Dice (during training)")
    ax_dice.set_ylim(0, 1)
    for ax in (ax_loss, ax_dice):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_pseudo_label_curve(rounds: Mapping[str, Sequence[Mapping]], path: str | os.PathLike) -> Path:
    """Pseudo-label quality against the round's step, one panel per distilled student.

    Args:
        rounds: method -> its rounds' audits (``step`` and ``mean``: Dice on the unlabelled
            cases of ``student`` -- the prompting student --, of each teacher and of
            ``pseudo_label``), as :func:`DistillSegLib.distill.pseudo_labels.audit_round`.
    """
    plt = _pyplot()
    methods = [m for m, r in rounds.items() if any("mean" in a for a in r)]
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(5.5 * max(1, len(methods)), 4.0), squeeze=False)
    styles = {"student": ("black", "--"), "pseudo_label": ("tab:red", "-")}
    for ax, method in zip(axes[0], methods):
        audits = [a for a in rounds[method] if "mean" in a]
        keys = sorted({k for a in audits for k in a["mean"]}, key=lambda k: (k != "pseudo_label", k != "student", k))
        for n, key in enumerate(keys):
            colour, line = styles.get(key, (f"C{n}", ":"))
            ax.plot([a["step"] for a in audits], [a["mean"].get(key) for a in audits], color=colour, ls=line,
                    marker="o", markersize=4, lw=1.5 if key in styles else 1.0,
                    label={"student": "prompting student", "pseudo_label": "pseudo-label"}.get(key, f"teacher {key}"))
        ax.set_title(f"{method}: quality of each round ({len(audits[0]['cases'])} unlabelled cases)", fontsize=10)
        ax.set_xlabel("step of the round")
        ax.set_ylabel("mean Dice vs held-out labels")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_refinement_loop(summary: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """The refinement loop (``DistillSegLib/demo/loop.py``'s summary), one line per arm, against the
    number of labelled cases the student was trained on.

    Left: validation Dice after each round (loop: filled, +- sd over seeds; the same cases trained
    from scratch: hollow). Middle: correction effort per case (mL added + removed) of the cases
    each student segmented in the next round (solid) and of the validation cases (dashed, the same
    cases every round). Right: wall-clock seconds of each Distil (``--init``: filled; from
    scratch: hollow) with the 10-minute target.
    """
    plt = _pyplot()
    arms = summary["arms"]
    colours = method_colours(list(arms))
    fig, (ax_dice, ax_effort, ax_time) = plt.subplots(1, 3, figsize=(15, 4.4))
    for arm, rows in arms.items():
        colour = colours[arm]
        x = [r["labelled_cases"] for r in rows]

        def series(key: str, rows=rows) -> tuple[list, list]:
            points = [(r["labelled_cases"], r[key]) for r in rows if r.get(key) is not None]
            return ([p[0] for p in points], [p[1] for p in points]) if points else ([], [])

        dice_sd = [r.get("validation_dice_sd") or 0.0 for r in rows]
        ax_dice.errorbar(x, [r["validation_dice"] for r in rows], yerr=dice_sd, color=colour, marker="o",
                         capsize=3, label=f"{arm}: loop (--init)")
        sx, sy = series("scratch_dice")
        if sx:
            ax_dice.plot(sx, sy, color=colour, marker="o", markerfacecolor="white", ls=":",
                         label=f"{arm}: from scratch")
        # round r's new cases were segmented by round r-1's student
        effort = [(rows[i - 1]["labelled_cases"], r["effort_ml"]) for i, r in enumerate(rows)
                  if i and r.get("effort_ml") is not None]
        if effort:
            ax_effort.plot(*zip(*effort), color=colour, marker="o", label=f"{arm}: next round's cases")
        vx, vy = series("validation_effort_ml")
        ax_effort.plot(vx, vy, color=colour, marker="s", ls="--", alpha=0.8, label=f"{arm}: validation cases")
        tx, ty = series("distil_seconds")
        ax_time.plot(tx, ty, color=colour, marker="o", label=f"{arm}: Distil --init")
        sx, sy = series("scratch_seconds")
        if sx:
            ax_time.plot(sx, sy, color=colour, marker="o", markerfacecolor="white", ls=":",
                         label=f"{arm}: from scratch")
    ax_time.axhline(600, color="grey", lw=0.8, ls="--", label="10 min target")
    for ax, ylabel, heading in (
            (ax_dice, "validation Dice", "validation Dice after each round"),
            (ax_effort, "mL added + removed per case", "correction effort per case"),
            (ax_time, "wall-clock s (2 shared CPU cores)", "Distil time per round")):
        ax.set_xlabel("labelled cases the student was trained on")
        ax.set_ylabel(ylabel)
        ax.set_title(heading, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_dice.set_ylim(0, 1)
    ax_effort.set_ylim(bottom=0)
    ax_time.set_ylim(bottom=0)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
