"""Per-tensor scaling: amax history (C ring buffer) and compute_scale.

scale = max(amax / max_finite(format), scale_min); our scale divides before
encoding. AmaxHistory keeps the last `history_len` amax values of a tensor,
ignoring NaN/inf elements (counted in `nonfinite`), and answers their maximum
(or the newest, with mode="most_recent"), 1.0 while empty.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import List

from torch import Tensor

from .. import _lib
from ..errors import check
from ._torchbuf import as_c_input
from .formats import BlockFormat, FP8Format, get_format

_MODES = {"max": _lib.AG_AMAX_MAX, "most_recent": _lib.AG_AMAX_MOST_RECENT}


def _check_history_len(n: int) -> None:
    """The seed's wording for a length below 1; the C ring's bound above."""
    if n <= 0:
        raise ValueError(f"history_len must be positive, got {n}")
    if n > _lib.AG_AMAX_HISTORY_MAX_LEN:
        raise ValueError(f"history_len must be at most {_lib.AG_AMAX_HISTORY_MAX_LEN}, "
                         f"got {n}")


@dataclass
class ScalingConfig:
    """How scales are derived: ring length, smallest scale, and whether the
    history answers its maximum ("max", the seed's) or newest value."""

    history_len: int = _lib.AG_AMAX_HISTORY_DEFAULT_LEN
    scale_min: float = _lib.AG_SCALE_MIN
    amax_mode: str = "max"

    def __post_init__(self):
        if isinstance(self.history_len, bool) or not isinstance(self.history_len, int):
            raise TypeError(f"history_len must be an int, got {self.history_len!r}")
        _check_history_len(self.history_len)
        if not (math.isfinite(self.scale_min) and self.scale_min > 0):
            raise ValueError(f"scale_min must be finite and > 0, got {self.scale_min}")
        if self.amax_mode not in _MODES:
            raise ValueError(f"amax_mode must be one of {sorted(_MODES)}, "
                             f"got {self.amax_mode!r}")


class AmaxHistory:
    """The last `history_len` amax values of a tensor (a C ag_amax_history)."""

    def __init__(self, history_len: int = _lib.AG_AMAX_HISTORY_DEFAULT_LEN,
                 mode: str = "max"):
        self._h = None
        if isinstance(history_len, bool) or not isinstance(history_len, int):
            raise TypeError(f"history_len must be an int, got {history_len!r}")
        _check_history_len(history_len)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
        self._lib = _lib.lib()
        h = ctypes.c_void_p()
        check(self._lib.ag_amax_history_new(ctypes.byref(h), history_len, _MODES[mode]))
        self._h = h
        self.mode = mode

    @classmethod
    def from_config(cls, config: ScalingConfig) -> "AmaxHistory":
        return cls(config.history_len, config.amax_mode)

    def __del__(self):
        h, self._h = getattr(self, "_h", None), None
        if h:
            self._lib.ag_amax_history_free(h)

    def _handle(self):
        if not self._h:
            raise ValueError("AmaxHistory is closed")
        return self._h

    def update(self, tensor) -> None:
        """Push max |x| over the finite elements of `tensor` (a tensor or a
        number); NaN/inf elements are counted, never stored. An empty tensor
        or one with no finite element pushes nothing."""
        h = self._handle()
        if isinstance(tensor, Tensor):
            src = as_c_input(tensor, "tensor")
            if src.numel() == 0:
                return
            check(self._lib.ag_amax_history_update(h, src.data_ptr(), src.numel()))
        elif isinstance(tensor, (int, float)) and not isinstance(tensor, bool):
            self.push(float(tensor))
        else:
            raise TypeError(f"tensor must be a torch.Tensor or a number, got "
                            f"{type(tensor).__name__}")

    def push(self, amax: float) -> None:
        """Push one amax value (NaN, inf or negative: counted as non-finite)."""
        check(self._lib.ag_amax_history_push(self._handle(), float(amax)))

    def get_amax(self) -> float:
        """Max (or newest) over the ring; 1.0 when empty."""
        return float(self._lib.ag_amax_history_get(self._handle()))

    def reset(self) -> None:
        self._lib.ag_amax_history_reset(self._handle())

    def values(self) -> List[float]:
        """The held values, oldest first."""
        h = self._handle()
        cap = self._lib.ag_amax_history_capacity(h)
        buf = (ctypes.c_double * cap)()
        n = ctypes.c_size_t()
        check(self._lib.ag_amax_history_values(h, buf, cap, ctypes.byref(n)))
        return list(buf[:n.value])

    @property
    def history_len(self) -> int:
        return int(self._lib.ag_amax_history_capacity(self._handle()))

    @property
    def nonfinite(self) -> int:
        """Non-finite elements / values seen since creation or reset."""
        return int(self._lib.ag_amax_history_nonfinite(self._handle()))

    def __len__(self) -> int:
        return int(self._lib.ag_amax_history_size(self._handle()))

    def __repr__(self) -> str:
        return f"AmaxHistory(history_len={self.history_len}, mode={self.mode!r}, " \
               f"values={self.values()})"


def compute_scale(amax, format: FP8Format, scale_min: float = _lib.AG_SCALE_MIN) -> float:
    """max(amax / max_finite(format), scale_min); for a block-scaled format
    the tensor scale: 1 for MX, max(amax / (448 * 6), scale_min) for NVFP4.
    amax may be a number or a
    one-element tensor; ValueError for a negative or NaN amax or a scale_min
    that is not finite and positive."""
    if isinstance(amax, Tensor):
        if amax.numel() != 1:
            raise ValueError("amax must be a single value")
        amax = float(amax.detach().reshape(()).item())
    amax = float(amax)
    scale_min = float(scale_min)
    fmt = get_format(format)
    if isinstance(fmt, BlockFormat):
        # the tensor scale S: MX has none (1); NVFP4 maps the amax to E4M3's
        # largest block scale times E2M1's largest element (448 * 6)
        if not (amax >= 0) or not (math.isfinite(scale_min) and scale_min > 0):
            raise ValueError(f"compute_scale: amax must be >= 0 and not NaN (got {amax}), "
                             f"scale_min finite and > 0 (got {scale_min})")
        div = fmt.tensor_scale_divisor
        return 1.0 if div is None else max(amax / div, scale_min)
    s = _lib.lib().ag_compute_scale(amax, fmt._c(), scale_min)
    if math.isnan(s):
        raise ValueError(f"compute_scale: amax must be >= 0 and not NaN (got {amax}), "
                         f"scale_min finite and > 0 (got {scale_min})")
    return float(s)


__all__ = ["ScalingConfig", "AmaxHistory", "compute_scale"]
