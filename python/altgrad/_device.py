"""Stall, overflow, underflow and flip counting on the tensors' own device.

The counts are the C core's (core/stall.c, docs/numerics.md "Stall"), bit for
bit: every step below is the same float32 or integer operation the C kernel
does, in the same order. Two implementations share the constants of
`FormatParams`:
- eager PyTorch, on any device and any torch from 1.13 (the reference, and the
  path on the CPU), processed in bounded chunks;
- one fused Triton kernel for CUDA tensors (`_triton.py`), used when Triton
  is importable; it divides with div_rn (IEEE round to nearest), never with a
  fast reciprocal.

Division is the one place where PyTorch can differ from IEEE: a CUDA tensor
divided by a Python number or a CPU scalar is multiplied by the reciprocal.
Here a scale is always a tensor on the data's device, expanded to the data's
shape, so the division is elementwise and correctly rounded.
"""

from __future__ import annotations

import ctypes
import math
import struct
from typing import Dict, List, Optional, Sequence

import torch

from . import _lib
from .errors import FormatError

COUNT_KEYS = ("stalled", "total", "overflow", "underflow", "nonfinite")
_F32_MAX = 3.4028234663852886e38
# AG_GRAD_EPSILON (1e-10f) as the float32 value it is.
GRAD_EPSILON = struct.unpack("<f", struct.pack("<f", 1e-10))[0]
_EXP_INF = 0x7F800000
# Elements per eager chunk: bounds the temporaries (about 40 bytes an element).
_CHUNK = 1 << 22
_SCALE_E8M0 = 1  # ag_scale_kind
_SCALE_E4M3 = 2


def _f32(x: float) -> float:
    """x rounded to float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _bits_f32(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


class FormatParams:
    """The constants the C kernels derive from an ag_format (kernel.h
    ag_qparams_of, stall.c enc_params_of), read from libaltgrad's registry."""

    def __init__(self, name: str):
        lib = _lib.lib()
        p = lib.ag_format_get(_lib.cstr(name, "format"))
        if not p:
            raise FormatError(_lib.AG_EFORMAT, f"unknown format {name!r}")
        f = p.contents
        self.name = name
        self.E = int(f.exponent_bits)
        self.M = int(f.mantissa_bits)
        self.bias = int(f.bias)
        self.emin = int(f.min_exponent)
        self.max_finite = float(f.max_finite)
        self.has_inf = bool(f.has_inf)
        self.has_nan = bool(f.has_nan)
        self.bits = int(f.bits)
        self.pattern_bytes = int(f.pattern_bytes)
        # an unscaled twin (NAME-unscaled): the daemon's scale rule gives it 1
        self.unscaled = bool(f.unscaled)
        # ag_qparams
        self.emin_bits = (self.emin + 127) << 23
        self.shift = 23 - self.M
        self.half_m1 = (1 << (self.shift - 1)) - 1
        self.keep_mask = -(1 << self.shift)  # ~((1 << shift) - 1) as int32
        self.sub_magic = _bits_f32((self.emin - self.M + 23 + 127) << 23)
        self.overflow_value = math.inf if self.has_inf else self.max_finite
        self.half_down = self.M == 0
        # kernel.h ag_eparams
        emask = (1 << self.E) - 1
        self.bias_adj = self.bias - 127
        self.mant_mask = (1 << self.M) - 1
        self.sign_shift = 31 - (self.E + self.M)
        self.sign_bit = 1 << (self.E + self.M)
        self.mag_mask = self.sign_bit - 1
        self.pattern_mask = self.sign_bit | self.mag_mask
        self.over_pattern = (emask << self.M) if self.has_inf else int(
            lib.ag_encode(p, self.max_finite))
        self.nan_pattern = int(lib.ag_encode(p, math.nan)) if self.has_nan else 0
        self.emin_value = math.ldexp(1.0, self.emin)
        # for the 8-bit Triton kernel (_triton.py): the uniform-grid value to
        # mantissa integer, a float32 only where it is finite
        self.sub_scale = math.ldexp(1.0, self.M - self.emin)
        # the largest magnitude pattern that is not NaN: NaNs are the ones above
        if self.has_inf:
            self.nan_above = emask << self.M
        elif self.has_nan:
            self.nan_above = self.mag_mask - 1
        else:
            self.nan_above = self.mag_mask
        # the fused Triton kernel handles 8-bit formats (sign at bit 7, uint8
        # patterns); others are counted by the eager path
        self.triton_ok = self.bits == 8
        # the daemon's scale rule divides the history amax by this
        self.scale_divisor = self.max_finite
        # block scaling (core/block.c): the fields above are the element's
        # grid; elements saturate at max_finite (MX and NVFP4 conversions clamp)
        self.block = int(f.block)
        self.scale_kind = int(f.scale_kind)
        if self.block:
            elem = ctypes.cast(f.element, ctypes.POINTER(_lib.ag_format)).contents
            self.emax = int(elem.max_exponent)
            self.overflow_value = self.max_finite
            if self.has_inf:  # saturating: past max is the largest finite pattern
                self.over_pattern -= 1
            self.triton_ok = self.block in (16, 32)  # every element width: the block kernel
            if self.scale_kind == _SCALE_E8M0:
                self.unscaled = True  # MX has no tensor scale: 1, as the daemon's
            else:  # NVFP4: S = amax / (448 * 6), NVIDIA's recipe
                self.scale_divisor = 448.0 * 6.0

    def __repr__(self):
        return f"FormatParams({self.name!r})"


_PARAMS: Dict[str, FormatParams] = {}


def format_params(name: str) -> FormatParams:
    fp = _PARAMS.get(name)
    if fp is None:
        fp = _PARAMS[name] = FormatParams(name)
    return fp


# ---------------------------------------------------------------- eager ops

def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int32)


def qmag(fp: FormatParams, x: torch.Tensor) -> torch.Tensor:
    """kernel.h ag_qmag_hd: |x| rounded to the grid, no overflow handling.
    NaN lanes are clamped to inf's bits first (their result is never used,
    and the integer sum then cannot overflow)."""
    ab = torch.clamp(_bits(x) & 0x7FFFFFFF, max=_EXP_INF)
    if fp.half_down:
        normal = (ab + fp.half_m1) & fp.keep_mask
    else:
        normal = (ab + fp.half_m1 + ((ab >> fp.shift) & 1)) & fp.keep_mask
    a = ab.view(torch.float32)
    sub = (a + fp.sub_magic) - fp.sub_magic
    return torch.where(ab < fp.emin_bits, sub, normal.view(torch.float32))


def encode(fp: FormatParams, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """kernel.h ag_pattern: the pattern of x (= w / scale) from m = qmag(x),
    as int32 (4 to 16 bits: the sign at bit E + M)."""
    mb = _bits(m)
    sign = (_bits(x) >> fp.sign_shift) & fp.sign_bit
    normal = (((mb >> 23) + fp.bias_adj) << fp.M) | ((mb >> fp.shift) & fp.mant_mask)
    over = m > fp.max_finite
    small = mb < fp.emin_bits
    # below 2^emin: the mantissa field of m + 2^emin (exact)
    sub = (_bits(m + fp.emin_value) >> fp.shift) & fp.mant_mask
    mag = torch.where(small, sub, normal)
    mag = torch.where(over, torch.full_like(mag, fp.over_pattern), mag)
    out = (mag | sign) & fp.pattern_mask
    return torch.where(x != x, torch.full_like(out, fp.nan_pattern), out)


def canon(fp: FormatParams, b: torch.Tensor) -> torch.Tensor:
    """stall.c flip_canon: equal exactly when two patterns mean the same value."""
    b = b.to(torch.int32) & fp.pattern_mask
    mag = b & fp.mag_mask
    v = torch.where(mag == 0, torch.zeros_like(b), b)
    return torch.where(mag > fp.nan_above, torch.full_like(b, -1), v)


_BLOCK_ALIGN = 32           # every block size divides it (MX 32, NVFP4 16)
_BLOCK_CHUNK = 1 << 22      # elements of the buffer taken at once by _block_flips


def _ilogb(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) of finite a > 0 (int32), subnormals included: the
    exponent field, or below it the top bit of the mantissa (found by
    converting the mantissa integer to float32, which is exact)."""
    ab = _bits(a)
    ef = (ab >> 23) & 0xFF
    mant = (ab & 0x7FFFFF).to(torch.float32)
    sub = ((_bits(mant) >> 23) & 0xFF) - 127 - 149
    return torch.where(ef != 0, ef - 127, sub)


def block_divisors(fp: FormatParams, s: float, w: torch.Tensor) -> torch.Tensor:
    """block.c block_divisor of every block of flat float32 w (blocks of
    fp.block from w[0], a shorter tail its own) at tensor scale s: float32
    [blocks], 0 where the block quantizes to zeros."""
    amax = _block_amax(w, fp.block)
    S = torch.full(amax.shape, s, dtype=torch.float32, device=w.device)
    return _divisors(fp, amax, S)


def _block_amax(w: torch.Tensor, B: int) -> torch.Tensor:
    """The finite amax of every block of B elements of flat float32 w (a
    shorter tail its own block): float32 [blocks]."""
    n = w.numel()
    nb = -(-n // B)
    wb = _bits(w) & 0x7FFFFFFF
    wb = torch.where(wb < _EXP_INF, wb, torch.zeros_like(wb))
    if nb * B != n:
        wb = torch.cat([wb, torch.zeros(nb * B - n, dtype=wb.dtype, device=wb.device)])
    # finite non-negative floats order as their bits: an integer max
    return wb.view(nb, B).amax(dim=1).view(torch.float32)


def _divisors(fp: FormatParams, amax: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """block_divisors from the blocks' finite amax (float32 [blocks]) and each
    block's tensor scale S (float32 [blocks])."""
    if fp.scale_kind == _SCALE_E8M0:
        a = amax / S
        ef = (_bits(a) >> 23) & 0xFF
        k = torch.where(ef == 255, torch.full_like(ef, 127), _ilogb(a) - fp.emax)
        k = torch.where(a > 0, k, torch.full_like(k, -127)).clamp(-127, 127)
        x = torch.where(k >= -126, ((k + 127).clamp(min=1) << 23).view(torch.float32),
                        torch.full_like(a, 2.0 ** -127))
        return x * S
    e4 = format_params("E4M3")
    # _f32(6.0 * s): the product is exact in float64, then rounded once
    t = amax / (S.to(torch.float64) * 6.0).to(torch.float32)
    m = qmag(e4, t)  # t >= 0, never NaN
    sb = torch.where(m > e4.max_finite, torch.full_like(m, e4.max_finite), m)
    return sb * S


def _per_element(d: torch.Tensor, B: int, n: int) -> torch.Tensor:
    return d[:, None].expand(d.numel(), B).reshape(-1)[:n]


def block_quantize(fp: FormatParams, s: float, w: torch.Tensor) -> torch.Tensor:
    """Q(w) of flat float32 w under block scaling at tensor scale s: each
    element's grid value at its block's divisor d, saturating at
    +-max_finite, times d (float32); +-0 in a block whose d is 0; NaN stays
    NaN (inf saturates like any magnitude past the range)."""
    dd = _per_element(block_divisors(fp, s, w), fp.block, w.numel())
    zero = ~(dd > 0)
    d1 = torch.where(zero, torch.ones_like(dd), dd)
    xs = w / d1
    a = qmag(fp, xs)
    q = torch.copysign(torch.where(a > fp.max_finite, torch.full_like(a, fp.max_finite), a), xs)
    q = torch.where(zero, torch.copysign(torch.zeros_like(w), w), q * d1)
    return torch.where(w != w, w, q)


def block_patterns(fp: FormatParams, dd: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The element patterns (int32) of flat float32 w at per-element block
    divisors dd, saturating; +0 where dd is 0 (the block quantizes to
    zeros), as the daemon's block pass encodes them."""
    zero = ~(dd > 0)
    d1 = torch.where(zero, torch.ones_like(dd), dd)
    xs = torch.where(zero, torch.zeros_like(w), w / d1)
    return encode(fp, xs, qmag(fp, xs))


def _block_counts(fp: FormatParams, s: float, w: torch.Tensor, wu: torch.Tensor,
                  finite: torch.Tensor, counted: torch.Tensor, nonzero: torch.Tensor,
                  qerr: bool = False):
    """block.c block_elems over every block of w: (stalled, overflow,
    underflow, and with qerr the sum of (Q(w) - w)^2 over the finite w, or
    None) as device scalars. The error as the daemon's block pass sums it:
    per block (q - w / d)^2 in float64 times d^2, or w^2 in a block whose d is
    0 (every element quantizes to 0)."""
    d = block_divisors(fp, s, w)
    dd = _per_element(d, fp.block, w.numel())
    zero = ~(dd > 0)
    d1 = torch.where(zero, torch.ones_like(dd), dd)
    z = torch.zeros_like(w)
    xs = torch.where(zero, z, w / d1)
    xu = torch.where(zero, z, wu / d1)
    a = qmag(fp, xs)
    b = qmag(fp, xu)
    mf = torch.full_like(a, fp.max_finite)
    sa = torch.copysign(torch.where(a > fp.max_finite, mf, a), xs)
    sb = torch.copysign(torch.where(b > fp.max_finite, mf, b), xu)
    err = None
    if qerr:
        wfin = (_bits(w) & 0x7FFFFFFF) < _EXP_INF
        dv = torch.where(zero, w.to(torch.float64), sa.to(torch.float64) - xs.to(torch.float64))
        dv = torch.where(wfin, dv, torch.zeros_like(dv))
        n, B = w.numel(), fp.block
        e2 = dv * dv
        nb = d.numel()
        if nb * B != n:
            e2 = torch.cat([e2, torch.zeros(nb * B - n, dtype=e2.dtype, device=e2.device)])
        eb = e2.view(nb, B).sum(dim=1)
        d64 = d.to(torch.float64)
        err = torch.where(d > 0, eb * (d64 * d64), eb).sum()
    return ((counted & (sa == sb)).sum(), (finite & (xs.abs() > fp.max_finite)).sum(),
            (nonzero & (a == 0)).sum(), err)


def widen(t: torch.Tensor, what: str) -> torch.Tensor:
    """float32 view or exact widening of a float32/bfloat16/float16 tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{what} must be float32, bfloat16 or float16, got {t.dtype}")
    t = t.detach().reshape(-1)
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _scale_tensor(s: float, like: torch.Tensor) -> torch.Tensor:
    # a device tensor of the data's shape: true elementwise division
    return torch.full((1,), s, dtype=torch.float32, device=like.device).expand_as(like)


def count_chunk(fps: Sequence[FormatParams], scales: Sequence[float], w: torch.Tensor,
                v: torch.Tensor, update_form: bool, neg_lr: float,
                prev: Optional[List[Optional[torch.Tensor]]] = None,
                prev_scales: Optional[Sequence[float]] = None,
                enc_out: Optional[List[torch.Tensor]] = None,
                qerr_out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Counts of one chunk (float32, flat, same device) as an int64 tensor
    [len(fps), 6] on the device: stalled, total, overflow, underflow,
    nonfinite, flips. With enc_out, the patterns of w at each format's scale
    are written there (uint8); with prev (uint8 patterns of the previous
    snapshot at prev_scales, None where there is none), flips are counted as
    stall.c does. With qerr_out (float64 [len(fps), 2] on the device), each
    format's sum of (Q(w) - w)^2 and the sum of w^2 over the finite elements
    of w are added to it (docs/numerics.md, Quantization error: Q saturating,
    the differences taken at the scale, times scale^2; a block-scaled format
    at each block's divisor, see _block_counts)."""
    wb = _bits(w) & 0x7FFFFFFF
    vb = _bits(v) & 0x7FFFFFFF
    finite = (wb < _EXP_INF) & (vb < _EXP_INF)
    if update_form:
        u = v
        moving = u != 0
    else:
        u = v * neg_lr
        moving = vb.view(torch.float32) > GRAD_EPSILON
    wu = w + u
    counted = finite & moving
    nonzero = finite & (w != 0)
    total = counted.sum()
    nonfinite = (~finite).sum()
    out = torch.zeros((len(fps), 6), dtype=torch.int64, device=w.device)
    if qerr_out is not None:
        wfin = wb < _EXP_INF
        wd = torch.where(wfin, w, torch.zeros_like(w)).to(torch.float64)
        qerr_out[:, 1] += (wd * wd).sum()
    for i, (fp, s) in enumerate(zip(fps, scales)):
        if fp.block:  # block scaling: no patterns kept here, so no flips (unknown)
            st_, ov, un, err = _block_counts(fp, s, w, wu, finite, counted, nonzero,
                                             qerr_out is not None)
            out[i, 0], out[i, 1], out[i, 2], out[i, 3], out[i, 4] = st_, total, ov, un, nonfinite
            if qerr_out is not None:
                qerr_out[i, 0] += err
            continue
        st = _scale_tensor(s, w)
        xs = w / st
        a = qmag(fp, xs)
        b = qmag(fp, wu / st)
        sa = torch.copysign(torch.where(a > fp.max_finite,
                                        torch.full_like(a, fp.overflow_value), a), xs)
        sb = torch.copysign(torch.where(b > fp.max_finite,
                                        torch.full_like(b, fp.overflow_value), b), wu)
        out[i, 0] = (counted & (sa == sb)).sum()
        out[i, 1] = total
        out[i, 2] = (finite & (xs.abs() > fp.max_finite)).sum()
        out[i, 3] = (nonzero & (a == 0)).sum()
        out[i, 4] = nonfinite
        if qerr_out is not None:
            q = torch.copysign(torch.where(a > fp.max_finite,
                                           torch.full_like(a, fp.max_finite), a), xs)
            d = torch.where(wfin, q.to(torch.float64) - xs.to(torch.float64),
                            torch.zeros_like(wd))
            qerr_out[i, 0] += (d * d).sum() * (s * s)
        if enc_out is not None or prev is not None:
            cur = encode(fp, xs, a)
            if prev is not None and prev[i] is not None:
                ps = prev_scales[i]
                cmp = cur
                if ps != s:
                    xp = w / _scale_tensor(ps, w)
                    cmp = encode(fp, xp, qmag(fp, xp))
                out[i, 5] = (canon(fp, prev[i]) != canon(fp, cmp)).sum()
            if enc_out is not None:  # may be prev[i]'s memory: written last
                enc_out[i].copy_(cur.to(enc_out[i].dtype))
    return out


def check_scale(s, what="scale") -> float:
    try:
        s = float(s)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number, got {type(s).__name__}") from None
    f = _f32(s) if math.isfinite(s) and abs(s) <= _F32_MAX else math.inf
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{what} must be finite and positive in float32, got {s!r}")
    return f


def stall_counts(w: torch.Tensor, x: torch.Tensor, formats, scales, form: str = "update",
                 lr=None, quant_error: bool = False) -> Dict[str, Dict[str, int]]:
    """See altgrad.torch.stall_counts."""
    if form not in ("update", "sgd"):
        raise ValueError(f"form must be 'update' or 'sgd', got {form!r}")
    if isinstance(formats, str) or hasattr(formats, "_c"):
        formats = [formats]
    formats = list(formats)
    if not formats:
        raise ValueError("formats must name at least one format")
    # names, or format objects (altgrad.get_format, FP8Format): keyed by their
    # name, counted as the C format they stand for
    cnames = [f._c().contents.name.decode() if hasattr(f, "_c") else f for f in formats]
    formats = [f.name if hasattr(f, "_c") else f for f in formats]
    fps = [format_params(c) for c in cnames]
    if isinstance(scales, dict):
        missing = [f for f in formats if f not in scales]
        if missing:
            raise ValueError(f"scales has no entry for {missing}")
        svals = [check_scale(scales[f], f"scale of {f}") for f in formats]
    elif isinstance(scales, (int, float)) or (isinstance(scales, torch.Tensor)
                                              and scales.numel() == 1):
        svals = [check_scale(float(scales))] * len(formats)
    else:
        svals = [check_scale(s) for s in scales]
        if len(svals) != len(formats):
            raise ValueError(f"{len(svals)} scales for {len(formats)} formats")
    if form == "sgd":
        if lr is None:
            raise ValueError("form='sgd' needs lr")
        lr = float(lr.item() if isinstance(lr, torch.Tensor) else lr)
        if not math.isfinite(lr) or abs(lr) > _F32_MAX:
            raise ValueError(f"lr must be finite in float32, got {lr!r}")
        neg_lr = -_f32(lr)
    elif lr is not None:
        raise ValueError("lr is only for form='sgd'")
    else:
        neg_lr = 0.0
    ww = widen(w, "w")
    xx = widen(x, "x")
    if tuple(w.shape) != tuple(x.shape):
        raise ValueError(f"w and x differ in shape: {tuple(w.shape)} vs {tuple(x.shape)}")
    if ww.device != xx.device:
        raise ValueError(f"w and x are on different devices: {ww.device} vs {xx.device}")
    n = ww.numel()
    res = {f: dict.fromkeys(COUNT_KEYS, 0) for f in formats}
    if n == 0:
        if quant_error:
            for f in formats:
                res[f].update(mse=math.nan, sqnr_db=math.nan)
        return res
    tot = None
    qe = None
    with torch.no_grad():
        kern = _triton_counter(ww) if n >= 4096 and all(fp.triton_ok for fp in fps) else None
        if kern is not None:
            with torch.cuda.device(ww.device):  # Triton launches on the current device
                tot, qe = kern.count(fps, svals, ww, xx, form == "update", neg_lr,
                                     qerr=quant_error)
        else:
            if quant_error:
                qe = torch.zeros((len(fps), 2), dtype=torch.float64, device=ww.device)
            for start in range(0, n, _CHUNK):
                c = count_chunk(fps, svals, ww[start:start + _CHUNK], xx[start:start + _CHUNK],
                                form == "update", neg_lr, qerr_out=qe)
                tot = c if tot is None else tot + c
        vals = tot.cpu().tolist()
        qvals = qe.cpu().tolist() if qe is not None else None
        nfin = int(torch.isfinite(ww).sum()) if quant_error else 0
    for i, (f, row) in enumerate(zip(formats, vals)):
        # a format named twice counts the same
        res[f] = dict(zip(COUNT_KEYS, (int(v) for v in row[:5])))
        if qvals is not None:
            err, sig = qvals[i]
            res[f]["mse"] = err / nfin if nfin else math.nan
            res[f]["sqnr_db"] = _sqnr_db(sig, err) if nfin else math.nan
    return res


def _sqnr_db(sig: float, err: float) -> float:
    """ag_quant_sqnr_db: 10 log10(sig / err), NaN unless both are > 0
    (an error past float64, from weights past the format at a tiny scale:
    -inf, as C's log10(0))."""
    if not (err > 0 and sig > 0):
        return math.nan
    r = sig / err
    if r != r:
        return math.nan
    return -math.inf if r == 0 else math.inf if r == math.inf else 10 * math.log10(r)


class ScaleRule:
    """The daemon's scale rule (docs/numerics.md "Quantize, scale, history";
    daemon/engine.c ag_eng_observe and scale_from): an amax history of
    history_len snapshots per tensor, its max or most recent value, the
    current snapshot's amax in it (scale_mode "current") or not yet
    ("delayed"), scale = max(amax / max_finite, scale_min) * 2^margin."""

    def __init__(self, history_len: int = 16, amax_mode: str = "max",
                 scale_mode: str = "current", margin: int = 0, scale_min: float = 1e-10):
        if isinstance(history_len, bool) or not isinstance(history_len, int) or not (
                1 <= history_len <= 1 << 20):
            raise ValueError(f"history_len must be an int in 1..2^20, got {history_len!r}")
        if amax_mode not in ("max", "most_recent"):
            raise ValueError(f"amax_mode must be 'max' or 'most_recent', got {amax_mode!r}")
        if scale_mode not in ("current", "delayed"):
            raise ValueError(f"scale_mode must be 'current' or 'delayed', got {scale_mode!r}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (
                -64 <= margin <= 64):
            raise ValueError(f"margin must be a number in -64..64, got {margin!r}")
        if not (isinstance(scale_min, (int, float)) and math.isfinite(scale_min)
                and scale_min > 0):
            raise ValueError(f"scale_min must be finite and positive, got {scale_min!r}")
        self.history_len = history_len
        self.amax_mode = amax_mode
        self.scale_mode = scale_mode
        self.margin = margin
        self.scale_min = float(scale_min)
        # the daemon's exp2(margin) (C's exp2: math.exp2 where Python has it)
        exp2 = getattr(math, "exp2", None)
        self.multiplier = exp2(margin) if exp2 is not None else 2.0 ** margin

    @classmethod
    def from_status(cls, st: dict) -> "ScaleRule":
        """The rule a daemon reports in its status (keys it lacks: defaults)."""
        kw = {}
        for k in ("history_len", "amax_mode", "scale_mode", "margin", "scale_min"):
            if st.get(k) is not None:
                kw[k] = st[k]
        return cls(**kw)

    def as_dict(self) -> dict:
        return {"history_len": self.history_len, "amax_mode": self.amax_mode,
                "scale_mode": self.scale_mode, "margin": self.margin,
                "scale_min": self.scale_min}


def _copy_into(dst: List[torch.Tensor], src: List[torch.Tensor]) -> None:
    if not dst:
        return
    fe = getattr(torch, "_foreach_copy_", None)
    if fe is not None:
        try:
            fe(dst, src)
            return
        except (RuntimeError, TypeError):
            pass
    for d, x in zip(dst, src):
        d.copy_(x)


class Watch:
    """Counts of a fixed list of same-device, same-dtype tensors, step after
    step, as the daemon would compute them from snapshots: it keeps each
    tensor's amax history, scales and (with flips) the previous patterns.

    load_w(ws) / load_v(vs) copy the snapshot into flat buffers (update form:
    load_v(after, minus_w=True) makes v = after - w in the tensors' dtype,
    exactly the update the snapshot path sends). compute(which, neg_lr)
    returns device tensors without waiting for the device."""

    def __init__(self, numels: Sequence[int], dtype: torch.dtype, device, formats: Sequence[str],
                 rule: ScaleRule, fixed_scale: Optional[float] = None, flips: bool = False,
                 use_triton: Optional[bool] = None, qerr: bool = False):
        self.device = torch.device(device)
        self.qerr = bool(qerr)
        self.dtype = dtype
        self.numels = [int(n) for n in numels]
        self.formats = list(formats)
        self.fps = [format_params(f) for f in self.formats]
        self.rule = rule
        self.fixed_scale = None if fixed_scale is None else check_scale(fixed_scale)
        self.flips = bool(flips)
        T, F, dev = len(self.numels), len(self.fps), self.device
        self._tri = None
        if (use_triton is not False and dev.type == "cuda"
                and all(fp.triton_ok for fp in self.fps)):
            try:
                from . import _triton
                self._tri = _triton
            except Exception:
                if use_triton:
                    raise
        if self._tri is not None:
            self.layout = self._tri.Layout(self.numels, dev)
            starts, npad = self.layout.starts, self.layout.npad
        else:
            self.layout = None
            # every tensor starts at a multiple of _BLOCK_ALIGN elements and the
            # gaps stay 0, so the block formats' blocks never straddle tensors
            # and the whole buffer can be taken in blocks (_block_flips)
            starts, pos = [], 0
            for n in self.numels:
                starts.append(pos)
                pos += -(-n // _BLOCK_ALIGN) * _BLOCK_ALIGN
            npad = max(pos, _BLOCK_ALIGN)
        self.starts = starts
        self.W = torch.zeros(npad, dtype=dtype, device=dev)
        self.V = torch.zeros(npad, dtype=dtype, device=dev)
        self.w_views = [self.W[a:a + n] for a, n in zip(starts, self.numels)]
        self.v_views = [self.V[a:a + n] for a, n in zip(starts, self.numels)]
        self.t_n = torch.tensor(self.numels or [0], dtype=torch.int64, device=dev)[:T]
        self.mf = torch.tensor([fp.scale_divisor for fp in self.fps], dtype=torch.float64,
                               device=dev)
        self.unscaled_mask = torch.tensor([fp.unscaled for fp in self.fps], dtype=torch.bool,
                                          device=dev)
        self.hist = torch.full((T, rule.history_len), math.nan, dtype=torch.float64, device=dev)
        self.scale_prev = torch.ones((T, F), dtype=torch.float64, device=dev)
        self.has_scale = torch.zeros(T, dtype=torch.bool, device=dev)
        # patterns of the previous snapshot: uint8, or int32 when a format is
        # wider than 8 bits (its patterns are up to 0xffff)
        pat_dtype = torch.uint8 if all(fp.pattern_bytes == 1 for fp in self.fps) else torch.int32
        self.pat = torch.zeros((F, npad), dtype=pat_dtype, device=dev) if self.flips else None
        self.prev_scales = torch.ones((T, F), dtype=torch.float32, device=dev)
        self._has_prev = [False] * T
        self._bdiv = {}  # block format: the previous snapshot's divisors of every block
        self._blk_index = {}  # block size: the tensor of every block of the buffer, -1 in gaps
        self._masks = {}
        self._dev_cache = {}

    # -- loading ------------------------------------------------------------
    def load_w(self, ws: List[torch.Tensor]) -> None:
        _copy_into(self.w_views, [w.detach().reshape(-1) for w in ws])

    def load_v(self, vs: List[torch.Tensor], minus_w: bool = False) -> None:
        _copy_into(self.v_views, [v.detach().reshape(-1) for v in vs])
        if minus_w:
            self.V.sub_(self.W)

    def _on_device(self, key: str, values: tuple, dtype) -> torch.Tensor:
        """A small device tensor of values, made again only when they change
        (a host-to-device copy waits for the stream: not at every step)."""
        got = self._dev_cache.get(key)
        if got is None or got[0] != values:
            got = self._dev_cache[key] = (values, torch.tensor(values, dtype=dtype,
                                                               device=self.device))
        return got[1]

    # -- the scale rule ---------------------------------------------------------
    def _hist_get(self) -> torch.Tensor:
        h = self.hist
        if self.rule.amax_mode == "most_recent":
            last = h[:, -1]
            return torch.where(torch.isnan(last), torch.ones_like(last), last)
        m = torch.where(torch.isnan(h), torch.full_like(h, -math.inf), h).amax(dim=1)
        return torch.where(m == -math.inf, torch.ones_like(m), m)

    def _mask(self, which) -> torch.Tensor:
        key = tuple(which)
        m = self._masks.get(key)
        if m is None:
            host = torch.zeros(len(self.numels), dtype=torch.bool)
            host[list(key)] = True
            m = self._masks[key] = host.to(self.device)
        return m

    def _scales(self, amax: torch.Tensor, finite: torch.Tensor, inc: torch.Tensor):
        a = amax.to(torch.float64)
        pushable = inc & finite
        before = self._hist_get()
        if self.hist.shape[1] > 1:
            rolled = torch.cat([self.hist[:, 1:], a[:, None]], dim=1)
        else:
            rolled = a[:, None]
        self.hist = torch.where(pushable[:, None], rolled, self.hist)
        ha = before if self.rule.scale_mode == "delayed" else self._hist_get()
        T, F = self.scale_prev.shape
        if self.fixed_scale is not None:
            s32 = torch.full((T, F), self.fixed_scale, dtype=torch.float32, device=self.device)
        else:
            ok = (ha > 0) & torch.isfinite(ha)
            s = torch.where(ok, ha, torch.zeros_like(ha))[:, None] / self.mf[None, :]
            s = torch.clamp(s, min=self.rule.scale_min) * self.rule.multiplier
            bad = ~(s > 0) | ~torch.isfinite(s) | (s > 3e38)
            had = self.has_scale[:, None]
            s = torch.where(bad, torch.where(had, self.scale_prev, torch.ones_like(s)), s)
            s = torch.where(~ok[:, None] & had, self.scale_prev, s)
            s32 = s.to(torch.float32)
        if any(fp.unscaled for fp in self.fps):  # weight storage: scale 1, as the daemon's
            s32 = torch.where(self.unscaled_mask[None, :], torch.ones_like(s32), s32)
        self.scale_prev = torch.where(inc[:, None], s32.to(torch.float64), self.scale_prev)
        self.has_scale = self.has_scale | inc
        return s32

    # -- one step -----------------------------------------------------------------
    def compute(self, which: Sequence[int], update_form: bool = True,
                neg_lr: Optional[Sequence[float]] = None) -> Dict[str, torch.Tensor]:
        """Counts of the tensors listed in `which` (indices) for the loaded
        snapshot: {"counts": int64 [T, F, 6] (stalled, total, overflow,
        underflow, nonfinite, flips), "amax": float32 [T], "nonfinite": int64 [T],
        "scales": float32 [T, F]}, and with qerr "qerr": float64 [T, F, 2]
        (the sum of squared quantization error and of w^2, see count_chunk),
        on the device; rows not in `which` are meaningless. The same as stats() then count() with nothing changed
        between them."""
        return self.count(which, self.stats(which), update_form, neg_lr)

    def stats(self, which: Sequence[int]) -> Dict[str, torch.Tensor]:
        """The loaded weights' statistics for the tensors in `which` (others
        0): {"amax": float32 [T] (max |w| over finite elements), "nonfinite":
        int64 [T], "finite": bool [T] (the tensor has a finite element: its
        amax enters the history)}, on the device, without waiting for it.
        A caller holding a shard of each tensor replaces "amax" and "finite"
        with the whole tensor's (a MAX all-reduce of both) before count()."""
        which = sorted(set(int(t) for t in which))
        T, dev = len(self.numels), self.device
        if self._tri is not None:
            with torch.cuda.device(dev):  # Triton launches on the current device
                amax, nonfinite = self._tri.counter().amax(self.layout, which, self.W)
        else:
            amax = torch.zeros(T, dtype=torch.float32, device=dev)
            nonfinite = torch.zeros(T, dtype=torch.int64, device=dev)
            for t in which:
                w = widen(self.w_views[t], "w")
                fin = torch.isfinite(w)
                if w.numel():
                    amax[t] = torch.where(fin, w.abs(), torch.zeros_like(w)).amax()
                nonfinite[t] = (~fin).sum()
        return {"amax": amax, "nonfinite": nonfinite, "finite": nonfinite < self.t_n}

    def count(self, which: Sequence[int], st: Dict[str, torch.Tensor], update_form: bool = True,
              neg_lr: Optional[Sequence[float]] = None) -> Dict[str, torch.Tensor]:
        """compute()'s result from stats() `st` (amax, nonfinite, finite): the
        scales from the amax history (pushed with st["amax"] where
        st["finite"]), then the counts at those scales."""
        which = sorted(set(int(t) for t in which))
        T = len(self.numels)
        inc = self._mask(which)
        nl_host = [0.0] * T if neg_lr is None else [-_f32(float(x)) for x in neg_lr]
        amax, nonfinite = st["amax"], st["nonfinite"]
        scales = self._scales(amax, st["finite"], inc)
        if self._tri is not None:
            with torch.cuda.device(self.device):
                counts, qerr = self._counts_triton(which, scales, nl_host, update_form)
        else:
            counts, qerr = self._counts_eager(which, scales, nl_host, update_form)
        if self.flips and any(fp.block for fp in self.fps):
            self._block_flips(which, scales, counts)
        if self.flips:
            self.prev_scales = torch.where(inc[:, None], scales, self.prev_scales)
            for t in which:
                self._has_prev[t] = True
        out = {"counts": counts, "amax": amax, "nonfinite": nonfinite, "scales": scales}
        if qerr is not None:
            out["qerr"] = qerr
        return out

    def _counts_triton(self, which, scales, nl_host, update_form):
        c = self._tri.counter()
        nl = self._on_device("neg_lr", tuple(nl_host), torch.float32)
        if self.flips:
            hp = self._on_device("has_prev", tuple(int(b) for b in self._has_prev),
                                 torch.int32)
            return c.counts(self.fps, self.layout, which, self.W, self.V, scales,
                            update_form, nl, self.pat, self.prev_scales, hp, qerr=self.qerr)
        return c.counts(self.fps, self.layout, which, self.W, self.V, scales, update_form, nl,
                        qerr=self.qerr)

    def _block_index(self, B: int) -> torch.Tensor:
        """int64 [buffer blocks of B]: the tensor each block belongs to, -1 in
        the gaps between tensors (made once per block size)."""
        got = self._blk_index.get(B)
        if got is None:
            idx = torch.full((self.W.numel() // B,), -1, dtype=torch.int64)
            for t, (a, n) in enumerate(zip(self.starts, self.numels)):
                idx[a // B:(a + n + B - 1) // B] = t
            got = self._blk_index[B] = idx.to(self.device)
        return got

    def _block_flips(self, which, scales, counts) -> None:
        """Flips of the block-scaled formats into counts[t, f, 5]: elements
        whose pattern at the previous snapshot's block divisors changed
        (encode(w_prev / d_prev) kept from then, against encode(w / d_prev)),
        +0 = -0 and every NaN one; then this snapshot's patterns and divisors
        are kept. Eager torch over the whole buffer at once, in chunks of
        whole blocks, on the tensors' device (on CUDA too, after the Triton
        counts), with no wait for the device: every tensor starts on a block
        boundary and the gaps hold zeros, whose pattern never changes, so a
        buffer block is a block of one tensor (a shorter tail block padded
        with zeros has the same amax) and the scales are gathered per block."""
        T, dev = len(self.numels), self.device
        inc = self._mask(which)
        hp = self._on_device("has_prev_b", tuple(bool(b) for b in self._has_prev), torch.bool)
        npad = self.W.numel()
        for f, fp in enumerate(self.fps):
            if not fp.block:
                continue
            B = fp.block
            bt = self._block_index(B)
            valid = bt >= 0
            btc = bt.clamp(min=0)
            upd = inc.index_select(0, btc) & valid  # blocks of the tensors counted now
            S = scales[:, f].index_select(0, btc)
            prev = self._bdiv.get(f)
            flips = torch.zeros(T, dtype=torch.int64, device=dev)
            divs = []
            for a in range(0, npad, _BLOCK_CHUNK):  # a multiple of every block size
                b = min(npad, a + _BLOCK_CHUNK)
                ka, kb = a // B, b // B
                w = widen(self.W[a:b], "w")
                d = _divisors(fp, _block_amax(w, B), S[ka:kb])
                pat = self.pat[f, a:b]
                if prev is not None:
                    cmp = block_patterns(fp, _per_element(prev[ka:kb], B, b - a), w)
                    diff = (canon(fp, pat) != canon(fp, cmp)).view(-1, B).sum(dim=1)
                    flips.index_add_(0, btc[ka:kb],
                                     torch.where(valid[ka:kb], diff, torch.zeros_like(diff)))
                cur = block_patterns(fp, _per_element(d, B, b - a), w)
                keep = _per_element(upd[ka:kb], B, b - a)
                pat.copy_(torch.where(keep, cur.to(pat.dtype), pat))
                divs.append(d)
            d = torch.cat(divs)
            self._bdiv[f] = d if prev is None else torch.where(upd, d, prev)
            got = torch.where(hp, flips, torch.zeros_like(flips))
            counts[:, f, 5] = torch.where(inc, got, counts[:, f, 5])

    def _counts_eager(self, which, scales, nl_host, update_form):
        T, F, dev = len(self.numels), len(self.fps), self.device
        sc_host = scales.cpu().tolist()  # eager path: the CPU, where this is free
        ps_host = self.prev_scales.cpu().tolist() if self.flips else None
        counts = torch.zeros((T, F, 6), dtype=torch.int64, device=dev)
        qerr = torch.zeros((T, F, 2), dtype=torch.float64, device=dev) if self.qerr else None
        for t in which:
            w, v, n = self.w_views[t], self.v_views[t], self.numels[t]
            for start in range(0, n, _CHUNK):
                sl = slice(start, min(n, start + _CHUNK))
                pats = None
                if self.flips:
                    a0 = self.starts[t]
                    pats = [self.pat[f, a0 + sl.start:a0 + sl.stop] for f in range(F)]
                counts[t] += count_chunk(
                    self.fps, sc_host[t], widen(w[sl], "w"), widen(v[sl], "v"),
                    update_form, nl_host[t],
                    prev=pats if (self.flips and self._has_prev[t]) else None,
                    prev_scales=ps_host[t] if self.flips else None,
                    enc_out=pats, qerr_out=None if qerr is None else qerr[t])
        return counts, qerr


def _triton_counter(t: torch.Tensor):
    if t.device.type != "cuda":
        return None
    try:
        from . import _triton
    except Exception:  # no Triton, or one that cannot build here: eager torch
        return None
    return _triton.counter()


__all__ = ["stall_counts", "FormatParams", "format_params", "count_chunk", "COUNT_KEYS",
           "block_divisors", "block_quantize",
           "ScaleRule", "Watch"]
