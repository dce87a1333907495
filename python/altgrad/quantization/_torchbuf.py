"""Torch tensors in and out of the C kernels.

Inputs that are already contiguous float32 CPU tensors are passed by address;
others are converted once. Results are allocated as float32 CPU tensors and
moved back to the caller's device and dtype only when those differ.
"""

from __future__ import annotations

import ctypes
import math

import torch



def as_c_input(x: torch.Tensor, what: str = "x") -> torch.Tensor:
    """x detached, as a contiguous float32 CPU tensor (x itself if it is one)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    t = x.detach()
    if t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous():
        return t
    return t.to(device="cpu", dtype=torch.float32).contiguous()


def like_input(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out (float32, CPU, x's shape) on x's device with x's dtype."""
    if out.device != x.device or out.dtype != x.dtype:
        out = out.to(device=x.device, dtype=x.dtype)
    return out


def scale_value(scale, what: str = "scale") -> float:
    """A per-tensor scale as a Python float: a number or a one-element tensor.
    ValueError unless finite and > 0."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"{what} must be a single value (per-tensor scaling), "
                             f"got a tensor of shape {tuple(scale.shape)}")
        s = float(scale.detach().reshape(()).item())
    elif isinstance(scale, bool):
        raise TypeError(f"{what} must be a number or a tensor, got bool")
    else:
        try:
            s = float(scale)
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be a number or a tensor, got "
                            f"{type(scale).__name__}") from None
    if not math.isfinite(s) or s <= 0.0:
        raise ValueError(f"{what} must be finite and > 0, got {s}")
    s32 = ctypes.c_float(s).value  # what the C kernels will see
    if not math.isfinite(s32) or s32 <= 0.0:
        raise ValueError(f"{what} {s} is not a positive finite float32")
    return s


def same_shape(a: torch.Tensor, b: torch.Tensor, an: str, bn: str) -> None:
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"{bn} must be a torch.Tensor, got {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{an} and {bn} differ in shape: {tuple(a.shape)} vs "
                         f"{tuple(b.shape)}")


