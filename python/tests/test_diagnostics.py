"""Bit-stall detection through the Python API: the seed's check, agreement
with a torch computation on the quantize kernel, update form, and misuse."""

import math

import pytest
import torch

from altgrad.quantization import (E0M7, E1M6, E3M4, E5M2, E7M0, FORMAT_REGISTRY,
                                  BitStallDetector, detect_bit_stall, detect_bit_stall_update,
                                  quantize, stall_counts)
from reference import quantize_ref

SEED = [E0M7, E1M6, E3M4, E5M2, E7M0]


def test_seed_check_stalls_every_element():
    w = torch.ones(100)
    g = torch.full((100,), 1e-4)
    stall, total = detect_bit_stall(w, g, 0.01, FORMAT_REGISTRY["E5M2"], torch.tensor(1.0))
    assert (stall, total) == (100, 100)


def test_large_updates_do_not_stall():
    w = torch.ones(50)
    g = torch.ones(50)
    assert detect_bit_stall(w, g, 0.5, E5M2, 1.0) == (0, 50)


def test_tiny_gradients_are_not_counted_in_total():
    w = torch.ones(4)
    g = torch.tensor([0.0, 1e-11, 1e-9, -1.0])
    stall, total = detect_bit_stall(w, g, 1e-12, E5M2, 1.0)
    assert total == 2 and stall == 2


@pytest.mark.parametrize("fmt", SEED, ids=lambda f: f.name)
@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_stall_counts_agree_with_the_definition(fmt, scale):
    g0 = torch.Generator().manual_seed(5)
    w = torch.randn(10000, generator=g0) * scale * 4
    g = torch.randn(10000, generator=g0) * torch.pow(10.0, torch.randint(-12, 1, (10000,),
                                                                         generator=g0).float())
    lr = 0.05
    stall, total = detect_bit_stall(w, g, lr, fmt, scale)
    w_new = w + (-lr * g)
    moving = g.abs() > 1e-10
    same = quantize_ref(w_new, fmt, scale) == quantize_ref(w, fmt, scale)
    same |= torch.isnan(quantize_ref(w, fmt, scale)) & torch.isnan(quantize_ref(w_new, fmt,
                                                                                 scale))
    assert total == int(moving.sum())
    assert stall == int((moving & same).sum())
    assert 0 < total


def test_update_form_counts_nonzero_updates():
    w = torch.tensor([1.0, 1.0, 1.0, 2.0])
    u = torch.tensor([0.0, 1e-3, 0.5, -1.0])
    assert detect_bit_stall_update(w, u, E5M2, 1.0) == (1, 3)
    w_new = w + u
    same = (quantize(w_new, E5M2, 1.0) == quantize(w, E5M2, 1.0)) & (u != 0)
    assert int(same.sum()) == 1


def test_stall_counts_report_overflow_underflow_and_nonfinite():
    w = torch.tensor([1e6, 1e-9, 0.0, math.nan, 1.0])
    g = torch.tensor([1.0, 1.0, 1.0, 1.0, math.inf])
    c = stall_counts(w, g, 0.1, E3M4, 1.0)
    assert c["overflow"] == 1
    assert c["underflow"] == 1
    assert c["nonfinite"] == 2
    assert c["total"] == 3


def test_detector_accumulates_over_updates():
    d = BitStallDetector()
    assert d.get_stall_rate() == 0.0
    d.update(torch.ones(100), torch.full((100,), 1e-4), 0.01, E5M2, torch.tensor(1.0))
    d.update(torch.ones(100), torch.ones(100), 0.5, E5M2, torch.tensor(1.0))
    assert d.get_stats() == {"stall_rate": 0.5, "stall_count": 100, "total_count": 200,
                             "steps": 2}
    d.reset()
    assert d.get_stats()["steps"] == 0 and d.get_stall_rate() == 0.0


def test_stall_detection_misuse_raises():
    with pytest.raises(ValueError):
        detect_bit_stall(torch.ones(3), torch.ones(4), 0.1, E5M2, 1.0)
    with pytest.raises(ValueError):
        detect_bit_stall(torch.ones(3), torch.ones(3), math.nan, E5M2, 1.0)
    with pytest.raises(ValueError):
        detect_bit_stall(torch.ones(3), torch.ones(3), 0.1, E5M2, 0.0)
    with pytest.raises(TypeError):
        detect_bit_stall(torch.ones(3), [1.0, 1.0, 1.0], 0.1, E5M2, 1.0)
    assert detect_bit_stall(torch.ones(0), torch.ones(0), 0.1, E5M2, 1.0) == (0, 0)
