"""golden.integer and golden.fixedpoint: each integer step against a float reference within its
documented bound (docs/design.md, "Integer decoder"), widths that cannot overflow, no float in
the forward pass, and a KV cache that gives the one-shot pass's logits bit for bit."""

import ast
import dataclasses
import inspect
import math
import textwrap
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golden import (
    BITNET_B158_2B4T, IntegerWeights, Model, ModelConfig, ModelWeights, integer_formats,
)
from golden import fixedpoint
from golden.fixedpoint import (
    Dyadic, IntegerWidthError, Width, bit_length, build_tables, dyadic,
    dyadic_add, dyadic_mul, dyadic_reciprocal, dyadic_rsqrt, dyadic_value, exp2_lookup,
    shift_round, sine_lookup, table_error_bounds,
)
from golden.integer import (
    IntegerLogits, IntegerModel, NormGain, apply_rope, attention, ffn_inner, norm_quantize,
    output_bound, rescale, rope_factors, rope_steps, softmax_scale,
)
from golden.model import Decoder, linear_shapes, rope_inverse_frequencies

CFG = ModelConfig(hidden=32, layers=2, heads=4, kv_heads=2, ffn=48, vocab=61, max_seq=24)
TOKENS = [5, 17, 42, 3, 60, 0, 29, 11, 8, 33]
TABLES = build_tables()
ERRORS = table_error_bounds(TABLES)
FORMATS = integer_formats(CFG)
SETTINGS = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def weights():
    return ModelWeights.random(CFG, seed=1)


def checked(name, value):
    """A check that holds every step to CFG's declared widths."""
    return FORMATS.check(name, value)


def integer_only(name, value):
    assert np.asarray(value).dtype.kind in "iu", name
    return np.asarray(value)


def int64_core(weights):
    """An integer-only core: trits times x_q in int64 (no float, unlike bitlinear_int)."""
    def core(name, x_q):
        trits = weights.linears[name].trits.astype(np.int64)
        return (x_q.astype(np.int64) @ trits.T).astype(np.int32)
    return core


# Primitives --------------------------------------------------------------------------------

@given(x=st.integers(-2 ** 60, 2 ** 60), n=st.integers(-20, 70))
def test_shift_round_rounds_half_up(x, n):
    expected = math.floor(Fraction(x, 2 ** n) + Fraction(1, 2)) if n > 0 else x * 2 ** -n
    if n <= 0 and abs(expected) >= 2 ** 62:
        with pytest.raises(IntegerWidthError):
            shift_round(np.int64(x), n)
    else:
        assert int(shift_round(np.int64(x), n)) == expected


@given(st.lists(st.integers(0, 2 ** 62), min_size=1, max_size=8))
def test_bit_length_is_a_priority_encoder(values):
    assert bit_length(np.array(values)).tolist() == [v.bit_length() for v in values]


def test_width_check_names_the_step_and_rejects_floats():
    width = Width(8)
    np.testing.assert_array_equal(width.check(np.array([-128, 127]), "x"), [-128, 127])
    with pytest.raises(IntegerWidthError, match=r"^layers.0.x = 128 does not fit int8 "
                                                r"\[-128, 127\]$"):
        width.check(np.array([0, 128]), "layers.0.x")
    with pytest.raises(IntegerWidthError, match="= -1 does not fit uint3"):
        Width(3, signed=False).check(np.array([-1]), "y")
    with pytest.raises(TypeError, match="^x must be an integer array, not dtype float32$"):
        width.check(np.zeros(2, np.float32), "x")
    with pytest.raises(ValueError, match=r"Width.bits must be an integer in \[1, 62\], not 63"):
        Width(63)


@given(st.integers(0, 2 ** 58), st.integers(-80, 80))
def test_dyadic_rounds_once_to_17_bits(value, exponent):
    got = dyadic(np.int64(value), exponent)
    if value == 0:
        assert (int(got.mantissa), int(got.exponent)) == (0, 0)
        return
    assert 2 ** 16 <= got.mantissa < 2 ** 17
    exact = Fraction(value) * Fraction(2) ** exponent
    error = abs(Fraction(int(got.mantissa)) * Fraction(2) ** int(got.exponent) - exact) / exact
    assert error <= Fraction(1, 2 ** 17)
    if value < 2 ** 17:
        assert error == 0


positive = st.builds(lambda v, e: dyadic(np.int64(v), e), st.integers(1, 2 ** 40),
                     st.integers(-60, 60))


@given(positive, positive)
def test_dyadic_mul_and_add_round_once(a, b):
    for op, exact in ((dyadic_mul, dyadic_value(a) * dyadic_value(b)),
                      (dyadic_add, dyadic_value(a) + dyadic_value(b))):
        got = op(a, b)
        assert 2 ** 16 <= got.mantissa < 2 ** 17
        assert abs(dyadic_value(got) / exact - 1) <= 2.0 ** -17


def test_dyadic_add_of_zero_is_the_other_operand():
    zero, three = dyadic(np.int64(0)), dyadic(np.int64(3), -5)
    assert dyadic_value(dyadic_add(zero, three)) == dyadic_value(dyadic_add(three, zero)) == 3/32


@given(positive)
def test_rsqrt_and_reciprocal_within_their_measured_bounds(a):
    value = dyadic_value(a)
    assert abs(dyadic_value(dyadic_rsqrt(a, TABLES)) * math.sqrt(value) - 1) <= ERRORS["rsqrt"]
    assert abs(dyadic_value(dyadic_reciprocal(a, TABLES)) * value - 1) <= ERRORS["reciprocal"]


def test_tables_are_as_declared_and_within_budget():
    for name, (entries, bits) in FORMATS.tables.items():
        table = getattr(TABLES, name)
        assert table.shape == (entries,) and table.dtype == np.int64
        assert 0 <= table.min() and table.max() < 2 ** bits, name
    assert ERRORS["rsqrt"] < 2 ** -10 and ERRORS["reciprocal"] < 2 ** -10
    assert ERRORS["exp2"] <= 0.5 and ERRORS["sine"] <= 0.5     # entries rounded to nearest
    assert TABLES.exp2[0] == 2 ** 16 and np.all(np.diff(TABLES.exp2) < 0)
    assert TABLES.quarter_sine[0] == 0 and TABLES.quarter_sine[-1] == 2 ** 16
    assert exp2_lookup(np.array([0, 1024, 17 * 1024, 18 * 1024 - 1, 18 * 1024]),
                       TABLES).tolist() == [2 ** 16, 2 ** 15, 1, 0, 0]
    angles = np.arange(4096)
    np.testing.assert_array_equal(sine_lookup(angles + 2048, TABLES),
                                  -sine_lookup(angles, TABLES))


# Formats -----------------------------------------------------------------------------------

def test_formats_of_the_2b4t_model():
    formats = integer_formats(BITNET_B158_2B4T)
    widths = {name: str(width) for name, width in formats.widths.items()}
    assert widths["accumulator"] == "int21"                # 127 x 6912 = 877,824
    assert widths["sum_squares"] == "uint41"                # 6912 x (2**14)**2
    assert widths["score"] == "int38"                       # 128 x 32767**2
    assert widths["probability_sum"] == "uint29"            # 4096 x 2**16
    assert widths["attention_out"] == "int32"
    assert widths["logit_dot"] == "int27"                   # 127**2 x 2560
    assert formats.multipliers["rescale"] == 2 and formats.multipliers["logit"] == 2
    assert integer_formats(CFG).multipliers["rescale"] == 1  # 127 x 48 fits 18 bits
    assert sum(entries for entries, _ in formats.tables.values()) == 4609


def test_formats_refuse_configs_beyond_the_compositions():
    huge = dataclasses.replace(CFG, max_seq=2 ** 40)
    with pytest.raises(ValueError, match="^probability_sum needs 57 bits for this config; "
                                         "at most 54$"):
        integer_formats(huge)


# Steps against float references ------------------------------------------------------------

def vector(kind, rng, size, magnitude):
    """Test vectors: random, all equal, one huge value, zeros, and the int8/int32 extremes."""
    top = 2 ** magnitude
    if kind == "random":
        return rng.integers(-top, top + 1, size)
    if kind == "equal":
        return np.full(size, rng.integers(-top, top + 1))
    if kind == "one_huge":
        x = rng.integers(-3, 4, size)
        x[rng.integers(size)] = rng.choice([-(2 ** 31), 2 ** 31 - 1])
        return x
    if kind == "zeros":
        return np.zeros(size, dtype=np.int64)
    return rng.choice([-(2 ** 31), 2 ** 31 - 1, -128, 127, 0, 1, -1], size)


VECTOR_KINDS = ["random", "equal", "one_huge", "zeros", "extremes"]


@SETTINGS
@given(kind=st.sampled_from(VECTOR_KINDS), seed=st.integers(0, 2 ** 32 - 1),
       magnitude=st.integers(0, 31), x_exponent=st.integers(-40, 8),
       size=st.sampled_from([1, 7, 48, 6912]))
def test_norm_quantize_against_float(kind, seed, magnitude, x_exponent, size):
    rng = np.random.default_rng(seed)
    x = np.stack([vector(kind, rng, size, magnitude), vector("random", rng, size, magnitude)])
    gain = rng.uniform(0.5, 2.0, size)                      # a gain ratio of at most 4
    fraction = 13
    norm = NormGain(np.floor(gain * 2 ** fraction + 0.5).astype(np.int64), fraction,
                    dyadic(np.int64(size), -17))            # eps K with eps = 2**-17
    formats = integer_formats(dataclasses.replace(CFG, ffn=max(size, 2)))
    x_q, rho = norm_quantize(x, x_exponent, norm, TABLES, formats.check)
    assert x_q.dtype == np.int8 and np.abs(x_q).max() <= 127

    real = x.astype(np.float64) * 2.0 ** x_exponent
    gained = norm.gain * 2.0 ** -fraction * real
    peak = np.abs(gained).max(axis=-1, keepdims=True)
    exact_q = 127 * gained / np.where(peak > 0, peak, 1)
    ratio = 4.0
    bound = 0.5 + 127 * (ERRORS["reciprocal"] + 2 ** -15 + 2 ** -13 * ratio)
    assert np.abs(x_q - exact_q).max() <= bound
    exact_rho = peak[:, 0] / np.sqrt(np.square(real).sum(axis=-1) + size * 2.0 ** -17)
    rho_bound = (ERRORS["rsqrt"] + 2 ** -14 * (math.sqrt(size) + ratio) + size * 2 ** -28
                 + 2 ** -15 + 5 * 2 ** -17)
    got = dyadic_value(rho)
    assert np.all(np.abs(got - exact_rho) <= rho_bound * exact_rho)
    assert np.all((got == 0) == (peak[:, 0] == 0))


@SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), rho=positive, constant=positive)
def test_rescale_rounds_the_exact_product(seed, rho, constant):
    acc = np.random.default_rng(seed).integers(-127 * 48, 127 * 48 + 1, (3, 5))
    rho = Dyadic(np.full(3, rho.mantissa), np.full(3, rho.exponent))
    exact = acc * dyadic_value(rho)[:, None] * dyadic_value(constant)
    if np.abs(exact).max() >= 2 ** 40:
        return
    y = rescale(acc.astype(np.int32), rho, type("Scale", (), {"constant": constant}),
                integer_only, "residual")
    assert np.all(np.abs(y - exact) <= 0.5 + np.abs(exact) * 2.0 ** -16)


@SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), theta=st.sampled_from([10000.0, 500000.0]))
def test_rope_against_float(seed, theta):
    rng = np.random.default_rng(seed)
    head_dim, max_seq = 16, 4096
    positions = np.concatenate([[0, max_seq - 1], rng.integers(0, max_seq, 6)])
    x = rng.integers(-23000, 23001, (len(positions), 2, head_dim))   # within RoPE's headroom
    inverse = rope_inverse_frequencies(head_dim, theta).astype(np.float64)
    steps = rope_steps(head_dim, theta)
    formats = integer_formats(dataclasses.replace(CFG, max_seq=max_seq))
    cos, sin = rope_factors(positions, steps, TABLES, formats.check)
    got = apply_rope(x, cos, sin, formats.check)
    angle = positions[:, None] * inverse[None, :]
    c, s = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    first, second = x[..., :head_dim // 2], x[..., head_dim // 2:]
    exact = np.concatenate([first * c - second * s, second * c + first * s], axis=-1)
    angle_error = 2 * np.pi * (2.0 ** -13 + positions * 2.0 ** -33)
    size = np.abs(first) + np.abs(second)
    bound = size * (angle_error[:, None, None] + 2.0 ** -17) + 0.5
    assert np.all(np.abs(got - exact) <= np.concatenate([bound, bound], axis=-1))
    np.testing.assert_array_equal(got[0], x[0])            # position 0 rotates by nothing


def float_attention(q, keys, values, start_pos, score_fraction):
    group = q.shape[1] // keys.shape[1]
    k = np.repeat(keys, group, axis=1).astype(np.float64)
    v = np.repeat(values, group, axis=1).astype(np.float64)
    scores = np.einsum("thd,shd->hts", q.astype(np.float64), k)
    scores *= 2.0 ** -score_fraction / math.sqrt(q.shape[-1])
    visible = np.arange(len(keys))[None, :] <= start_pos + np.arange(len(q))[:, None]
    scores = np.where(visible, scores, -np.inf)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return np.einsum("hts,shd->thd", p / p.sum(axis=-1, keepdims=True), v)


@SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), steps=st.integers(1, 6), cached=st.integers(0, 18),
       magnitude=st.integers(1, 15), score_fraction=st.integers(8, 24))
def test_attention_against_float(seed, steps, cached, magnitude, score_fraction):
    rng = np.random.default_rng(seed)
    top = 2 ** magnitude - 1
    length = cached + steps
    q = rng.integers(-top, top + 1, (steps, 4, 8))
    keys, values = rng.integers(-top, top + 1, (2, length, 2, 8))
    got = attention(q, keys, values, cached, softmax_scale(8, score_fraction), TABLES, checked)
    exact = float_attention(q, keys, values, cached, score_fraction)
    bound = np.abs(values).max() * (2.0 ** -9 + length * 2.0 ** -15)
    assert np.abs(got.reshape(exact.shape) / 2 ** 15 - exact).max() <= bound


def test_attention_is_causal_and_grouped():
    values = np.zeros((3, 2, 2), dtype=np.int64)
    values[:, 0, 0] = [0, 1000, 2000]                        # KV head 0: its position x 1000
    values[:, 1, 0] = 7000                                   # KV head 1: constant
    q = np.zeros((3, 4, 2), dtype=np.int64)                  # equal scores everywhere
    out = attention(q, np.zeros_like(values), values, 0, softmax_scale(2, 10), TABLES,
                    checked).reshape(3, 4, 2)[..., 0]
    causal_mean = np.array([0, 500, 1000]) * 2 ** 15
    assert np.all(np.abs(out[:, :2] - causal_mean[:, None]) <= 1000 * 2 ** 15 * 2 ** -9)
    assert np.all(np.abs(out[:, 2:] - 7000 * 2 ** 15) <= 7000 * 2 ** 15 * 2 ** -9)


@given(seed=st.integers(0, 2 ** 32 - 1), magnitude=st.integers(0, 15))
def test_ffn_inner_is_relu_squared_times_up(seed, magnitude):
    rng = np.random.default_rng(seed)
    top = 2 ** magnitude - 1
    gate, up = rng.integers(-top, top + 1, (2, 3, 48))
    inner, exponent = ffn_inner(gate, up, 10, 11, checked)
    square = np.maximum(gate, 0).astype(np.float64) ** 2
    shift = exponent + 2 * 10 + 11
    assert np.all(np.abs(inner - square * up * 2.0 ** -shift[:, None]) <= 0.5 * np.abs(up))


# The decoder -------------------------------------------------------------------------------

def test_logits_follow_the_float_decoder(weights):
    """End to end on a random model of hidden 32, where one int8 rounding flip is a few percent
    of a logit: within 8 % of the largest logit, and the same greedy choice nearly always."""
    tokens = np.random.default_rng(0).integers(0, CFG.vocab, CFG.max_seq)
    exact = Model(CFG, weights).forward(tokens, 0).astype(np.float64)
    logits = IntegerModel(CFG, weights).forward(tokens, 0)
    assert np.abs(logits.to_float() - exact).max() <= 0.08 * np.abs(exact).max()
    assert np.mean(logits.argmax() == exact.argmax(axis=-1)) >= 0.9


def test_kv_cache_gives_the_one_shot_logits_bit_for_bit(weights):
    model = IntegerModel(CFG, weights)
    full = model.forward(TOKENS, 0)
    model.reset()
    pieces = [model.forward(TOKENS[:4], 0)]
    pieces += [model.forward([token], 4 + i) for i, token in enumerate(TOKENS[4:])]
    assert model.position == len(TOKENS)
    for field in range(2):
        np.testing.assert_array_equal(np.concatenate([piece.values for piece in pieces]),
                                      full.values)
        np.testing.assert_array_equal(np.concatenate([piece.scale[field] for piece in pieces]),
                                      full.scale[field])
    rewound = model.forward(TOKENS[6:], 6)
    np.testing.assert_array_equal(rewound.values, full.values[6:])


def test_greedy_generation_is_the_one_shot_argmax(weights):
    model = IntegerModel(CFG, weights)
    prompt = TOKENS[:4]
    new = model.generate(prompt, CFG.max_seq - len(prompt) + 1)   # every position
    assert model.position == CFG.max_seq
    logits = IntegerModel(CFG, weights).forward(prompt + new[:-1], 0)
    assert logits.argmax()[len(prompt) - 1:].tolist() == new
    assert model.generate(prompt, 3) == new[:3] and model.generate(prompt, 0) == []
    # The read-back logits are the last position's: the ones the last new token came from.
    tokens, last = model.generate(prompt, 3, logits=True)
    assert tokens == new[:3]
    np.testing.assert_array_equal(last, logits.values[len(prompt) + 1])
    assert model.generate(prompt, 0, logits=True) == ([], None)


def test_argmax_takes_the_lowest_index_among_ties():
    tied = np.array([[3, 7, 7, 1], [5, 5, 5, 5]])
    scale = Dyadic(np.ones(2, np.int64), np.zeros(2, np.int64))
    assert IntegerLogits(tied, scale).argmax().tolist() == [1, 0]


def test_forward_pass_has_only_integer_intermediates(weights):
    seen = {}
    model = IntegerModel(CFG, weights, int64_core(weights),
                         observer=lambda name, array: seen.setdefault(name, array.dtype))
    with np.errstate(all="raise"):
        model.forward(TOKENS, 0)
        model.forward([7], len(TOKENS))
    assert all(dtype.kind in "iu" for dtype in seen.values())
    steps = {name.rsplit(".", 1)[-1] for name in seen}
    checked_at_preparation = {"gain", "mantissa", "row_scale", "embedding"}
    assert steps == set(FORMATS.widths) - checked_at_preparation
    assert {"layers.1.self_attn.score", "layers.1.mlp.ffn_inner", "head.logit"} <= set(seen)


# Everything the forward pass runs (IntegerModel.__init__ prepares, with floats, and is not here).
FORWARD_PASS = [
    fixedpoint.Width.check, shift_round, bit_length, dyadic, dyadic_mul, dyadic_add,
    dyadic_rsqrt, dyadic_reciprocal, exp2_lookup, sine_lookup, norm_quantize, rescale,
    rope_factors, apply_rope, attention, ffn_inner, IntegerLogits.argmax,
    *[member for cls in (IntegerModel, Decoder) for name, member in vars(cls).items()
      if inspect.isfunction(member) and name != "__init__"], Decoder.position.fget,
]
FLOAT_TYPES = {"float", "float16", "float32", "float64", "math"}
FLOAT_CALLS = {"sqrt", "log", "log2", "exp", "exp2", "ceil", "floor", "rint", "round", "around",
               "ldexp", "frexp", "power", "divide", "true_divide", "mean"}


def _name(node):
    return node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)


def test_forward_pass_source_has_no_float_operations():
    """No true division, float constant, float type or float function in the forward pass."""
    for function in FORWARD_PASS:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        for node in ast.walk(tree):
            where = f"{function.__qualname__} line {getattr(node, 'lineno', '?')}"
            assert not isinstance(node, ast.Div), f"true division in {where}"
            assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)), where
            assert _name(node) not in FLOAT_TYPES, f"{_name(node)} in {where}"
            if isinstance(node, ast.Call):
                assert _name(node.func) not in FLOAT_CALLS, f"{_name(node.func)} in {where}"


def test_entry_points_reject_floats(weights):
    with pytest.raises(TypeError, match="^norm input must be an integer array"):
        norm_quantize(np.ones((1, 4)), 0, None, TABLES, checked)
    rho = dyadic(np.ones(1, np.int64))
    with pytest.raises(TypeError, match="^accumulator must be an integer array"):
        rescale(np.ones((1, 4), np.float32), rho, None, checked, "residual")
    model = IntegerModel(CFG, weights)
    with pytest.raises(ValueError, match="^tokens must be integers, not dtype float64$"):
        model.forward([1.0, 2.0], 0)

    def float_core(name, x_q):
        return np.zeros((x_q.shape[0], linear_shapes(CFG)[name][0]), np.float32)

    with pytest.raises(ValueError, match=r"^core returned float32 \(2, 32\) for "
                                         r"layers.0.self_attn.q_proj, expected int32"):
        IntegerModel(CFG, weights, float_core).forward([1, 2], 0)


def largest_core(name, x_q):
    """The largest accumulators the ternary core can give for ``x_q``: every row the signs of
    x_q (alternately negated), so ``|acc| = sum |x_q|``, the bound the formats rest on."""
    total = np.abs(x_q.astype(np.int64)).sum(axis=-1, keepdims=True)
    signs = np.where(np.arange(linear_shapes(CFG)[name][0]) % 2, -1, 1)
    return (total * signs).astype(np.int32)


def extreme_weights(weights):
    """Every gain at its largest, alternating in sign, and one huge embedding row."""
    norms = {name: np.where(np.arange(gain.size) % 3, 2.0, -2.0).astype(np.float32)
             for name, gain in weights.norms.items()}
    embedding = weights.embedding.copy()
    embedding[0] = 1000.0
    return ModelWeights(embedding=embedding, norms=norms, linears=weights.linears)


def test_extreme_inputs_stay_within_every_width(weights):
    """The longest sequence, the largest accumulators and extreme gains: every intermediate
    stays in its declared width (the checks raise otherwise, see the next test)."""
    model = IntegerModel(CFG, extreme_weights(weights), largest_core)
    model.forward([0] * (CFG.max_seq // 2) + TOKENS[:CFG.max_seq // 2], 0)
    model.generate([0], 3)


def test_a_narrower_width_fails_the_extreme_run(weights):
    model = IntegerModel(CFG, extreme_weights(weights), largest_core)
    used = model.prepared.formats.widths["residual"]
    narrow = dict(model.prepared.formats.widths, residual=Width(used.bits - 6))
    model.prepared = dataclasses.replace(
        model.prepared, formats=dataclasses.replace(model.prepared.formats, widths=narrow))
    with pytest.raises(IntegerWidthError, match="residual = .* does not fit int26"):
        model.forward([0] * CFG.max_seq, 0)


def test_prepared_scales_reach_their_bounds(weights):
    """The formats are not wasteful: the extreme run uses the top bits of the residual."""
    peaks = {}

    def observer(name, array):
        key = name.rsplit(".", 1)[-1]
        peaks[key] = max(peaks.get(key, 0), int(np.abs(array).max()) if array.size else 0)

    model = IntegerModel(CFG, extreme_weights(weights), largest_core, observer=observer)
    model.forward([0] * CFG.max_seq, 0)
    assert peaks["residual"] >= 2 ** (FORMATS.widths["residual"].bits - 8)
    assert peaks["projection"] >= 2 ** 12


def test_output_bound_holds_for_the_worst_rounding():
    """One element at the maximum and every other just past half an int8 step: each x_q
    rounds up to 1, and over K = 30,000 inputs that lifts |acc| rho past ``gamma K`` (by 13 %);
    :func:`output_bound`'s sqrt(K) / 254 term covers it."""
    cfg = ModelConfig(hidden=16, layers=1, heads=2, kv_heads=1, ffn=30000, vocab=8, max_seq=4)
    weights = ModelWeights.random(cfg, seed=0)
    weights = dataclasses.replace(weights, norms={name: np.ones_like(gain)
                                                  for name, gain in weights.norms.items()})
    prepared = IntegerWeights.from_weights(cfg, weights)
    name = "layers.0.mlp.down_proj"
    x = np.full((1, cfg.ffn), (2 ** 14 + 253) // 254 + 1)
    x[0, 0] = 2 ** 14
    norm = prepared.norms["layers.0.mlp.ffn_sub_norm"]
    x_q, rho = norm_quantize(x, 0, norm, TABLES, integer_only)
    assert x_q[0, 0] == 127 and np.all(x_q[0, 1:] == 1)
    acc = np.abs(x_q.astype(np.int32)).sum(axis=-1, keepdims=True)
    y = rescale(acc, rho, prepared.linears[name], integer_only, "residual")
    real = float(y[0, 0]) * 2.0 ** -prepared.linears[name].out_fraction
    gamma = float(weights.linears[name].gamma)
    assert 1.1 * gamma * cfg.ffn < real <= output_bound(cfg, weights, prepared.norms, name)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.forward(TOKENS * 3, 0), "positions 0 .. 29 exceed max_seq = 24"),
    (lambda m: m.forward([1], 2),
     "start_pos must be an integer in [0, 0] (the cached positions), not 2"),
    (lambda m: m.forward([3, 61], 0), "tokens[1] = 61 is outside the vocabulary [0, 61)"),
    (lambda m: m.generate(TOKENS, 16),
     "10 prompt tokens and 16 new tokens need 25 positions, more than max_seq = 24"),
    (lambda m: m.generate([1], -1), "n_tokens must be a non-negative integer, not -1"),
])
def test_model_errors_say_what_is_wrong(weights, call, message):
    with pytest.raises(ValueError) as error:
        call(IntegerModel(CFG, weights))
    assert str(error.value) == message


def test_weights_that_do_not_fit_the_config_are_named(weights):
    other = dataclasses.replace(CFG, hidden=40, heads=5, kv_heads=5)
    with pytest.raises(ValueError, match=r"^embed_tokens must be a float32 array of shape "
                                         r"\(61, 40\)"):
        IntegerModel(other, weights)

