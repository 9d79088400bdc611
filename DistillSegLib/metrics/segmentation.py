"""Segmentation metrics of a binary prediction against a binary ground truth.

Conventions for empty masks (stated once, used everywhere):

=====================  =====  =========  ================  =====  =====  ==========
case                   dice   hd95 (mm)  surface dice 2mm  FP mL  FN mL  lesion F1
=====================  =====  =========  ================  =====  =====  ==========
both empty             1.0    0.0        1.0               0      0      1.0
empty prediction       0.0    None       0.0               0      GT     0.0
empty ground truth     0.0    None       0.0               pred   0      0.0
=====================  =====  =========  ================  =====  =====  ==========

``None`` (undefined: no surface to measure a distance to) is left out of means and
counted separately; so is the HD95 of 0 of a case where both masks are empty (no distance
was measured): the summary names the cases left out of the mean HD95. HD95 and surface Dice come from MONAI (``compute_hausdorff_distance``
with ``percentile=95``; ``compute_surface_dice``, Nikolov et al. 2021) with the voxel
spacing. FP/FN volumes follow the autoPET challenge (Gatidis et al., Nature Machine
Intelligence 2024; lab-midas/autoPET ``val_script.py``): the volume of predicted connected
components that touch no ground truth, and of ground-truth components that touch no
prediction. Components use 26-connectivity (the autoPET script uses 18).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
from scipy import ndimage

STRUCTURE_26 = np.ones((3, 3, 3), bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components: (labels, count)."""
    return ndimage.label(np.asarray(mask, bool), structure=STRUCTURE_26)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P|+|G|); 1.0 when both are empty."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / total


def _monai_pair(pred: np.ndarray, gt: np.ndarray):
    import torch

    def one_hot(m: np.ndarray) -> "torch.Tensor":
        m = torch.as_tensor(np.asarray(m, bool))
        return torch.stack([~m, m])[None].float()

    return one_hot(pred), one_hot(gt)


@contextmanager
def _quiet_monai() -> Iterator[None]:
    # MONAI 1.6 warns about its own internal use of a deprecated argument (get_mask_edges).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        yield


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float | None:
    """95th-percentile symmetric Hausdorff distance (mm); 0 if both empty, None if one is."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if not pred.any() and not gt.any():
        return 0.0
    if not pred.any() or not gt.any():
        return None
    from monai.metrics import compute_hausdorff_distance

    p, g = _monai_pair(pred, gt)
    with _quiet_monai():
        value = compute_hausdorff_distance(p, g, include_background=False, percentile=95, spacing=[float(s) for s in spacing])
    return float(value.item())


def surface_dice(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice at ``tolerance_mm``; 1 if both empty, 0 if one is."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    from monai.metrics import compute_surface_dice

    p, g = _monai_pair(pred, gt)
    with _quiet_monai():
        value = compute_surface_dice(p, g, class_thresholds=[tolerance_mm], include_background=False,
                                     spacing=[float(s) for s in spacing])
    return float(value.item())


def false_volumes_ml(pred: np.ndarray, gt: np.ndarray, voxel_ml: float) -> tuple[float, float]:
    """(FP mL, FN mL): predicted components touching no GT, GT components touching no prediction."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    return (_unmatched_voxels(pred, gt) * voxel_ml, _unmatched_voxels(gt, pred) * voxel_ml)


def _unmatched_voxels(mask: np.ndarray, other: np.ndarray) -> int:
    labels, count = components(mask)
    if count == 0:
        return 0
    touched = np.unique(labels[other & (labels > 0)])
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    sizes[touched] = 0
    return int(sizes.sum())


def lesion_detection(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Lesion-wise detection over connected components.

    A ground-truth lesion is detected (TP) when any predicted voxel overlaps it, missed
    (FN) otherwise; a predicted component overlapping no ground truth is an FP.
    F1 = 2TP / (2TP + FP + FN), 1.0 when there are no lesions on either side.
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    gt_labels, gt_count = components(gt)
    pred_labels, pred_count = components(pred)
    detected = np.unique(gt_labels[pred & (gt_labels > 0)])
    tp = int(len(detected))
    fn = gt_count - tp
    fp = pred_count - int(len(np.unique(pred_labels[gt & (pred_labels > 0)])))
    denominator = 2 * tp + fp + fn
    return {"tp": tp, "fp": int(fp), "fn": int(fn), "f1": 1.0 if denominator == 0 else 2 * tp / denominator}


def evaluate_masks(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """Every metric of one case (binary foreground vs foreground), see the module table."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    fp_ml, fn_ml = false_volumes_ml(pred, gt, voxel_ml)
    return {
        "dice": dice(pred, gt),
        "hd95_mm": hd95(pred, gt, spacing),
        "surface_dice_2mm": surface_dice(pred, gt, spacing, 2.0),
        "fp_volume_ml": fp_ml,
        "fn_volume_ml": fn_ml,
        "lesions": lesion_detection(pred, gt),
        "pred_volume_ml": float(np.asarray(pred, bool).sum() * voxel_ml),
        "gt_volume_ml": float(np.asarray(gt, bool).sum() * voxel_ml),
    }


def summarise(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over cases (undefined HD95 left out and counted); lesion counts summed."""
    def mean(key: str) -> float | None:
        values = [c[key] for c in cases if c.get(key) is not None]
        return float(np.mean(values)) if values else None

    def name(n: int, case: dict[str, Any]) -> str:
        return str(case.get("case_id", f"case {n + 1}"))

    def both_empty(case: dict[str, Any]) -> bool:
        return case.get("pred_volume_ml") == 0 and case.get("gt_volume_ml") == 0

    one_empty = [name(n, c) for n, c in enumerate(cases) if c.get("hd95_mm") is None]
    nothing = [name(n, c) for n, c in enumerate(cases) if c.get("hd95_mm") is not None and both_empty(c)]
    distances = [c["hd95_mm"] for c in cases if c.get("hd95_mm") is not None and not both_empty(c)]

    tp = sum(c["lesions"]["tp"] for c in cases)
    fp = sum(c["lesions"]["fp"] for c in cases)
    fn = sum(c["lesions"]["fn"] for c in cases)
    return {
        "dice": mean("dice"),
        "hd95_mm": float(np.mean(distances)) if distances else None,
        "hd95_cases": len(distances),
        "hd95_undefined": len(one_empty),
        "hd95_left_out": {"one_mask_empty": one_empty, "both_masks_empty": nothing},
        "surface_dice_2mm": mean("surface_dice_2mm"),
        "fp_volume_ml": mean("fp_volume_ml"),
        "fn_volume_ml": mean("fn_volume_ml"),
        "lesions": {"tp": tp, "fp": fp, "fn": fn,
                    "f1": 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)},
        "cases": len(cases),
    }
