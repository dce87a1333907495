"""Float32 buffers for C calls, from torch tensors, numpy arrays or sequences.

The C kernels take `const float *` and a count. When the caller's memory is
already contiguous float32 on the CPU its address is passed as is (no copy);
anything else (another dtype, a GPU tensor, strided views, Python lists) is
converted once. torch and numpy are only touched if the caller already
imported them, so the package itself needs nothing beyond the standard library.
"""

from __future__ import annotations

import array
import sys


DTYPE_F32, DTYPE_BF16, DTYPE_F16 = 0, 1, 2  # ag_dtype


class F32:
    """A buffer ready for C: `ptr` (int address), `n` (elements), `dtype`
    (ag_dtype: float32 unless typed() kept 16-bit data as it was), `copied`
    (whether a conversion was needed). Holds what keeps the memory alive."""

    __slots__ = ("ptr", "n", "copied", "dtype", "_keep")

    def __init__(self, ptr: int, n: int, copied: bool, keep, dtype: int = DTYPE_F32):
        self.ptr = ptr
        self.n = n
        self.copied = copied
        self.dtype = dtype
        self._keep = keep


def _torch_buffer(torch, x, what: str) -> F32:
    t = x.detach()
    if t.is_complex():
        raise TypeError(f"{what}: complex tensors are not supported")
    if t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous():
        return F32(t.data_ptr() if t.numel() else 0, t.numel(), False, t)
    c = t.to(device="cpu", dtype=torch.float32).contiguous()
    return F32(c.data_ptr() if c.numel() else 0, c.numel(), True, c)


def _numpy_buffer(np, x, what: str) -> F32:
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{what}: numpy dtype {x.dtype} is not numeric")
    a = x
    copied = False
    if not (a.dtype == np.float32 and a.flags["C_CONTIGUOUS"] and a.dtype.isnative):
        a = np.ascontiguousarray(a, dtype=np.float32)
        copied = True
    return F32(a.ctypes.data if a.size else 0, int(a.size), copied, a)


def f32(x, what: str = "array") -> F32:
    """A float32 view (or converted copy) of x for passing to C."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return _torch_buffer(torch, x, what)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        return _numpy_buffer(np, x, what)
    if isinstance(x, array.array):
        if x.typecode == "f":
            addr, n = x.buffer_info()
            return F32(addr if n else 0, n, False, x)
        x = list(x)
    if isinstance(x, memoryview) and x.format == "f" and x.c_contiguous:
        a = array.array("f", x.tobytes())
        addr, n = a.buffer_info()
        return F32(addr if n else 0, n, True, a)
    if isinstance(x, (list, tuple)):
        try:
            a = array.array("f", [float(v) for v in x])
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}: a sequence of numbers is needed ({e})") from None
        addr, n = a.buffer_info()
        return F32(addr if n else 0, n, True, a)
    raise TypeError(f"{what}: expected a torch tensor, numpy array, array('f') or a "
                    f"sequence of floats, got {type(x).__name__}")


def typed(x, what: str = "array") -> F32:
    """Like f32, but contiguous CPU bfloat16 / float16 data is passed as it
    is (raw 16-bit patterns, dtype set) instead of being widened here."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach()
        kind = {torch.bfloat16: DTYPE_BF16, torch.float16: DTYPE_F16}.get(t.dtype)
        if kind is not None and t.device.type == "cpu" and t.is_contiguous():
            return F32(t.data_ptr() if t.numel() else 0, t.numel(), False, t, kind)
        return _torch_buffer(torch, x, what)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray) and x.dtype == np.float16 \
            and x.flags["C_CONTIGUOUS"] and x.dtype.isnative:
        return F32(x.ctypes.data if x.size else 0, int(x.size), False, x, DTYPE_F16)
    return f32(x, what)
