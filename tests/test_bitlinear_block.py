# amaranth: UnusedElaboratable=no
"""The BitLinear block (hw/bitlinear_block.py: a norm stage and a linear stage on a bank group)
on Verilator against golden's norm_quantize, bitlinear_int and rescale with the residual
(sim/bitlinear_block_tb.py): a small model's norms with real and random gains, vectors from all
zeros to int32 extremes, 1 to 3 random matrices an operation with and without residuals, idle,
back-pressure and chunks held from the bank group; the documented cycles of every operation
without them; each setting's last operation a norm_only one (x_q to the group, no result).
K is 18 (5 words of the tiny preset's 4 lanes: the first GEMV waits until its factor is due)
or 90 (23 words: x_q is the later).

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import dataclasses

import pytest
from amaranth.hdl import Fragment

from golden.integer import RESIDUAL_BITS
from hw.bitlinear_block import BitLinearBlock
from hw.config import preset
from hw.linear_stage import LinearStage
from hw.norm_stage import NormStage
from sim.units import UNITS, simulate

OPTIONS = UNITS["bitlinear-block"].options
ROUNDS = 8
# The tiny preset with 64 words a bank: the testbench fills the banks' free row slots at random,
# and at this depth seed 2's operations time both K (the timed ones follow no padded slot).
TINY_64 = dataclasses.replace(preset("tiny"),
                              pim=dataclasses.replace(preset("tiny").pim, depth=64),
                              resident=None)


def elaborated(config, **options):
    """A block built (so that its parts are used) for its cycle formulas."""
    block = BitLinearBlock(config, **options)
    Fragment.get(block, None)
    return block


def test_bitlinear_block_matches_golden():
    result = simulate("bitlinear-block", TINY_64, seed=2, tiles=ROUNDS)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    report = result.report
    assert report["operations"] == 4 * ROUNDS and report["zero_vectors"] >= 4
    assert all(report["matrices"]) and report["padded_slots"] > 0
    assert 0 < report["residual_matrices"] < sum(
        count * (n + 1) for n, count in enumerate(report["matrices"]))
    block = elaborated(TINY_64, **OPTIONS)
    timed = report["timed"]
    assert len(timed) >= ROUNDS // 2 and {words for words, _, _ in timed} == {5, 23}
    assert all(cycles == block.cycles(words, ns) for words, ns, cycles in timed)
    assert report["idle_timed"] >= 2
    assert report["norm_only"] == 4 and report["norm_only_timed"] == 2


def test_cycles():
    tiny = preset("tiny")
    block = elaborated(tiny, **OPTIONS)
    linear = LinearStage(tiny, out_bits=RESIDUAL_BITS, lanes=4)
    # 3 words: the first GEMV waits until its factor is due, which is the shorter vector's
    # 5 reads and the group's latency of 5 before it is offered; 40 words: for QUANTISE's pass.
    due = NormStage.factor_cycles(3, 0, 4) - (5 + 5)
    assert block.first_start(3) == due > NormStage.x_q_cycles(3, 4) + 1
    assert block.first_start(40) == NormStage.x_q_cycles(40, 4) + 1
    # The second GEMV's reads follow the first's 3 row slots of 40 words without a gap.
    first = block.first_start(40)
    assert block.gemv_starts(40, [5, 3]) == [first, first + 3 * 40]
    assert block.cycles(40, [5, 3]) == first + 3 * 40 + linear.cycles(words_per_row=40, n=3)
    # A GEMV of 3 reads ends before the next factor is due: that start waits for it.
    first = block.first_start(3)
    second_due = NormStage.factor_cycles(3, 1, 4) - (NormStage.FACTOR_INTERVAL - 1)
    assert block.gemv_starts(3, [1, 1]) == [first, second_due] and second_due > first + 3
    shipped = elaborated(preset("ulx3s-85f"), hidden=128, ffn=384, layers=2)
    assert (shipped.first_start(4), shipped.first_start(12)) == (45, 59)


def test_parameters_are_checked():
    tiny = preset("tiny")
    with pytest.raises(ValueError, match=r"hidden and ffn must be at most config.max_k \(256\), "
                                         r"not 300"):
        BitLinearBlock(tiny, hidden=26, ffn=300, layers=1)
    with pytest.raises(ValueError, match=r"config.act_bits must be at least 8 \(x_q is int8\), "
                                         r"not 4"):
        BitLinearBlock(tiny.__class__(**{**tiny.__dict__, "act_bits": 4}), hidden=26, ffn=90,
                       layers=1)
    with pytest.raises(ValueError, match=r"hidden must be a positive integer, not 0"):
        BitLinearBlock(tiny, hidden=0, ffn=90, layers=1)
