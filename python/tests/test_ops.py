"""quantize / dequantize / encode / decode: agreement with an independent
reference and with libaltgrad's own functions bit for bit, the straight-
through gradient, dtype/device/layout handling, and misuse."""

import math

import numpy as np
import pytest
import torch

from altgrad import _lib
from altgrad.quantization import (E0M7, E1M6, E3M4, E5M2, E7M0, FORMAT_REGISTRY, FP8Format,
                                  DequantizeFunc, QuantizeFunc, decode, dequantize, encode,
                                  quantize)
from reference import quantize_ref, random_values, same_bits

SEED = [E0M7, E1M6, E3M4, E5M2, E7M0]
E4M3 = FP8Format("E4M3", 4, 3, 7, has_inf=False, has_nan=True)
SCALES = [1.0, 0.37, 2.0 ** -20, 1234.5]


def grid_midpoints(fmt):
    vals = [fmt.to_real(b) for b in range(128)]
    vals = [v for v in vals if math.isfinite(v)]
    mids = [(a + b) / 2 for a, b in zip(vals, vals[1:])]
    return torch.tensor(vals + mids + [-v for v in mids], dtype=torch.float32)


@pytest.mark.parametrize("fmt", SEED + [E4M3], ids=lambda f: f.name)
@pytest.mark.parametrize("scale", SCALES)
def test_quantize_matches_the_pure_torch_reference(fmt, scale):
    x = random_values(20000, seed=7) * scale
    x = torch.cat([x, grid_midpoints(fmt) * scale])
    got = quantize(x, fmt, scale)
    want = quantize_ref(x, fmt, scale)
    assert same_bits(got, want)


@pytest.mark.parametrize("fmt", SEED, ids=lambda f: f.name)
@pytest.mark.parametrize("scale", SCALES)
def test_quantize_agrees_with_the_c_encode_and_decode_bit_for_bit(fmt, scale):
    lib = _lib.lib()
    with np.errstate(over="ignore"):
        x = random_values(5000, seed=11).numpy() * np.float32(scale)
    bits = np.empty(x.size, dtype=np.uint8)
    back = np.empty(x.size, dtype=np.float32)
    assert lib.ag_encode_array(fmt._c(), scale, x.ctypes.data, bits.ctypes.data, x.size) == 0
    assert lib.ag_decode_array(fmt._c(), scale, bits.ctypes.data, back.ctypes.data,
                               x.size) == 0
    got = quantize(torch.from_numpy(x), fmt, scale)
    assert same_bits(got, torch.from_numpy(back))
    assert torch.equal(encode(torch.from_numpy(x), fmt, scale), torch.from_numpy(bits))
    assert same_bits(decode(torch.from_numpy(bits), fmt, scale), torch.from_numpy(back))
    # and element by element through ag_encode / ag_decode
    s32 = np.float32(scale)
    for v in x[:300]:
        b = lib.ag_encode(fmt._c(), float(np.float32(v) / s32))
        q = np.float32(lib.ag_decode(fmt._c(), b)) * s32
        assert same_bits(quantize(torch.tensor([float(v)]), fmt, scale),
                         torch.tensor([float(q)]))


def test_quantize_matches_ag_quantize_in_place():
    lib = _lib.lib()
    x = random_values(4096, seed=3).numpy()
    out = x.copy()
    lib.ag_quantize(E3M4._c(), 0.5, out.ctypes.data, out.ctypes.data, out.size)
    assert same_bits(quantize(torch.from_numpy(x), E3M4, 0.5), torch.from_numpy(out))


def test_quantize_gradient_is_straight_through():
    x = torch.tensor([1.0, 1e-9, 1e9, -3.3], requires_grad=True)
    y = quantize(x, FORMAT_REGISTRY["E5M2"], 1.0)
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_scale_receives_no_gradient():
    x = torch.randn(8, requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    y = dequantize(quantize(x, E5M2, s), s)
    y.sum().backward()
    assert s.grad is None
    assert torch.allclose(x.grad, torch.full((8,), 0.5))


def test_dequantize_multiplies_value_and_gradient_by_scale():
    x = torch.tensor([1.0, -2.0, 0.25], requires_grad=True)
    y = DequantizeFunc.apply(x, 4.0)
    assert torch.equal(y, torch.tensor([4.0, -8.0, 1.0]))
    y.backward(torch.ones(3))
    assert torch.equal(x.grad, torch.full((3,), 4.0))


def test_gradcheck_sees_identity_jacobian():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = QuantizeFunc.apply(x, E1M6, 1.0)
    (jac,) = torch.autograd.grad(y, x, torch.ones(5, dtype=torch.float64))
    assert torch.equal(jac, torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_are_quantized_in_float32_and_returned_in_their_dtype(dtype):
    x = torch.randn(64, 3).to(dtype)
    y = quantize(x, E3M4, 0.25)
    assert y.dtype == dtype and y.shape == x.shape
    want = quantize_ref(x.to(torch.float32), E3M4, 0.25).to(dtype)
    assert torch.equal(y, want)


def test_non_contiguous_input_keeps_its_shape_and_values():
    base = torch.randn(16, 32)
    x = base.t()[::2]
    assert not x.is_contiguous()
    y = quantize(x, E5M2, 1.0)
    assert y.shape == x.shape
    assert same_bits(y, quantize_ref(x.contiguous(), E5M2, 1.0))


def test_input_is_never_modified():
    x = torch.randn(100)
    keep = x.clone()
    quantize(x, E0M7, 3.0)
    dequantize(x, 3.0)
    assert torch.equal(x, keep)


def test_empty_and_zero_dim_tensors():
    assert quantize(torch.empty(0), E5M2, 1.0).shape == (0,)
    assert quantize(torch.empty(3, 0), E5M2, 1.0).shape == (3, 0)
    y = quantize(torch.tensor(0.3), E1M6, 1.0)
    assert y.shape == () and y.item() == E1M6.to_real(E1M6.to_bits(0.3))


def test_format_can_be_given_by_name():
    x = torch.randn(10)
    assert torch.equal(quantize(x, "E3M4", 1.0), quantize(x, E3M4, 1.0))


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf, 1e-50])
def test_invalid_scales_raise_value_error(scale):
    with pytest.raises(ValueError):
        quantize(torch.ones(3), E5M2, scale)
    with pytest.raises(ValueError):
        dequantize(torch.ones(3), scale)


def test_misuse_raises_clear_errors():
    with pytest.raises(ValueError):
        quantize(torch.ones(3), E5M2, torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError):
        quantize(torch.ones(3, dtype=torch.int32), E5M2, 1.0)
    with pytest.raises(TypeError):
        quantize([1.0, 2.0], E5M2, 1.0)
    with pytest.raises(TypeError):
        quantize(torch.ones(3), 5, 1.0)
    with pytest.raises(LookupError):
        quantize(torch.ones(3), "E9M9", 1.0)
    with pytest.raises(TypeError):
        decode(torch.ones(3), E5M2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_tensors_come_back_on_the_gpu():
    x = torch.randn(1000, device="cuda")
    y = quantize(x, E5M2, 1.0)
    assert y.device == x.device
    assert same_bits(y.cpu(), quantize(x.cpu(), E5M2, 1.0))
