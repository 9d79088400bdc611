"""Reduced precision where the hardware computes it natively: fp16 on CUDA, bfloat16 on CPUs
with Intel AMX / AVX-512 BF16 (oneDNN then runs bf16 convolutions and matrix products about
twice as fast as float32: ``benchmarks/student_speed.py``, ``benchmarks/engine_box_prompt.py``).

``$DISTILLSEG_CPU_PRECISION`` (``auto`` by default, ``bf16`` or ``fp32``) overrides the choice.
Used around inference only (the student's sliding window, the 2D teachers' prompt decoder in
interactive segmentation), never in training.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

from .errors import DistillSegError

PRECISION_ENV = "DISTILLSEG_CPU_PRECISION"


def cpu_computes_bf16() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (AMX / AVX-512 BF16)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def inference_autocast(device, precision: str = "auto"):
    """The autocast context for inference on ``device``: fp16 on CUDA; bf16 on a CPU that
    computes it natively (``precision="auto"``, or ``"bf16"`` to force it); else none."""
    import torch

    precision = (os.environ.get(PRECISION_ENV) or precision).lower()
    if precision not in ("auto", "bf16", "fp32"):
        raise DistillSegError(f"${PRECISION_ENV} must be auto, bf16 or fp32, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "bf16" or cpu_computes_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()
