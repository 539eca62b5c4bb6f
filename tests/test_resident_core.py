# amaranth: UnusedElaboratable=no
"""The resident decoder's core (hw/resident_core.py) on Verilator against golden's integer
decoder (sim/resident_core_tb.py): a random model of the tiny preset's resident shape, and of two
other shapes on its banks, loaded once, prompts prefilled and decoded greedily, every token and its
logit equal to ``IntegerModel.forward``'s, one sequence to max_seq, idle on the loads and
back-pressure on the tokens.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import dataclasses

import pytest

from hw.config import apply_overrides, preset
from hw.placement import MappingError
from hw.resident_core import ResidentCore, largest_divisor, layout_core
from sim.units import simulate

SEQUENCES = 3


# The tiny preset's resident shape, and two more on its banks: one layer of two heads with a KV
# head each (head_dim 4, a bank word), a vocabulary of 200, 8 positions; three layers of three
# heads (hidden 12, no power of two) on one KV head, 12 positions.
SHAPES = {
    "tiny": [],
    "one-layer": ["resident.hidden=8", "resident.ffn=24", "resident.layers=1",
                  "resident.heads=2", "resident.kv_heads=2", "resident.vocab=200",
                  "resident.max_seq=8"],
    "three-layers": ["resident.hidden=12", "resident.ffn=16", "resident.layers=3",
                     "resident.heads=3", "resident.kv_heads=1", "resident.max_seq=12"],
}


# On ulx3s-85f's banks (32-lane builds of a few minutes each: make test-slow): the branch of
# the cycle model tiny's two banks never reach, the next prompt token's lookup outlasting the
# KV operation it runs beside (one KV head makes k's and v's GEMVs short, hidden 256 the lookup
# long); and four KV heads (two a unit, k's 64 pairs rotated two a cycle under the GEMVs).
SLOW_SHAPES = {
    "lookup-bound": ["resident.hidden=256", "resident.heads=8", "resident.kv_heads=1",
                     "resident.layers=1", "resident.ffn=128", "resident.vocab=64",
                     "resident.max_seq=8"],
    "four-kv-heads": ["resident.kv_heads=4", "resident.layers=1", "resident.ffn=128",
                      "resident.vocab=64", "resident.max_seq=8"],
}


@pytest.mark.parametrize("shape", [*SHAPES, *(pytest.param(shape, marks=pytest.mark.slow)
                                              for shape in SLOW_SHAPES)])
def test_resident_core_matches_golden(shape):
    config = (apply_overrides(preset("ulx3s-85f"), SLOW_SHAPES[shape]) if shape in SLOW_SHAPES
              else apply_overrides(preset("tiny"), SHAPES[shape]))
    result = simulate("resident-core", config, seed=len(shape), tiles=SEQUENCES)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    report = result.report
    assert report["sequences"] == SEQUENCES and config.resident.max_seq in report["positions"]
    assert report["generated"] >= 2 * SEQUENCES
    assert report["decode_cycles"], "no token was timed"
    # The timed prompt takes a token ahead, so prompt_cycles' look-ahead branch is checked.
    assert report["prefill_cycles"][0][0] >= 2, "the timed prompt has one token"


def test_the_cycle_model_refuses_a_shape_it_cannot_time():
    """Below 4 words a row on ulx3s-85f's 16 banks, a row slot's 16 results (4 a beat) outlast
    its reads, which the linear stage's formula does not model (such a shape took 30 cycles
    more a token than the model said)."""
    narrow = apply_overrides(preset("ulx3s-85f"), ["resident.hidden=64", "resident.heads=2",
                                                   "resident.ffn=64"])
    with pytest.raises(MappingError, match=r"needs resident.hidden and resident.ffn of at "
                                           r"least 128 on this device .* not 64 and 64"):
        layout_core(narrow).token_cycles(0, True)


def test_the_core_needs_resident_units_that_fit_the_banks():
    tiny = preset("tiny")
    with pytest.raises(ValueError, match="no resident units"):
        ResidentCore(preset("default"))
    with pytest.raises(ValueError, match=r"pim.depth \(512\) must be at least 576"):
        dataclasses.replace(tiny, pim=dataclasses.replace(tiny.pim, depth=512))
    with pytest.raises(ValueError, match="lanes must be a power of two"):
        ResidentCore(tiny, lanes=3)
    with pytest.raises(ValueError, match="attention_units must be a positive integer, not 0"):
        ResidentCore(tiny, attention_units=0)
    with pytest.raises(ValueError, match="heads_per_pass must be a positive integer, not 0"):
        ResidentCore(tiny, heads_per_pass=0)


@pytest.mark.parametrize("kv_heads, most, built", [(1, 2, 1), (2, 2, 2), (4, 3, 2),
                                                   (3, 2, 1), (4, 4, 4), (6, 4, 3)])
def test_the_core_builds_the_most_attention_units_that_share_the_kv_heads(kv_heads, most,
                                                                          built):
    assert largest_divisor(kv_heads, most) == built


@pytest.mark.parametrize("kv_heads, built, per_pass", [(1, 1, 2), (2, 2, 2), (3, 1, 2),
                                                        (4, 2, 1)])
def test_attention_takes_a_round_a_query_of_each_unit(kv_heads, built, per_pass):
    """Each unit holds its share of the KV heads and their query heads, and takes up to two
    query heads of a KV head a query (as many as divide the group): attention is ``heads /
    (units x per_pass)`` rounds a layer, each the units' queries, one query's cycles and every
    unit's output words."""
    config = apply_overrides(preset("tiny"), ["resident.heads=12",
                                              f"resident.kv_heads={kv_heads}",
                                              "resident.hidden=48", "resident.layers=1",
                                              "resident.ffn=8", "pim.depth=4096"])
    core = layout_core(config)
    assert (core.attention_units, core.heads_per_pass) == (built, per_pass)
    model = config.resident
    head_words = model.head_dim // config.pim.lanes
    assert core.stage_cycles(5, True)["attention"] == model.heads // (built * per_pass) * (
        1 + core._attention.cycles(5) + built * per_pass * head_words)
