"""Formats beyond the seed's five (issue 14): the built-ins E4M3, E3M2, E2M3,
E2M1, BF16, FP16 reached by name, and BF16 / FP16 (and, where this torch has
them, OCP FP8) encoding bit for bit against PyTorch's own casts."""

import math

import pytest
import torch

import altgrad
from altgrad.quantization import (FORMAT_REGISTRY, FP8Format, compute_scale, decode,
                                  dequantize, detect_bit_stall, encode, quantize)

NEW = ["E4M3", "E3M2", "E2M3", "E2M1", "BF16", "FP16"]


def test_registry_keeps_the_seed_five_and_every_format_is_reachable():
    assert set(FORMAT_REGISTRY) == {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"}
    names = [f.name for f in altgrad.list_formats()]
    assert names[:11] == ["E0M7", "E1M6", "E3M4", "E5M2", "E7M0"] + NEW
    assert {f.name for f in altgrad.list_formats(16)} >= {"BF16", "FP16"}
    assert all(f.bits == 16 for f in altgrad.list_formats(16))
    assert "E4M3" in [f.name for f in altgrad.list_formats(bits=8)]
    assert [f.name for f in altgrad.list_formats(4)][:1] == ["E2M1"]
    assert [f.name for f in altgrad.list_formats(6)][:2] == ["E3M2", "E2M3"]
    e4 = altgrad.get_format("E4M3")
    assert (e4.exponent_bits, e4.mantissa_bits, e4.bias, e4.has_inf, e4.has_nan) == (
        4, 3, 7, False, True)
    assert e4.max_representable_value == 448.0
    assert altgrad.get_format("E2M1").max_representable_value == 6.0
    assert [altgrad.get_format("E2M1").to_real(b) for b in range(8)] == [
        0, 0.5, 1, 1.5, 2, 3, 4, 6]
    with pytest.raises(LookupError):
        altgrad.get_format("E9M9")
    with pytest.raises(TypeError):
        altgrad.list_formats("8")


@pytest.mark.parametrize("name", NEW)
def test_new_formats_work_where_the_seed_formats_do(name):
    fmt = altgrad.get_format(name)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 3
    s = compute_scale(x.abs().max().item(), fmt)
    q = quantize(x, fmt, s)
    assert q.shape == x.shape and torch.isfinite(q).all()
    assert torch.equal(dequantize(torch.ones(3), 2.0), torch.full((3,), 2.0))
    bits = encode(x, fmt, s)
    assert bits.dtype == (torch.int32 if fmt.bits > 8 else torch.uint8)
    assert int(bits.max()) < (1 << fmt.bits)
    assert torch.equal(decode(bits, fmt, s), q)
    assert torch.equal(quantize(x, name, s), q)  # by name too
    assert detect_bit_stall(x, torch.full_like(x, 1e-9), 0.01, fmt, s) == (1000, 1000)


def test_bf16_weights_absorb_updates_below_a_256th():
    # "would this update survive in BF16 weights": scale 1, w = 1
    bf = altgrad.get_format("BF16")
    w = torch.ones(100)
    # |u| = 1e-3 < 2^-9 (half an ulp above 1): lost; 5e-3 > 2^-8: kept
    assert detect_bit_stall(w, torch.full_like(w, 1e-3), 1.0, bf, 1.0) == (100, 100)
    assert detect_bit_stall(w, torch.full_like(w, 5e-3), 1.0, bf, 1.0) == (0, 100)


def test_a_defined_format_of_any_width():
    f = FP8Format(name="E4M4x", exponent_bits=4, mantissa_bits=4, bias=7)
    assert f.bits == 9 and f.to_bits(1.0) == 7 << 4
    assert altgrad.get_format("E4M4x") == f
    g = FP8Format(name="E2M2fn", exponent_bits=2, mantissa_bits=2, bias=1, has_nan=True)
    assert math.isnan(g.to_real(0b01111)) and g.max_representable_value == 6.0  # 2^2 * 1.5


def _edge_and_random(n_random: int, lo: float, hi: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # random float32 bit patterns: every exponent, subnormals included
    bits = torch.randint(-(1 << 31), 1 << 31, (n_random,), generator=g, dtype=torch.int64)
    rnd = bits.to(torch.int32).view(torch.float32)
    # values of the format's own range, log-uniform
    e = torch.rand(n_random, generator=g, dtype=torch.float64) * (hi - lo) + lo
    sgn = torch.where(torch.rand(n_random, generator=g) < 0.5, -1.0, 1.0).double()
    inrange = (sgn * torch.pow(2.0, e)).float()
    return torch.cat([rnd, inrange])


def _ties(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """Exact midpoints between neighbours of dtype, and one float32 ulp
    either side, over the dtype's whole range (subnormals and the top)."""
    g = torch.Generator().manual_seed(seed)
    pats = torch.randint(0, 0x7BFF if dtype == torch.float16 else 0x7F7F, (n,), generator=g,
                         dtype=torch.int32).to(torch.int16)
    lo = pats.view(dtype).float()
    hi = (pats + 1).view(dtype).float()
    mid = ((lo.double() + hi.double()) / 2).float()
    up = torch.nextafter(mid, torch.full_like(mid, math.inf))
    down = torch.nextafter(mid, torch.full_like(mid, -math.inf))
    return torch.cat([mid, up, down, -mid, -up, -down])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (so +0 and -0 differ), every NaN equal to every NaN."""
    nan = torch.isnan(a) & torch.isnan(b)
    return bool(torch.all(nan | (a.view(torch.int32) == b.view(torch.int32))))


@pytest.mark.parametrize("name,dtype,lo,hi,top", [
    ("BF16", torch.bfloat16, -140.0, 128.0, 3.3895313892515355e38),
    ("FP16", torch.float16, -26.0, 17.0, 65504.0),
])
def test_16_bit_formats_match_torch_casts(name, dtype, lo, hi, top):
    fmt = altgrad.get_format(name)
    specials = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-45, -1e-45,
                             1.17549435e-38, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08,
                             top, -top, 65519.996, 65520.0, 3.4028235e38, -3.4028235e38,
                             3.3961e38, 1.0 + 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20,
                             1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11], dtype=torch.float32)
    x = torch.cat([specials, _edge_and_random(200000, lo, hi, 7), _ties(dtype, 50000, 8)])
    want = x.to(dtype).float()
    got = quantize(x, fmt, 1.0)
    bad = ~((torch.isnan(want) & torch.isnan(got)) |
            (want.view(torch.int32) == got.view(torch.int32)))
    assert not bad.any(), (name, x[bad][:8].tolist(), got[bad][:8].tolist(),
                           want[bad][:8].tolist())
    # and the patterns are torch's bits (NaN aside: ours is the canonical one)
    pats = encode(x, fmt, 1.0)
    tbits = x.to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
    fin = ~torch.isnan(x)
    assert torch.equal(pats[fin], tbits[fin])


_F8 = [(n, getattr(torch, t, None)) for n, t in (("E4M3", "float8_e4m3fn"),
                                                  ("E5M2", "float8_e5m2"))]


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"),
                    reason=f"torch {torch.__version__} has no float8 dtypes")
@pytest.mark.parametrize("name,dtype", _F8)
def test_ocp_fp8_matches_torch_float8(name, dtype):
    fmt = altgrad.get_format(name)
    x = torch.cat([_edge_and_random(200000, -20.0, 17.0, 3),
                   torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan])])
    # every pattern's value and the midpoints between neighbours
    vals = torch.tensor([fmt.to_real(b) for b in range(256)], dtype=torch.float64)
    fin = vals[torch.isfinite(vals)].sort().values
    mids = ((fin[1:] + fin[:-1]) / 2).float()
    x = torch.cat([x, fin.float(), mids, torch.nextafter(mids, torch.full_like(mids, 1e30)),
                   torch.nextafter(mids, torch.full_like(mids, -1e30))])
    if name == "E4M3":
        # torch's e4m3fn cast does not saturate: from 464 (the midpoint of 448
        # and the NaN pattern's 480) it gives NaN; ours saturates to 448
        # (docs/numerics.md). Compare below that.
        x = x[~(x.abs() >= 464)]
    want = x.to(dtype).float()
    got = quantize(x, fmt, 1.0)
    assert _same(got, want), name


def test_device_watch_keeps_unscaled_twins_at_scale_1_and_counts_16_bit_flips():
    import ctypes

    from altgrad import _device, _lib
    lib = _lib.lib()
    assert altgrad.get_format("BF16-unscaled").name == "BF16-unscaled"
    fmts = ["E5M2", "BF16-unscaled", "FP16"]
    g = torch.Generator().manual_seed(5)
    w1 = torch.randn(5000, generator=g) * 3
    u = torch.randn(5000, generator=g) * 1e-2
    w2 = w1 + u
    watch = _device.Watch([5000], torch.float32, "cpu", fmts, _device.ScaleRule(), flips=True)
    out = []
    for w in (w1, w2):
        watch.load_w([w])
        watch.load_v([u])
        out.append(watch.compute([0], update_form=True))
    s1 = out[0]["scales"][0].tolist()
    assert s1[1] == 1.0 and s1[0] != 1.0 and s1[2] != 1.0
    # step 1's counts and step 2's flips match the C core in every format
    for f, name in enumerate(fmts):
        c = _lib.ag_stall_counts()
        p = lib.ag_format_get(name.encode())
        sc = float(out[0]["scales"][0][f])
        assert lib.ag_stall_update(p, sc, w1.data_ptr(), u.data_ptr(), 5000,
                                   ctypes.byref(c)) == 0
        got = out[0]["counts"][0][f].tolist()
        assert got[:5] == [c.stalled, c.total, c.overflow, c.underflow, c.nonfinite], name
        prev = (ctypes.c_uint8 * (5000 * p.contents.pattern_bytes))()
        assert lib.ag_encode_array(p, sc, w1.data_ptr(), prev, 5000) == 0
        flips = ctypes.c_uint64(0)
        assert lib.ag_count_pattern_flips(p, sc, prev, w2.data_ptr(), 5000,
                                          ctypes.byref(flips)) == 0
        assert int(out[1]["counts"][0][f][5]) == flips.value, name
        # and flips equal total - stalled of step 1 (the update was applied)
        assert flips.value == c.total - c.stalled, name


def test_torch_stall_counts_takes_format_objects_of_every_width():
    from altgrad.torch import stall_counts
    g = torch.Generator().manual_seed(9)
    w = torch.randn(3000, generator=g)
    u = torch.randn(3000, generator=g) * 1e-3
    objs = [altgrad.get_format(n) for n in ("E2M1", "E4M3", "BF16", "BF16-unscaled")]
    by_obj = stall_counts(w, u, objs, [0.5, 0.01, 1.0, 1.0])
    by_name = stall_counts(w, u, [f.name for f in objs], [0.5, 0.01, 1.0, 1.0])
    assert by_obj == by_name and set(by_obj) == {"E2M1", "E4M3", "BF16", "BF16-unscaled"}
    assert by_obj["BF16"] == by_obj["BF16-unscaled"]  # the same grid at the same scale
    assert stall_counts(w, u, objs[0], 0.5) == {"E2M1": by_obj["E2M1"]}


def test_the_daemon_files_twins_at_scale_1_with_the_quantization_error(daemon):
    import ctypes

    from altgrad import _lib
    from daemon_fixture import eventually
    lib = _lib.lib()
    g = torch.Generator().manual_seed(21)
    w = torch.randn(4096, generator=g) * 2
    u = torch.randn(4096, generator=g) * 1e-3
    fmts = ["BF16-unscaled", "E4M3", "FP16"]
    with daemon.client("twins", policy="block") as c:
        assert c.log_update(1, "w", w, u, scale=0.5, formats=fmts)
        c.flush(20000)
        for name in fmts:
            h = eventually(lambda: (lambda r: r if r["points"] else None)(
                c.history("w", format=name)), what=f"{name} point")
            p = h["points"][0]
            scale = 1.0 if name == "BF16-unscaled" else 0.5  # a twin keeps 1
            assert p["scale"] == scale, name
            f = lib.ag_format_get(name.encode())
            cnt = _lib.ag_stall_counts()
            assert lib.ag_stall_update(f, scale, w.data_ptr(), u.data_ptr(), 4096,
                                       ctypes.byref(cnt)) == 0
            assert (p["stalled"], p["total"], p["overflow"], p["underflow"]) == (
                cnt.stalled, cnt.total, cnt.overflow, cnt.underflow), name
            q = _lib.ag_quant_error()
            sc = (ctypes.c_float * 1)(scale)
            fp = (ctypes.POINTER(_lib.ag_format) * 1)(f)
            assert lib.ag_quant_error_multi(fp, sc, 1, w.data_ptr(), 4096, ctypes.byref(q)) == 0
            assert p["mse"] == lib.ag_quant_mse(ctypes.byref(q)), name
            assert p["sqnr_db"] == lib.ag_quant_sqnr_db(ctypes.byref(q)), name
        st = c.status()
        assert "BF16-unscaled" not in st["formats"]  # the defaults are unchanged
