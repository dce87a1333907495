"""quantize / dequantize on the C kernels, as autograd functions.

quantize(x, fmt, scale) = decode(encode(x / scale)) * scale computed by
ag_quantize_checked in float32; its gradient is the identity (straight-through
estimator). dequantize(x, scale) = x * scale; its gradient is grad * scale.
Neither passes a gradient to scale. encode/decode expose the raw patterns.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import Tensor

from .. import _lib
from ..errors import check
from ._torchbuf import as_c_input, like_input, scale_value
from .formats import BlockFormat, FP8Format, get_format


def _quantize_tensor(x: Tensor, fmt: FP8Format, s: float) -> Tensor:
    src = as_c_input(x)
    if isinstance(fmt, BlockFormat):  # blocks along the flattened tensor
        from .. import _device
        out = src.reshape(-1)
        if out.numel():
            out = _device.block_quantize(_device.format_params(fmt.name), s, out)
        return like_input(out.reshape(src.shape), x)
    out = torch.empty_like(src, memory_format=torch.contiguous_format)
    if src.numel():
        check(_lib.lib().ag_quantize_checked(fmt._c(), s, src.data_ptr(), out.data_ptr(),
                                             src.numel()))
    return like_input(out, x)


def _dequantize_tensor(x: Tensor, s: float) -> Tensor:
    src = as_c_input(x)
    out = torch.empty_like(src, memory_format=torch.contiguous_format)
    if src.numel():
        check(_lib.lib().ag_dequantize(s, src.data_ptr(), out.data_ptr(), src.numel()))
    return like_input(out, x)


class QuantizeFunc(torch.autograd.Function):
    """Forward: quantize to the format's values (C kernel). Backward: the
    gradient passes unchanged to x; format and scale get none."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, format: FP8Format, scale) -> Tensor:
        return _quantize_tensor(x, get_format(format), scale_value(scale))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Tensor, None, None]:
        return grad_output, None, None


class DequantizeFunc(torch.autograd.Function):
    """Forward: x * scale. Backward: grad * scale to x, nothing to scale."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale) -> Tensor:
        s = scale_value(scale)
        ctx.scale = s
        return _dequantize_tensor(x, s)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Tensor, None]:
        return grad_output * ctx.scale, None


def quantize(x: Tensor, format: FP8Format, scale) -> Tensor:
    """Values of x rounded to `format` under a per-tensor `scale` (a positive
    number or one-element tensor); same shape, device and dtype as x, with a
    straight-through gradient. A block-scaled format (MXFP4, NVFP4, ...)
    rounds each block of the flattened x at its own block scale, `scale`
    being the tensor scale (1 for MX; docs/numerics.md, Block scaling)."""
    return QuantizeFunc.apply(x, format, scale)


def dequantize(x: Tensor, scale) -> Tensor:
    """x * scale, with gradient grad * scale."""
    return DequantizeFunc.apply(x, scale)


def _per_tensor(format, what: str) -> FP8Format:
    fmt = get_format(format)
    if isinstance(fmt, BlockFormat):
        raise ValueError(f"{what}: {fmt.name} is block-scaled; its patterns need block scales "
                         "(quantize gives its values)")
    return fmt


def encode(x: Tensor, format: FP8Format, scale=1.0) -> Tensor:
    """The patterns of x / scale in `format`, a CPU tensor of x's shape (no
    gradient): uint8 for formats of 8 bits or fewer, int32 (0..65535) for
    wider ones."""
    fmt = _per_tensor(format, "encode")
    s = scale_value(scale)
    src = as_c_input(x)
    wide = fmt.bits > 8
    out = torch.empty(src.shape, dtype=torch.int16 if wide else torch.uint8)
    if src.numel():
        check(_lib.lib().ag_encode_array(fmt._c(), s, src.data_ptr(), out.data_ptr(),
                                         src.numel()))
    return (out.to(torch.int32) & 0xFFFF) if wide else out


def decode(bits: Tensor, format: FP8Format, scale=1.0) -> Tensor:
    """decode(bits) * scale as a float32 CPU tensor of bits' shape. bits:
    uint8 patterns, or (any width) an integer tensor of patterns."""
    fmt = _per_tensor(format, "decode")
    s = scale_value(scale)
    if not isinstance(bits, Tensor):
        raise TypeError(f"bits must be a torch.Tensor, got {type(bits).__name__}")
    if bits.dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"bits must be a uint8 tensor (or int16/int32/int64 patterns), "
                        f"got {bits.dtype}")
    src = bits.detach().to("cpu")
    if fmt.bits > 8:
        src = ((src.to(torch.int32) & 0xFFFF) ^ 0x8000) - 0x8000  # as int16, bit for bit
        src = src.to(torch.int16)
    elif src.dtype != torch.uint8:
        src = (src & 0xFF).to(torch.uint8)
    src = src.contiguous()
    out = torch.empty(src.shape, dtype=torch.float32)
    if src.numel():
        check(_lib.lib().ag_decode_array(fmt._c(), s, src.data_ptr(), out.data_ptr(),
                                         src.numel()))
    return out


__all__ = ["QuantizeFunc", "DequantizeFunc", "quantize", "dequantize", "encode", "decode"]
