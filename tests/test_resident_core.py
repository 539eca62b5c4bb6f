# amaranth: UnusedElaboratable=no
"""The resident decoder's core (hw/resident_core.py) on Verilator against golden's integer
decoder (sim/resident_core_tb.py): a random two-layer model loaded once, prompts prefilled and
decoded greedily, every token and its logit equal to ``IntegerModel.forward``'s, one sequence
to max_seq, idle on the loads and back-pressure on the tokens.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import dataclasses

import pytest

from golden.model import ModelConfig
from hw.config import preset
from hw.resident_core import ResidentCore, place_model
from sim.units import UNITS, simulate

OPTIONS = UNITS["resident-core"].options
SEQUENCES = 3


def banks_for_the_model():
    """The tiny preset with banks deep enough for the test model's matrices."""
    tiny = preset("tiny")
    return dataclasses.replace(tiny, pim=dataclasses.replace(tiny.pim, depth=1024))


def test_resident_core_matches_golden():
    result = simulate("resident-core", banks_for_the_model(), seed=0, tiles=SEQUENCES)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    report = result.report
    assert report["sequences"] == SEQUENCES and OPTIONS["max_seq"] in report["positions"]
    assert report["generated"] >= 2 * SEQUENCES
    assert report["decode_cycles"], "no token was timed"


def test_the_model_must_fit():
    model = ModelConfig(**OPTIONS)
    with pytest.raises(ValueError, match="need 576 words a bank, the banks hold 64"):
        place_model(preset("tiny"), model)
    with pytest.raises(ValueError, match=r"hidden \(18\) must be a multiple of pim.lanes \(4\)"):
        ResidentCore(banks_for_the_model(), ModelConfig(**{**OPTIONS, "hidden": 18,
                                                            "heads": 1}))
    with pytest.raises(ValueError, match="lanes must be a power of two"):
        ResidentCore(banks_for_the_model(), model, lanes=3)
