"""Amax history and compute_scale through the Python API."""

import math

import pytest
import torch

from altgrad.quantization import (E0M7, E3M4, E5M2, E7M0, AmaxHistory, ScalingConfig,
                                  compute_scale)


def test_empty_history_answers_one():
    h = AmaxHistory()
    assert len(h) == 0 and h.get_amax() == 1.0 and h.history_len == 16


def test_history_keeps_the_max_of_the_last_len_values():
    h = AmaxHistory(4)
    for i in [1, 2, 3, 4]:
        h.update(torch.tensor([i * 10.0, -i * 1.0]))
    assert len(h) == 4 and h.get_amax() == 40.0
    h.update(torch.tensor([1.0]))
    assert h.values() == [20.0, 30.0, 40.0, 1.0]
    for _ in range(3):
        h.update(torch.tensor([1.0]))
    assert h.get_amax() == 1.0 and len(h) == 4


def test_amax_is_taken_over_absolute_values():
    h = AmaxHistory(2)
    h.update(torch.tensor([0.5, -7.0, 3.0]))
    assert h.get_amax() == 7.0


def test_nan_and_inf_elements_are_counted_not_folded_into_amax():
    h = AmaxHistory(4)
    h.update(torch.tensor([1.0, math.nan, -math.inf, 2.5]))
    assert h.get_amax() == 2.5
    assert h.nonfinite == 2
    h.update(torch.tensor([math.nan]))  # no finite element: pushes nothing
    assert len(h) == 1


def test_most_recent_mode_answers_the_newest_value():
    h = AmaxHistory(4, mode="most_recent")
    for v in [5.0, 9.0, 2.0]:
        h.update(torch.tensor([v]))
    assert h.get_amax() == 2.0


def test_reset_empties_the_history():
    h = AmaxHistory(3)
    h.update(torch.tensor([4.0]))
    h.reset()
    assert len(h) == 0 and h.get_amax() == 1.0


def test_update_accepts_numbers_and_any_float_tensor():
    h = AmaxHistory(8)
    h.update(3.0)
    h.update(torch.tensor([[-6.0]], dtype=torch.float64))
    h.update(torch.arange(10, dtype=torch.float16)[::3])
    assert h.values() == [3.0, 6.0, 9.0]


def test_compute_scale_maps_amax_onto_the_largest_value():
    assert compute_scale(57344.0, E5M2) == 1.0
    assert compute_scale(124.0 * 2, E3M4) == 2.0
    assert compute_scale(0.0, E5M2) == 1e-10
    assert compute_scale(1e-20, E0M7, scale_min=1e-6) == 1e-6
    assert compute_scale(torch.tensor(2.0 ** 64), E7M0) == 1.0


def test_seed_scaling_example_gives_a_positive_scale():
    h = AmaxHistory(4)
    for i in [1, 2, 3, 4]:
        h.update(torch.tensor([i * 10.0]))
    s = compute_scale(h.get_amax(), E5M2)
    assert s == pytest.approx(40.0 / 57344.0)


@pytest.mark.parametrize("amax,scale_min", [(-1.0, 1e-10), (math.nan, 1e-10),
                                             (1.0, 0.0), (1.0, math.inf)])
def test_compute_scale_rejects_bad_inputs(amax, scale_min):
    with pytest.raises(ValueError):
        compute_scale(amax, E5M2, scale_min)


def test_history_misuse_raises():
    for bad in (0, -3, 65537):
        with pytest.raises(ValueError):
            AmaxHistory(bad)
    with pytest.raises(TypeError):
        AmaxHistory(2.5)
    with pytest.raises(ValueError):
        AmaxHistory(4, mode="mean")
    with pytest.raises(TypeError):
        AmaxHistory(4).update("x")
    with pytest.raises(TypeError):
        AmaxHistory(4).update(torch.tensor([1, 2]))


def test_scaling_config_defaults_and_validation():
    c = ScalingConfig()
    assert (c.history_len, c.scale_min, c.amax_mode) == (16, 1e-10, "max")
    assert AmaxHistory.from_config(ScalingConfig(history_len=3)).history_len == 3
    with pytest.raises(ValueError):
        ScalingConfig(history_len=0)
    with pytest.raises(ValueError):
        ScalingConfig(scale_min=-1.0)
    with pytest.raises(ValueError):
        ScalingConfig(amax_mode="min")
