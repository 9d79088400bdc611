"""Whole-volume student inference: sliding window on the student grid, result on the CT grid.

Memory: the sliding window runs its windows on ``device`` but accumulates the output on
the CPU (MONAI ``sliding_window_inference(sw_device=..., device="cpu")``), so a
whole-body study fits a GPU with a few GB.

Speed: mixed precision (fp16 autocast) on CUDA; on a CPU that computes bfloat16 natively
(Intel AMX or AVX-512 BF16, where oneDNN runs bf16 convolutions about twice as fast as
float32) the windows run under bf16 autocast, elsewhere in float32
(:mod:`DistillSegLib.precision`; ``$DISTILLSEG_CPU_PRECISION``: ``auto``, ``bf16`` or ``fp32``). Windows go through the
network four at a time under ``torch.inference_mode``. ``benchmarks/student_speed.py``
measures the time on a whole-body input and checks that validation Dice stays within 0.005
of float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..io.case import Case
from ..errors import DistillSegError
from ..precision import inference_autocast
from .config import StudentConfig
from .model_file import StudentModel
from .preprocess import prepare_case, probabilities_to_ct_grid
from ..io.volume import Volume, apply_affine

IndexBox = tuple[slice, slice, slice]


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DistillSegError("--device cuda was asked for but no CUDA GPU is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise DistillSegError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def sliding_window_probabilities(
    network: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    config: StudentConfig,
    device: torch.device | str = "cpu",
    overlap: float = 0.25,
    batch_size: int = 4,
    cancel=None,
    precision: str = "auto",
) -> torch.Tensor:
    """Softmax probabilities of ``network`` over a whole prepared image.

    Args:
        image: ``(2, I, J, K)`` prepared input (at least one patch per axis).
        cancel: a :class:`~DistillSegLib.progress.CancelToken` checked before every batch of windows.
        precision: ``"auto"``, ``"bf16"`` or ``"fp32"`` (see :func:`~DistillSegLib.precision.inference_autocast`).
    Returns:
        ``(C, I, J, K)`` float32 CPU tensor, summing to 1 over classes.
    """
    from monai.inferers import sliding_window_inference

    device = torch.device(device)
    tensor = torch.as_tensor(image, dtype=torch.float32)[None]
    was_training = network.training
    network.eval()

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        if cancel is not None:
            cancel.check()
        return network(windows)

    try:
        with torch.inference_mode(), inference_autocast(device, precision):
            logits = sliding_window_inference(
                tensor, roi_size=tuple(config.patch_size), sw_batch_size=batch_size, predictor=predictor,
                overlap=overlap, mode="gaussian", sw_device=device, device=torch.device("cpu"),
            )
    finally:
        network.train(was_training)
    return torch.softmax(logits.float(), dim=1)[0]


def parse_roi(text: str) -> tuple[np.ndarray, np.ndarray] | str:
    """``"x0,y0,z0,x1,y1,z1"`` (RAS mm) -> (low, high) corners; ``"all"`` -> ``"all"``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6 or not np.all(np.isfinite(values)):
        raise DistillSegError(f"--roi must be six finite numbers x0,y0,z0,x1,y1,z1 in RAS mm (or 'all'), got {text!r}")
    a, b = np.array(values[:3]), np.array(values[3:])
    low, high = np.minimum(a, b), np.maximum(a, b)
    if np.any(high - low <= 0):
        raise DistillSegError(f"--roi {text!r} has zero extent along an axis")
    return low, high


def roi_from_mask(mask: Volume, margin_mm: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """RAS bounding box (mm, voxel edges) of a mask's non-zero voxels, grown by ``margin_mm``."""
    index = np.argwhere(mask.array > 0)
    if index.size == 0:
        raise DistillSegError(f"ROI mask {mask.describe()} is empty: no region to segment in")
    lo, hi = index.min(axis=0) - 0.5, index.max(axis=0) + 0.5
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    world = apply_affine(mask.affine, corners)
    return world.min(axis=0) - margin_mm, world.max(axis=0) + margin_mm


def roi_to_index_box(roi: tuple[np.ndarray, np.ndarray], grid: Volume) -> IndexBox:
    """The index box of ``grid`` whose voxel centres cover the RAS box ``roi``."""
    low, high = roi
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    index = apply_affine(np.linalg.inv(grid.affine), corners)
    start = np.clip(np.floor(index.min(axis=0) + 0.5), 0, None).astype(int)
    stop = np.minimum(np.ceil(index.max(axis=0) + 0.5), grid.shape).astype(int)
    if np.any(stop <= start):
        g_lo, g_hi = grid.world_bounds()
        raise DistillSegError(
            f"the ROI RAS {np.round(low, 1).tolist()}..{np.round(high, 1).tolist()} mm lies outside the CT "
            f"({np.round(g_lo, 1).tolist()}..{np.round(g_hi, 1).tolist()} mm)"
        )
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))  # type: ignore[return-value]


@dataclass
class Prediction:
    """A student's result on the CT grid."""

    label: Volume          # uint8 class map, CT shape and affine
    probability: Volume    # float32 foreground probability, CT shape and affine
    box: IndexBox | None   # the CT index box that was segmented (None: whole CT)
    seconds: float


def predict_case(
    model: StudentModel,
    case: Case,
    roi: tuple[np.ndarray, np.ndarray] | str | None = None,
    device: str | torch.device = "auto",
    cancel=None,
) -> Prediction:
    """Segment a case with a student.

    Args:
        roi: RAS box (low, high) in mm, ``"all"`` (the input is itself the region, e.g. an
            already cropped study) or ``None`` (whole study: only for whole-body models).
    Raises:
        DistillSegError: a crop-trained model without an ROI, or an ROI outside the CT.
    """
    import time

    start = time.perf_counter()
    require_roi_for_crop_model(model, roi)
    box = None if roi in (None, "all") else roi_to_index_box(roi, case.ct)  # type: ignore[arg-type]
    require_a_volume(case.ct, box)
    if cancel is not None:
        cancel.check()
    prepared = prepare_case(case, model.config, box=box, with_label=False)
    probabilities = sliding_window_probabilities(model.network, prepared.image, model.config, resolve_device(str(device)),
                                                 cancel=cancel)
    if cancel is not None:
        cancel.check()
    label, foreground = probabilities_to_ct_grid(probabilities.numpy(), prepared, case.ct, box)
    label.meta = {"label_names": model.config.class_names, "modality": "SEG"}
    return Prediction(label, foreground, box, time.perf_counter() - start)


def require_a_volume(ct: Volume, box: IndexBox | None) -> None:
    """A 3D student never runs silently on a single slice (it would see one slice and padding)."""
    shape = ct.shape if box is None else tuple(s.stop - s.start for s in box)
    thin = [axis for axis, n in zip("ijk", shape) if n < 2]
    if thin:
        where = "the CT" if box is None else "the region of interest"
        raise DistillSegError(
            f"{where} ({ct.describe()}, {' x '.join(map(str, shape))} voxels) is a single voxel thick along axis "
            f"{', '.join(thin)}: the student segments 3D volumes; give a CT volume (or a larger --roi)")


def require_roi_for_crop_model(model: StudentModel, roi) -> None:
    """A crop-trained model never runs silently on a whole study."""
    if roi is None and model.config.field_of_view == "crop":
        raise DistillSegError(
            f"model {model.path or ''} was trained on crops around the tumour (field of view 'crop'), "
            "so on a whole study it would segment unseen anatomy: give a region of interest with "
            "--roi x0,y0,z0,x1,y1,z1 (RAS mm), --roi-from MASK, or --roi all if the input is already a crop"
        )
