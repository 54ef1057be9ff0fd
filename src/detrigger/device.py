"""Device and precision handling, in one place: cuda if available, else mps, else cpu; overridable."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from detrigger.errors import DetriggerError

Precision = Literal["fp32", "bf16"]


def pick_device(preferred: str | None = None) -> torch.device:
    """Return `preferred` if given (validated), else the best available device."""
    if preferred:
        try:
            device = torch.device(preferred)
        except RuntimeError as exc:
            raise DetriggerError(f"unknown device {preferred!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DetriggerError(f"device {preferred!r} requested but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise DetriggerError(f"device {preferred!r} requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively here: a CUDA GPU that supports it, or a CPU with bf16 instructions
    (avx512_bf16 / amx_bf16; elsewhere oneDNN emulates bf16 and it is no faster than fp32). Deterministic:
    read from the hardware, never timed."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:  # not Linux
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast where asked for and supported; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise DetriggerError(f"unknown precision {precision!r} (choose fp32 or bf16)")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DetriggerError("bf16 requested but this GPU does not support it")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def backward_friendly_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """For a backward pass through attention on a CPU: PyTorch's math attention kernel instead of its fused
    (flash) one, whose CPU backward took 37% of the scan's gradient pass over 200 MR sentences (1.6 s instead
    of 2.2 s a pass, same top-20 tokens; training, with its weight gradients and batches of 32, gains nothing).
    A no-op elsewhere and for models that do not use `scaled_dot_product_attention`."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)
