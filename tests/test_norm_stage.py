# amaranth: UnusedElaboratable=no
"""The norm stage (hw/norm_stage.py) on Verilator against golden.integer.norm_quantize and the
factors of golden.integer.rescale (sim/norm_stage_tb.py): a small model's norms, real and random
gains, vectors from all zeros to int32 extremes, x_q and factors under back-pressure, and the
documented cycles of every operation.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import pytest

from hw.config import preset
from hw.norm_stage import NormStage
from sim.units import simulate

# hidden and ffn not multiples of the lanes; one layer: five norms. An ffn vector of 38 words
# ends with x_q for one matrix (down_proj), with the factors for more, so that both branches of
# NormStage.cycles are timed. A first factor due 11 cycles before it is offered.
OPTIONS = {"hidden": 44, "ffn": 300, "layers": 1, "lanes": 8, "first_lead": 11}
ROUNDS = 12


def test_norm_stage_matches_golden():
    result = simulate("norm-stage", preset("tiny"), seed=0, tiles=ROUNDS, options=OPTIONS)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    report = result.report
    assert report["operations"] == 4 * ROUNDS and report["zero_vectors"] >= 4
    timed = {(words, count): cycles for words, count, cycles in report["timed"]}
    assert {words for words, _ in timed} == {6, 38} and (38, 1) in timed and (38, 3) in timed
    assert timed == {key: NormStage.cycles(*key, OPTIONS["lanes"]) for key in timed}
    # factor_due rises first_lead cycles before an operation's first factor and
    # FACTOR_INTERVAL - 1 before the others (what BitLinearBlock's starts count on), never
    # later.
    assert report["first_leads"][-1] == OPTIONS["first_lead"]
    assert report["later_leads"][-1] == NormStage.FACTOR_INTERVAL - 1


@pytest.mark.parametrize("name, value", [("hidden", 0), ("ffn", -1), ("layers", 1.5),
                                         ("lanes", True)])
def test_parameters_are_checked(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer, not {value!r}"):
        NormStage(preset("tiny"), **{**OPTIONS, name: value})


def test_first_lead_is_checked():
    with pytest.raises(ValueError, match="first_lead must be an integer of at least 6, not 5"):
        NormStage(preset("tiny"), **{**OPTIONS, "first_lead": 5})
