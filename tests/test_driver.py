"""The driver on the behavioural device: mapping, both integer paths, whole-model runs."""

import dataclasses

import numpy as np
import pytest

from golden import Model, ModelConfig, ModelWeights, input_groups
from golden.bitlinear import bitlinear_int
from hw.config import PimConfig, preset
from hw.placement import MappingError, Placement, place
from sw_driver import mapper
from sw_driver.behavioural import BehaviouralTransport
from sw_driver.driver import Accelerator, DeviceError
from sw_driver.mapper import DeviceCore
from sw_driver.run import run

HW = dataclasses.replace(preset("tiny"), pim=PimConfig(banks=2, lanes=4, depth=256),
                         resident=None)
MICRO = ModelConfig(hidden=16, layers=1, heads=2, kv_heads=1, ffn=24, vocab=64, max_seq=32)


def test_placement_is_row_interleaved_and_resident():
    placements = place({"a": (5, 9), "b": (4, 4)}, HW)
    assert placements["a"] == dataclasses.replace(placements["a"], base=0, rows=3,
                                                  words_per_row=3)
    assert placements["b"].base == 9 and placements["b"].rows == 2


def test_placement_errors_name_the_matrix():
    with pytest.raises(MappingError, match=r"^big: the model needs at least 300 words per bank,"
                                           r" the device has 256"):
        place({"big": (2, 4 * 300)}, dataclasses.replace(HW, max_k=2048))
    with pytest.raises(MappingError, match=r"^wide: K = 300 exceeds the device's max_k = 256"):
        place({"wide": (2, 300)}, HW)
    # The first matrix that does not fit is the one named.
    with pytest.raises(MappingError, match=r"^deep: the model needs at least 300 words"):
        place({"deep": (2 * 300, 4), "wide": (2, 300)}, HW)


def test_the_mapper_places_with_hw_placement():
    """One placement for the driver and the resident core: the mapper's names are hw's."""
    assert (mapper.place, mapper.Placement, mapper.MappingError) == \
        (place, Placement, MappingError)


@pytest.mark.parametrize("tokens", [1, 7])
def test_device_core_matches_golden_on_both_paths(tokens):
    weights = ModelWeights.random(MICRO, seed=4)
    core = DeviceCore(Accelerator(BehaviouralTransport(HW), HW), weights.linears,
                      prefill="array")
    rng = np.random.default_rng(0)
    for name, weight in weights.linears.items():
        x_q = rng.integers(-128, 128, (tokens, weight.trits.shape[1])).astype(np.int8)
        np.testing.assert_array_equal(core(name, x_q), bitlinear_int(x_q, weight.trits))
    assert core.calls["gemv" if tokens == 1 else "gemm"] > 0


def test_run_is_bit_exact_with_golden():
    weights = ModelWeights.random(MICRO, seed=2)
    result = run(BehaviouralTransport(HW), HW, MICRO, weights, [1, 2, 3, 4, 5], 6, check=True)
    assert result.checked is True
    assert result.tokens == Model(MICRO, weights).generate([1, 2, 3, 4, 5], 6)
    assert result.cycles_per_token > 0 and result.prefill_cycles > 0
    assert 0 < result.bank_bound_fraction <= 1 and result.link_tokens_per_s > 0


def test_a_broken_device_fails_the_check():
    weights = ModelWeights.random(MICRO, seed=2)
    transport = BehaviouralTransport(HW)
    gemv = transport.device._gemv
    transport.device._gemv = lambda *args: gemv(*args) + 1          # off by one everywhere
    result = run(transport, HW, MICRO, weights, [1, 2, 3], 3, check=True)
    assert result.checked is False and "device" in result.first_mismatch


def test_device_errors_are_named():
    accelerator = Accelerator(BehaviouralTransport(HW), HW)
    accelerator.write_weights(7, 0, np.zeros((1, 4), np.int8))       # bank 7 of 2
    with pytest.raises(DeviceError, match="device error BAD_BANK"):
        accelerator.check()
    accelerator.clear_errors()
    accelerator.check()


def test_groups_share_one_load_and_one_gemv_and_prefill_goes_to_the_faster_unit():
    """q|k|v and gate|up: one LOAD_ACTS and one GEMV a token each; several tokens go where the
    command timing says."""
    weights = ModelWeights.random(MICRO, seed=4)
    accelerator = Accelerator(BehaviouralTransport(HW), HW)
    core = DeviceCore(accelerator, weights.linears, groups=input_groups(MICRO))
    x_q = np.random.default_rng(1).integers(-128, 128, (1, MICRO.hidden)).astype(np.int8)
    prefix = "layers.0.self_attn."
    for name in ("q_proj", "k_proj", "v_proj"):
        np.testing.assert_array_equal(core(prefix + name, x_q),
                                      bitlinear_int(x_q, weights.linears[prefix + name].trits))
    assert core.calls == {"gemv": 1, "gemm": 0, "load_acts": 1}
    tokens = np.repeat(x_q, 4, axis=0)
    core(prefix + "q_proj", tokens)
    group = core.schedule.group(prefix + "q_proj")
    assert core.calls["gemm"] == 0 and core.schedule.unit(group, 4) == "banks"
    assert core.schedule.cost(group, 4, "banks") < core.schedule.cost(group, 4, "array")
    with pytest.raises(MappingError, match="cannot share a GEMV"):
        DeviceCore(accelerator, weights.linears, groups=[(prefix + "q_proj", prefix + "o_proj")])
