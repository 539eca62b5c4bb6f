"""The PIM bank group on Verilator, checked by the cocotb testbench against golden/."""

import dataclasses

import pytest
from amaranth import Mux

from hw.config import PimConfig, preset
from hw.pim import PimBank
from hw.trit import Trit
from sw_driver import flow
from sim.units import UNITS, simulate

TINY = preset("tiny")
CONFIGS = {
    "tiny": TINY,
    # Odd sizes everywhere: 5 lanes leave max_k = 256 one lane into its last chunk (52 chunks),
    # and a depth of 136 is no power of two (no resident units: their vectors take 4 lanes).
    "3x5": dataclasses.replace(TINY, pim=PimConfig(banks=3, lanes=5, depth=136), resident=None),
    # More banks than one relay feeds: requests, chunks and weight writes cross a relay stage.
    "6x4": dataclasses.replace(TINY, pim=PimConfig(banks=6, lanes=4, depth=64), resident=None),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pim_matches_golden(name):
    result = simulate("pim", CONFIGS[name], seed=1, tiles=12)
    assert result.passed, result.failures
    assert result.tests == 3
    report = result.report
    assert report["concurrent_rows"] > 0
    assert report["tiles"] == 12 and report["gemvs"] > 12       # plus corner cases
    assert report["macs"] > 0 and report["cycles"] > 0
    assert report["efficiency"] >= 0.90


class SignFlipLaneBank(PimBank):
    """A broken engine: in the last lane, a -1 weight adds instead of subtracting."""

    def product(self, lane, trit, x):
        if lane == self.config.pim.lanes - 1:
            return Mux(trit == Trit.ZERO, 0, x)
        return super().product(lane, trit, x)


def test_broken_bank_is_caught():
    config, unit = TINY, UNITS["pim"]
    sim_build = flow.verilator_build(unit.component(config, bank=SignFlipLaneBank), unit=unit.name)
    result = flow.verilator_run(sim_build, test_module=unit.test_module, name="sign-flip-lane",
                           params={"config": config.to_dict(), "seed": 1, "tiles": 4})
    assert not result.passed
    assert any("expected" in failure for failure in result.failures), result.failures
