"""altgrad.torch.stall_counts and the Monitor's counting engine (Watch) against
the C core, bit for bit: every format, both forms, the edge classes of
tests/core (±4 ulps around every grid value, midpoint and boundary; ±inf,
NaN, ±0, float32 subnormals), float32/bfloat16/float16 inputs, and flips
against ag_count_pattern_flips. On the CPU here; on a GPU too where CUDA is."""

import ctypes
import math

import pytest
import torch

from altgrad import _device, _lib
from altgrad.errors import AltgradError
from altgrad.quantization import get_format
from altgrad.quantization import stall_counts as c_stall_counts
from altgrad.torch import stall_counts

FORMATS = ["E0M7", "E1M6", "E3M4", "E5M2", "E7M0"]
# the built-ins after the seed's five (issue 14): 4 to 16 bits, E4M3's NaN rule
WIDE_FORMATS = ["E4M3", "E3M2", "E2M3", "E2M1", "BF16", "FP16"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _ulps(x: torch.Tensor, k: int) -> torch.Tensor:
    """x and the k float32 neighbours on each side of every value."""
    out = [x]
    up, down = x.clone(), x.clone()
    for _ in range(k):
        up = torch.nextafter(up, torch.full_like(up, math.inf))
        down = torch.nextafter(down, torch.full_like(down, -math.inf))
        out += [up, down]
    return torch.cat(out)


def edge_values(fmt: str, scale: float) -> torch.Tensor:
    """Grid values, midpoints and boundaries of fmt at scale, ±4 ulps, both
    signs, plus the special values."""
    lib = _lib.lib()
    p = lib.ag_format_get(fmt.encode())
    f = p.contents
    # every magnitude pattern up to 8 bits; every 61st (and the top ones) of 16
    nmag = 1 << (f.bits - 1)
    pats = list(range(0, nmag, 61 if f.bits > 8 else 1)) + list(range(max(0, nmag - 8), nmag))
    table = torch.tensor([lib.ag_decode(p, i) for i in pats], dtype=torch.float64)
    mags = torch.unique(table[torch.isfinite(table)])
    mids = (mags[1:] + mags[:-1]) / 2
    bounds = torch.tensor([f.max_finite, f.min_positive, 2.0 ** f.min_exponent,
                           f.max_finite * 1.5, f.max_finite * 4, f.min_positive / 2,
                           f.min_positive / 4])
    base = (torch.cat([mags, mids, bounds]) * scale).to(torch.float32)
    base = _ulps(base, 4)
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-45, -1e-45, 1.2e-38,
                            3e38, -3e38], dtype=torch.float32)
    return torch.cat([base, -base, special])


def c_counts(w, x, fmt, scale, form, lr):
    return c_stall_counts(w.float().contiguous(), x.float().contiguous(),
                          lr if form == "sgd" else 0.0, get_format(fmt), scale,
                          update=(form == "update"))


def pairs(fmt: str, scale: float, seed: int):
    """(w, x) covering edge weights against edge and random updates."""
    g = torch.Generator().manual_seed(seed)
    w = edge_values(fmt, scale)
    n = w.numel()
    xs = [torch.zeros(n), w.roll(1) - w, (w.roll(7) - w) / 3,
          torch.randn(n, generator=g) * scale * 0.01,
          torch.randn(n, generator=g) * scale * 10,
          edge_values(fmt, scale)[torch.randperm(n, generator=g)],
          torch.full((n,), 1e-10), torch.full((n,), -1.0000001e-10)]
    x = torch.cat(xs)
    return w.repeat(len(xs)), x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["update", "sgd"])
@pytest.mark.parametrize("fmt", FORMATS + WIDE_FORMATS)
def test_edges_bit_exact(fmt, form, device):
    for k, scale in enumerate([1.0, 0.0173, 3.75e-5, 912.5]):
        w, x = pairs(fmt, scale, k)
        lr = 0.37 if form == "sgd" else None
        want = c_counts(w, x, fmt, scale, form, lr)
        got = stall_counts(w.to(device), x.to(device), [fmt], [scale], form=form, lr=lr)[fmt]
        assert got == want, (fmt, form, scale)


@pytest.mark.parametrize("device", DEVICES)
def test_multi_format_and_dtypes(device):
    g = torch.Generator().manual_seed(3)
    w32 = torch.randn(50000, generator=g) * 2
    u32 = torch.randn(50000, generator=g) * 1e-2
    scales = {"E0M7": 0.02, "E1M6": 0.011, "E3M4": 0.5, "E5M2": 1e-4, "E7M0": 3.0}
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        w, u = w32.to(dt), u32.to(dt)
        got = stall_counts(w.to(device), u.to(device), FORMATS, scales)
        for f in FORMATS:
            # widened exactly: the C core on the float32 values
            assert got[f] == c_counts(w.float(), u.float(), f, scales[f], "update", None), (dt, f)


def test_arguments_checked():
    w = torch.ones(4)
    with pytest.raises(AltgradError, match="unknown format"):
        stall_counts(w, w, ["MXFP5"], [1.0])
    with pytest.raises(ValueError):
        stall_counts(w, w, ["E5M2"], [0.0])
    with pytest.raises(ValueError):
        stall_counts(w, w, ["E5M2"], [math.nan])
    with pytest.raises(ValueError):
        stall_counts(w, w, ["E5M2"], [1.0], form="sgd")  # no lr
    with pytest.raises(ValueError):
        stall_counts(w, w, ["E5M2"], [1.0], form="adam")
    with pytest.raises(ValueError):
        stall_counts(w, torch.ones(5), ["E5M2"], [1.0])
    with pytest.raises(ValueError):
        stall_counts(w, w, ["E5M2", "E3M4"], [1.0])
    with pytest.raises(TypeError):
        stall_counts(w.double(), w.double(), ["E5M2"], [1.0])
    with pytest.raises(_lib_errors().FormatError):
        stall_counts(w, w, ["E9M9"], [1.0])
    assert stall_counts(torch.ones(0), torch.ones(0), ["E5M2"], 1.0)["E5M2"]["total"] == 0
    # a scalar scale serves every format; a dict names them
    a = stall_counts(w, w, ["E5M2", "E3M4"], 0.5)
    b = stall_counts(w, w, ["E5M2", "E3M4"], {"E5M2": 0.5, "E3M4": 0.5})
    assert a == b and set(a) == {"E5M2", "E3M4"}
    assert set(a["E5M2"]) == {"stalled", "total", "overflow", "underflow", "nonfinite"}


def _lib_errors():
    from altgrad import errors
    return errors


def _c_flips(fmt, prev_scale, prev_w, cur_w):
    """The daemon's flips: prev_w encoded at its scale against cur_w encoded at
    that same (previous) scale."""
    lib = _lib.lib()
    f = lib.ag_format_get(fmt.encode())
    n = prev_w.numel()
    prev = (ctypes.c_uint8 * n)()
    pw = prev_w.float().contiguous()
    cw = cur_w.float().contiguous()
    assert lib.ag_encode_array(f, prev_scale, pw.data_ptr(), prev, n) == 0
    out = ctypes.c_uint64(0)
    assert lib.ag_count_pattern_flips(f, prev_scale, prev, cw.data_ptr(), n,
                                      ctypes.byref(out)) == 0
    return out.value


def _c_scale(hist, fmt, rule):
    """scale_from with the history's value (max or most recent)."""
    f = _lib.lib().ag_format_get(fmt.encode()).contents
    vals = hist[-rule.history_len:]
    if not vals:
        ha = 1.0
    elif rule.amax_mode == "max":
        ha = max(vals)
    else:
        ha = vals[-1]
    s = max(ha / float(f.max_finite), rule.scale_min) * 2.0 ** rule.margin
    return _device._f32(s)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("flips", [False, True])
def test_watch_follows_the_daemon_rule(device, flips):
    """Three tensors over five steps: scales from the amax history (current
    mode, history 3, margin 1), counts and flips as the C core gives them."""
    rule = _device.ScaleRule(history_len=3, margin=1)
    g = torch.Generator().manual_seed(11)
    numels = [3000, 17, 2500]
    watch = _device.Watch(numels, torch.float32, device, ["E5M2", "E3M4"], rule, flips=flips)
    hist = {t: [] for t in range(3)}
    prev = {}
    for step in range(5):
        ws = [torch.randn(n, generator=g) * (1 + step + t) for t, n in enumerate(numels)]
        us = [torch.randn(n, generator=g) * 1e-3 for n in numels]
        which = [0, 2] if step == 2 else [0, 1, 2]  # tensor 1 has no gradient at step 2
        watch.load_w([w.to(device) for w in ws])
        watch.load_v([(w + u).to(device) for w, u in zip(ws, us)], minus_w=True)
        out = watch.compute(which)
        counts = out["counts"].cpu()
        scales = out["scales"].cpu()
        for t in which:
            w = ws[t]
            u = (w + us[t]) - w
            hist[t].append(float(w.abs().max()))
            for k, fmt in enumerate(["E5M2", "E3M4"]):
                s = _c_scale(hist[t], fmt, rule)
                assert float(scales[t, k]) == s, (step, t, fmt)
                want = c_counts(w, u, fmt, s, "update", None)
                got = dict(zip(_device.COUNT_KEYS, counts[t, k, :5].tolist()))
                assert got == want, (step, t, fmt)
                if flips:
                    want_f = _c_flips(fmt, prev[t, k][1], prev[t, k][0], w) if (t, k) in prev \
                        else 0
                    assert int(counts[t, k, 5]) == want_f, (step, t, fmt)
                    prev[t, k] = (w, s)
            assert float(out["amax"][t]) == hist[t][-1]


def test_watch_nonfinite_and_delayed():
    """A tensor of only NaN does not enter the history; delayed scaling uses
    the history before the current amax."""
    rule = _device.ScaleRule(history_len=4, scale_mode="delayed")
    watch = _device.Watch([8], torch.float32, "cpu", ["E5M2"], rule)
    mf = 57344.0
    seq = [torch.full((8,), 2.0), torch.full((8,), math.nan), torch.full((8,), 8.0)]
    want = [_device._f32(1.0 / mf),  # empty history reads 1.0
            _device._f32(2.0 / mf), _device._f32(2.0 / mf)]
    for w, s in zip(seq, want):
        watch.load_w([w])
        watch.load_v([torch.zeros(8)])
        out = watch.compute([0])
        assert float(out["scales"][0, 0]) == s
    assert int(out["nonfinite"][0]) == 0
