"""``golden.fixedpoint.shift_round`` in pipeline stages: the rounding shift of the epilogue, the
FFN, attention and the norm.

``shift_round(x, n)`` adds the half ``2**(n - 1)`` and shifts right by ``n > 0``, or shifts left
by ``-n``. In one stage, the half's decoder, a carry chain and a barrel shifter are too slow for
100 MHz on the ECP5, so the units spread it over registers: the half, from the right shift's
amount, in one of its own (:func:`register_half`), then the half added, the right shift and the
left shift, one a stage (:func:`rounding_shift`). Every register is added under the caller's
current condition (a pipeline's advance, a state, or none), so that a pipeline that holds holds
them too. The register widths are the caller's: a result wider than its register is truncated,
as the units' formats allow.
"""

from amaranth import Cat, Signal

__all__ = ["register_half", "rounding_half", "rounding_shift"]


def rounding_half(right, width):
    """The half that ``shift_round`` adds before a right shift by unsigned ``right`` (0 for no
    shift), as a ``width``-bit expression: a decoder, bit ``n`` set for ``right == n + 1``.

    A half past ``width`` bits reads 0. (The shift ``1 << (right - 1)`` would say the same, but
    Amaranth sizes it for the largest amount ``right``'s width allows: for a 16-bit amount, a
    65,536-bit shifter that elaboration's cycle check and the Verilog then have to walk.)"""
    return Cat(right == n + 1 for n in range(width))


def register_half(m, right, width, name):
    """A ``width``-bit register of :func:`rounding_half` of ``right``."""
    half = Signal(width, name=name, reset_less=True)
    m.d.sync += half.eq(rounding_half(right, width))
    return half


def rounding_shift(m, value, *, half, right, biased, right_shifted, left=None,
                   left_shifted=None):
    """``shift_round(value, right - left)`` one step a stage: the registers ``biased = value +
    half``, then ``right_shifted = biased >> right`` and, with ``left``, ``left_shifted =
    right_shifted << left``.

    ``half`` is the half for ``right`` in the stage of ``value`` (:func:`register_half`, or an
    expression where a stage can afford the decoder); ``right`` is the amount in the stage of
    ``biased``, ``left`` the one in the stage of ``right_shifted``: an amount that holds still
    may be the same signal in every stage."""
    if (left is None) != (left_shifted is None):
        raise ValueError("left and left_shifted go together")
    m.d.sync += [biased.eq(value + half), right_shifted.eq(biased >> right)]
    if left is not None:
        m.d.sync += left_shifted.eq(right_shifted << left)
