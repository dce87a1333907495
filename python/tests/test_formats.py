"""Formats through the Python API: the registry, every pattern of every format,
rounding rules, and format definition errors."""

import ctypes
import math

import pytest

from altgrad import FormatError
from altgrad import _lib
from altgrad.quantization import (E0M7, E1M6, E3M4, E5M2, E7M0, FORMAT_REGISTRY, FP8Format,
                                  get_format, registered_formats)
from reference import decode_ref

SEED = [E0M7, E1M6, E3M4, E5M2, E7M0]
E4M3 = FP8Format("E4M3", 4, 3, 7, has_inf=False, has_nan=True)
E2M5 = FP8Format("E2M5", 2, 5, 1)
ALL = SEED + [E4M3, E2M5]
IDS = [f.name for f in ALL]


def is_nan_pattern(fmt, b):
    return math.isnan(decode_ref(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias,
                                 fmt.has_inf, fmt.has_nan, b))


def test_registry_holds_the_five_seed_formats():
    assert sorted(FORMAT_REGISTRY) == ["E0M7", "E1M6", "E3M4", "E5M2", "E7M0"]
    assert [registered_formats()[n] for n in FORMAT_REGISTRY] == SEED
    for name, fmt in FORMAT_REGISTRY.items():
        assert fmt.name == name
        assert get_format(name) is fmt


@pytest.mark.parametrize("fmt,E,M,bias,inf,nan,smallest,largest", [
    (E0M7, 0, 7, 0, False, False, 1 / 128, 127 / 128),
    (E1M6, 1, 6, 0, False, False, 1 / 32, 3.96875),
    (E3M4, 3, 4, 1, False, False, 1 / 16, 124.0),
    (E5M2, 5, 2, 15, True, True, 2.0 ** -16, 57344.0),
    (E7M0, 7, 0, 63, False, False, 2.0 ** -62, 2.0 ** 64),
], ids=[f.name for f in SEED])
def test_seed_formats_have_the_design_parameters(fmt, E, M, bias, inf, nan, smallest,
                                                 largest):
    assert (fmt.exponent_bits, fmt.mantissa_bits, fmt.bias) == (E, M, bias)
    assert (fmt.has_inf, fmt.has_nan) == (inf, nan)
    assert fmt.max_representable_value == largest
    assert fmt.min_representable_value == smallest


@pytest.mark.parametrize("fmt", ALL, ids=IDS)
def test_every_pattern_decodes_as_the_formula_says(fmt):
    for b in range(256):
        want = decode_ref(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.has_inf,
                          fmt.has_nan, b)
        got = fmt.to_real(b)
        if math.isnan(want):
            assert math.isnan(got), (fmt.name, b)
        else:
            assert got == want, (fmt.name, b, got, want)
            assert math.copysign(1, got) == math.copysign(1, want), (fmt.name, b)


@pytest.mark.parametrize("fmt", ALL, ids=IDS)
def test_roundtrip_all_bit_patterns(fmt):
    """encode(decode(b)) == b for every finite pattern; -0 may come back as
    either zero and every NaN pattern as the canonical NaN."""
    for b in range(256):
        v = fmt.to_real(b)
        back = fmt.to_bits(v)
        if is_nan_pattern(fmt, b):
            assert is_nan_pattern(fmt, back), (fmt.name, b, back)
            assert fmt.to_bits(math.nan) == back
        elif v == 0.0:
            assert back in (0x00, 0x80), (fmt.name, b, back)
        else:
            assert back == b, (fmt.name, hex(b), v, hex(back))


@pytest.mark.parametrize("fmt", ALL, ids=IDS)
def test_the_struct_mirror_reads_every_field(fmt):
    # Guards the ctypes mirror of struct ag_format: a layout slip shows here.
    c = fmt._c().contents
    assert c.name.decode() == fmt.name
    assert (c.exponent_bits, c.mantissa_bits, c.bias) == (fmt.exponent_bits,
                                                          fmt.mantissa_bits, fmt.bias)
    assert c.bits == 8 and c.pattern_bytes == 1 and c.bits == fmt.bits
    assert c.nan_mode == (1 if fmt.has_inf else 2 if fmt.has_nan else 0)
    assert c.max_finite == fmt.max_representable_value


@pytest.mark.parametrize("fmt", ALL, ids=IDS)
def test_ties_go_to_the_even_mantissa(fmt):
    for b in range(0, 126):
        lo, hi = fmt.to_real(b), fmt.to_real(b + 1)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        mid = (lo + hi) / 2
        want = b if (fmt.mantissa_bits == 0 or b % 2 == 0) else b + 1
        assert fmt.to_bits(mid) == want, (fmt.name, b, mid)
        assert fmt.to_bits(-mid) == 0x80 | want


def test_e7m0_tie_goes_to_the_smaller_power_of_two():
    assert E7M0.to_bits(3.0) == E7M0.to_bits(2.0)
    assert E7M0.to_bits(3.0000002) == E7M0.to_bits(4.0)


def test_e5m2_overflows_to_inf_from_max_plus_half_an_ulp():
    mx, half_ulp = 57344.0, 4096.0
    assert E5M2.to_real(E5M2.to_bits(mx + half_ulp - 8)) == mx
    assert E5M2.to_real(E5M2.to_bits(mx + half_ulp)) == math.inf
    assert E5M2.to_real(E5M2.to_bits(-1e30)) == -math.inf
    assert E5M2.to_real(E5M2.to_bits(math.inf)) == math.inf
    assert math.isnan(E5M2.to_real(E5M2.to_bits(math.nan)))


@pytest.mark.parametrize("fmt", [E0M7, E1M6, E3M4, E7M0], ids=lambda f: f.name)
def test_formats_without_inf_saturate(fmt):
    mx = fmt.max_representable_value
    assert fmt.to_real(fmt.to_bits(mx * 4)) == mx
    assert fmt.to_real(fmt.to_bits(math.inf)) == mx
    assert fmt.to_real(fmt.to_bits(-math.inf)) == -mx
    assert fmt.to_bits(math.nan) == 0


@pytest.mark.parametrize("fmt", ALL, ids=IDS)
def test_magnitudes_below_half_the_smallest_become_signed_zero(fmt):
    tiny = fmt.min_representable_value / 2
    assert fmt.to_bits(tiny) == 0x00
    assert fmt.to_bits(-tiny) == 0x80
    assert fmt.to_bits(math.nextafter(tiny, 1.0) * 1.0000001) == 0x01


def test_defining_a_further_format_registers_it_in_c():
    assert E4M3.max_representable_value == 448.0
    assert get_format("E4M3") == E4M3
    assert "E4M3" in registered_formats()
    assert FP8Format("E4M3", 4, 3, 7, False, True) == E4M3  # identical again: fine


@pytest.mark.parametrize("args", [
    ("BAD1", 8, 8, 7, False, False),     # E + M > 15
    ("BAD2", 5, 2, 15, True, False),     # inf without NaN
    ("BAD3", 0, 7, 0, False, True),      # NaN in fixed point
    ("bad name", 4, 3, 7, False, False),  # space in the name
    ("", 4, 3, 7, False, False),
    ("X" * 16, 4, 3, 7, False, False),   # name too long
])
def test_impossible_or_conflicting_formats_are_rejected(args):
    with pytest.raises(FormatError):
        FP8Format(*args)


def test_formats_are_plain_values_that_may_share_a_name():
    """The seed's FP8Format is a value: any number may share a name. One whose
    name the C registry holds for another format works by its own fields."""
    a = FP8Format(name="test", exponent_bits=4, mantissa_bits=3, bias=7, has_nan=True)
    b = FP8Format(name="test", exponent_bits=5, mantissa_bits=2, bias=15)
    assert a.name == b.name == "test" and a != b
    assert a.max_representable_value == 448.0
    assert b.max_representable_value == 114688.0       # E5M2 without inf: 1.75 * 2^16
    assert b.to_real(0x7C) == 65536.0                  # a number here, inf in the seed's E5M2
    assert E5M2.to_real(0x7C) == float("inf")
    plain = FP8Format("E5M2", 5, 2, 15, False, False)  # the seed's name, other fields
    assert plain != E5M2 and plain.to_real(0x7C) == 65536.0
    assert FORMAT_REGISTRY["E5M2"] is E5M2 and E5M2.to_real(0x7C) == float("inf")
    assert FP8Format("test", 5, 2, 15) == b            # the same value again
    assert b.to_bits(b.to_real(0x51)) == 0x51
    from altgrad.quantization import registered_formats
    assert all(not n.startswith("_") for n in registered_formats())


def test_history_len_below_one_raises_the_seeds_message():
    from altgrad.quantization import AmaxHistory
    from altgrad.quantization.scaling import ScalingConfig
    for bad in (0, -3):
        with pytest.raises(ValueError, match="history_len must be positive"):
            AmaxHistory(history_len=bad)
        with pytest.raises(ValueError, match="history_len must be positive"):
            ScalingConfig(history_len=bad)


def test_misuse_of_the_transfer_functions_raises():
    with pytest.raises(ValueError):
        E5M2.to_real(256)
    with pytest.raises(ValueError):
        E5M2.to_real(-1)
    with pytest.raises(TypeError):
        E5M2.to_real(1.5)
    with pytest.raises((TypeError, ValueError)):
        E5M2.to_bits("one")
    with pytest.raises(TypeError):
        FP8Format("E4M3", 4.0, 3, 7)
    with pytest.raises(LookupError):
        get_format("E9M9")


def test_formats_are_frozen_and_hashable():
    with pytest.raises(Exception):
        E5M2.bias = 3
    assert {E5M2: 1}[FORMAT_REGISTRY["E5M2"]] == 1


def test_library_reports_its_path_and_version():
    import altgrad
    assert altgrad.version() == "0.2.0" == altgrad.__version__
    assert altgrad.library_path()
    # ... + block, the element pointer, scale_kind, tail padding (x86-64)
    assert ctypes.sizeof(_lib.ag_format) == 16 + 5 * 4 + 2 * 4 + 2 * 4 + 4 * 4 + 4 + 8 + 4 + 4


def test_block_scaled_formats_are_listed_but_not_per_tensor_formats():
    import altgrad
    from altgrad.quantization import BlockFormat
    names = [f.name for f in altgrad.list_formats()]
    assert "E2M1" in names and "MXFP4" in names and "NVFP4" in names
    assert isinstance(altgrad.get_format("MXFP4"), BlockFormat)
    assert not isinstance(altgrad.get_format("MXFP4"), FP8Format)
