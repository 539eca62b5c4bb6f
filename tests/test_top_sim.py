"""The whole device on Verilator: command stream, bad commands, reset, fuzz, efficiency."""

import dataclasses

import pytest

from hw.commands import CommandFormat
from hw.config import ArrayConfig, PimConfig, apply_overrides, preset
from hw.device import Device
from sim.stimulus import bad_commands
from sim.units import simulate
from sw_driver import flow

from .test_array_sim import SignFlipPE


def test_top_matches_model_and_golden():
    result = simulate("top", preset("tiny"), seed=3, tiles=8)
    assert result.passed, result.failures
    assert result.tests == 10
    report = result.report
    resident = report["resident"]
    assert resident["sequences"] == 3 and resident["generated"] >= 5   # on the resident units
    assert 1 <= resident["reset_after_tokens"] < 4       # reset while the tokens flowed
    assert report["fuzz_words"] >= 10_000
    assert report["bad_commands"] >= len(bad_commands(CommandFormat(preset("tiny"))))
    assert report["gemvs"] > 0 and report["gemms"] > 0
    assert 0 < report["efficiency"] <= 1
    assert report["power_on_status"] == 0                 # Amaranth's power-on values
    assert report["longest_reduction"] == [-128 * 256, 128 * 256]   # max_k 256
    assert set(report["reset_in_the_middle"]) == {"GEMV", "GEMM", "WRITE_WEIGHTS",
                                                  "LOAD_ACTS", "LOAD_TILE", "READ_COUNTERS"}


def test_top_with_one_element_beats_matches_model_and_golden():
    """One bank and one column: each result beat is one word, popped with it (hw.device)."""
    config = dataclasses.replace(preset("tiny"), array=ArrayConfig(rows=4, cols=1),
                                 pim=PimConfig(banks=1, lanes=4, depth=64), resident=None)
    result = simulate("top", config, seed=5, tiles=4, extra_params={"fuzz_words": 2_000})
    assert result.passed, result.failures
    assert result.report["gemvs"] > 0 and result.report["gemms"] > 0


def test_int8_device_matches_model_and_golden():
    """The int8 PE end to end: tile rows of 8-bit weights from the command format, through the
    device, against the behavioural device and golden's integer product."""
    config = apply_overrides(preset("tiny"), ["pe=int8"])
    result = simulate("top", config, seed=6, tiles=6, extra_params={"fuzz_words": 2_000})
    assert result.passed, result.failures
    assert result.report["gemms"] > 0


def test_top_with_broken_pe_fails():
    result = simulate("top", preset("tiny"), seed=3, tiles=4, pe=SignFlipPE)
    assert not result.passed
    assert any("GEMM" in failure for failure in result.failures), result.failures
    assert any(failure.startswith("regression: seed 3, operation") for failure in
               result.failures), result.failures


@pytest.mark.slow
def test_top_default_preset_efficiency():
    result = simulate("top", preset("default"), seed=0, tiles=16)
    assert result.passed, result.failures
    assert result.report["efficiency"] >= 0.90


@pytest.mark.parametrize("name", ["tiny", "one-element beats"])
def test_cycle_model_meets_the_rtl_under_any_host(name):
    """Host pauses and back-pressure: every response word leaves in the cycle, and with the
    value, the cycle model (sw_driver.cycles) says, every cycle counter included."""
    config = preset("tiny") if name == "tiny" else dataclasses.replace(
        preset("tiny"), array=ArrayConfig(rows=4, cols=1), resident=None,
        pim=PimConfig(banks=1, lanes=4, depth=64))
    build = flow.verilator_build(Device(config), unit="top",
                                 metadata={"config": config.to_dict()})
    for seed in (1, 2):
        result = flow.verilator_run(build, test_module="sim.timing_tb", name=f"timing{seed}",
                                    params={"config": config.to_dict(), "seed": seed})
        assert result.passed, (seed, result.failures)
        assert result.tests == 2
        report = result.report
        assert report["cycles_stalled"] > 0 and report["cycles_idle"] > 0, report
