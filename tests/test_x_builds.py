"""X builds (``flow.verilator_build(x_random=True)``): no power-on values, Verilator's X
randomisation, every run's values drawn from its ``x_seed``."""

import re

import pytest
from amaranth.back import verilog

from hw.config import preset
from hw.device import Device
from sim.units import UNITS, simulate
from sw_driver import flow

from .test_regression import ignoring_reset

TINY = preset("tiny")


def test_an_x_build_has_no_power_on_values():
    # Without the resident units, whose tables are ROMs and keep their contents (the next test).
    text = verilog.convert(Device(TINY.offload_only()), name="top",
                           emit_src=False)
    assert re.search(r"^\s*reg\b[^;]*=", text, re.M) and "initial begin" in text
    stripped = flow.without_power_on_values(text)
    assert not re.search(r"^\s*reg\b[^;]*=", stripped, re.M)
    assert "initial" not in stripped
    # Only declarations changed: every other line is as it was.
    changed = set(text.splitlines()) - set(stripped.splitlines())
    assert all(re.match(r"\s*(reg\b|initial begin|end$|\S+\[\d+\] = )", line)
               for line in changed), sorted(changed)[:5]


def test_an_x_build_keeps_its_roms():
    """A memory nothing writes (the scalar unit's rsqrt and reciprocal tables) keeps its
    contents (the device's written memories lose theirs: the test above)."""
    from hw.dyadic import ScalarUnit

    text = verilog.convert(ScalarUnit(value_bits=48), name="top", emit_src=False)
    roms = re.findall(r"initial begin\n\s*(\S+)\[", text)
    assert roms and re.findall(r"initial begin\n\s*(\S+)\[",
                               flow.without_power_on_values(text)) == roms


def test_power_on_state_is_drawn_from_the_x_seed_and_reset_clears_it():
    """The status port before the first reset is what the X seed drew (the same for the same
    seed, not always idle), and reset clears it (``power_on_then_reset`` passes)."""
    seen = {}
    for x_seed in (1, 2, 3, 4, 1):
        result = simulate("top", TINY, x_seed=x_seed, testcase="power_on_then_reset")
        assert result.passed, (x_seed, result.failures)
        status = result.report["power_on_status"]
        assert seen.setdefault(x_seed, status) == status, f"x-seed {x_seed} did not repeat"
    assert any(seen.values()), f"every X seed powered up idle: {seen}"
    default = simulate("top", TINY, testcase="power_on_then_reset")
    assert default.passed and default.report["power_on_status"] == 0


def test_x_seeds_go_with_x_builds_only():
    unit = UNITS["top"]
    plain = flow.verilator_build(unit.component(TINY), unit=unit.name)
    with pytest.raises(ValueError, match="needs a build made with x_random=True"):
        flow.verilator_run(plain, test_module=unit.test_module, name="x", x_seed=3)
    x_build = flow.verilator_build(unit.component(TINY), unit=unit.name, x_random=True)
    assert x_build.build_dir != plain.build_dir and x_build.x_random
    with pytest.raises(ValueError, match="runs with an x_seed"):
        flow.verilator_run(x_build, test_module=unit.test_module, name="x")
    with pytest.raises(ValueError, match=r"x_seed must be an integer in \[1, 2147483647\]"):
        flow.verilator_run(x_build, test_module=unit.test_module, name="x", x_seed=0)


@pytest.mark.slow
def test_an_x_build_fails_a_device_that_ignores_its_reset():
    """Such a device powers up where Amaranth's power-on values put it, so a default build
    passes a test without a reset in the middle; an X build powers it up anywhere."""
    unit, device = UNITS["top"], ignoring_reset(Device)(TINY)
    for x_random, x_seed in ((False, None), (True, 1)):
        build = flow.verilator_build(device, unit=unit.name, x_random=x_random)
        result = flow.verilator_run(build, test_module=unit.test_module, name="resetless",
                                    params={"config": TINY.to_dict()},
                                    testcase="power_on_then_reset", x_seed=x_seed)
        assert result.passed != x_random, (x_seed, result.failures)
