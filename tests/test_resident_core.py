# amaranth: UnusedElaboratable=no
"""The resident decoder's core (hw/resident_core.py) on Verilator against golden's integer
decoder (sim/resident_core_tb.py): a random model of the tiny preset's resident shape (two
layers) loaded once, prompts prefilled and decoded greedily, every token and its logit equal
to ``IntegerModel.forward``'s, one sequence to max_seq, idle on the loads and back-pressure on
the tokens.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import dataclasses

import pytest

from hw.config import preset
from hw.resident_core import ResidentCore
from sim.units import simulate

SEQUENCES = 3


def test_resident_core_matches_golden():
    tiny = preset("tiny")
    result = simulate("resident-core", tiny, seed=0, tiles=SEQUENCES)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    report = result.report
    assert report["sequences"] == SEQUENCES and tiny.resident.max_seq in report["positions"]
    assert report["generated"] >= 2 * SEQUENCES
    assert report["decode_cycles"], "no token was timed"


def test_the_core_needs_resident_units_that_fit_the_banks():
    tiny = preset("tiny")
    with pytest.raises(ValueError, match="no resident units"):
        ResidentCore(preset("default"))
    with pytest.raises(ValueError, match=r"pim.depth \(512\) must be at least 576"):
        dataclasses.replace(tiny, pim=dataclasses.replace(tiny.pim, depth=512))
    with pytest.raises(ValueError, match="lanes must be a power of two"):
        ResidentCore(tiny, lanes=3)
