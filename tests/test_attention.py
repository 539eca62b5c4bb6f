# amaranth: UnusedElaboratable=no
"""Attention with the KV cache (hw/attention.py) on Verilator against golden.integer.attention
(sim/attention_tb.py): a small shape with two layers, four query heads a KV head and two of them
a pass, and the shipped model's shape with both of a KV head's query heads a pass; every output
element of every head of queries at the first, the last and random positions, with
clipped, cut-off and fine weights, peaks and uniform weights, under idle and back-pressure;
cycles per query against the formula.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import pytest

from hw.attention import Attention
from hw.config import preset
from sim.units import simulate

SHAPE = {"heads": 8, "kv_heads": 2, "head_dim": 4, "max_seq": 8, "layers": 2,
         "heads_per_pass": 2}
SHIPPED = {"heads": 4, "kv_heads": 2, "head_dim": 32, "max_seq": 256, "layers": 2,
           "heads_per_pass": 2}
DRAWN = ("clipped", "cut_off", "fine", "uniform", "peaks")


@pytest.mark.parametrize("shape, queries, drawn", [
    (SHAPE, 24, DRAWN + ("saturated_limits",)),
    (SHIPPED, 6, DRAWN),    # the shipped model's shape: an adder tree with pipeline registers
])
def test_attention_matches_golden(shape, queries, drawn):
    result = simulate("attention", preset("tiny"), seed=1, tiles=queries, options=shape)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    report = result.report
    assert report["queries"] == 4 * queries and report["writes_during_queries"] >= 4
    for name in drawn:
        assert report[name] >= 1, name
    unit = Attention(preset("tiny"), **shape)
    assert report["timed"] == 2 * queries       # every query without back-pressure
    assert report["cycles_at_last_position"] == unit.cycles(shape["max_seq"] - 1)


@pytest.mark.parametrize("options, message", [
    ({"heads": 0}, r"heads must be a positive integer, not 0"),
    ({"kv_heads": 3}, r"kv_heads must be a divisor of heads \(8\) in \[1, 8\], not 3"),
    ({"heads_per_pass": 3},
     r"heads_per_pass must be a divisor of heads / kv_heads \(4\) in \[1, 4\], not 3"),
    ({"head_dim": 5}, r"head_dim must be an even integer of at least 2, not 5"),
    ({"max_seq": 0}, r"max_seq must be a positive integer, not 0"),
    ({"layers": True}, r"layers must be a positive integer, not True"),
])
def test_shape_is_checked(options, message):
    with pytest.raises(ValueError, match=message):
        Attention(preset("tiny"), **{**SHAPE, **options})
