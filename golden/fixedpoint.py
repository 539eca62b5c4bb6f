"""Fixed-point arithmetic of the integer decoder (docs/design.md, "Integer decoder"): declared
widths, the rounding shift, leading-one detection, dyadic scalars and the lookup tables.

Everything that runs in the forward pass takes and returns integer NumPy arrays (int64 holding
values of a declared width of at most 62 bits, so that NumPy never wraps around). Floats appear
only in :func:`build_tables`, :func:`dyadic_from_float` and :func:`table_error_bounds`, which
prepare constants on the host at load time and measure them.

Rounding, everywhere: round half up, by adding half of the last kept unit and shifting right
arithmetically (:func:`shift_round`). A left shift is exact.

Dyadic scalars
    Per-token and per-matrix scale factors are dyadic numbers ``m * 2**e``: an unsigned
    :data:`MANTISSA_BITS`-bit mantissa, normalised to ``[2**16, 2**17)`` (or 0 for the value 0),
    and an integer exponent. A mantissa is a non-negative operand of an ECP5 MULT18X18D; the
    product of two is 34 bits, renormalised to 17 by a rounding shift. Multiplying by a power of
    two is an exponent add.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "IntegerWidthError", "Width", "MANTISSA_BITS", "shift_round", "bit_length", "Dyadic",
    "dyadic", "dyadic_mul", "dyadic_add", "dyadic_rsqrt", "dyadic_reciprocal",
    "dyadic_from_float", "dyadic_value", "Tables", "build_tables", "table_error_bounds",
    "RSQRT_INDEX_BITS", "RECIPROCAL_INDEX_BITS", "EXP2_FRACTION_BITS", "EXP2_TABLE_BITS",
    "PHASE_BITS", "ANGLE_BITS", "SINE_BITS", "exp2_lookup", "sine_lookup",
]

# NumPy's int64 shifts by 63 or more are undefined; every value here is narrower than 2**61, so
# a right shift by 62 already gives 0 and larger shifts are clamped to it.
_MAX_SHIFT = 62


class IntegerWidthError(ArithmeticError):
    """An intermediate outside its declared width: the arithmetic's bounds are wrong."""


@dataclass(frozen=True)
class Width:
    """A declared integer width: ``bits`` two's complement bits, or unsigned."""

    bits: int
    signed: bool = True

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 1 <= self.bits <= _MAX_SHIFT:
            raise ValueError(f"Width.bits must be an integer in [1, {_MAX_SHIFT}], "
                             f"not {self.bits!r}")

    @property
    def min(self):
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max(self):
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def __str__(self):
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    def check(self, value, what):
        """Return ``value`` as an integer array, or raise naming ``what`` if it does not fit.

        A float array is a :class:`TypeError`: the forward pass has no float arithmetic.
        """
        array = np.asarray(value)
        if array.dtype.kind not in "iu":
            raise TypeError(f"{what} must be an integer array, not dtype {array.dtype}")
        if array.size:
            low, high = array.min(), array.max()
            if low < self.min or high > self.max:
                bad = low if low < self.min else high
                raise IntegerWidthError(f"{what} = {int(bad)} does not fit {self} "
                                        f"[{self.min}, {self.max}]")
        return array


def shift_round(x, n):
    """``x / 2**n`` rounded half up: ``(x + 2**(n - 1)) >> n`` for ``n > 0``; ``x << -n`` for
    ``n <= 0``. ``x`` and ``n`` are integer arrays (broadcast); ``|x|`` must be below 2**61."""
    x = np.asarray(x, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    right = np.minimum(np.maximum(n, 0), _MAX_SHIFT)
    half = np.left_shift(np.int64(1), np.maximum(right - 1, 0)) * (right > 0)
    result = (x + half) >> right
    left = np.maximum(-n, 0)
    if np.any(left):
        if np.any((result != 0) & (bit_length(np.abs(result)) + left > _MAX_SHIFT)):
            raise IntegerWidthError(f"a left shift by up to {int(left.max())} would leave "
                                    f"int64")
        result = result << np.minimum(left, _MAX_SHIFT)
    return result


def bit_length(x):
    """Bits of each non-negative integer in ``x`` (0 for 0), as a priority encoder finds them:
    six halving steps, each a comparison, a shift and an add."""
    x = np.array(x, dtype=np.int64)
    if np.any(x < 0):
        raise ValueError("bit_length needs non-negative integers")
    bits = np.zeros_like(x)
    for step in (32, 16, 8, 4, 2, 1):
        above = (x >> step) > 0
        x = np.where(above, x >> step, x)
        bits += np.where(above, step, 0)
    return bits + (x > 0)


MANTISSA_BITS = 17
_MANTISSA_MIN = 1 << (MANTISSA_BITS - 1)


class Dyadic(NamedTuple):
    """Non-negative scalars ``mantissa * 2**exponent`` (int64 arrays of one shape); a mantissa
    is 0 or in ``[2**16, 2**17)``, and a zero has exponent 0."""

    mantissa: np.ndarray
    exponent: np.ndarray


def dyadic(value, exponent=0):
    """Normalise non-negative integers ``value * 2**exponent`` to dyadics; rounds once (half up)
    when ``value`` has more than 17 bits, exact otherwise."""
    value = np.asarray(value, dtype=np.int64)
    if np.any(value < 0):
        raise ValueError("a dyadic scalar must be non-negative")
    shift = bit_length(value) - MANTISSA_BITS
    mantissa = shift_round(value, shift)
    carry = mantissa >> MANTISSA_BITS            # rounding reached 2**17: one more bit
    mantissa = mantissa >> carry
    exponent = np.asarray(exponent, dtype=np.int64) + shift + carry
    return Dyadic(mantissa, np.where(mantissa == 0, 0, exponent))


def dyadic_mul(a, b):
    """``a * b``: one 17 x 17-bit multiply (34 bits), renormalised with one rounding."""
    return dyadic(a.mantissa * b.mantissa, a.exponent + b.exponent)


def dyadic_add(a, b):
    """``a + b``: the smaller operand is aligned to the larger's exponent less 17 (a rounding
    shift), the 35-bit sum renormalised with one rounding."""
    a_zero, b_zero = a.mantissa == 0, b.mantissa == 0
    top = np.maximum(np.where(a_zero, b.exponent, a.exponent),
                     np.where(b_zero, a.exponent, b.exponent))
    base = top - MANTISSA_BITS
    total = (shift_round(a.mantissa, base - a.exponent)
             + shift_round(b.mantissa, base - b.exponent))
    return dyadic(total, base)


RSQRT_INDEX_BITS = 11          # mantissa in [1, 4) in steps of 2**-9: 1536 entries
RECIPROCAL_INDEX_BITS = 10     # mantissa in [1, 2) in steps of 2**-10: 1024 entries


def dyadic_rsqrt(a, tables):
    """``1 / sqrt(a)`` for positive dyadics, by one table lookup.

    With an even exponent, ``a = m2 * 2**e2`` and ``m2`` in ``[2**16, 2**18)``; the table is
    indexed by the top 11 bits of ``m2`` (``(m2 >> 7) - 512``) and holds ``2**17 / sqrt(x)`` at
    the middle ``x`` of that index's interval. Result: ``table[i] * 2**(-25 - e2 / 2)``.
    """
    if np.any(a.mantissa == 0):
        raise ValueError("rsqrt of zero")
    odd = a.exponent & 1
    m2, e2 = a.mantissa << odd, a.exponent - odd
    index = (m2 >> 7) - (1 << 9)
    return Dyadic(tables.rsqrt[index], -25 - (e2 >> 1))


def dyadic_reciprocal(a, tables):
    """``1 / a`` for positive dyadics, by one table lookup: indexed by the top 10 bits of the
    mantissa below its leading one (``(m >> 6) - 1024``), holding ``2**17 / x`` at the middle
    ``x`` of the interval. Result: ``table[i] * 2**(-33 - e)``."""
    if np.any(a.mantissa == 0):
        raise ValueError("reciprocal of zero")
    index = (a.mantissa >> 6) - (1 << RECIPROCAL_INDEX_BITS)
    return Dyadic(tables.reciprocal[index], -33 - a.exponent)


EXP2_FRACTION_BITS = 10        # the softmax exponent t counts 2**-10 octaves
EXP2_TABLE_BITS = 16           # 2**-f in [0.5, 1] as a 17-bit unsigned with 16 fraction bits
PHASE_BITS = 32                # RoPE phases: turns with 32 fraction bits (mod one turn)
ANGLE_BITS = 12                # RoPE angles in 4096 steps per turn
SINE_BITS = 16                 # sin and cos with 16 fraction bits, |value| <= 2**16


def exp2_lookup(t, tables):
    """``2**(16 - t / 1024)`` for integers ``t >= 0``: the table gives the fractional octave,
    the integer octave is a rounding shift; 0 from 18 octaves on (the shift would round away
    every bit of a 17-bit entry)."""
    octave = t >> EXP2_FRACTION_BITS
    entry = tables.exp2[t & ((1 << EXP2_FRACTION_BITS) - 1)]
    return np.where(octave >= EXP2_TABLE_BITS + 2, 0,
                    shift_round(entry, np.minimum(octave, EXP2_TABLE_BITS + 2)))


def sine_lookup(angle, tables):
    """``round(2**16 * sin(2 pi angle / 4096))`` for integer angles, from the quarter wave:
    quadrant ``angle >> 10`` mirrors the index (odd quadrants) and negates (the lower half)."""
    quarter = 1 << (ANGLE_BITS - 2)
    angle = angle & ((1 << ANGLE_BITS) - 1)
    quadrant, step = angle >> (ANGLE_BITS - 2), angle & (quarter - 1)
    magnitude = tables.quarter_sine[np.where(quadrant & 1, quarter - step, step)]
    return np.where(quadrant >= 2, -magnitude, magnitude)


# Host-side preparation: built with floats at load time, then read-only integer arrays. -------

class Tables(NamedTuple):
    """The integer decoder's lookup tables (int64 arrays of 17-bit unsigned entries)."""

    rsqrt: np.ndarray          # 1536 entries: 2**17 / sqrt(x), x in [1, 4)
    reciprocal: np.ndarray     # 1024 entries: 2**17 / x, x in [1, 2)
    exp2: np.ndarray           # 1024 entries: 2**16 * 2**(-f / 1024)
    quarter_sine: np.ndarray   # 1025 entries: 2**16 * sin(2 pi j / 4096), j = 0 .. 1024


def _rounded(values):
    table = np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)
    table.setflags(write=False)
    return table


def build_tables():
    """Build :class:`Tables` (host preparation; floats allowed here)."""
    rsqrt_index = np.arange(3 << 9)
    reciprocal_index = np.arange(1 << RECIPROCAL_INDEX_BITS)
    fraction = np.arange(1 << EXP2_FRACTION_BITS)
    quarter = np.arange((1 << (ANGLE_BITS - 2)) + 1)
    return Tables(
        rsqrt=_rounded(2.0 ** 17 / np.sqrt((rsqrt_index + 512.5) / 512)),
        reciprocal=_rounded(2.0 ** 17 / ((reciprocal_index + 1024.5) / 1024)),
        exp2=_rounded(2.0 ** (EXP2_TABLE_BITS - fraction / (1 << EXP2_FRACTION_BITS))),
        quarter_sine=_rounded(2.0 ** SINE_BITS * np.sin(2 * np.pi * quarter
                                                        / (1 << ANGLE_BITS))))


def dyadic_from_float(value):
    """The dyadic nearest a positive float (host preparation of constants)."""
    value = float(value)
    if not 0 < value < math.inf:
        raise ValueError(f"a dyadic constant must be positive and finite, not {value!r}")
    fraction, exponent = math.frexp(value)            # value = fraction * 2**exponent
    return dyadic(np.int64(math.floor(fraction * 2 ** MANTISSA_BITS + 0.5)),
                  exponent - MANTISSA_BITS)


def dyadic_value(a):
    """Dyadics as float64 (host-side measurement only)."""
    return np.ldexp(np.asarray(a.mantissa, dtype=np.float64), np.asarray(a.exponent))


def table_error_bounds(tables):
    """Largest relative errors of :func:`dyadic_rsqrt` and :func:`dyadic_reciprocal` over every
    normalised mantissa (and both exponent parities), and the largest absolute errors of the
    exp2 and sine entries in units of their last bit: measured exhaustively on the host."""
    mantissas = np.arange(_MANTISSA_MIN, 1 << MANTISSA_BITS, dtype=np.int64)
    errors = {}
    for parity in (0, 1):
        a = Dyadic(mantissas, np.full_like(mantissas, parity))
        exact = 1 / np.sqrt(dyadic_value(a))
        got = dyadic_value(dyadic_rsqrt(a, tables))
        errors["rsqrt"] = max(errors.get("rsqrt", 0.0), float(np.max(np.abs(got / exact - 1))))
    a = Dyadic(mantissas, np.zeros_like(mantissas))
    got = dyadic_value(dyadic_reciprocal(a, tables))
    errors["reciprocal"] = float(np.max(np.abs(got * dyadic_value(a) - 1)))
    fraction = np.arange(1 << EXP2_FRACTION_BITS)
    errors["exp2"] = float(np.max(np.abs(
        tables.exp2 - 2.0 ** (EXP2_TABLE_BITS - fraction / (1 << EXP2_FRACTION_BITS)))))
    angle = np.arange(1 << ANGLE_BITS)
    errors["sine"] = float(np.max(np.abs(
        sine_lookup(angle, tables) - 2.0 ** SINE_BITS * np.sin(2 * np.pi * angle
                                                               / (1 << ANGLE_BITS)))))
    return errors
