"""The integer-only BitNet b1.58 decoder: the arithmetic a device runs for the whole decoder
(docs/design.md, "Integer decoder": formats, steps and error bounds).

Same graph as :class:`golden.model.Model` (see its docstring), same :class:`ModelWeights`, same
``core(name, x_q) -> int32 acc`` hook for every BitLinear. Everything around the cores runs on
integers of declared widths (:func:`integer_formats`, derived from the :class:`ModelConfig` and
checked at every step), with round-half-up shifts, lookup tables and dyadic per-token scalars
(:mod:`golden.fixedpoint`). Multiplies are at most 18 x 18 bits signed, or the stated
composition of two (a 36 x 18 product as two ECP5 MULT18X18D).

Preparation (:meth:`IntegerWeights.from_weights`) quantises the float checkpoint into integer
tensors and dyadic constants on the host, with floats, once. The forward pass has none.

Exact identities the decoder relies on
    RMSNorm then absmax quantisation: ``x_q = round(127 g x / max|g x|)`` does not depend on the
    positive per-token factor ``1 / rms(x)`` (nor on eps, nor on any power-of-two shift of x),
    so x_q is computed from the gain and the integer direction of x alone. ``1 / rms`` appears
    only in the BitLinear rescale, ``acc gamma max|g x| / (127 rms(x))``.
    The next BitLinear's input is normalised again, so the attention output and the FFN's
    ``relu(gate)**2 * up`` may carry any positive per-token scale (a power of two is tracked
    exactly, for eps).
    Greedy decoding takes the arg max of ``x_q . E_q[v] * s_v``: the final norm's rescale is a
    positive per-token factor and is needed only to turn logits into probabilities.
"""

import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from golden.fixedpoint import (
    ANGLE_BITS, EXP2_FRACTION_BITS, EXP2_TABLE_BITS, MANTISSA_BITS, PHASE_BITS, SINE_BITS,
    Dyadic, Tables, Width, bit_length, build_tables, dyadic, dyadic_add, dyadic_from_float,
    dyadic_mul, dyadic_reciprocal, dyadic_rsqrt, dyadic_value, exp2_lookup, shift_round,
    sine_lookup, table_error_bounds,
)
from golden.model import (ATTENTION_INPUTS, MLP_INPUTS, Decoder, WeightsCore, linear_shapes,
                          norm_sizes, rope_inverse_frequencies)
from golden.widths import signed_bits_for

__all__ = [
    "IntegerFormats", "integer_formats", "NormGain", "LinearScale", "SoftmaxScale",
    "IntegerWeights", "IntegerLogits", "IntegerModel", "output_bound", "softmax_scale",
    "NormStatistics", "norm_statistics", "quantize_factor", "quantize", "norm_quantize",
    "rescale", "rope_steps", "rope_factors", "apply_rope", "attention", "ffn_inner",
    "embed_values", "head_values", "RESCALE_SLACK",
]

ACT_MAX = 127                  # x_q in [-127, 127]: the symmetric int8 range
NORM_INPUT_BITS = 14           # a norm's input is shifted to |x| <= 2**14 (int16)
GAIN_BITS = 16                 # norm gains: int16 with a per-norm fraction
SHIFTED_BITS = 16              # g x and relu(gate)**2 are shifted to at most 2**16 (uint17)
PROJECTION_BITS = 16           # q, k, v (and the KV cache), gate, up: int16
RESIDUAL_BITS = 32             # the residual stream: int32
WEIGHT_FRACTION_BITS = 15      # softmax weights: 2**15 is probability 1
EMBEDDING_BITS = 8             # the tied embedding: int8 with a 17-bit scale per row
# Relative error allowed for a rescale factor (tables, dyadic roundings, x_q rounding drift);
# from_weights checks the tables' measured errors against it, and the output formats leave
# this much headroom.
RESCALE_SLACK = 2.0 ** -7
_TABLE_ERROR_BUDGET = 2.0 ** -10
# Softmax: gaps are cut at 19 octaves (every weight from 18 on is 0; one octave of margin), so
# the exponent t stays below 2**15 (softmax_scale checks it after the constant's rounding).
_EXPONENT_CUT = 19 << EXP2_FRACTION_BITS
EXPONENT_BITS = 15


# Formats -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class IntegerFormats:
    """Declared widths (``widths[name]``) of every integer the decoder holds, MULT18X18D per
    element of each multiply (``multipliers``), and table sizes (entries, bits)."""

    widths: Mapping[str, Width]
    multipliers: Mapping[str, int]
    tables: Mapping[str, tuple]

    def check(self, name, value, where=""):
        """``value`` checked against ``widths[name]``."""
        return self.widths[name].check(value, f"{where}{name}")


def _signed_for(magnitude):
    """The signed width that holds every integer of absolute value <= ``magnitude``."""
    return Width(signed_bits_for(magnitude))


def _unsigned_for(magnitude):
    return Width(max(int(magnitude).bit_length(), 1), signed=False)


def _mult18(a_bits, b_bits):
    """MULT18X18D per product of a signed ``a_bits`` by a signed ``b_bits`` operand: one up to
    18 x 18; up to 35 x 18 as two (the wide operand split into a signed high part and a 17-bit
    unsigned low part, the partial products added after a 17-bit shift)."""
    narrow, wide = sorted((a_bits, b_bits))
    if narrow > 18 or wide > 35:
        raise ValueError(f"a {a_bits} x {b_bits}-bit product has no stated composition")
    return 1 if wide <= 18 else 2


def integer_formats(cfg):
    """:class:`IntegerFormats` for ``cfg``: each width is the bound of what it holds, from the
    config alone; ValueError if the config needs more than the design's compositions."""
    k_max = max(cfg.hidden, cfg.ffn)
    half = 1 << (SHIFTED_BITS - 1)
    accumulator = _signed_for(ACT_MAX * k_max)
    norm_input = 1 << NORM_INPUT_BITS
    projection = (1 << (PROJECTION_BITS - 1)) - 1
    score = _signed_for(cfg.head_dim * projection ** 2)
    weight_sum = math.ceil((1 << WEIGHT_FRACTION_BITS) * (1 + _TABLE_ERROR_BUDGET)
                           + cfg.max_seq / 2)
    logit_dot = _signed_for(ACT_MAX * ACT_MAX * cfg.hidden)
    widths = {
        "token": _unsigned_for(cfg.vocab - 1),
        "position": _unsigned_for(cfg.max_seq - 1),
        "activation": Width(8),
        "accumulator": accumulator,
        "norm_input": _signed_for(norm_input),
        "gain": Width(GAIN_BITS),
        "gained": _signed_for(((1 << (GAIN_BITS - 1)) - 1) * norm_input),
        "gained_shifted": _signed_for(1 << SHIFTED_BITS),
        "quantize_product": _signed_for((1 << SHIFTED_BITS) * ((1 << MANTISSA_BITS) - 1)),
        "sum_squares": _unsigned_for(k_max * norm_input ** 2),
        "mantissa": Width(MANTISSA_BITS, signed=False),
        "rescale_product": Width(accumulator.bits + MANTISSA_BITS),
        "projection": Width(PROJECTION_BITS),
        "residual": Width(RESIDUAL_BITS),
        "rope_phase": Width(PHASE_BITS, signed=False),
        "rope_factor": _signed_for(1 << SINE_BITS),
        "rope_sum": _signed_for(2 * projection * (1 << SINE_BITS)),
        "score": score,
        "score_gap": _unsigned_for(2 * cfg.head_dim * projection ** 2),
        "gap_shifted": _unsigned_for(half * 2),
        "exponent": Width(EXPONENT_BITS, signed=False),
        "probability": _unsigned_for(1 << EXP2_TABLE_BITS),
        "probability_sum": _unsigned_for(cfg.max_seq << EXP2_TABLE_BITS),
        "probability_product": _unsigned_for((1 << EXP2_TABLE_BITS)
                                             * ((1 << MANTISSA_BITS) - 1)),
        "weight": Width(WEIGHT_FRACTION_BITS + 1, signed=False),
        "attention_out": _signed_for(weight_sum * projection),
        "square": _unsigned_for(projection ** 2),
        "square_shifted": _unsigned_for(half * 2),
        "ffn_inner": _signed_for(half * 2 * projection),
        "embedding": Width(EMBEDDING_BITS),
        "row_scale": Width(MANTISSA_BITS, signed=False),
        "embedding_product": _signed_for(ACT_MAX * ((1 << MANTISSA_BITS) - 1)),
        "logit_dot": logit_dot,
        "logit": Width(logit_dot.bits + MANTISSA_BITS),
    }
    for name, width in widths.items():
        if width.bits > 54:      # an ECP5 ALU54 accumulates 54 bits; int64 holds it exactly
            raise ValueError(f"{name} needs {width.bits} bits for this config; at most 54")
    mantissa = MANTISSA_BITS + 1          # an unsigned 17-bit operand on a signed port
    multipliers = {
        "gain": _mult18(GAIN_BITS, widths["norm_input"].bits),
        "sum_squares": _mult18(widths["norm_input"].bits, widths["norm_input"].bits),
        "quantize": _mult18(widths["gained_shifted"].bits, mantissa),
        "rescale": _mult18(accumulator.bits, mantissa),
        "rope_phase": _mult18(widths["position"].bits + 1, PHASE_BITS + 1),  # low PHASE_BITS kept
        "rope": 2 * _mult18(PROJECTION_BITS, widths["rope_factor"].bits),
        "score": _mult18(PROJECTION_BITS, PROJECTION_BITS),
        "exponent": _mult18(widths["gap_shifted"].bits + 1, mantissa),
        "normalise": _mult18(widths["probability"].bits + 1, mantissa),
        "weighted_sum": _mult18(widths["weight"].bits + 1, PROJECTION_BITS),
        "square": _mult18(PROJECTION_BITS, PROJECTION_BITS),
        "ffn_inner": _mult18(widths["square_shifted"].bits + 1, PROJECTION_BITS),
        "embedding": _mult18(EMBEDDING_BITS, mantissa),
        "logit_dot": _mult18(8, EMBEDDING_BITS),
        "logit": _mult18(logit_dot.bits, mantissa),
    }
    tables = {"rsqrt": (3 << 9, MANTISSA_BITS), "reciprocal": (1 << 10, MANTISSA_BITS),
              "exp2": (1 << EXP2_FRACTION_BITS, EXP2_TABLE_BITS + 1),
              "quarter_sine": ((1 << (ANGLE_BITS - 2)) + 1, SINE_BITS + 1)}
    return IntegerFormats(widths, multipliers, tables)


# Prepared weights (host, load time) --------------------------------------------------------

class NormGain(NamedTuple):
    """An RMSNorm's gain as ``gain * 2**-fraction`` (int16 values), and ``eps * K``."""

    gain: np.ndarray
    fraction: int
    eps_k: Dyadic


class LinearScale(NamedTuple):
    """A BitLinear's output: real ``y * 2**-out_fraction``, ``y`` the rounded product of the
    accumulator and ``rho * constant`` (``constant = gamma sqrt(K) / 127 * 2**out_fraction``)."""

    constant: Dyadic
    out_fraction: int


class SoftmaxScale(NamedTuple):
    """One layer's score-gap to exponent conversion: ``t = round(round(min(gap, gap_limit) /
    2**gap_shift) * scale)``, ``t`` in 2**-10 octaves."""

    gap_limit: int
    gap_shift: int
    scale: Dyadic


def _scalar(value):
    return Dyadic(np.int64(value.mantissa), np.int64(value.exponent))


def _fraction_below(bound, limit):
    """The largest fraction bits ``f`` with ``bound * 2**f <= limit`` (0 for a zero bound)."""
    return math.floor(math.log2(limit / bound)) if bound > 0 else 0


@dataclass(frozen=True, eq=False)
class IntegerWeights:
    """Everything the integer forward pass reads: integer tensors and dyadic constants.

    ``embedding`` is int8 ``(vocab, hidden)``, row ``v`` standing for ``embedding[v] *
    row_scales[v] * 2**-row_scale_fraction``; the residual stream is int32 with
    ``residual_fraction`` fraction bits; ``head_scale`` turns logits into real units.
    """

    formats: IntegerFormats
    tables: Tables
    embedding: np.ndarray
    row_scales: np.ndarray
    row_scale_fraction: int
    residual_fraction: int
    norms: Mapping[str, NormGain]
    linears: Mapping[str, LinearScale]
    softmax: tuple
    rope_steps: np.ndarray
    head_scale: Dyadic

    @classmethod
    def from_weights(cls, cfg, weights):
        """Quantise ``weights`` (float checkpoint) for ``cfg``: host preparation, with floats.

        Every output format is chosen from a worst-case bound, so the forward pass cannot leave
        its declared widths. ValueError if ``weights`` do not fit ``cfg``, or if the tables
        miss their error budget.
        """
        weights.check(cfg)
        formats = integer_formats(cfg)
        tables = build_tables()
        errors = table_error_bounds(tables)
        for name in ("rsqrt", "reciprocal"):
            if errors[name] > _TABLE_ERROR_BUDGET:
                raise ValueError(f"the {name} table's error {errors[name]:.3g} exceeds "
                                 f"{_TABLE_ERROR_BUDGET:.3g}")
        norms = {name: _norm_gain(weights.norms[name], size * cfg.eps)
                 for name, size in norm_sizes(cfg).items()}
        embedding, row_scales, row_scale_fraction = _quantise_embedding(weights.embedding)
        bounds = {name: output_bound(cfg, weights, norms, name) for name in linear_shapes(cfg)}
        into_residual = [name for name in bounds if name.endswith(("o_proj", "down_proj"))]
        residual_bound = float(np.max(row_scales)) * ACT_MAX * 2.0 ** -row_scale_fraction
        residual_bound += sum(bounds[name] for name in into_residual)
        rounding = 2 * cfg.layers + 1         # half a unit per add into the residual
        residual_fraction = _fraction_below(residual_bound,
                                            (1 << (RESIDUAL_BITS - 1)) - 1 - rounding)
        linears = {name: _linear_scale(cfg, weights, name, residual_fraction if
                                       name in into_residual else
                                       _projection_fraction(name, bounds[name], tables))
                   for name in bounds}
        head_scale = dyadic_from_float(math.sqrt(cfg.hidden) / ACT_MAX
                                       * 2.0 ** -row_scale_fraction)
        for name, norm in norms.items():
            formats.check("gain", norm.gain, f"{name} ")
        formats.check("embedding", embedding)
        formats.check("row_scale", row_scales)
        for name, scale in linears.items():
            formats.check("mantissa", scale.constant.mantissa, f"{name} ")
        return cls(
            formats=formats, tables=tables, embedding=embedding, row_scales=row_scales,
            row_scale_fraction=row_scale_fraction, residual_fraction=residual_fraction,
            norms=norms, linears=linears,
            softmax=tuple(softmax_scale(cfg.head_dim, _score_fraction(linears, i))
                          for i in range(cfg.layers)),
            rope_steps=rope_steps(cfg.head_dim, cfg.rope_theta),
            head_scale=_scalar(head_scale))


def _norm_gain(gain, eps_k):
    """int16 gain with the most fraction bits that keep every ``|round(g 2**f)|`` <= 32767."""
    peak = float(np.max(np.abs(gain)))
    limit = (1 << (GAIN_BITS - 1)) - 1
    fraction = _fraction_below(peak, limit)
    while peak and math.floor(peak * 2.0 ** fraction + 0.5) > limit:
        fraction -= 1
    quantised = np.floor(gain.astype(np.float64) * 2.0 ** fraction + 0.5).astype(np.int64)
    return NormGain(quantised, fraction, _scalar(dyadic_from_float(eps_k)))


def _quantise_embedding(embedding):
    """int8 rows (absmax 127 per row, rounded half to even) and 17-bit row scales sharing one
    exponent, chosen so that the largest row scale uses all 17 bits."""
    peak = np.abs(embedding).max(axis=1).astype(np.float64)
    scale = peak / ACT_MAX
    safe = np.where(peak > 0, scale, 1.0)
    quantised = np.clip(np.rint(embedding / safe[:, None]), -ACT_MAX, ACT_MAX).astype(np.int8)
    limit = (1 << MANTISSA_BITS) - 1
    fraction = _fraction_below(float(scale.max()), limit)
    while math.floor(scale.max() * 2.0 ** fraction + 0.5) > limit:
        fraction -= 1
    row_scales = np.floor(scale * 2.0 ** fraction + 0.5).astype(np.int64)
    return quantised, row_scales, fraction


def _score_fraction(linears, layer):
    prefix = f"layers.{layer}.self_attn."
    return linears[prefix + "q_proj"].out_fraction + linears[prefix + "k_proj"].out_fraction


def _input_norm(name):
    """The RMSNorm whose output feeds BitLinear ``name``."""
    prefix, matrix = name.rsplit(".", 1)
    layer = prefix.rsplit(".", 1)[0]
    return {"q_proj": f"{layer}.input_layernorm", "k_proj": f"{layer}.input_layernorm",
            "v_proj": f"{layer}.input_layernorm", "o_proj": f"{prefix}.attn_sub_norm",
            "gate_proj": f"{layer}.post_attention_layernorm",
            "up_proj": f"{layer}.post_attention_layernorm",
            "down_proj": f"{prefix}.ffn_sub_norm"}[matrix]


def output_bound(cfg, weights, norms, name):
    """Largest ``|y|`` (real) BitLinear ``name`` can output, for any input: with ``g`` the
    largest gain and ``K`` the inputs, ``|acc| <= sum |x_q|`` and Cauchy-Schwarz give
    ``gamma g K ((1 + slack) + sqrt(K) / 254)``, times ``(1 + slack)`` for the rescale."""
    norm = norms[_input_norm(name)]
    k = linear_shapes(cfg)[name][1]
    gain = float(np.max(np.abs(norm.gain))) * 2.0 ** -norm.fraction
    gamma = float(weights.linears[name].gamma)
    return (gamma * gain * k * (1 + RESCALE_SLACK)
            * (1 + RESCALE_SLACK + math.sqrt(k) / (2 * ACT_MAX)))


def _rope_gain(tables):
    """Largest ``(|cos| + |sin|) / 2**16`` of the sine table: RoPE's growth of a bound."""
    quarter = tables.quarter_sine
    return float(np.max(quarter + quarter[::-1])) / 2.0 ** SINE_BITS


def _linear_scale(cfg, weights, name, out_fraction):
    k = linear_shapes(cfg)[name][1]
    gamma = float(weights.linears[name].gamma)
    constant = dyadic_from_float(gamma * math.sqrt(k) / ACT_MAX * 2.0 ** out_fraction)
    return LinearScale(_scalar(constant), out_fraction)


def _projection_fraction(name, bound, tables):
    """Fraction bits of an int16 output (q, k, v, gate, up) whose real bound is ``bound``, with
    half a unit for the output's rounding and, for q and k, RoPE's growth and rounding."""
    limit = (1 << (PROJECTION_BITS - 1)) - 1.5
    if name.endswith(("q_proj", "k_proj")):
        limit = limit / _rope_gain(tables) - 0.5
    return _fraction_below(bound, limit)


def softmax_scale(head_dim, score_fraction):
    """:class:`SoftmaxScale` for scores ``q . k`` with ``score_fraction`` fraction bits: a gap
    ``s_max - s`` becomes ``t``, in 2**-10 octaves of ``exp(-gap / sqrt(head_dim))``."""
    per_unit = (math.log2(math.e) / math.sqrt(head_dim)
                * 2.0 ** (EXP2_FRACTION_BITS - score_fraction))
    gap_limit = math.ceil(_EXPONENT_CUT / per_unit)
    gap_shift = max(gap_limit.bit_length() - SHIFTED_BITS, 0)
    scale = _scalar(dyadic_from_float(per_unit * 2.0 ** gap_shift))
    cut = shift_round(shift_round(gap_limit, gap_shift) * scale.mantissa, -scale.exponent)
    if not (EXP2_TABLE_BITS + 2) << EXP2_FRACTION_BITS <= cut < 1 << EXPONENT_BITS:
        raise ValueError(f"score_fraction {score_fraction} puts the softmax cut at {int(cut)}, "
                         f"outside the exponent's {EXPONENT_BITS} bits")
    return SoftmaxScale(gap_limit, gap_shift, scale)


# The integer steps -------------------------------------------------------------------------

def _integers(value, what):
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer array, not dtype {array.dtype}")
    return array.astype(np.int64)


class NormStatistics(NamedTuple):
    """What a norm learns from its input in two passes, per token: ``shift`` takes ``x`` to
    ``|x| <= 2**14``; ``gained_shift`` takes ``u = g x`` to ``|u| <= 2**16``; ``peak`` is the
    shifted ``max|u|``; ``sum_squares`` is the sum of the shifted ``x`` squared."""

    shift: np.ndarray
    gained_shift: np.ndarray
    peak: np.ndarray
    sum_squares: np.ndarray


def norm_statistics(x, gain, check):
    """Steps 1 and 2 of :func:`norm_quantize` and its sum of squares: a
    :class:`NormStatistics` and the shifted ``u``."""
    x = _integers(x, "norm input")
    shift = np.maximum(bit_length(np.abs(x).max(axis=-1)) - NORM_INPUT_BITS, 0)
    x = check("norm_input", shift_round(x, shift[:, None]))
    u = check("gained", gain * x)
    u_shift = np.maximum(bit_length(np.abs(u).max(axis=-1)) - SHIFTED_BITS, 0)
    u = check("gained_shifted", shift_round(u, u_shift[:, None]))
    sum_squares = check("sum_squares", (x * x).sum(axis=-1))
    return NormStatistics(shift, u_shift, np.abs(u).max(axis=-1), sum_squares), u


def quantize_factor(peak, tables):
    """``127 / peak`` as a dyadic (``rcp`` from the table); a zero peak counts as 1."""
    return dyadic_mul(dyadic(ACT_MAX), dyadic_reciprocal(dyadic(np.maximum(peak, 1)), tables))


def quantize(u, factor, check):
    """Step 3 of :func:`norm_quantize`: ``clip(round(u * factor), -127, 127)`` per token."""
    product = check("quantize_product", u * factor.mantissa[:, None])
    return check("activation", np.clip(shift_round(product, -factor.exponent[:, None]),
                                       -ACT_MAX, ACT_MAX))


def norm_quantize(x, x_exponent, norm, tables, check):
    """RMSNorm with gain, then int8 absmax quantisation, in integers.

    ``x`` is an integer ``(T, K)`` standing for ``x * 2**x_exponent`` (``x_exponent`` an int or
    one per token). Returns ``x_q``, int8 ``(T, K)`` in [-127, 127]:
    ``round(127 g x / max|g x|)``, and ``rho``, a dyadic per token, the real
    ``max|g x| / sqrt(sum x**2 + eps K)`` (so ``max|norm(x)| = sqrt(K) rho``); both 0 for a
    token whose ``g x`` is all zero. Steps (round half up):

    1. shift x right by ``s`` (per token) until ``|x| <= 2**14``;
    2. ``u = g x`` (int16 x int16), shifted right by ``s_u`` until ``|u| <= 2**16``;
    3. ``x_q = clip(round(u * (127 * rcp(max|u|))), -127, 127)``, rcp from the table;
    4. ``rho = max|u| * 2**(s_u + s + x_exponent - gain fraction)
       * rsqrt(sum x**2 * 2**(2 (s + x_exponent)) + eps K)``, rsqrt from the table.
    """
    stats, u = norm_statistics(_integers(x, "norm input"), norm.gain, check)
    peak = stats.peak
    nonzero = peak > 0
    x_q = quantize(u, quantize_factor(peak, tables), check)
    exponent = stats.shift + x_exponent
    total = dyadic_add(dyadic(stats.sum_squares, 2 * exponent), norm.eps_k)
    rho = dyadic_mul(dyadic(peak, stats.gained_shift + exponent - norm.fraction),
                     dyadic_rsqrt(total, tables))
    rho = Dyadic(np.where(nonzero, rho.mantissa, 0), np.where(nonzero, rho.exponent, 0))
    return x_q.astype(np.int8), rho


def rescale(acc, rho, scale, check, out):
    """BitLinear output ``round(acc * rho * constant)`` in the width ``out``: one dyadic multiply
    per token, then one multiply (two when acc is wider than 18 bits) and a rounding shift per
    element. ``acc`` is the core's int32 ``(T, N)``."""
    acc = check("accumulator", _integers(acc, "accumulator"))
    factor = dyadic_mul(rho, scale.constant)
    product = check("rescale_product", acc * factor.mantissa[:, None])
    return check(out, shift_round(product, -factor.exponent[:, None]))


def rope_steps(head_dim, theta):
    """RoPE's inverse frequencies as phase steps (host preparation, with floats): int64
    ``(head_dim / 2,)``, each ``round(2**32 / (2 pi) * frequency) mod 2**32``, the phase
    advance of one position in turns with 32 fraction bits."""
    steps = rope_inverse_frequencies(head_dim, theta).astype(np.float64)
    steps = np.floor(steps / (2 * np.pi) * 2.0 ** PHASE_BITS + 0.5).astype(np.int64)
    return steps % (1 << PHASE_BITS)


def rope_factors(positions, rope_steps, tables, check):
    """``(cos, sin)``, int ``(T, head_dim / 2)`` with 16 fraction bits: the phase
    ``position * step mod 2**32`` (turns, 32 fraction bits), rounded to 12 bits, looked up."""
    positions = check("position", _integers(positions, "positions"))
    phase = check("rope_phase",
                  (positions[:, None] * rope_steps[None, :]) & ((1 << PHASE_BITS) - 1))
    angle = shift_round(phase, PHASE_BITS - ANGLE_BITS)
    quarter_turn = 1 << (ANGLE_BITS - 2)
    return (check("rope_factor", sine_lookup(angle + quarter_turn, tables)),
            check("rope_factor", sine_lookup(angle, tables)))


def apply_rope(x, cos, sin, check):
    """Rotate int16 ``x (T, heads, head_dim)`` in the rotate-half layout (pairs i, i + d/2):
    two multiplies per element, the sum rounded by 16 bits; the result is int16."""
    half = x.shape[-1] // 2
    first, second = x[..., :half], x[..., half:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    rotated = np.concatenate([check("rope_sum", first * cos - second * sin),
                              check("rope_sum", second * cos + first * sin)], axis=-1)
    return check("projection", shift_round(rotated, SINE_BITS))


def attention(q, keys, values, start_pos, softmax, tables, check):
    """Causal grouped-query attention; int ``(T, heads * head_dim)``, real value
    ``out * 2**-(15 + v fraction)``.

    ``q`` is int16 ``(T, heads, head_dim)`` at positions ``start_pos ..``; ``keys``, ``values``
    the int16 cache ``(S, kv_heads, head_dim)``. Per query and head: scores ``q . k`` (exact);
    gaps to the row's maximum; ``t = round(round(min(gap, limit) / 2**shift) * scale)`` in
    2**-10 octaves; ``p = exp2 table[t mod 1024]`` rounded right by ``t / 1024`` (0 from 18);
    weights ``round(p * 2**15 * rcp(sum p))``; output ``sum weight * v`` (exact).
    """
    steps, heads, _ = q.shape
    group = heads // keys.shape[1]
    k = np.repeat(keys.astype(np.int64), group, axis=1)
    v = np.repeat(values.astype(np.int64), group, axis=1)
    scores = check("score", np.einsum("thd,shd->hts", q, k))
    visible = np.arange(keys.shape[0])[None, :] <= start_pos + np.arange(steps)[:, None]
    top = np.where(visible, scores, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
    gap = check("score_gap", np.where(visible, top - scores, 0))
    gap = check("gap_shifted", shift_round(np.minimum(gap, softmax.gap_limit),
                                           softmax.gap_shift))
    t = check("exponent", shift_round(gap * softmax.scale.mantissa, -softmax.scale.exponent))
    p = check("probability", np.where(visible, exp2_lookup(t, tables), 0))
    total = check("probability_sum", p.sum(axis=-1))
    reciprocal = dyadic_reciprocal(dyadic(total), tables)
    product = check("probability_product", p * reciprocal.mantissa[..., None])
    weight = check("weight", shift_round(product, -(reciprocal.exponent[..., None]
                                                    + WEIGHT_FRACTION_BITS)))
    out = check("attention_out", np.einsum("hts,shd->thd", weight, v))
    return out.reshape(steps, -1)


def ffn_inner(gate, up, gate_fraction, up_fraction, check):
    """``relu(gate)**2 * up`` in integers, and its per-token exponent.

    ``a**2`` (``a = max(gate, 0)``, int16) is shifted right by ``s`` per token until it is
    ``<= 2**16``, then multiplied by ``up``: int32 standing for the real value times
    ``2**(s - 2 gate_fraction - up_fraction)``.
    """
    a = np.maximum(gate, 0)
    square = check("square", a * a)
    shift = np.maximum(bit_length(square.max(axis=-1)) - SHIFTED_BITS, 0)
    square = check("square_shifted", shift_round(square, shift[:, None]))
    return check("ffn_inner", square * up), shift - 2 * gate_fraction - up_fraction


def embed_values(tokens, embedding, row_scales, shift, check=None):
    """The residual stream's first value, int64 ``(T, hidden)``: each token's int8 embedding
    row times its 17-bit scale, ``shift_round`` by ``shift`` (``row_scale_fraction -
    residual_fraction``; a left shift if negative). ``check(name, value)`` checks the widths
    (``token``, ``embedding_product``, ``residual``)."""
    check = check or (lambda name, value: value)
    tokens = check("token", _integers(tokens, "tokens"))
    product = check("embedding_product", _integers(embedding, "embedding")[tokens]
                    * _integers(row_scales, "row scales")[tokens][:, None])
    return check("residual", shift_round(product, shift))


def head_values(x_q, embedding, row_scales, check=None):
    """The LM head's integer logits ``(x_q . embedding[v]) * row_scales[v]``, int64 ``(T,
    vocab)``: int8 ``x_q (T, hidden)`` against the tied int8 embedding, then one multiply by
    the row's 17-bit scale. ``check(name, value)`` checks the widths (``logit_dot``,
    ``logit``)."""
    check = check or (lambda name, value: value)
    dot = check("logit_dot", _integers(x_q, "x_q") @ _integers(embedding, "embedding").T)
    return check("logit", dot * _integers(row_scales, "row scales")[None, :])


class IntegerLogits(NamedTuple):
    """Logits as the integer decoder gives them: ``values`` (int64 ``(T, vocab)``, the arg max
    is the greedy choice) and ``scale``, one dyadic per position: the real logits are
    ``values * scale``."""

    values: np.ndarray
    scale: Dyadic

    def argmax(self):
        """Greedy tokens, int64 ``(T,)``: the first (lowest) index among equal maxima."""
        return np.argmax(self.values, axis=-1)

    def to_float(self):
        """Real logits, float64 ``(T, vocab)``: host-side measurement, not part of the decoder."""
        return self.values.astype(np.float64) * dyadic_value(self.scale)[:, None]


# The decoder -------------------------------------------------------------------------------

class IntegerModel(Decoder):
    """The integer decoder with an int16 KV cache. ``core`` does all BitLinear integer work,
    exactly as for :class:`golden.model.Model`; ``observer(name, array)``, if given, sees
    every checked intermediate."""

    cache_dtype = np.int16

    def __init__(self, cfg, weights, core=None, *, observer=None):
        self._setup(cfg, IntegerWeights.from_weights(cfg, weights),
                    WeightsCore(weights) if core is None else core, observer)

    @classmethod
    def from_prepared(cls, cfg, prepared, core, *, observer=None):
        """The decoder of integer weights ``prepared`` already made (a device's loaded image,
        say), its BitLinears done by ``core``."""
        model = cls.__new__(cls)
        model._setup(cfg, prepared, core, observer)
        return model

    def _setup(self, cfg, prepared, core, observer):
        self.cfg, self.prepared, self.core, self.observer = cfg, prepared, core, observer
        self._shapes = linear_shapes(cfg)
        self.reset()

    def forward(self, tokens, start_pos):
        """:class:`IntegerLogits` for ``tokens`` at positions ``start_pos ..``; the cache keeps
        positions ``0 .. start_pos - 1`` and then holds ``tokens`` too (as
        :meth:`golden.model.Model.forward`). Nothing changes if an error is raised."""
        tokens = self._check_tokens(tokens, "tokens").astype(np.int64)
        self._check_start(start_pos, len(tokens))
        check = self._checker("rope.")
        rope = rope_factors(np.arange(start_pos, start_pos + len(tokens)),
                            self.prepared.rope_steps, self.prepared.tables, check)
        keys = [k[:start_pos] for k in self._keys]
        values = [v[:start_pos] for v in self._values]
        h = self._embed(tokens)
        for i in range(self.cfg.layers):
            h = self._attention_block(i, h, start_pos, rope, keys, values)
            h = self._mlp_block(i, h)
        self._keys, self._values = keys, values
        return self._head(h)

    def generate(self, prompt_tokens, n_tokens, *, logits=False):
        """Reset, prefill the prompt, then decode greedily; the ``n_tokens`` new tokens, and
        with ``logits`` the integer logits (int64 ``(vocab,)``) of the last position run, the
        ones the last new token is the arg max of (a device's GENERATE read-back)."""
        prompt = self._check_generation(prompt_tokens, n_tokens)
        self.reset()
        new_tokens, last = [], None
        if n_tokens:
            last = self.forward(prompt, 0)
            new_tokens.append(int(last.argmax()[-1]))
        while len(new_tokens) < n_tokens:
            last = self.forward(new_tokens[-1:], self.position)
            new_tokens.append(int(last.argmax()[-1]))
        if logits:
            return new_tokens, None if last is None else last.values[-1]
        return new_tokens

    def _checker(self, where):
        formats, observer = self.prepared.formats, self.observer

        def check(name, value):
            array = formats.check(name, value, where)
            if observer is not None:
                observer(where + name, array)
            return array
        return check

    def _core(self, name, x_q):
        acc = np.asarray(self.core(name, x_q))
        expected = (x_q.shape[0], self._shapes[name][0])
        if acc.shape != expected or acc.dtype != np.int32:
            raise ValueError(f"core returned {acc.dtype} {acc.shape} for {name}, "
                             f"expected int32 {expected}")
        return acc

    def _linears(self, x_q, rho, prefix, names, out, check):
        """One x_q and rho shared by the BitLinears ``names``, each rescaled into ``out``."""
        return [rescale(self._core(prefix + name, x_q), rho,
                        self.prepared.linears[prefix + name], check, out) for name in names]

    def _embed(self, tokens):
        p = self.prepared
        return embed_values(tokens, p.embedding, p.row_scales,
                            p.row_scale_fraction - p.residual_fraction, self._checker("embed."))

    def _attention_block(self, i, h, start_pos, rope, keys, values):
        cfg, p, prefix = self.cfg, self.prepared, f"layers.{i}.self_attn."
        check = self._checker(prefix)
        steps = h.shape[0]
        x_q, rho = norm_quantize(h, -p.residual_fraction, p.norms[f"layers.{i}.input_layernorm"],
                                 p.tables, check)
        q, k, v = self._linears(x_q, rho, prefix, ATTENTION_INPUTS, "projection",
                                check)
        q = apply_rope(q.reshape(steps, cfg.heads, cfg.head_dim), *rope, check)
        k = apply_rope(k.reshape(steps, cfg.kv_heads, cfg.head_dim), *rope, check)
        keys[i] = np.concatenate([keys[i], k.astype(np.int16)])
        values[i] = np.concatenate([values[i], v.reshape(steps, cfg.kv_heads, cfg.head_dim)
                                    .astype(np.int16)])
        o = attention(q, keys[i], values[i], start_pos, p.softmax[i], p.tables, check)
        o_exponent = -(WEIGHT_FRACTION_BITS + p.linears[prefix + "v_proj"].out_fraction)
        x_q, rho = norm_quantize(o, o_exponent, p.norms[prefix + "attn_sub_norm"], p.tables,
                                 check)
        (out,) = self._linears(x_q, rho, prefix, ("o_proj",), "residual", check)
        return check("residual", h + out)

    def _mlp_block(self, i, h):
        p, prefix = self.prepared, f"layers.{i}.mlp."
        check = self._checker(prefix)
        x_q, rho = norm_quantize(h, -p.residual_fraction,
                                 p.norms[f"layers.{i}.post_attention_layernorm"], p.tables, check)
        gate, up = self._linears(x_q, rho, prefix, MLP_INPUTS, "projection", check)
        inner, exponent = ffn_inner(gate, up, p.linears[prefix + "gate_proj"].out_fraction,
                                    p.linears[prefix + "up_proj"].out_fraction, check)
        x_q, rho = norm_quantize(inner, exponent, p.norms[prefix + "ffn_sub_norm"], p.tables,
                                 check)
        (out,) = self._linears(x_q, rho, prefix, ("down_proj",), "residual", check)
        return check("residual", h + out)

    def _head(self, h):
        p = self.prepared
        check = self._checker("head.")
        x_q, rho = norm_quantize(h, -p.residual_fraction, p.norms["norm"], p.tables, check)
        values = head_values(x_q, p.embedding, p.row_scales, check)
        return IntegerLogits(values, dyadic_mul(rho, p.head_scale))
