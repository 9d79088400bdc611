"""Student model files: one ``.pt`` file with weights and metadata, loadable without pickle.

Layout (``torch.save`` of a plain dict, read back with ``torch.load(weights_only=True)``, so
a model file can never run code)::

    {"format": "distillseg-student/1",
     "metadata": "<JSON string>",      # config, classes, training facts, sha256 ...
     "weights": {name: tensor, ...},   # the network's state_dict
     "digest": "<hex>",                # sha256(metadata JSON + weights sha256)
     "training_state": {...}}          # only in checkpoints (optimizer, step ...)

``metadata["weights_sha256"]`` hashes every tensor (name, dtype, shape, bytes) in name
order; ``digest`` binds the metadata to those weights, so editing either is detected.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..atomic import atomic_path
from ..errors import DistillSegError
from .config import StudentConfig
from .network import build_student

FORMAT = "distillseg-student/1"


@dataclass
class StudentModel:
    """A loaded student: network (eval mode, CPU), its config and metadata."""

    network: torch.nn.Module
    config: StudentConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def field_of_view(self) -> str:
        return self.config.field_of_view

    @property
    def takes_prompts(self) -> bool:
        return self.config.takes_prompts


def weights_sha256(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _file_digest(metadata_json: str, weights_hash: str) -> str:
    return hashlib.sha256((metadata_json + "\n" + weights_hash).encode()).hexdigest()


def model_payload(
    network: torch.nn.Module,
    config: StudentConfig,
    metadata: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict that :func:`save_model` writes (exposed for checkpoints)."""
    module = network.module if hasattr(network, "module") else network  # unwrap DDP
    weights = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    weights_hash = weights_sha256(weights)
    meta = {
        "distillseg_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(metadata or {}),
        "config": config.to_dict(),
        "classes": {str(i + 1): {"name": c.name, "category": list(c.category), "type": list(c.type),
                                 "color": list(c.color)} for i, c in enumerate(config.classes)},
        "channels": ["CT", "PET", *config.prompt_channels],
        "takes_prompts": config.takes_prompts,
        "field_of_view": config.field_of_view,
        "parameters": sum(v.numel() for k, v in weights.items() if "running" not in k and "num_batches" not in k),
        "weights_sha256": weights_hash,
    }
    metadata_json = json.dumps(meta, sort_keys=True, default=str)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "metadata": metadata_json,
        "weights": weights,
        "digest": _file_digest(metadata_json, weights_hash),
    }
    if training_state is not None:
        payload["training_state"] = training_state
    return payload


def save_model(
    path: str | os.PathLike,
    network: torch.nn.Module,
    config: StudentConfig,
    metadata: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write a model file atomically (a crash never leaves half a model at ``path``)."""
    payload = model_payload(network, config, metadata, training_state)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_payload(path: str | os.PathLike) -> dict[str, Any]:
    """Load and verify a model file's dict (``weights_only=True``: no code runs).

    Raises:
        DistillSegError: missing file, not a DistillSeg model, or metadata/weights that do
            not match their recorded SHA-256.
    """
    path = Path(path)
    if not path.is_file():
        raise DistillSegError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/unpickling/runtime errors of many kinds
        if "Weights only load failed" in str(exc):
            reason = ("it holds Python objects besides tensors, which a DistillSeg model never does "
                      "(refused: loading them could run code)")
        elif path.stat().st_size == 0:
            reason = "the file is empty"
        else:
            detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            reason = f"not a readable PyTorch file ({detail})"
        raise DistillSegError(f"cannot read model file {path}: {reason}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DistillSegError(f"{path} is not a DistillSeg student model (expected format {FORMAT})")
    try:
        metadata_json, weights, digest = payload["metadata"], payload["weights"], payload["digest"]
        metadata = json.loads(metadata_json)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DistillSegError(f"model file {path} is incomplete or its metadata is corrupt: {exc}") from exc
    if not isinstance(metadata, dict) or not isinstance(weights, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise DistillSegError(f"model file {path} is incomplete: its metadata or weights are not what a DistillSeg "
                              "model holds")
    actual = weights_sha256(weights)
    if actual != metadata.get("weights_sha256"):
        raise DistillSegError(
            f"model file {path} was modified: its weights' SHA-256 {actual[:12]}... does not match "
            f"the recorded {str(metadata.get('weights_sha256'))[:12]}..."
        )
    if _file_digest(metadata_json, actual) != digest:
        raise DistillSegError(f"model file {path} was modified: its metadata does not match its recorded digest")
    payload["metadata"] = metadata
    return payload


def model_config(payload: dict[str, Any], path: str | os.PathLike) -> StudentConfig:
    """The :class:`StudentConfig` recorded in a verified payload's metadata.

    Raises:
        DistillSegError: the metadata has no usable configuration (a file made by other code).
    """
    metadata = payload["metadata"]
    config = metadata.get("config") if isinstance(metadata, dict) else None
    if not isinstance(config, dict):
        raise DistillSegError(f"model file {path} records no student configuration: it was not written by DistillSeg")
    try:
        return StudentConfig.from_dict(config)
    except DistillSegError as exc:
        raise DistillSegError(f"model file {path}: {exc}") from exc
    except (TypeError, ValueError, KeyError) as exc:
        raise DistillSegError(f"model file {path} records an unusable student configuration: {exc}") from exc


def load_model(path: str | os.PathLike) -> StudentModel:
    """Load a verified student model (network in eval mode on the CPU)."""
    payload = read_payload(path)
    metadata = payload["metadata"]
    config = model_config(payload, path)
    try:
        network = build_student(config)
    except (TypeError, ValueError) as exc:  # sizes MONAI cannot build
        raise DistillSegError(f"model file {path}: its student configuration cannot be built: {exc}") from exc
    try:
        network.load_state_dict(payload["weights"], strict=True)
    except RuntimeError as exc:
        raise DistillSegError(
            f"model file {path}: weights do not fit the network its metadata describes: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    network.eval()
    return StudentModel(network, config, metadata, Path(path))
