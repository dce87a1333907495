"""ExMy formats of 4 to 16 bits: the seed's FP8Format API over the C format
registry (the name is the seed's; the class describes every width).

An FP8Format is a frozen description (name, exponent/mantissa bits, bias,
inf/NaN flags); the C registry (ag_format_define) holds the matching table,
and every operation on a format goes through that C object. The five seed
formats are read back from the C registry so Python and C cannot disagree.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional

from .. import _lib
from ..errors import check

_ptr_lock = threading.Lock()
_ptr_cache: Dict[tuple, object] = {}
# C names of formats registered under an alias because their own name was
# taken in the C registry by a different definition (see FP8Format).
_aliases: set = set()


def _alias(key: tuple) -> str:
    """A C registry name for a definition whose own name is taken: '_' and 14
    hex digits of a hash of the whole definition, so the same definition
    always gets the same alias (and shares one C format)."""
    return "_" + hashlib.sha1(repr(key).encode()).hexdigest()[:14]


@dataclass(frozen=True)
class FP8Format:
    """A sign-magnitude format of 4 to 16 bits: 1 sign bit, `exponent_bits`
    exponent bits, `mantissa_bits` mantissa bits (their sum 3..15), an
    exponent `bias`, and whether the all-ones exponent encodes inf / NaN
    (has_inf and has_nan: IEEE style; has_nan alone: only the all-ones
    pattern is NaN, as in OCP E4M3).

    A plain value, as in the seed engine: any number of FP8Format values may
    share a name, and two are equal when all their fields are. Creating one
    validates it and registers it with the C library: identical definitions
    share one C format; a definition whose name the C registry already holds
    for a different format is registered under a private alias (the C API,
    ag_format_define, keeps its rule that a name means one format). An
    impossible definition raises FormatError."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_inf: bool = False
    has_nan: bool = False

    def __post_init__(self):
        for field in ("exponent_bits", "mantissa_bits", "bias"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"FP8Format.{field} must be an int, got {v!r}")
        if not isinstance(self.name, str):
            raise TypeError(f"FP8Format.name must be a str, got {self.name!r}")
        self._c()  # validate and register now, not at first use

    def _key(self) -> tuple:
        return (self.name, self.exponent_bits, self.mantissa_bits, self.bias,
                bool(self.has_inf), bool(self.has_nan))

    def _c(self):
        """The C ag_format this format stands for (a ctypes pointer)."""
        key = self._key()
        ptr = _ptr_cache.get(key)
        if ptr is not None:
            return ptr
        with _ptr_lock:
            what = (f"format {self.name} E{self.exponent_bits}M{self.mantissa_bits} "
                    f"bias {self.bias} inf={self.has_inf} nan={self.has_nan}")
            name = _lib.cstr(self.name, "format name")
            out = self._define(name)
            if out is None:  # the name means another format in C: use an alias
                alias = _alias(key)
                out = self._define(alias.encode())
                if out is None:
                    check(_lib.AG_EEXIST, what)
                _aliases.add(alias)
            elif isinstance(out, int):
                check(out, what)
            _ptr_cache[key] = out
            return out

    def _define(self, cname: bytes):
        """ag_format_define under cname: the pointer, None when the name is
        taken by a different format, or the error code."""
        out = ctypes.POINTER(_lib.ag_format)()
        rc = _lib.lib().ag_format_define(cname, self.exponent_bits, self.mantissa_bits,
                                         self.bias, int(bool(self.has_inf)),
                                         int(bool(self.has_nan)), ctypes.byref(out))
        if rc == _lib.AG_EEXIST:
            return None
        return out if rc == 0 else rc

    @property
    def bits(self) -> int:
        """Width of a pattern in bits (1 + E + M)."""
        return self.exponent_bits + self.mantissa_bits + 1

    @property
    def max_representable_value(self) -> float:
        """Largest finite magnitude."""
        return float(self._c().contents.max_finite)

    @property
    def min_representable_value(self) -> float:
        """Smallest nonzero magnitude."""
        return float(self._c().contents.min_positive)

    def to_real(self, bit_index: int) -> float:
        """The value of the pattern `bit_index` (0 .. 2^bits - 1)."""
        if isinstance(bit_index, bool) or not isinstance(bit_index, int):
            try:
                bit_index = int(bit_index.__index__())
            except AttributeError:
                raise TypeError(f"bit_index must be an int, got {bit_index!r}") from None
        top = (1 << self.bits) - 1
        if not 0 <= bit_index <= top:
            raise ValueError(f"bit_index must be in [0, {top}], got {bit_index}")
        return float(_lib.lib().ag_decode(self._c(), bit_index))

    def to_bits(self, value: float) -> int:
        """The nearest pattern to `value` (rounded to float32 first), ties to
        an even mantissa; see docs/numerics.md for overflow, inf and NaN."""
        v = float(value)
        return int(_lib.lib().ag_encode(self._c(), v))

    def __str__(self) -> str:
        return self.name


def _from_c(ptr) -> FP8Format:
    f = ptr.contents
    return FP8Format(name=f.name.decode(), exponent_bits=f.exponent_bits,
                     mantissa_bits=f.mantissa_bits, bias=f.bias,
                     has_inf=bool(f.has_inf), has_nan=bool(f.has_nan))


def _builtin(name: str) -> FP8Format:
    ptr = _lib.lib().ag_format_get(name.encode())
    if not ptr:
        raise _lib.LibraryNotFound(f"{_lib.library_path()} lacks the seed format {name}")
    return _from_c(ptr)


E0M7 = _builtin("E0M7")
E1M6 = _builtin("E1M6")
E3M4 = _builtin("E3M4")
E5M2 = _builtin("E5M2")
E7M0 = _builtin("E7M0")

FORMAT_REGISTRY: Dict[str, FP8Format] = {
    "E0M7": E0M7,
    "E1M6": E1M6,
    "E3M4": E3M4,
    "E5M2": E5M2,
    "E7M0": E7M0,
}


# NVIDIA's NVFP4 recipe: the FP32 tensor scale S = amax / (448 * 6), so the
# largest block amax maps to E4M3's largest block scale times E2M1's largest
# element (docs/numerics.md, Block scaling).
NVFP4_SCALE_DIVISOR = 448.0 * 6.0


@dataclass(frozen=True)
class BlockFormat:
    """A block-scaled format of the C registry (MXFP8_E4M3, MXFP8_E5M2,
    MXFP6_E3M2, MXFP6_E2M3, MXFP4, NVFP4; docs/numerics.md, Block scaling):
    elements of `element` in blocks of `block_size` consecutive elements of
    the flattened tensor (from element 0, a shorter tail block of its own),
    each block with its own scale, "E8M0" (MX: a power of two from the
    block's amax) or "E4M3" (NVFP4: an E4M3 block scale times the FP32 tensor
    scale).

    Works wherever an FP8Format does (quantize, dequantize, detect_bit_stall,
    compute_scale, altgrad.torch.stall_counts), with block semantics; its
    per-tensor `scale` argument is the tensor scale S (1 for MX, which has
    none; compute_scale gives it). The ExMy fields and to_real / to_bits are
    the element format's grid at block scale 1. Not constructed by users:
    get_format(name) returns the registry's."""

    name: str
    element: FP8Format
    block_size: int
    scale_kind: str

    def _c(self):
        ptr = _lib.lib().ag_format_get(self.name.encode())
        if not ptr:
            raise _lib.LibraryNotFound(f"{_lib.library_path()} lacks the format {self.name}")
        return ptr

    @property
    def exponent_bits(self) -> int:
        return self.element.exponent_bits

    @property
    def mantissa_bits(self) -> int:
        return self.element.mantissa_bits

    @property
    def bias(self) -> int:
        return self.element.bias

    @property
    def has_inf(self) -> bool:
        return self.element.has_inf

    @property
    def has_nan(self) -> bool:
        return self.element.has_nan

    @property
    def bits(self) -> int:
        """Width of an element's pattern (the block scales come on top)."""
        return self.element.bits

    @property
    def max_representable_value(self) -> float:
        """The element format's largest finite magnitude (at block scale 1)."""
        return self.element.max_representable_value

    @property
    def min_representable_value(self) -> float:
        return self.element.min_representable_value

    @property
    def tensor_scale_divisor(self) -> Optional[float]:
        """amax / this is the tensor scale (NVFP4: 448 * 6); None for MX,
        whose tensor scale is 1."""
        return NVFP4_SCALE_DIVISOR if self.scale_kind == "E4M3" else None

    def to_real(self, bit_index: int) -> float:
        return self.element.to_real(bit_index)

    def to_bits(self, value: float) -> int:
        return self.element.to_bits(value)

    def __str__(self) -> str:
        return self.name


_SCALE_KINDS = {1: "E8M0", 2: "E4M3"}
_blocks: Dict[str, BlockFormat] = {}


def _block_from_c(ptr) -> BlockFormat:
    f = ptr.contents
    name = f.name.decode()
    got = _blocks.get(name)
    if got is None:
        elem = _from_c(ctypes.cast(f.element, ctypes.POINTER(_lib.ag_format)))
        got = _blocks[name] = BlockFormat(name=name, element=elem, block_size=int(f.block),
                                          scale_kind=_SCALE_KINDS[int(f.scale_kind)])
    return got


def registered_formats() -> Dict[str, "FP8Format | BlockFormat"]:
    """Every format the C registry holds now (the seed's, the built-ins, the
    block-scaled ones and any defined), in registry order."""
    lib = _lib.lib()
    out = {}
    for i in range(lib.ag_format_count()):
        ptr = lib.ag_format_at(i)
        if ptr.contents.block:
            out[ptr.contents.name.decode()] = _block_from_c(ptr)
            continue
        fmt = _from_c(ptr)
        if fmt.name not in _aliases:
            out[fmt.name] = fmt
    return out


def list_formats(bits=None) -> List["FP8Format | BlockFormat"]:
    """Every format the C registry holds (built-in, block-scaled or defined),
    in registry order, or those whose elements are `bits` wide (4 to 16)."""
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)):
        raise TypeError(f"bits must be an int or None, got {bits!r}")
    return [f for f in registered_formats().values() if bits is None or f.bits == bits]


def get_format(fmt) -> "FP8Format | BlockFormat":
    """An FP8Format from an FP8Format or a registered name (any format the
    C registry holds: the seed's five, E4M3, E3M2, E2M3, E2M1, BF16, FP16,
    and every defined one), or a BlockFormat (MXFP8_E4M3 ... NVFP4)."""
    if isinstance(fmt, (FP8Format, BlockFormat)):
        return fmt
    if isinstance(fmt, str):
        if fmt in FORMAT_REGISTRY:
            return FORMAT_REGISTRY[fmt]
        ptr = _lib.lib().ag_format_get(_lib.cstr(fmt, "format name"))
        if not ptr:
            from ..errors import NotFoundError
            raise NotFoundError(_lib.AG_ENOTFOUND, f"unknown format {fmt!r}")
        if ptr.contents.block:
            return _block_from_c(ptr)
        return _from_c(ptr)
    raise TypeError(f"format must be an FP8Format or a name, got {type(fmt).__name__}")


__all__ = ["FP8Format", "BlockFormat", "NVFP4_SCALE_DIVISOR", "E0M7", "E1M6", "E3M4", "E5M2", "E7M0", "FORMAT_REGISTRY",
           "registered_formats", "get_format", "list_formats"]

