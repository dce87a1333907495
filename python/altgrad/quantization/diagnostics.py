"""Bit-stall detection on the C kernels (ag_stall_sgd / ag_stall_update).

A stall is an element meant to move (|g| > 1e-10 in SGD form, u != 0 in update
form) whose quantized value does not change: quantize(w + u) == quantize(w).
detect_bit_stall keeps the seed's signature and (stall_count, total_count)
result; stall_counts also returns overflow, underflow and non-finite counts.
"""

from __future__ import annotations

import ctypes
import math
from typing import Dict, Tuple

from torch import Tensor

from .. import _lib
from ..errors import check
from ._torchbuf import as_c_input, same_shape, scale_value
from .formats import FP8Format, get_format


def _counts_dict(c: "_lib.ag_stall_counts") -> Dict[str, int]:
    return {"stalled": int(c.stalled), "total": int(c.total), "overflow": int(c.overflow),
            "underflow": int(c.underflow), "nonfinite": int(c.nonfinite)}


def _lr_value(lr) -> float:
    if isinstance(lr, Tensor):
        lr = lr.detach().reshape(()).item()
    lr = float(lr)
    if not math.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr}")
    return lr


def stall_counts(weight: Tensor, grad: Tensor, lr, format: FP8Format, scale,
                 update: bool = False) -> Dict[str, int]:
    """Counts of one step: stalled, total, overflow, underflow, nonfinite.
    SGD form (u = -lr * grad) by default; with update=True, `grad` is the
    optimizer's update u = w_new - w and lr is ignored."""
    fmt = get_format(format)
    s = scale_value(scale)
    same_shape(weight, grad, "weight", "update" if update else "grad")
    w = as_c_input(weight, "weight")
    g = as_c_input(grad, "update" if update else "grad")
    counts = _lib.ag_stall_counts()
    if w.numel():
        lib = _lib.lib()
        if update:
            check(lib.ag_stall_update(fmt._c(), s, w.data_ptr(), g.data_ptr(), w.numel(),
                                      ctypes.byref(counts)))
        else:
            check(lib.ag_stall_sgd(fmt._c(), s, _lr_value(lr), w.data_ptr(), g.data_ptr(),
                                   w.numel(), ctypes.byref(counts)))
    return _counts_dict(counts)


def detect_bit_stall(weight: Tensor, grad: Tensor, lr, format: FP8Format,
                     scale) -> Tuple[int, int]:
    """(stall_count, total_count) for one SGD step w - lr * grad: elements
    with |grad| > 1e-10 whose quantized weight would not change."""
    c = stall_counts(weight, grad, lr, format, scale)
    return c["stalled"], c["total"]


def detect_bit_stall_update(weight: Tensor, update: Tensor, format: FP8Format,
                            scale) -> Tuple[int, int]:
    """(stall_count, total_count) for an explicit update u = w_new - w from
    any optimizer: elements with u != 0 whose quantized weight stays put."""
    c = stall_counts(weight, update, 0.0, format, scale, update=True)
    return c["stalled"], c["total"]


class BitStallDetector:
    """Accumulates stall counts over many updates."""

    def __init__(self):
        self.stall_count = 0
        self.total_count = 0
        self.step_count = 0

    def update(self, weight: Tensor, grad: Tensor, lr, format: FP8Format, scale) -> None:
        """Add one SGD step's counts (see detect_bit_stall)."""
        stalled, total = detect_bit_stall(weight, grad, lr, format, scale)
        self.stall_count += stalled
        self.total_count += total
        self.step_count += 1

    def get_stall_rate(self) -> float:
        """stalled / total over everything recorded; 0.0 when total is 0."""
        return self.stall_count / self.total_count if self.total_count else 0.0

    def reset(self) -> None:
        self.stall_count = 0
        self.total_count = 0
        self.step_count = 0

    def get_stats(self) -> Dict[str, float]:
        return {"stall_rate": self.get_stall_rate(), "stall_count": self.stall_count,
                "total_count": self.total_count, "steps": self.step_count}


__all__ = ["detect_bit_stall", "detect_bit_stall_update", "stall_counts", "BitStallDetector"]
