"""``distillseg evaluate``: compare predicted label maps with ground truth, per case and on average."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "score predicted label maps against ground truth (Dice, HD95, surface Dice, FP/FN volume, lesion F1)"
DESCRIPTION = """\
Score predictions against ground truth. Files are matched by case id: the file name
without its image suffix (STS_010.nii.gz), or the case folder's name for folders of case
folders (GT: STS_010/CT_mask.nii.gz). Both must lie on the same grid. All non-zero
labels count as foreground.

Metrics: Dice, HD95 (mm), surface Dice at 2 mm, false-positive and false-negative volume
(mL, the autoPET measures), lesion-wise TP/FP/FN and F1 over connected components. Empty
masks follow the conventions of DistillSegLib.metrics (HD95 undefined -> null).

example:
  distillseg evaluate --pred predictions/ --gt ../shared/data/sts-petct --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps")
    parser.add_argument("--gt", required=True, metavar="DIR", help="folder of ground-truth label maps or case folders")
    parser.add_argument("--json", action="store_true", help="print JSON ({'mean': {...}, 'cases': [...]})")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")


def index_label_files(folder: Path) -> dict[str, Path]:
    """``{case_id: label file}`` for a folder of label files or of case folders."""
    from ..io.case import CASE_FOLDER_FILES, find_in_folder
    from ..errors import DistillSegError
    from ..io.volume import IMAGE_SUFFIXES, is_image_file

    if not folder.is_dir():
        raise DistillSegError(f"folder not found: {folder}")
    found: dict[str, Path] = {}
    labels_dir = folder / "labelsTr"
    search = labels_dir if labels_dir.is_dir() else folder
    for path in sorted(search.iterdir()):
        if path.is_file() and is_image_file(path) and not path.name.startswith("."):
            name = path.name
            for suffix in (".seg.nrrd",) + IMAGE_SUFFIXES:
                if name.lower().endswith(suffix):
                    found[name[: -len(suffix)]] = path
                    break
        elif path.is_dir():
            mask = find_in_folder(path, CASE_FOLDER_FILES["label"])
            if mask is not None:
                found[path.name] = mask
    return found


def evaluate_folders(pred_dir: Path, gt_dir: Path) -> dict:
    """``{"mean": {...}, "cases": [{"case_id", "dice", ...}], "missing": [...]}``."""
    from ..io.case import same_grid
    from ..errors import DistillSegError
    from ..metrics.segmentation import evaluate_masks, summarise
    from ..io.volume import read_image

    preds, gts = index_label_files(pred_dir), index_label_files(gt_dir)
    matched = sorted(set(preds) & set(gts))
    if not matched:
        raise DistillSegError(f"no predictions in {pred_dir} match a ground truth in {gt_dir} by case id")
    cases = []
    for case_id in matched:
        pred, gt = read_image(preds[case_id]), read_image(gts[case_id])
        if not same_grid(pred, gt):
            raise DistillSegError(
                f"{preds[case_id]} (shape {pred.shape}) is not on the grid of {gts[case_id]} (shape {gt.shape})")
        cases.append({"case_id": case_id, **evaluate_masks(pred.array > 0, gt.array > 0, gt.spacing)})
    return {"mean": summarise(cases), "cases": cases, "missing": sorted(set(gts) - set(preds))[:1000]}


def format_table(result: dict) -> str:
    def f(v, digits=3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    lines = [f"{'case':<14}{'dice':>7}{'hd95mm':>9}{'nsd2mm':>8}{'FPmL':>9}{'FNmL':>9}{'F1':>6}"]
    for c in result["cases"]:
        lines.append(f"{c['case_id']:<14}{f(c['dice']):>7}{f(c['hd95_mm'], 1):>9}{f(c['surface_dice_2mm']):>8}"
                     f"{f(c['fp_volume_ml'], 1):>9}{f(c['fn_volume_ml'], 1):>9}{f(c['lesions']['f1'], 2):>6}")
    m = result["mean"]
    lines.append(f"{'mean':<14}{f(m['dice']):>7}{f(m['hd95_mm'], 1):>9}{f(m['surface_dice_2mm']):>8}"
                 f"{f(m['fp_volume_ml'], 1):>9}{f(m['fn_volume_ml'], 1):>9}{f(m['lesions']['f1'], 2):>6}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_json_atomic

    result = evaluate_folders(Path(args.pred), Path(args.gt))
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, default=float) if args.json else format_table(result))
    return 0
