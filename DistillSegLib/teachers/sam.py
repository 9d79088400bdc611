"""Segment Anything (ViT-B/L/H) as a 2D slice-wise teacher, from a checkpoint file.

The architecture is segment-anything's own (``ImageEncoderViT``, ``PromptEncoder``,
``MaskDecoder``, ``TwoWayTransformer``; sizes from ``segment_anything/build_sam.py``,
facebookresearch/segment-anything). The checkpoint is read with ``weights_only=True`` and
loaded with strict key/shape matching; its SHA-256 is recorded, and a file named like the
published ones (``sam_vit_b_01ec64.pth``) must match the hash prefix in its name.
Box, point and mask prompts are accepted; LoRA adapters come from :mod:`.lora`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..errors import DistillSegError
from .base import check_hash_prefix, file_sha256, load_state_dict_strict, read_state_dict
from .slicewise import SamSliceTeacher

NAME = "sam"
# segment_anything/build_sam.py: Sam's pixel normalisation of 0-255 RGB.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# First hex digits of the SHA-256 of the published checkpoints (their file names,
# segment-anything README "Model Checkpoints").
PUBLISHED_FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}


@dataclass(frozen=True)
class SamConfig:
    """Sizes of a SAM model (defaults: the published ViT-B, segment_anything/build_sam.py)."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    prompt_embed_dim: int = 256
    image_size: int = 1024
    vit_patch_size: int = 16
    window_size: int = 14
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    decoder_depth: int = 2
    iou_head_hidden_dim: int = 256


VARIANTS = {
    "vit_b": SamConfig(),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                       encoder_global_attn_indexes=(7, 15, 23, 31)),
}
_EMBED_TO_VARIANT = {c.encoder_embed_dim: name for name, c in VARIANTS.items()}


def build_sam_model(config: SamConfig):
    """A randomly initialised ``segment_anything.modeling.Sam`` of the given sizes."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    embedding = config.image_size // config.vit_patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth, embed_dim=config.encoder_embed_dim, img_size=config.image_size,
            mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=config.encoder_num_heads,
            patch_size=config.vit_patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes, window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim, image_embedding_size=(embedding, embedding),
            input_image_size=(config.image_size, config.image_size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.prompt_embed_dim,
                                          mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_num_heads),
            transformer_dim=config.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    ).eval()


def variant_of(path: Path, state: dict) -> str:
    """``vit_b``/``vit_l``/``vit_h`` from the file name, else from the encoder width."""
    match = re.search(r"vit_([blh])", path.name)
    if match:
        return f"vit_{match.group(1)}"
    pos_embed = state.get("image_encoder.pos_embed")
    if pos_embed is not None and int(pos_embed.shape[-1]) in _EMBED_TO_VARIANT:
        return _EMBED_TO_VARIANT[int(pos_embed.shape[-1])]
    raise DistillSegError(f"cannot tell the SAM variant of {path}: name it sam_vit_b/l/h_... or pass variant")


def sam_teacher_from_model(model, config: SamConfig, weights_sha256: str, modality: str = "CT",
                           batch_size: int = 4, device: str = "cpu") -> SamSliceTeacher:
    """Wrap a ``Sam`` module (e.g. a small random configuration in tests) as a teacher."""
    return SamSliceTeacher(NAME, model, config.image_size, PIXEL_MEAN, PIXEL_STD, weights_sha256,
                           prompt_kinds=("box", "points", "mask"), modality=modality,
                           batch_size=batch_size, device=device)


def load_sam(checkpoint: str | Path, variant: str | None = None, config: SamConfig | None = None,
             modality: str = "CT", batch_size: int = 4, device: str = "cpu") -> SamSliceTeacher:
    """SAM teacher from a checkpoint file (hash prefix checked, strict key/shape load).

    Args:
        checkpoint: ``sam_vit_b_01ec64.pth`` etc. (or any file with SAM's state dict).
        variant: ``vit_b``/``vit_l``/``vit_h``; default from the file name or the weights.
        config: explicit sizes (overrides ``variant``).
    """
    if checkpoint is None:
        raise DistillSegError("the SAM teacher needs --checkpoint (e.g. sam_vit_b_01ec64.pth)")
    path = Path(checkpoint)
    if not path.is_file():
        raise DistillSegError(f"SAM checkpoint not found: {path}")
    sha256 = file_sha256(path)
    check_hash_prefix(path, sha256)
    state = read_state_dict(path)
    if config is None:
        variant = variant or variant_of(path, state)
        if variant not in VARIANTS:
            raise DistillSegError(f"unknown SAM variant {variant!r}: choose from {sorted(VARIANTS)}")
        config = VARIANTS[variant]
    model = build_sam_model(config)
    load_state_dict_strict(model, state, str(path))
    return sam_teacher_from_model(model, config, sha256, modality, batch_size, device)
