# amaranth: UnusedElaboratable=no
"""The LM head and greedy choice (hw/head.py) on Verilator against golden.integer.head_values
and IntegerLogits.argmax (sim/head_tb.py): random embeddings with extreme rows, ties that the
lowest index must win, idle and back-pressure; a scan reads one word a cycle. Its embedding
lookup against golden.integer.embed_values: the first and last tokens, extreme rows and scales,
left and right shifts, a scan offered meanwhile; ``embed_lanes`` elements a cycle.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import pytest

from hw.config import preset
from hw.head import LmHead
from sim.units import simulate


@pytest.mark.parametrize("name, options", [
    ("tiny", {"hidden": 24, "vocab": 40, "embed_lanes": 2}),
    ("ulx3s-85f", {"hidden": 128, "vocab": 256, "lanes": 128, "embed_lanes": 4}),
])
def test_head_matches_golden(name, options):
    result = simulate("head", preset(name), seed=4, tiles=4, options=options)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    head = LmHead(preset(name), **options)
    assert result.report["scans"] == 8 and result.report["ties"] == 4
    assert result.report["cycles_per_scan"] == options["vocab"] * head.words + head.latency
    assert result.report["embeds"] == 4 * 9 and result.report["scans_offered_with_embeds"] == 2
    assert result.report["left_shifts"] > 0 and result.report["right_shifts"] > 0
    assert result.report["cycles_per_embed"] == head.embed_cycles


def test_shape_is_checked():
    with pytest.raises(ValueError, match="vocab must be a positive integer, not 0"):
        LmHead(preset("tiny"), hidden=8, vocab=0)
    with pytest.raises(ValueError, match=r"embed_lanes must divide lanes \(4\) and hidden "
                                         r"\(6\), not 4"):
        LmHead(preset("tiny"), hidden=6, vocab=8, embed_lanes=4)
