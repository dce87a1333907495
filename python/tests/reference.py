"""A small pure-Python/torch reference of docs/numerics.md, written from the
formulas and independent of libaltgrad, for checking the C kernels."""

from __future__ import annotations

import math

import torch


def decode_ref(E: int, M: int, bias: int, has_inf: bool, has_nan: bool, bits: int) -> float:
    sign = -1.0 if bits & 0x80 else 1.0
    e = (bits >> M) & ((1 << E) - 1)
    m = bits & ((1 << M) - 1)
    if E == 0:
        return sign * m / 2 ** M
    top = (1 << E) - 1
    if has_inf and e == top:
        return sign * math.inf if m == 0 else math.nan
    if has_nan and not has_inf and e == top and m == (1 << M) - 1:
        return math.nan
    if e == 0:
        return sign * 2.0 ** (1 - bias) * m / 2 ** M
    return sign * 2.0 ** (e - bias) * (1 + m / 2 ** M)


def grid(fmt):
    """(patterns, magnitudes) of the non-negative finite values, ascending; for
    a format with inf, one extra entry max + ulp standing for inf (so that
    round-to-nearest sends magnitudes at or past max + ulp/2 to inf)."""
    pats, vals = [], []
    for b in range(128):
        v = decode_ref(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.has_inf,
                       fmt.has_nan, b)
        if math.isfinite(v):
            pats.append(b)
            vals.append(v)
    assert vals == sorted(vals)
    if fmt.has_inf:
        top = vals[-1]
        ulp = top - vals[-2]
        pats.append(pats[-1] + 1)
        vals.append(top + ulp)
    return pats, vals


def quantize_ref(x: torch.Tensor, fmt, scale: float) -> torch.Tensor:
    """decode(encode(x / scale)) * scale by nearest search over the grid,
    ties to the even pattern (to the smaller magnitude when M = 0)."""
    pats, vals = grid(fmt)
    pats_t = torch.tensor(pats, dtype=torch.int64)
    vals_t = torch.tensor(vals, dtype=torch.float64)
    s32 = torch.tensor(scale, dtype=torch.float32)
    y = (x.to(torch.float32) / s32)
    a = y.abs().to(torch.float64)
    n = len(vals)
    idx = torch.searchsorted(vals_t, a.clamp(max=vals[-1]))  # first >= a
    hi = idx.clamp(max=n - 1)
    lo = (idx - 1).clamp(min=0)
    dlo = a - vals_t[lo]
    dhi = vals_t[hi] - a
    if fmt.mantissa_bits == 0:
        tie_hi = torch.zeros_like(a, dtype=torch.bool)
    else:
        tie_hi = (pats_t[hi] % 2) == 0
    pick_hi = (dhi < dlo) | ((dhi == dlo) & tie_hi)
    chosen = torch.where(pick_hi, hi, lo)
    mag = vals_t[chosen]
    if fmt.has_inf:
        mag = torch.where(chosen == n - 1, torch.full_like(mag, math.inf), mag)
        mag = torch.where(torch.isinf(a), torch.full_like(mag, math.inf), mag)
    else:
        mag = torch.where(a >= vals[-1], torch.full_like(mag, vals[-1]), mag)
    q = mag.to(torch.float32)
    q = torch.where(y < 0, -q, q)
    q = torch.where((y == 0) | (q == 0), torch.copysign(torch.zeros_like(q), y), q)
    if fmt.has_nan:
        q = torch.where(torch.isnan(y), torch.full_like(q, math.nan), q)
    else:
        q = torch.where(torch.isnan(y), torch.zeros_like(q), q)
    return q * s32


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of float32 tensors, all NaNs counted equal."""
    a = a.to(torch.float32).contiguous()
    b = b.to(torch.float32).contiguous()
    if a.shape != b.shape:
        return False
    na, nb = torch.isnan(a), torch.isnan(b)
    if not torch.equal(na, nb):
        return False
    return torch.equal(a.view(torch.int32)[~na], b.view(torch.int32)[~nb])


def random_values(n: int, seed: int) -> torch.Tensor:
    """float32 values spread over many binades, with signs, zeros and specials."""
    g = torch.Generator().manual_seed(seed)
    mant = torch.randn(n, generator=g)
    expo = torch.randint(-70, 70, (n,), generator=g).to(torch.float32)
    x = mant * torch.pow(2.0, expo)
    x[:: 97] = 0.0
    x[1:: 101] = -0.0
    specials = torch.tensor([math.inf, -math.inf, math.nan, 1e-45, -1e-45, 3.4e38, -3.4e38])
    return torch.cat([x, specials])
