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


# ---------------------------------------------------------------------------
# Typed C arrays (uint64, int64, double, float) for the counts call
# ---------------------------------------------------------------------------

# array typecode and the buffer formats that already hold it, byte for byte
_C_TYPES = {
    "u64": ("Q", ("Q", "L", "q", "l")),  # 8-byte ints: the same bits for values >= 0
    "i64": ("q", ("q", "l", "Q", "L")),
    "f64": ("d", ("d",)),
    "f32": ("f", ("f",)),
}


class CArray:
    """`ptr` (int address) and `n` (elements) of memory holding C values of
    one type, and what keeps that memory alive."""

    __slots__ = ("ptr", "n", "_keep")

    def __init__(self, ptr: int, n: int, keep):
        self.ptr = ptr
        self.n = n
        self._keep = keep


def _flatten(x, out: list) -> None:
    for v in x:
        if isinstance(v, (list, tuple)):
            _flatten(v, out)
        else:
            out.append(v)


def c_array(x, kind: str, what: str) -> CArray:
    """x as a C array of `kind` ("u64", "i64", "f64", "f32"). An object with
    the buffer protocol (array.array, memoryview, a numpy array, a CPU torch
    tensor's .numpy()) whose items already have that C type and layout is
    passed by address; another buffer is converted in C (no per-element
    Python loop); a torch tensor goes through .numpy(); a (nested) sequence
    of numbers is flattened and converted."""
    code, same = _C_TYPES[kind]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous().numpy()
    try:
        mv = memoryview(x)
    except TypeError:
        mv = None
    if mv is not None:
        fmt = mv.format.lstrip("@=" + ("<" if sys.byteorder == "little" else ">"))
        size = 4 if kind == "f32" else 8
        if fmt in same and mv.itemsize == size:
            if mv.c_contiguous and not mv.readonly:
                flat = mv.cast("B")
                n = mv.nbytes // mv.itemsize
                if n == 0:
                    return CArray(0, 0, x)
                import ctypes
                addr = ctypes.addressof(ctypes.c_char.from_buffer(flat))
                return CArray(addr, n, (x, flat))
        try:
            items = mv.tolist() if mv.ndim == 1 else \
                memoryview(mv.tobytes()).cast(fmt).tolist()
            a = array.array(code, items)
        except (TypeError, ValueError, OverflowError, NotImplementedError) as e:
            raise TypeError(f"{what}: numbers of C type {kind} are needed ({e})") from None
    elif isinstance(x, (list, tuple)):
        flat_items: list = []
        _flatten(x, flat_items)
        try:
            a = array.array(code, [int(v) if kind in ("u64", "i64") else float(v)
                                   for v in flat_items])
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"{what}: numbers of C type {kind} are needed ({e})") from None
    else:
        raise TypeError(f"{what}: expected a sequence or buffer of numbers, got "
                        f"{type(x).__name__}")
    addr, n = a.buffer_info()
    return CArray(addr if n else 0, n, a)
