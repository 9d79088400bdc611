"""LoRA adapters (``peft``) on a teacher's image-encoder attention, for task-specific tuning.

TS-KD and KnowSAM fine-tune the teacher on the few labelled cases with low-rank adapters
(Hu et al., LoRA, ICLR 2022) on the attention's fused ``qkv`` projection of the image
encoder (as in SAMed, Zhang & Liu 2023, and MeLo/SAM-LoRA adaptations of SAM's ViT); every
other weight stays frozen. Only the adapter weights are saved and loaded, together with
the LoRA settings and the SHA-256 of the base weights they were trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import atomic_path
from ..errors import DistillSegError

TARGET_MODULES = ("qkv",)


def add_lora(teacher, rank: int = 4, alpha: int = 8, dropout: float = 0.0,
             target_modules: tuple[str, ...] = TARGET_MODULES) -> None:
    """Inject LoRA adapters into ``teacher.model.image_encoder`` and freeze everything else.

    After this, ``requires_grad`` is True exactly for the adapter (``lora_``) parameters.
    """
    from peft import LoraConfig, inject_adapter_in_model

    encoder = teacher.model.image_encoder
    if getattr(teacher, "lora_config", None) is not None:
        raise DistillSegError(f"teacher {teacher.name} already has LoRA adapters")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    inject_adapter_in_model(config, encoder)
    for name, parameter in teacher.model.named_parameters():
        parameter.requires_grad = "lora_" in name
    teacher.lora_config = {"rank": rank, "alpha": alpha, "dropout": dropout, "target_modules": list(target_modules)}
    teacher.base_weights_sha256 = teacher.weights_sha256
    update_weights_digest(teacher)


def update_weights_digest(teacher) -> str:
    """Set ``teacher.weights_sha256`` to the base hash plus a digest of the current adapters.

    Call it after fine-tuning: the cache key then changes with the adapters, so outputs of
    the base or of an earlier tuning are never reused. The adapters sit in the image
    encoder, so its embedding key (``encoder_sha256``) changes alike.
    """
    teacher.weights_sha256 = f"{teacher.base_weights_sha256}+lora:{_digest(lora_state_dict(teacher))}"
    teacher.encoder_sha256 = teacher.weights_sha256
    return teacher.weights_sha256


def lora_parameters(teacher) -> list:
    """The trainable adapter parameters (for the optimiser)."""
    return [p for n, p in teacher.model.named_parameters() if "lora_" in n]


def lora_state_dict(teacher) -> dict:
    from peft import get_peft_model_state_dict

    _require_lora(teacher)
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(teacher.model.image_encoder).items()}


def save_lora(teacher, path: str | os.PathLike) -> Path:
    """Write only the adapter weights (+ settings and base-weights hash), atomically.

    Also refreshes ``teacher.weights_sha256`` to the saved adapters (see
    :func:`update_weights_digest`).
    """
    import torch

    update_weights_digest(teacher)
    payload = {
        "format": "distillseg-lora-1",
        "teacher": teacher.name,
        "base_weights_sha256": teacher.base_weights_sha256,
        "lora_config": teacher.lora_config,
        "state_dict": lora_state_dict(teacher),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_lora(teacher, path: str | os.PathLike) -> None:
    """Add adapters saved by :func:`save_lora` to a teacher loaded from the same base weights."""
    import torch
    from peft import set_peft_model_state_dict

    path = Path(path)
    if not path.is_file():
        raise DistillSegError(f"LoRA adapter file not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != "distillseg-lora-1":
        raise DistillSegError(f"{path} is not a DistillSeg LoRA adapter file")
    base = getattr(teacher, "base_weights_sha256", teacher.weights_sha256)
    if payload["base_weights_sha256"] != base:
        raise DistillSegError(
            f"LoRA adapters {path} were trained on base weights {payload['base_weights_sha256'][:12]}..., "
            f"but teacher {teacher.name} has {base[:12]}..."
        )
    config = payload["lora_config"]
    if getattr(teacher, "lora_config", None) is None:
        add_lora(teacher, config["rank"], config["alpha"], config["dropout"], tuple(config["target_modules"]))
    elif teacher.lora_config != config:
        raise DistillSegError(f"LoRA settings in {path} ({config}) differ from the teacher's ({teacher.lora_config})")
    expected = set(lora_state_dict(teacher))
    if set(payload["state_dict"]) != expected:
        raise DistillSegError(f"LoRA adapter keys in {path} do not match teacher {teacher.name}'s adapters")
    result = set_peft_model_state_dict(teacher.model.image_encoder, payload["state_dict"])
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise DistillSegError(f"LoRA adapter file {path} has unexpected keys: {unexpected[:3]}")
    update_weights_digest(teacher)


def _require_lora(teacher) -> None:
    if getattr(teacher, "lora_config", None) is None:
        raise DistillSegError(f"teacher {teacher.name} has no LoRA adapters (call add_lora first)")


def _digest(state: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
