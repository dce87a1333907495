"""The fused CUDA kernels of altgrad.torch (imported only where Triton is).

Two kernels over "segmented" flat buffers: many tensors laid end to end, each
starting at a multiple of BLOCK, so one program (BLOCK elements) belongs to
one tensor (blk_t[pid]) and reads from its offset inside it (blk_off[pid]).
- _amax_kernel: per program, the largest finite |w| and the count of
  non-finite w (reduced per tensor on the host side of torch: scatter/index_add).
- _count_kernel: per program and format, stalled, total, overflow,
  underflow, nonfinite and flips, in one pass over w and v for every format;
  with FLIPS it also reads the previous patterns and writes the new ones.

Every float operation whose rounding the C core defines is written in PTX
with its rounding mode (div.rn, mul.rn, add.rn, sub.rn): ptxas never fuses
those into an FMA nor replaces a division with a reciprocal, so the counts
are core/stall.c's bit for bit. Integer steps follow kernel.h ag_qmag_hd and
stall.c enc_pattern.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import GRAD_EPSILON, format_params

BLOCK = 1024


@triton.jit
def _div(a, b):
    return tl.inline_asm_elementwise("div.rn.f32 $0, $1, $2;", "=f,f,f", [a, b],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _mul(a, b):
    return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _add(a, b):
    return tl.inline_asm_elementwise("add.rn.f32 $0, $1, $2;", "=f,f,f", [a, b],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _sub(a, b):
    return tl.inline_asm_elementwise("sub.rn.f32 $0, $1, $2;", "=f,f,f", [a, b],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _qmag(x, shift, half_m1, keep_mask, emin_bits, half_down, sub_magic):
    ab = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    ab = tl.minimum(ab, 0x7F800000)
    odd = ((ab >> shift) & 1) * (1 - half_down)
    normal = ((ab + half_m1 + odd) & keep_mask).to(tl.float32, bitcast=True)
    a = ab.to(tl.float32, bitcast=True)
    sub = _sub(_add(a, sub_magic), sub_magic)
    return tl.where(ab < emin_bits, sub, normal)


@triton.jit
def _encode(x, m, M, shift, emin_bits, bias_adj, mant_mask, over_pattern, nan_pattern,
            max_finite, sub_scale):
    mb = m.to(tl.int32, bitcast=True)
    sign = (x.to(tl.int32, bitcast=True) >> 24) & 0x80
    normal = (((mb >> 23) + bias_adj) << M) | ((mb >> shift) & mant_mask)
    small = mb < emin_bits
    over = m > max_finite
    sub = _mul(tl.where(small & (m == m), m, 0.0), sub_scale).to(tl.int32)
    mag = tl.where(small, sub, normal)
    mag = tl.where(over, over_pattern, mag)
    out = (mag | sign) & 0xFF
    return tl.where(x != x, nan_pattern, out)


@triton.jit
def _canon(b, nan_above):
    mag = b & 0x7F
    v = tl.where(mag == 0, 0, b)
    return tl.where(mag > nan_above, 0xFF, v)


@triton.jit
def _amax_kernel(W, BLK_T, BLK_OFF, T_START, T_N, AMAX_P, NF_P, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(BLK_T + pid)
    off = tl.load(BLK_OFF + pid)
    start = tl.load(T_START + t)
    n = tl.load(T_N + t)
    offs = off + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.load(W + start + offs, mask=mask, other=0.0).to(tl.float32)
    wb = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    fin = wb < 0x7F800000
    mag = tl.where(fin & mask, wb, 0)  # finite magnitudes order as their bits
    tl.store(AMAX_P + pid, tl.max(mag, axis=0).to(tl.float32, bitcast=True))
    tl.store(NF_P + pid, tl.sum((mask & (wb >= 0x7F800000)).to(tl.int32), axis=0))


@triton.jit
def _count_kernel(W, V, BLK_T, BLK_OFF, T_START, T_N, SCALES, NEG_LR, FI, FF, OUT,
                  PAT, NPAD, PREV_SCALES, HAS_PREV, EPS, QOUT, F: tl.constexpr,
                  BLOCK: tl.constexpr, UPDATE: tl.constexpr, FLIPS: tl.constexpr,
                  QERR: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(BLK_T + pid)
    off = tl.load(BLK_OFF + pid)
    start = tl.load(T_START + t)
    n = tl.load(T_N + t)
    offs = off + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.load(W + start + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(V + start + offs, mask=mask, other=0.0).to(tl.float32)
    wb = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    vb = v.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    finite = (wb < 0x7F800000) & (vb < 0x7F800000)
    if UPDATE:
        u = v
        moving = u != 0.0
    else:
        u = _mul(v, tl.load(NEG_LR + t))
        moving = vb.to(tl.float32, bitcast=True) > EPS
    wu = _add(w, u)
    fin = finite & mask
    counted = fin & moving
    total = tl.sum(counted.to(tl.int32), axis=0)
    nonfinite = tl.sum((mask & (finite == 0)).to(tl.int32), axis=0)
    if QERR:  # the quantization error is over the finite elements of w
        wfin = (wb < 0x7F800000) & mask
        wd = tl.where(wfin, w, 0.0).to(tl.float64)
        tl.store(QOUT + pid * (F + 1) + F, tl.sum(wd * wd, axis=0))
    for f in tl.static_range(F):
        if tl.load(FI + f * 12 + 11) == 0:  # block-scaled formats: _block_kernel
            M = tl.load(FI + f * 12 + 0)
            shift = tl.load(FI + f * 12 + 1)
            half_m1 = tl.load(FI + f * 12 + 2)
            keep_mask = tl.load(FI + f * 12 + 3)
            emin_bits = tl.load(FI + f * 12 + 4)
            half_down = tl.load(FI + f * 12 + 5)
            sub_magic = tl.load(FF + f * 4 + 0)
            max_finite = tl.load(FF + f * 4 + 1)
            overflow_value = tl.load(FF + f * 4 + 2)
            s = tl.load(SCALES + t * F + f)
            xs = _div(w, s)
            a = _qmag(xs, shift, half_m1, keep_mask, emin_bits, half_down, sub_magic)
            b = _qmag(_div(wu, s), shift, half_m1, keep_mask, emin_bits, half_down, sub_magic)
            sa = tl.where(a > max_finite, overflow_value, a)
            sa = tl.where(xs.to(tl.int32, bitcast=True) < 0, -sa, sa)
            sb = tl.where(b > max_finite, overflow_value, b)
            sb = tl.where(wu.to(tl.int32, bitcast=True) < 0, -sb, sb)
            base = OUT + (pid * F + f) * 6
            tl.store(base + 0, tl.sum((counted & (sa == sb)).to(tl.int32), axis=0))
            tl.store(base + 1, total)
            xa = (xs.to(tl.int32, bitcast=True) & 0x7FFFFFFF).to(tl.float32, bitcast=True)
            tl.store(base + 2, tl.sum((fin & (xa > max_finite)).to(tl.int32), axis=0))
            tl.store(base + 3, tl.sum((fin & (w != 0.0) & (a == 0.0)).to(tl.int32), axis=0))
            tl.store(base + 4, nonfinite)
            if QERR:  # Q saturating, the difference at the scale, times scale^2
                q = tl.where(a > max_finite, max_finite, a)
                q = tl.where(xs.to(tl.int32, bitcast=True) < 0, -q, q)
                dq = tl.where(wfin, q.to(tl.float64) - xs.to(tl.float64), 0.0)
                s64 = s.to(tl.float64)
                tl.store(QOUT + pid * (F + 1) + f, tl.sum(dq * dq, axis=0) * (s64 * s64))
            if FLIPS:
                bias_adj = tl.load(FI + f * 12 + 6)
                mant_mask = tl.load(FI + f * 12 + 7)
                over_pattern = tl.load(FI + f * 12 + 8)
                nan_pattern = tl.load(FI + f * 12 + 9)
                nan_above = tl.load(FI + f * 12 + 10)
                sub_scale = tl.load(FF + f * 4 + 3)
                cur = _encode(xs, a, M, shift, emin_bits, bias_adj, mant_mask, over_pattern,
                              nan_pattern, max_finite, sub_scale)
                pat = PAT + f * NPAD + start + offs
                prev = tl.load(pat, mask=mask, other=0).to(tl.int32)
                ps = tl.load(PREV_SCALES + t * F + f)
                if ps == s:  # the usual case: the patterns at this scale are the ones to compare
                    cmp = cur
                else:  # the scale moved: the weights at the previous scale
                    xp = _div(w, ps)
                    ap = _qmag(xp, shift, half_m1, keep_mask, emin_bits, half_down, sub_magic)
                    cmp = _encode(xp, ap, M, shift, emin_bits, bias_adj, mant_mask, over_pattern,
                                  nan_pattern, max_finite, sub_scale)
                changed = mask & (_canon(prev, nan_above) != _canon(cmp, nan_above))
                has_prev = tl.load(HAS_PREV + t)
                tl.store(base + 5, tl.sum(changed.to(tl.int32), axis=0) * has_prev)
                tl.store(pat, cur.to(tl.uint8), mask=mask)
            else:
                tl.store(base + 5, 0)


@triton.jit
def _block_divisor(amax, s, kind, emax, e4_shift, e4_half_m1, e4_keep, e4_emin_bits, e4_magic,
                   e4_max):
    """block.c block_divisor of block amaxes (float32, >= 0) at tensor scale
    s: MX (kind 1) 2^clamp(floor(log2(amax / s)) - emax, -127, 127) * s,
    NVFP4 (kind 2) E4M3(amax / (6 s)) * s; 0: the block quantizes to zeros."""
    a = _div(amax, s)
    ab = a.to(tl.int32, bitcast=True)
    ef = (ab >> 23) & 0xFF
    mant = (ab & 0x7FFFFF).to(tl.float32)  # exact below 2^24: its top bit for subnormals
    sub = ((mant.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 276
    lb = tl.where(ef != 0, ef - 127, sub)
    k = tl.where(ef == 255, 127, lb - emax)
    k = tl.where(a > 0.0, k, -127)
    k = tl.minimum(tl.maximum(k, -127), 127)
    two_k = (tl.maximum(k + 127, 1) << 23).to(tl.float32, bitcast=True)
    tiny = (k * 0 + 0x00400000).to(tl.float32, bitcast=True)  # 2^-127, subnormal
    x = tl.where(k >= -126, two_k, tiny)
    t = _div(amax, _mul(amax * 0.0 + 6.0, s))  # 6 S in float32 (amax is finite)
    m = _qmag(t, e4_shift, e4_half_m1, e4_keep, e4_emin_bits, 0, e4_magic)
    sb = tl.where(m > e4_max, e4_max, m)
    return _mul(tl.where(kind == 1, x, sb), s)


@triton.jit
def _block_kernel(W, V, BLK_T, BLK_OFF, T_START, T_N, SCALES, NEG_LR, FI, FF, E4I, E4F, OUT,
                  EPS, QOUT, F: tl.constexpr, B: tl.constexpr, BLOCK: tl.constexpr,
                  UPDATE: tl.constexpr, QERR: tl.constexpr, STORE_SIG: tl.constexpr):
    """Counts of the block-scaled formats of block size B (FI row [12]: B),
    block.c's block_elems over the B-element blocks of each program's
    BLOCK elements (tensors start at multiples of BLOCK, so blocks start at
    the tensor's element 0 and a tail block is cut by the tensor's end)."""
    pid = tl.program_id(0)
    t = tl.load(BLK_T + pid)
    off = tl.load(BLK_OFF + pid)
    start = tl.load(T_START + t)
    n = tl.load(T_N + t)
    NB: tl.constexpr = BLOCK // B
    offs = off + tl.arange(0, NB)[:, None] * B + tl.arange(0, B)[None, :]
    mask = offs < n
    w = tl.load(W + start + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(V + start + offs, mask=mask, other=0.0).to(tl.float32)
    wb = w.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    vb = v.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    finite = (wb < 0x7F800000) & (vb < 0x7F800000)
    if UPDATE:
        u = v
        moving = u != 0.0
    else:
        u = _mul(v, tl.load(NEG_LR + t))
        moving = vb.to(tl.float32, bitcast=True) > EPS
    wu = _add(w, u)
    fin = finite & mask
    counted = fin & moving
    total = tl.sum(tl.sum(counted.to(tl.int32), axis=1), axis=0)
    nonfinite = tl.sum(tl.sum((mask & (finite == 0)).to(tl.int32), axis=1), axis=0)
    # the largest finite |w| of each block: finite magnitudes order as their bits
    amax = tl.max(tl.where((wb < 0x7F800000) & mask, wb, 0), axis=1).to(tl.float32,
                                                                       bitcast=True)
    if STORE_SIG:  # no per-tensor format: the sum of w^2 is stored here
        wd = tl.where((wb < 0x7F800000) & mask, w, 0.0).to(tl.float64)
        tl.store(QOUT + pid * (F + 1) + F, tl.sum(tl.sum(wd * wd, axis=1), axis=0))
    e4_shift = tl.load(E4I + 0)
    e4_half_m1 = tl.load(E4I + 1)
    e4_keep = tl.load(E4I + 2)
    e4_emin_bits = tl.load(E4I + 3)
    e4_magic = tl.load(E4F + 0)
    e4_max = tl.load(E4F + 1)
    for f in tl.static_range(F):
        if tl.load(FI + f * 12 + 11) == B:
            shift = tl.load(FI + f * 12 + 1)
            half_m1 = tl.load(FI + f * 12 + 2)
            keep_mask = tl.load(FI + f * 12 + 3)
            emin_bits = tl.load(FI + f * 12 + 4)
            half_down = tl.load(FI + f * 12 + 5)
            kind = tl.load(FI + f * 12 + 6)
            emax = tl.load(FI + f * 12 + 7)
            sub_magic = tl.load(FF + f * 4 + 0)
            max_finite = tl.load(FF + f * 4 + 1)
            s = tl.load(SCALES + t * F + f)
            d = _block_divisor(amax, s, kind, emax, e4_shift, e4_half_m1, e4_keep,
                               e4_emin_bits, e4_magic, e4_max)
            zero = (d > 0.0) == 0
            d1 = tl.broadcast_to(tl.where(zero, 1.0, d)[:, None], (NB, B))
            z2 = zero[:, None]
            xs = tl.where(z2, 0.0, _div(w, d1))
            xu = tl.where(z2, 0.0, _div(wu, d1))
            a = _qmag(xs, shift, half_m1, keep_mask, emin_bits, half_down, sub_magic)
            b = _qmag(xu, shift, half_m1, keep_mask, emin_bits, half_down, sub_magic)
            sa = tl.where(a > max_finite, max_finite, a)
            sa = tl.where(xs.to(tl.int32, bitcast=True) < 0, -sa, sa)
            sb = tl.where(b > max_finite, max_finite, b)
            sb = tl.where(xu.to(tl.int32, bitcast=True) < 0, -sb, sb)
            xa = (xs.to(tl.int32, bitcast=True) & 0x7FFFFFFF).to(tl.float32, bitcast=True)
            base = OUT + (pid * F + f) * 6
            tl.store(base + 0, tl.sum(tl.sum((counted & (sa == sb)).to(tl.int32), axis=1),
                                      axis=0))
            tl.store(base + 1, total)
            tl.store(base + 2, tl.sum(tl.sum((fin & (xa > max_finite)).to(tl.int32), axis=1),
                                      axis=0))
            tl.store(base + 3, tl.sum(tl.sum((fin & (w != 0.0) & (a == 0.0)).to(tl.int32),
                                             axis=1), axis=0))
            tl.store(base + 4, nonfinite)
            tl.store(base + 5, 0)  # no patterns kept under block scaling: flips unknown
            if QERR:  # per block (q - w / d)^2 times d^2, or w^2 where d is 0
                wfin = (wb < 0x7F800000) & mask
                dv = tl.where(z2, w.to(tl.float64), sa.to(tl.float64) - xs.to(tl.float64))
                dv = tl.where(wfin, dv, 0.0)
                eb = tl.sum(dv * dv, axis=1)
                d64 = d.to(tl.float64)
                eb = tl.where(zero, eb, eb * (d64 * d64))
                tl.store(QOUT + pid * (F + 1) + f, tl.sum(eb, axis=0))


def _consts(fps):
    """Per-format constants as the kernels read them: 12 int32 (FI) and 4
    float32 (FF) per format, in this order; a block-scaled format has its
    scale kind and emax at FI 6 and 7 and its block size at FI 11 (0: per
    tensor)."""
    fi = [[fp.M, fp.shift, fp.half_m1, fp.keep_mask, fp.emin_bits, int(fp.half_down),
           fp.scale_kind if fp.block else fp.bias_adj,
           fp.emax if fp.block else fp.mant_mask,
           fp.over_pattern, fp.nan_pattern, fp.nan_above, fp.block]
          for fp in fps]
    ff = [[fp.sub_magic, fp.max_finite, fp.overflow_value, fp.sub_scale] for fp in fps]
    return fi, ff


class Layout:
    """Tensors end to end in flat buffers, each at a multiple of BLOCK, and
    the programs that cover a chosen subset of them."""

    def __init__(self, numels, device):
        self.device = device
        self.numels = list(numels)
        starts, pos = [], 0
        for n in self.numels:
            starts.append(pos)
            pos += -(-n // BLOCK) * BLOCK
        self.starts = starts
        self.npad = max(pos, BLOCK)
        self.t_start = torch.tensor(starts or [0], dtype=torch.int64, device=device)
        self.t_n = torch.tensor(self.numels or [0], dtype=torch.int64, device=device)
        self._blocks = {}

    def blocks(self, which):
        """(blk_t, blk_off, count) covering the tensors listed in `which`."""
        key = tuple(which)
        got = self._blocks.get(key)
        if got is None:
            bt, bo = [], []
            for t in key:
                k = -(-self.numels[t] // BLOCK)
                bt.extend([t] * k)
                bo.extend(range(0, k * BLOCK, BLOCK))
            got = (torch.tensor(bt, dtype=torch.int32, device=self.device),
                   torch.tensor(bo, dtype=torch.int64, device=self.device), len(bt))
            self._blocks[key] = got
        return got


class Counter:
    def __init__(self):
        self._consts = {}

    def consts(self, fps, device):
        key = (tuple(fp.name for fp in fps), str(device))
        got = self._consts.get(key)
        if got is None:
            fi, ff = _consts(fps)
            got = (torch.tensor(fi, dtype=torch.int32, device=device),
                   torch.tensor(ff, dtype=torch.float32, device=device))
            self._consts[key] = got
        return got

    def e4m3(self, device):
        """E4M3's rounding constants (NVFP4's block scales) on device."""
        key = ("E4M3", str(device))
        got = self._consts.get(key)
        if got is None:
            e4 = format_params("E4M3")
            got = (torch.tensor([e4.shift, e4.half_m1, e4.keep_mask, e4.emin_bits],
                                dtype=torch.int32, device=device),
                   torch.tensor([e4.sub_magic, e4.max_finite], dtype=torch.float32,
                                device=device))
            self._consts[key] = got
        return got

    def amax(self, layout, which, w):
        """Per tensor of the layout: (finite amax float32, nonfinite int64), for
        the tensors in `which` (others 0)."""
        blk_t, blk_off, nb = layout.blocks(which)
        T = len(layout.numels)
        am = torch.zeros(T, dtype=torch.float32, device=w.device)
        nf = torch.zeros(T, dtype=torch.int64, device=w.device)
        if nb == 0:
            return am, nf
        amax_p = torch.empty(nb, dtype=torch.float32, device=w.device)
        nf_p = torch.empty(nb, dtype=torch.int32, device=w.device)
        _amax_kernel[(nb,)](w, blk_t, blk_off, layout.t_start, layout.t_n, amax_p, nf_p,
                            BLOCK=BLOCK)
        idx = blk_t.to(torch.int64)
        am.scatter_reduce_(0, idx, amax_p, reduce="amax", include_self=True)
        nf.index_add_(0, idx, nf_p.to(torch.int64))
        return am, nf

    def counts(self, fps, layout, which, w, v, scales, update_form, neg_lr,
               pat=None, prev_scales=None, has_prev=None, qerr=False):
        """(int64 [T, F, 6] counts, float64 [T, F, 2] quantization error sums
        or None without qerr) for the tensors in `which` (others 0).
        scales/prev_scales: float32 [T, F]; neg_lr float32 [T]; pat uint8 [F, npad]
        (read as the previous patterns, overwritten with the new ones);
        has_prev int32 [T]."""
        F = len(fps)
        T = len(layout.numels)
        dev = w.device
        out = torch.zeros((T, F * 6), dtype=torch.int64, device=dev)
        qsum = torch.zeros((T, F + 1), dtype=torch.float64, device=dev) if qerr else None
        blk_t, blk_off, nb = layout.blocks(which)
        if nb == 0:
            return out.view(T, F, 6), self._qerr(qsum, F)
        fi, ff = self.consts(fps, dev)
        # every column is written by one kernel: per-tensor formats by
        # _count_kernel, block-scaled ones by _block_kernel of their block size
        part = torch.empty((nb, F * 6), dtype=torch.int32, device=dev)
        qpart = torch.empty((nb, F + 1) if qerr else (1,), dtype=torch.float64, device=dev)
        flips = pat is not None
        per_tensor = any(not fp.block for fp in fps)
        if per_tensor:
            dummy8 = pat if flips else torch.empty(1, dtype=torch.uint8, device=dev)
            _count_kernel[(nb,)](w, v, blk_t, blk_off, layout.t_start, layout.t_n, scales,
                                 neg_lr, fi, ff, part, dummy8, layout.npad,
                                 prev_scales if flips else scales,
                                 has_prev if flips else blk_t, GRAD_EPSILON, qpart,
                                 F=F, BLOCK=BLOCK, UPDATE=bool(update_form), FLIPS=flips,
                                 QERR=bool(qerr))
        for bs in sorted({fp.block for fp in fps if fp.block}):
            e4i, e4f = self.e4m3(dev)
            _block_kernel[(nb,)](w, v, blk_t, blk_off, layout.t_start, layout.t_n, scales,
                                 neg_lr, fi, ff, e4i, e4f, part, GRAD_EPSILON, qpart,
                                 F=F, B=bs, BLOCK=BLOCK, UPDATE=bool(update_form),
                                 QERR=bool(qerr), STORE_SIG=bool(qerr) and not per_tensor)
        idx = blk_t.to(torch.int64)
        out.index_add_(0, idx, part.to(torch.int64))
        if qerr:
            qsum.index_add_(0, idx, qpart)
        return out.view(T, F, 6), self._qerr(qsum, F)

    @staticmethod
    def _qerr(qsum, F):
        """[T, F + 1] (error per format, then w^2) as [T, F, 2]."""
        if qsum is None:
            return None
        return torch.stack([qsum[:, :F], qsum[:, F:].expand(-1, F)], dim=2)

    def count(self, fps, svals, w, x, update_form, neg_lr, qerr=False):
        """One tensor (stall_counts): (int64 [F, 6], float64 [F, 2] error
        sums or None) on the device."""
        layout = Layout([w.numel()], w.device)
        scales = torch.tensor([svals], dtype=torch.float32, device=w.device)
        nl = torch.tensor([neg_lr], dtype=torch.float32, device=w.device)
        counts, q = self.counts(fps, layout, [0], w, x, scales, update_form, nl, qerr=qerr)
        return counts[0], (q[0] if q is not None else None)


_COUNTER = None


def counter() -> Counter:
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = Counter()
    return _COUNTER
