"""altgrad.quantization: the seed quantization engine's API on libaltgrad.

Formats (FP8Format, E0M7 ... E7M0, FORMAT_REGISTRY), quantize/dequantize with a
straight-through gradient, amax history and scales, and bit-stall detection.
The numerics run in C (core/); this package only moves tensors in and out.
"""

from .formats import (E0M7, E1M6, E3M4, E5M2, E7M0, FORMAT_REGISTRY, BlockFormat, FP8Format,
                      get_format, list_formats, registered_formats)
from .ops import DequantizeFunc, QuantizeFunc, decode, dequantize, encode, quantize
from .scaling import AmaxHistory, ScalingConfig, compute_scale
from .diagnostics import (BitStallDetector, detect_bit_stall, detect_bit_stall_update,
                          stall_counts)

__all__ = [
    "FP8Format", "BlockFormat", "E0M7", "E1M6", "E3M4", "E5M2", "E7M0", "FORMAT_REGISTRY", "get_format",
    "registered_formats", "list_formats",
    "QuantizeFunc", "DequantizeFunc", "quantize", "dequantize", "encode", "decode",
    "ScalingConfig", "AmaxHistory", "compute_scale",
    "detect_bit_stall", "detect_bit_stall_update", "stall_counts", "BitStallDetector",
]
