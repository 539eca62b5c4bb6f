# amaranth: UnusedElaboratable=no
"""The FFN inner product (hw/ffn.py) on Verilator against golden.integer.ffn_inner
(sim/ffn_tb.py), with one lane and with four: tokens of every length, all-negative gates, the
extremes of gate and up, a negative gate element that outweighs the positive ones, idle and
back-pressure; one beat a cycle, ``2 length / lanes + 1`` cycles a token.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import pytest

from hw.config import preset
from hw.ffn import FfnInner
from sim.units import simulate


@pytest.mark.parametrize("lanes", [1, 4])
def test_ffn_matches_golden(lanes):
    tokens = 24
    result = simulate("ffn", preset("tiny"), seed=1, tiles=tokens,
                      options={"ffn": 24, "lanes": lanes})
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    report = result.report
    assert report["tokens"] == 4 * tokens and report["elements"] > 4 * tokens
    assert report["elements"] % lanes == 0
    assert report["all_negative"] >= 1 and report["shifted"] > 0


@pytest.mark.parametrize("ffn", [0, True, 2.5])
def test_ffn_is_checked(ffn):
    with pytest.raises(ValueError, match=f"ffn must be a positive integer, not {ffn!r}"):
        FfnInner(preset("tiny"), ffn=ffn)


@pytest.mark.parametrize("lanes", [0, 3, 16, True, 2.0])
def test_lanes_are_checked(lanes):
    with pytest.raises(ValueError, match=rf"lanes must be a power of two dividing ffn \(24\), "
                                         rf"not {lanes!r}"):
        FfnInner(preset("tiny"), ffn=24, lanes=lanes)


def test_latency():
    assert FfnInner(preset("tiny"), ffn=24).latency == 7
    assert FfnInner(preset("tiny"), ffn=24, lanes=4).latency == 9
