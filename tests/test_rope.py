# amaranth: UnusedElaboratable=no
"""RoPE (hw/rope.py) on Verilator against golden.integer.rope_factors and apply_rope
(sim/rope_tb.py): phase steps of several rope_theta and random ones, the first, second and last
positions, int16 extremes, idle and back-pressure, one and two pairs a beat; a token's factors
take head_dim / 2 + 8 cycles, then its beats go one a cycle.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import pytest

from hw.config import preset
from hw.rope import Rope
from sim.units import simulate


@pytest.mark.parametrize("options", [{"head_dim": 8, "max_seq": 16, "lanes": 1},
                                     {"head_dim": 32, "max_seq": 256, "lanes": 2}])
def test_rope_matches_golden(options):
    result = simulate("rope", preset("tiny"), seed=5, tiles=6, options=options)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    report = result.report
    assert report["step_sets"] == 16 and report["tokens"] == 96 and report["extremes"] > 100
    assert report["cut_heads"] > 0
    assert report["edge_positions"] == [0, 1, options["max_seq"] - 1]
    assert report["positions"] > 3
    factor_cycles = options["head_dim"] // 2 + Rope.FACTOR_LATENCY
    assert report["token_cycles"] == [factor_cycles + beats for beats in report["token_beats"]]
    assert len(report["token_cycles"]) == 4 * 5


@pytest.mark.parametrize("options, message", [
    ({"head_dim": 7, "max_seq": 16}, r"head_dim must be an even integer >= 2, not 7"),
    ({"head_dim": 0, "max_seq": 16}, r"head_dim must be an even integer >= 2, not 0"),
    ({"head_dim": 8, "max_seq": 0}, r"max_seq must be an integer in \[1, 131072\], not 0"),
    ({"head_dim": 8, "max_seq": (1 << 17) + 1},
     r"max_seq must be an integer in \[1, 131072\], not 131073"),
    ({"head_dim": 8, "max_seq": 16, "lanes": 3},
     r"lanes must be a positive divisor of head_dim / 2 \(4\), not 3"),
])
def test_shape_is_checked(options, message):
    with pytest.raises(ValueError, match=message):
        Rope(preset("tiny"), **options)
