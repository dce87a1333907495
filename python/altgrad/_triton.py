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

from ._device import GRAD_EPSILON

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
                  PAT, NPAD, PREV_SCALES, HAS_PREV, EPS, F: tl.constexpr, BLOCK: tl.constexpr,
                  UPDATE: tl.constexpr, FLIPS: tl.constexpr):
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
    for f in tl.static_range(F):
        M = tl.load(FI + f * 11 + 0)
        shift = tl.load(FI + f * 11 + 1)
        half_m1 = tl.load(FI + f * 11 + 2)
        keep_mask = tl.load(FI + f * 11 + 3)
        emin_bits = tl.load(FI + f * 11 + 4)
        half_down = tl.load(FI + f * 11 + 5)
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
        if FLIPS:
            bias_adj = tl.load(FI + f * 11 + 6)
            mant_mask = tl.load(FI + f * 11 + 7)
            over_pattern = tl.load(FI + f * 11 + 8)
            nan_pattern = tl.load(FI + f * 11 + 9)
            nan_above = tl.load(FI + f * 11 + 10)
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


def _consts(fps):
    """Per-format constants as the kernel reads them: 11 int32 (FI) and 4
    float32 (FF) per format, in this order."""
    fi = [[fp.M, fp.shift, fp.half_m1, fp.keep_mask, fp.emin_bits, int(fp.half_down),
           fp.bias_adj, fp.mant_mask, fp.over_pattern, fp.nan_pattern, fp.nan_above]
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
               pat=None, prev_scales=None, has_prev=None):
        """int64 [T, F, 6] counts for the tensors in `which` (others 0).
        scales/prev_scales: float32 [T, F]; neg_lr float32 [T]; pat uint8 [F, npad]
        (read as the previous patterns, overwritten with the new ones);
        has_prev int32 [T]."""
        F = len(fps)
        T = len(layout.numels)
        dev = w.device
        out = torch.zeros((T, F * 6), dtype=torch.int64, device=dev)
        blk_t, blk_off, nb = layout.blocks(which)
        if nb == 0:
            return out.view(T, F, 6)
        fi, ff = self.consts(fps, dev)
        part = torch.empty((nb, F * 6), dtype=torch.int32, device=dev)
        flips = pat is not None
        dummy8 = pat if flips else torch.empty(1, dtype=torch.uint8, device=dev)
        _count_kernel[(nb,)](w, v, blk_t, blk_off, layout.t_start, layout.t_n, scales,
                             neg_lr, fi, ff, part, dummy8, layout.npad,
                             prev_scales if flips else scales,
                             has_prev if flips else blk_t, GRAD_EPSILON,
                             F=F, BLOCK=BLOCK, UPDATE=bool(update_form), FLIPS=flips)
        out.index_add_(0, blk_t.to(torch.int64), part.to(torch.int64))
        return out.view(T, F, 6)

    def count(self, fps, svals, w, x, update_form, neg_lr):
        """One tensor (stall_counts): int64 [F, 6] on the device."""
        layout = Layout([w.numel()], w.device)
        scales = torch.tensor([svals], dtype=torch.float32, device=w.device)
        nl = torch.tensor([neg_lr], dtype=torch.float32, device=w.device)
        return self.counts(fps, layout, [0], w, x, scales, update_form, nl)[0]


_COUNTER = None


def counter() -> Counter:
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = Counter()
    return _COUNTER
