# amaranth: UnusedElaboratable=no
"""The LM head and greedy choice (hw/head.py) on Verilator against golden.integer.head_values
and IntegerLogits.argmax (sim/head_tb.py): random embeddings with extreme rows, ties that the
lowest index must win, idle and back-pressure; a scan reads one word a cycle.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import pytest

from hw.config import preset
from hw.head import LmHead
from sim.units import simulate


@pytest.mark.parametrize("name, options", [
    ("tiny", {"hidden": 24, "vocab": 40}),
    ("ulx3s-85f", {"hidden": 128, "vocab": 256, "lanes": 128}),
])
def test_head_matches_golden(name, options):
    result = simulate("head", preset(name), seed=4, tiles=4, options=options)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    head = LmHead(preset(name), **options)
    assert result.report["scans"] == 8 and result.report["ties"] == 4
    assert result.report["cycles_per_scan"] == options["vocab"] * head.words + head.latency


def test_shape_is_checked():
    with pytest.raises(ValueError, match="vocab must be a positive integer, not 0"):
        LmHead(preset("tiny"), hidden=8, vocab=0)
