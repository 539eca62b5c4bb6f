# amaranth: UnusedElaboratable=no
"""The BitLinear epilogue (hw/epilogue.py) on Verilator against golden.integer.rescale and the
residual add (sim/epilogue_tb.py): accumulators of each preset's width, both result widths the
decoder uses, idle and back-pressure, one element a cycle.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import pytest

from golden.integer import PROJECTION_BITS, RESIDUAL_BITS
from hw.config import preset
from hw.epilogue import Epilogue
from sim.units import simulate


@pytest.mark.parametrize("name, out_bits, lanes", [("tiny", PROJECTION_BITS, 1),
                                                   ("ulx3s-85f", PROJECTION_BITS, 1),
                                                   ("ulx3s-85f", RESIDUAL_BITS, 4)])
def test_epilogue_matches_golden(name, out_bits, lanes):
    result = simulate("epilogue", preset(name), seed=3, tiles=12,
                      options={"out_bits": out_bits, "lanes": lanes})
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    assert result.report["elements"] > 100


def test_parameters_are_checked():
    with pytest.raises(ValueError, match=r"out_bits must be an integer in \[2, 32\], not 40"):
        Epilogue(preset("tiny"), out_bits=40)
    with pytest.raises(ValueError, match=r"lanes must be an integer in \[1, 64\], not 0"):
        Epilogue(preset("tiny"), lanes=0)
