"""``distillseg evaluate``: compare predicted label maps with ground truth, per case and on average."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

HELP = "score predicted label maps against ground truth (Dice, HD95, surface Dice, FP/FN volume, lesion F1)"
DESCRIPTION = """\
Score predictions against ground truth. Files are matched by case id: the file name
without its image suffix (STS_010.nii.gz), or the case folder's name for folders of case
folders (GT: STS_010/CT_mask.nii.gz). Both must lie on the same grid. All non-zero
labels count as foreground.

Every ground-truth case is scored (or those given with --cases): a case without a
prediction counts as an empty prediction (Dice 0, its whole volume false negative) and is
named on stderr and in the JSON ("missing_predictions"); predictions without a ground
truth are named too ("unmatched_predictions") and not scored. Two files with one case id
(STS_010.nii and STS_010.nii.gz) are an error.

Metrics: Dice, HD95 (mm), surface Dice at 2 mm, false-positive and false-negative volume
(mL, the autoPET measures), lesion-wise TP/FP/FN and F1 over connected components. Empty
masks follow the conventions of DistillSegLib.metrics (HD95 undefined -> null).

example:
  distillseg evaluate --pred predictions/ --gt ../shared/data/sts-petct --json
  distillseg evaluate --pred predictions/ --gt labels/ --cases STS_006,STS_008
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps")
    parser.add_argument("--gt", required=True, metavar="DIR", help="folder of ground-truth label maps or case folders")
    parser.add_argument("--cases", metavar="CASES", help="score only these ground-truth case ids (comma-separated)")
    parser.add_argument("--json", action="store_true", help="print JSON ({'mean': {...}, 'cases': [...]})")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")


def index_label_files(folder: Path) -> dict[str, Path]:
    """``{case_id: label file}`` for a folder of label files or of case folders.

    Raises:
        DistillSegError: no such folder, or two files with one case id.
    """
    from ..io.case import CASE_FOLDER_FILES, find_in_folder
    from ..errors import DistillSegError
    from ..io.volume import IMAGE_SUFFIXES, is_image_file

    if not folder.is_dir():
        raise DistillSegError(f"folder not found: {folder}")
    found: dict[str, Path] = {}
    labels_dir = folder / "labelsTr"
    search = labels_dir if labels_dir.is_dir() else folder
    for path in sorted(search.iterdir()):
        case_id = None
        if path.is_file() and is_image_file(path) and not path.name.startswith("."):
            name = path.name
            suffix = next(s for s in (".seg.nrrd",) + IMAGE_SUFFIXES if name.lower().endswith(s))
            case_id = name[: -len(suffix)]
        elif path.is_dir():
            mask = find_in_folder(path, CASE_FOLDER_FILES["label"])
            case_id, path = (path.name, mask) if mask is not None else (None, path)
        if case_id is None:
            continue
        if case_id in found:
            raise DistillSegError(f"two files for case {case_id} in {search}: {found[case_id].name} and {path.name}; "
                                  "keep one")
        found[case_id] = path
    return found


def evaluate_folders(pred_dir: Path, gt_dir: Path, cases: Sequence[str] | None = None) -> dict:
    """Score every ground-truth case (or ``cases``) against its prediction.

    Returns:
        ``{"mean": {...}, "cases": [{"case_id", "dice", ..., "prediction_missing"}],
        "missing_predictions": [...], "unmatched_predictions": [...]}``; a missing
        prediction is scored as an empty mask.

    Raises:
        DistillSegError: no ground truth, no prediction at all, an unknown id in ``cases``,
            or a prediction on another grid.
    """
    import numpy as np

    from ..io.case import same_grid
    from ..errors import DistillSegError
    from ..metrics.segmentation import evaluate_masks, summarise
    from ..io.volume import read_image

    preds, gts = index_label_files(pred_dir), index_label_files(gt_dir)
    if not gts:
        raise DistillSegError(f"no ground-truth label maps in {gt_dir}")
    if not preds:
        raise DistillSegError(f"no predicted label maps in {pred_dir}")
    selected = list(cases) if cases is not None else sorted(gts)
    unknown = [c for c in selected if c not in gts]
    if unknown:
        raise DistillSegError(f"--cases: no ground truth for {', '.join(unknown)} in {gt_dir}")
    if not set(preds) & set(gts):
        raise DistillSegError(f"no predictions in {pred_dir} match a ground truth in {gt_dir} by case id")
    missing = [c for c in selected if c not in preds]
    unmatched = sorted(set(preds) - set(gts))
    if missing:
        log.warning("%d of %d ground-truth cases have no prediction in %s and count as empty predictions (Dice 0): %s",
                    len(missing), len(selected), pred_dir, ", ".join(missing))
    if unmatched:
        log.warning("%d prediction(s) in %s have no ground truth in %s and are not scored: %s",
                    len(unmatched), pred_dir, gt_dir, ", ".join(unmatched))
    scored = []
    for case_id in selected:
        gt = read_image(gts[case_id])
        if case_id in preds:
            pred = read_image(preds[case_id])
            if not same_grid(pred, gt):
                raise DistillSegError(
                    f"{preds[case_id]} (shape {pred.shape}) is not on the grid of {gts[case_id]} (shape {gt.shape})")
            foreground = pred.array > 0
        else:
            foreground = np.zeros(gt.shape, bool)
        scored.append({"case_id": case_id, **evaluate_masks(foreground, gt.array > 0, gt.spacing),
                       "prediction_missing": case_id not in preds})
    return {"mean": summarise(scored), "cases": scored, "missing_predictions": missing,
            "unmatched_predictions": unmatched}


def format_table(result: dict) -> str:
    def f(v, digits=3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    lines = [f"{'case':<14}{'dice':>7}{'hd95mm':>9}{'nsd2mm':>8}{'FPmL':>9}{'FNmL':>9}{'F1':>6}"]
    for c in result["cases"]:
        lines.append(f"{c['case_id']:<14}{f(c['dice']):>7}{f(c['hd95_mm'], 1):>9}{f(c['surface_dice_2mm']):>8}"
                     f"{f(c['fp_volume_ml'], 1):>9}{f(c['fn_volume_ml'], 1):>9}{f(c['lesions']['f1'], 2):>6}"
                     + ("  (no prediction: scored as empty)" if c.get("prediction_missing") else ""))
    m = result["mean"]
    lines.append(f"{'mean':<14}{f(m['dice']):>7}{f(m['hd95_mm'], 1):>9}{f(m['surface_dice_2mm']):>8}"
                 f"{f(m['fp_volume_ml'], 1):>9}{f(m['fn_volume_ml'], 1):>9}{f(m['lesions']['f1'], 2):>6}")
    left_out = m.get("hd95_left_out") or {}
    if left_out.get("one_mask_empty") or left_out.get("both_masks_empty"):
        parts = [f"{label}: {', '.join(left_out[key])}" for key, label in
                 (("one_mask_empty", "one mask empty, HD95 undefined"), ("both_masks_empty", "both masks empty"))
                 if left_out.get(key)]
        lines.append(f"mean HD95 over {m.get('hd95_cases', 0)} of {m['cases']} cases; left out: {'; '.join(parts)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output_path, write_json_atomic

    if args.out:
        check_output_path(args.out, "--out", (".json",), inputs=(args.pred, args.gt))
    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases is not None else None
    if cases is not None and not cases:
        from ..errors import DistillSegError

        raise DistillSegError("--cases is empty: give case ids, or leave the option out to score every case")
    result = evaluate_folders(Path(args.pred), Path(args.gt), cases)
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, default=float) if args.json else format_table(result))
    return 0
