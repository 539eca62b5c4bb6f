"""The systolic array on Verilator, checked by the cocotb testbench against golden/."""

import dataclasses

import pytest
from amaranth import Mux

from hw.config import ArrayConfig, preset
from hw.pe import TernaryPE
from hw.trit import Trit
from sim.units import simulate

TINY = preset("tiny")
CONFIGS = {
    "4x4": TINY,
    "3x5": dataclasses.replace(TINY, array=ArrayConfig(rows=3, cols=5)),
    "1x1": dataclasses.replace(TINY, array=ArrayConfig(rows=1, cols=1)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_array_matches_golden(name):
    result = simulate("array", CONFIGS[name], seed=1, tiles=12)
    assert result.passed, result.failures
    assert result.tests == 3
    report = result.report
    assert report["tiles"] == 13 and report["macs"] > 0
    assert report["concurrent_tiles"] > 1
    assert report["utilisation"] >= report["utilisation_bound"] - 0.02


class SignFlipPE(TernaryPE):
    """A broken PE: a -1 weight adds instead of subtracting."""

    def product(self):
        return Mux(self.w == Trit.ZERO, 0, self.x_in)


class StuckZeroSkipPE(TernaryPE):
    """A broken PE: a zero weight passes the activation through."""

    def product(self):
        return Mux(self.w == Trit.NEG, -self.x_in, self.x_in)


@pytest.mark.parametrize("broken", [SignFlipPE, StuckZeroSkipPE])
def test_broken_pe_is_caught(broken):
    result = simulate("array", CONFIGS["3x5"], seed=1, tiles=4, pe=broken)
    assert not result.passed
    assert any("expected" in failure for failure in result.failures), result.failures
