"""Block-scaled formats (MXFP8_E4M3 ... NVFP4, issue 14) from Python: reached
by name, quantize / compute_scale / detect_bit_stall with block semantics, and
altgrad.torch.stall_counts (eager torch; the Triton kernel where CUDA is),
each against the C core (core/block.c: ag_block_scale, ag_block_stall_*) on
random and edge-class tensors: blocks whose amax is zero, subnormal, past
float32 after the tensor scale, blocks with NaN and inf, tails shorter than a
block, E4M3 block scales that round to 0 or saturate."""

import ctypes
import math

import pytest
import torch

import altgrad
from altgrad import _device, _lib
from altgrad.quantization import (FORMAT_REGISTRY, BlockFormat, compute_scale, dequantize,
                                  detect_bit_stall, detect_bit_stall_update, quantize)
from altgrad.quantization import stall_counts as c_counts
from altgrad.torch import stall_counts

BLOCK = ["MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E3M2", "MXFP6_E2M3", "MXFP4", "NVFP4"]
ELEMENT = {"MXFP8_E4M3": "E4M3", "MXFP8_E5M2": "E5M2", "MXFP6_E3M2": "E3M2",
           "MXFP6_E2M3": "E2M3", "MXFP4": "E2M1", "NVFP4": "E2M1"}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# tensor scales: 1 (MX's), NVFP4-like ones, and ones that push amax / S past
# float32 or into its subnormals
SCALES = [1.0, 0.37, 2.0 ** -100, 1e-38, 2.0 ** 100]


def _fmt(name):
    return _lib.lib().ag_format_get(name.encode())


def edge_tensor(n: int, seed: int) -> torch.Tensor:
    """n float32 values, block by block from different classes: random
    exponents over the whole float32 range, narrow blocks, all zeros,
    subnormals only, NaN/inf sprinkled, huge values."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n)
    kinds = torch.randint(0, 7, (n // 16 + 1,), generator=g)
    for b, k in enumerate(kinds.tolist()):
        lo, hi = b * 16, min(n, b * 16 + 16)
        if lo >= n:
            break
        m = hi - lo
        sign = torch.where(torch.rand(m, generator=g) < 0.5, -1.0, 1.0)
        if k == 0:  # anything finite
            e = torch.randint(-149, 128, (m,), generator=g).to(torch.float64)
            v = torch.ldexp(torch.rand(m, generator=g, dtype=torch.float64) + 1.0, e)
            v = v.clamp(max=3.4e38).to(torch.float32) * sign
        elif k == 1:  # one binade region around 1
            v = torch.randn(m, generator=g) * 3
        elif k == 2:
            v = torch.zeros(m)
        elif k == 3:  # float32 subnormals
            v = torch.randint(1, 1 << 23, (m,), generator=g).to(torch.int32).view(
                torch.float32) * sign
        elif k == 4:  # specials among normal values
            v = torch.randn(m, generator=g)
            v[0] = math.nan
            if m > 2:
                v[2] = -math.inf
            if m > 5:
                v[5] = math.inf
        elif k == 5:  # huge
            v = (torch.rand(m, generator=g) + 1) * 1e38 * sign
        else:  # grid-ish values: small integers and halves, ties included
            v = torch.randint(-24, 25, (m,), generator=g).to(torch.float32) / 4
        out[lo:hi] = v
    return out


def ref_quantize(name: str, s: float, w: torch.Tensor) -> torch.Tensor:
    """Q(w) from C: each block's divisor d from ag_block_scale, its elements
    ag_quantize'd in the element format at d, saturated at max_finite * d."""
    lib = _lib.lib()
    f = _fmt(name)
    elem = _fmt(ELEMENT[name])
    B = f.contents.block
    mf = elem.contents.max_finite
    out = torch.empty_like(w)
    for lo in range(0, w.numel(), B):
        blk = w[lo:lo + B].contiguous()
        d = ctypes.c_float()
        assert lib.ag_block_scale(f, s, blk.data_ptr(), blk.numel(), ctypes.byref(d)) == 0
        if d.value == 0.0:
            q = torch.copysign(torch.zeros_like(blk), blk)
        else:
            q = torch.empty_like(blk)
            assert lib.ag_quantize_checked(elem, d.value, blk.data_ptr(), q.data_ptr(),
                                           blk.numel()) == 0
            top = float(torch.tensor(mf, dtype=torch.float32) * torch.tensor(d.value))
            q = torch.where(q.abs() > top, torch.copysign(torch.full_like(q, top), q), q)
        out[lo:lo + B] = torch.where(blk != blk, blk, q)
    return out


def ref_counts(name: str, s: float, w, v, form: str, lr: float = 0.0) -> dict:
    lib = _lib.lib()
    c = _lib.ag_stall_counts()
    w, v = w.contiguous(), v.contiguous()
    if form == "sgd":
        rc = lib.ag_block_stall_sgd(_fmt(name), s, lr, w.data_ptr(), v.data_ptr(), w.numel(),
                                    ctypes.byref(c))
    else:
        rc = lib.ag_block_stall_update(_fmt(name), s, w.data_ptr(), v.data_ptr(), w.numel(),
                                       ctypes.byref(c))
    assert rc == 0
    return {"stalled": c.stalled, "total": c.total, "overflow": c.overflow,
            "underflow": c.underflow, "nonfinite": c.nonfinite}


def test_block_formats_are_reached_by_name_and_listed():
    assert set(FORMAT_REGISTRY) == {"E0M7", "E1M6", "E3M4", "E5M2", "E7M0"}
    names = [f.name for f in altgrad.list_formats()]
    assert names[11:17] == BLOCK
    for name in BLOCK:
        f = altgrad.get_format(name)
        assert isinstance(f, BlockFormat) and f.name == name and str(f) == name
        assert f.element.name == ELEMENT[name]
        assert f.block_size == (16 if name == "NVFP4" else 32)
        assert f.scale_kind == ("E4M3" if name == "NVFP4" else "E8M0")
        assert f.bits == f.element.bits
        assert f.max_representable_value == f.element.max_representable_value
        assert altgrad.get_format(f) is f
    assert {f.name for f in altgrad.list_formats(4)} >= {"E2M1", "MXFP4", "NVFP4"}
    assert "MXFP8_E5M2" in [f.name for f in altgrad.list_formats(8)]


def test_compute_scale_gives_the_tensor_scale():
    assert compute_scale(1000.0, altgrad.get_format("MXFP4")) == 1.0
    assert compute_scale(torch.tensor(7.0), "MXFP8_E4M3") == 1.0
    assert compute_scale(2688.0, "NVFP4") == 1.0
    assert compute_scale(26.88, "NVFP4") == 26.88 / 2688
    assert compute_scale(0.0, "NVFP4") == 1e-10
    with pytest.raises(ValueError):
        compute_scale(-1.0, "NVFP4")
    with pytest.raises(ValueError):
        compute_scale(math.nan, "MXFP4")


@pytest.mark.parametrize("name", BLOCK)
@pytest.mark.parametrize("n", [1, 15, 16, 33, 1000, 4099])
def test_block_divisors_equal_ag_block_scale(name, n):
    fp = _device.format_params(name)
    lib = _lib.lib()
    w = edge_tensor(n, n)
    for s in SCALES:
        got = _device.block_divisors(fp, s, w).tolist()
        for b, lo in enumerate(range(0, n, fp.block)):
            blk = w[lo:lo + fp.block].contiguous()
            d = ctypes.c_float()
            assert lib.ag_block_scale(_fmt(name), s, blk.data_ptr(), blk.numel(),
                                      ctypes.byref(d)) == 0
            assert got[b] == d.value, (name, s, b)


def test_block_scale_examples_of_the_docs():
    fp4, nv = _device.format_params("MXFP4"), _device.format_params("NVFP4")
    assert _device.block_divisors(fp4, 1.0, torch.tensor([6.0])).item() == 1.0
    assert _device.block_divisors(fp4, 1.0, torch.tensor([7.0])).item() == 1.0
    assert _device.block_divisors(fp4, 1.0, torch.tensor([8.0])).item() == 2.0
    assert _device.block_divisors(fp4, 1.0, torch.tensor([0.0])).item() == 2.0 ** -127
    e4 = _device.format_params("MXFP8_E4M3")
    assert _device.block_divisors(e4, 1.0, torch.tensor([1.0])).item() == 2.0 ** -8
    assert _device.block_divisors(nv, 1.0, torch.tensor([7.0])).item() == 1.125
    # MXFP4 saturates: 7 in a block of amax 7 is 6
    assert quantize(torch.tensor([7.0, 1.2]), "MXFP4", 1.0).tolist() == [6.0, 1.0]


@pytest.mark.parametrize("name", BLOCK)
def test_quantize_equals_the_core_block_by_block(name):
    for seed, n in ((1, 1000), (2, 4099), (3, 17), (4, 32)):
        w = edge_tensor(n, seed)
        for s in SCALES:
            got = quantize(w, name, s)
            want = ref_quantize(name, s, w)
            same = (got == want) | (torch.isnan(got) & torch.isnan(want))
            assert bool(same.all()), (name, s, seed, int((~same).sum()))
    # shape, dtype and device are kept; blocks run along the flattened tensor
    x = torch.randn(4, 48, generator=torch.Generator().manual_seed(5))
    q = quantize(x, name, 1.0)
    assert q.shape == x.shape and torch.equal(q.reshape(-1), quantize(x.reshape(-1), name, 1.0))
    assert quantize(x.to(torch.float64), name, 1.0).dtype == torch.float64
    xg = x.clone().requires_grad_(True)
    quantize(xg, altgrad.get_format(name), 1.0).sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))  # straight-through
    assert torch.equal(dequantize(q, 2.0), q * 2)
    with pytest.raises(ValueError, match="block-scaled"):
        altgrad.quantization.encode(x, name)


@pytest.mark.parametrize("name", BLOCK)
def test_detect_bit_stall_takes_block_formats(name):
    w = edge_tensor(1000, 9)
    g = torch.randn(1000, generator=torch.Generator().manual_seed(10))
    for s in (1.0, 0.37):
        want = ref_counts(name, s, w, g, "sgd", 0.01)
        assert detect_bit_stall(w, g, 0.01, altgrad.get_format(name), s) == (
            want["stalled"], want["total"])
        assert c_counts(w, g, 0.01, name, s) == want
        u = g * 1e-3
        want = ref_counts(name, s, w, u, "update")
        assert detect_bit_stall_update(w, u, name, s) == (want["stalled"], want["total"])


def _inputs(n, seed, form):
    w = edge_tensor(n, seed)
    g = torch.Generator().manual_seed(seed + 100)
    mag = torch.ldexp(torch.ones(n), torch.randint(-30, 4, (n,), generator=g))
    v = torch.randn(n, generator=g) * mag
    v[::37] = 0.0
    v[5::101] = math.nan
    if form == "update":  # updates that land on neighbours, and ones that do not
        v[::3] = w[::3] * 2.0 ** -4
    return w, v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["update", "sgd"])
@pytest.mark.parametrize("n", [1, 31, 1000, 5000, 70001])
def test_device_stall_counts_equal_the_core(device, form, n):
    w, v = _inputs(n, n, form)
    names = BLOCK + ["E4M3", "E5M2"]
    lr = 0.5 if form == "sgd" else None
    for s in SCALES:
        got = stall_counts(w.to(device), v.to(device), names, s, form=form, lr=lr)
        for name in names:
            if name in BLOCK:
                want = ref_counts(name, s, w, v, form, 0.5)
            else:
                want = c_counts(w, v, 0.5, name, s, update=form == "update")
            assert got[name] == want, (name, s)


@pytest.mark.parametrize("device", DEVICES)
def test_device_stall_counts_of_half_inputs_and_objects(device):
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(3000, generator=g) * 4).to(torch.bfloat16)
    u = (torch.randn(3000, generator=g) * 1e-2).to(torch.bfloat16)
    fmts = [altgrad.get_format("NVFP4"), altgrad.get_format("MXFP6_E2M3")]
    got = stall_counts(w.to(device), u.to(device), fmts, {"NVFP4": 0.01, "MXFP6_E2M3": 1.0})
    assert got["NVFP4"] == ref_counts("NVFP4", 0.01, w.float(), u.float(), "update")
    assert got["MXFP6_E2M3"] == ref_counts("MXFP6_E2M3", 1.0, w.float(), u.float(), "update")


def _watch_step(watch, w, v):
    watch.load_w([w])
    watch.load_v([v])
    return {k: x.cpu() for k, x in watch.compute([0], update_form=True).items()}


@pytest.mark.parametrize("device", DEVICES)
def test_block_flips_at_the_next_step_are_the_updates_that_moved(device):
    """docs/numerics.md: when the trainer applies exactly the update it
    logged (w1 = w0 + u0 in float32, every value finite), the flips at step
    1 equal total - stalled at step 0 in every format, block-scaled ones
    included (their flips compare patterns at step 0's block divisors)."""
    g = torch.Generator().manual_seed(11)
    n = 5000
    w0 = torch.randn(n, generator=g) * torch.ldexp(torch.ones(n), torch.randint(-8, 4, (n,),
                                                                                 generator=g))
    w0[64:96] = 0.0  # a zero block
    u0 = torch.randn(n, generator=g) * 0.05 * w0.abs()
    u0[::7] = 0.0
    w1 = w0 + u0
    u1 = torch.randn(n, generator=g) * 1e-3
    names = BLOCK + ["E4M3"]
    watch = _device.Watch([n], torch.float32, device, names, _device.ScaleRule(), flips=True)
    first = _watch_step(watch, w0.to(device), u0.to(device))
    assert first["counts"][0, :, 5].tolist() == [0] * len(names)  # nothing before
    second = _watch_step(watch, w1.to(device), u1.to(device))
    for f, name in enumerate(names):
        c0 = first["counts"][0, f]
        assert second["counts"][0, f, 5] == c0[1] - c0[0], name
        assert c0[1] - c0[0] > 0, name  # some updates moved


def _ref_block_patterns(name, d_blocks, w):
    """Element patterns of w at the given block divisors, from the C core:
    w / d in float32, saturated, encoded with ag_encode_array at scale 1
    (+0 in a block whose d is 0)."""
    lib = _lib.lib()
    elem = _fmt(ELEMENT[name])
    B = _fmt(name).contents.block
    mf = elem.contents.max_finite
    out = torch.empty(w.numel(), dtype=torch.uint8)
    for b, lo in enumerate(range(0, w.numel(), B)):
        blk = w[lo:lo + B]
        if not d_blocks[b] > 0:
            out[lo:lo + B] = 0
            continue
        xs = blk / torch.tensor(d_blocks[b])
        xs = torch.where(xs.abs() > mf, torch.copysign(torch.full_like(xs, mf), xs), xs)
        xs = xs.contiguous()
        pat = torch.empty(xs.numel(), dtype=torch.uint8)
        assert lib.ag_encode_array(elem, 1.0, xs.data_ptr(), pat.data_ptr(), xs.numel()) == 0
        out[lo:lo + B] = pat
    return out


def _canon(name, b):
    e = _fmt(ELEMENT[name]).contents
    bits = 1 + e.exponent_bits + e.mantissa_bits
    fp = _device.format_params(ELEMENT[name])
    b = b.to(torch.int32) & ((1 << bits) - 1)
    mag = b & ((1 << (bits - 1)) - 1)
    v = torch.where(mag == 0, torch.zeros_like(b), b)
    return torch.where(mag > fp.nan_above, torch.full_like(b, -1), v)


@pytest.mark.parametrize("device", DEVICES)
def test_block_flips_equal_patterns_compared_at_the_previous_block_scales(device):
    """Flips against a reference from the definition with the C core's block
    divisors (ag_block_scale) and encoder: edge-class weights (NaN, inf,
    zero and subnormal blocks, huge values), a tensor scale that moves
    (NVFP4), a tail block."""
    lib = _lib.lib()
    n = 4099
    w0 = edge_tensor(n, 21)
    w1 = w0.clone()
    g = torch.Generator().manual_seed(22)
    moved = torch.rand(n, generator=g) < 0.5
    w1[moved] = w1[moved] * (1 + torch.randn(int(moved.sum()), generator=g) * 0.3)
    w1[100:116] = 0.0  # a block that becomes zero
    w1[7] = math.nan
    zeros = torch.zeros(n)
    scales = {"NVFP4": (0.37, 0.5)}
    for name in BLOCK:
        s0, s1 = scales.get(name, (1.0, 1.0))
        watch = _device.Watch([n], torch.float32, device, [name], _device.ScaleRule(),
                              fixed_scale=s0, flips=True)
        _watch_step(watch, w0.to(device), zeros.to(device))
        watch.fixed_scale = s1
        got = int(_watch_step(watch, w1.to(device), zeros.to(device))["counts"][0, 0, 5])
        B = _fmt(name).contents.block
        d0 = []
        for lo in range(0, n, B):
            blk = w0[lo:lo + B].contiguous()
            d = ctypes.c_float()
            assert lib.ag_block_scale(_fmt(name), s0, blk.data_ptr(), blk.numel(),
                                      ctypes.byref(d)) == 0
            d0.append(d.value)
        want = int((_canon(name, _ref_block_patterns(name, d0, w0)) !=
                    _canon(name, _ref_block_patterns(name, d0, w1))).sum())
        assert got == want, (name, got, want)
        assert want > 0


def _c_quant_error(name, s, w):
    lib = _lib.lib()
    fmts = (ctypes.POINTER(_lib.ag_format) * 1)(_fmt(name))
    sc = (ctypes.c_float * 1)(s)
    q = _lib.ag_quant_error()
    w = w.contiguous()
    assert lib.ag_quant_error_multi(fmts, sc, 1, w.data_ptr(), w.numel(), ctypes.byref(q)) == 0
    return lib.ag_quant_mse(ctypes.byref(q)), lib.ag_quant_sqnr_db(ctypes.byref(q))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 33, 1000, 5000, 70001])
def test_device_quantization_error_equals_the_core(device, n):
    """stall_counts(quant_error=True): mse and sqnr_db of every format,
    block-scaled ones at their block scales, equal to ag_quant_error_multi's
    up to the order of the double sums (edge-class weights: NaN and inf left
    out, zero blocks, subnormals, values past the range saturating)."""
    w, v = _inputs(n, n + 7, "update")
    names = BLOCK + ["E4M3", "E5M2", "E2M1", "BF16"]
    for s in (1.0, 0.37, 1e-38):
        got = stall_counts(w.to(device), v.to(device), names, s, quant_error=True)
        for name in names:
            mse, sqnr = _c_quant_error(name, s, w)
            g = got[name]
            if math.isnan(mse):
                assert math.isnan(g["mse"]), (name, s)
            else:
                assert g["mse"] == pytest.approx(mse, rel=1e-12), (name, s)
            if math.isnan(sqnr):
                assert math.isnan(g["sqnr_db"]), (name, s)
            else:
                assert g["sqnr_db"] == pytest.approx(sqnr, abs=1e-9), (name, s)
    assert "mse" not in stall_counts(w, v, names, 1.0)["MXFP4"]


@pytest.mark.parametrize("device", DEVICES)
def test_block_flips_of_many_tensors_equal_each_tensor_alone(device):
    """The Watch takes the block formats' flips over its whole buffer at once:
    tensors of sizes that are not multiples of a block, some counted at a
    step and others not, give each the flips a Watch of that tensor alone
    gives (which the tests above check against the C core)."""
    sizes = [5000, 37, 4099, 1, 70]
    g = torch.Generator().manual_seed(5)
    steps = [torch.randn(sum(sizes), generator=g) * 3 for _ in range(4)]
    for k in range(1, 4):  # move part of the elements a little at each step
        keep = torch.rand(sum(sizes), generator=g) < 0.6
        steps[k] = torch.where(keep, steps[k - 1], steps[k - 1] * 1.02)
    plan = [[0, 2, 3], [0, 2], [0, 1, 2, 3, 4], [1, 3, 4]]  # the tensors counted (1, 4 late)
    names = BLOCK + ["E4M3"]
    whole = _device.Watch(sizes, torch.float32, device, names, _device.ScaleRule(), flips=True)
    alone = [_device.Watch([n], torch.float32, device, names, _device.ScaleRule(), flips=True)
             for n in sizes]
    for k, which in enumerate(plan):
        parts = list(torch.split(steps[k], sizes))
        zeros = [torch.zeros(n, device=device) for n in sizes]
        whole.load_w([p.to(device) for p in parts])
        whole.load_v(zeros)
        got = whole.compute(which, update_form=True)["counts"].cpu()
        for t in which:
            alone[t].load_w([parts[t].to(device)])
            alone[t].load_v([zeros[t]])
            want = alone[t].compute([0], update_form=True)["counts"].cpu()[0]
            assert got[t].tolist() == want.tolist(), (k, t)
        if k == 3:
            assert int(got[1, :len(BLOCK), 5].sum()) > 0  # tensor 1's flips since step 2
