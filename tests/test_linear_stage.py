# amaranth: UnusedElaboratable=no
"""The linear stage (hw/linear_stage.py) with a bank group on Verilator against golden's integer
core, rescale and the residual add (sim/linear_stage_tb.py): random matrices and x_q, n past
whole beats, K up to max_k, with and without residuals, idle and back-pressure; the cycles of
every start that keeps up with the banks. Both ways of regrouping on the tiny preset's 2 banks:
4 lanes gather two result beats, 1 lane splits one.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import pytest

from golden.integer import PROJECTION_BITS, RESIDUAL_BITS
from hw.config import preset
from hw.linear_stage import LinearStage
from sim.units import simulate


@pytest.mark.parametrize("out_bits, lanes", [(RESIDUAL_BITS, 4), (PROJECTION_BITS, 1)])
def test_linear_stage_matches_golden(out_bits, lanes):
    result = simulate("linear-stage", preset("tiny"), seed=1, tiles=6,
                      options={"out_bits": out_bits, "lanes": lanes})
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    report = result.report
    assert report["starts"] > 40 and report["beats"] >= report["elements"] / lanes
    assert report["residual_starts"] > 5 and report["starts"] - report["residual_starts"] > 5
    # Each of the six flow settings' first batch is at K = max_k (as many matrices as fit).
    assert report["padded_slots"] > 0 and report["max_k_starts"] >= 6
    assert report["timed"] >= 6 and len(report["cycles"]) == report["timed"]
    assert report["back_to_back"] >= 3


def test_cycles():
    tiny = preset("tiny")                   # 2 banks; the group's latency is 5
    gather, split = LinearStage(tiny, lanes=4), LinearStage(tiny, lanes=1)
    assert gather.cycles(words_per_row=3, n=5) == 2 + 3 * 3 + 5 + LinearStage.LATENCY
    assert split.cycles(words_per_row=3, n=5) == 2 + 3 * 3 + 5 + LinearStage.LATENCY
    assert split.cycles(words_per_row=3, n=6) == 2 + 3 * 3 + 5 + LinearStage.LATENCY + 1


def test_a_gemv_command_waits_for_the_last_read_of_the_one_before():
    assert LinearStage.command_cycle(10) == 11                   # an idle bank group
    assert LinearStage.command_cycle(10, previous=(9, 24)) == 33
    assert LinearStage.command_cycle(10, previous=(9, 1)) == 11  # the start came after it


def test_parameters_are_checked():
    tiny = preset("tiny")
    with pytest.raises(ValueError, match=r"lanes must be a divisor or a multiple of banks \(2\) "
                                         r"in \[1, 64\], not 3"):
        LinearStage(tiny, lanes=3)
    with pytest.raises(ValueError, match=r"lanes must be .* not 0"):
        LinearStage(tiny, lanes=0)
    with pytest.raises(ValueError, match=r"lanes must be .* not 128"):
        LinearStage(tiny, lanes=128)
    with pytest.raises(ValueError, match=r"out_bits must be an integer in \[2, 32\], not 40"):
        LinearStage(tiny, out_bits=40)
