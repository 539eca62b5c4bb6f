"""Dyadic scalars in hardware: the per-token and per-matrix factors of the integer decoder.

A dyadic is ``mantissa * 2**exponent`` with an unsigned :data:`MANTISSA_BITS`-bit mantissa in
``[2**16, 2**17)``, or 0 with exponent 0 (:mod:`golden.fixedpoint`, whose functions define every
result bit for bit). :class:`ScalarUnit` computes one operation at a time: normalising an
integer, a product, a sum, a reciprocal square root and a reciprocal, the last two from the
tables of :func:`golden.fixedpoint.build_tables` in ROM (the reciprocal's times a constant the
unit is built with, so that ``127 / peak`` is one step). The resident decoder needs a handful of
these a token (a norm's reciprocal and rsqrt, each BitLinear's factor), so the unit is small and
sequential: one 17 x 17 multiply (a MULT18X18D). Every rounding shift is spread over stages
(the shift amounts, the barrel shift, the rounding's increment) and the normalisation finds the
leading one in a tree in a stage of its own, so that no stage holds more than one carry chain
or one shifter: 100 MHz on the ECP5.
"""

from amaranth import Module, Mux, Shape, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import (MANTISSA_BITS, RECIPROCAL_INDEX_BITS, Dyadic, build_tables,
                               dyadic_mul)

__all__ = ["EXPONENT_BITS", "DYADIC", "ScalarOp", "ScalarUnit", "bit_length"]

EXPONENT_BITS = 12              # exponents in [-2048, 2047]: the decoder's stay within +-200
DYADIC = data.StructLayout({"mantissa": MANTISSA_BITS, "exponent": signed(EXPONENT_BITS)})
_ONE = Dyadic(1 << (MANTISSA_BITS - 1), 1 - MANTISSA_BITS)


class ScalarOp(enum.Enum, shape=3):
    NORMALISE = 0               # golden.fixedpoint.dyadic(value, exponent)
    MULTIPLY = 1                # dyadic_mul(a, b)
    ADD = 2                     # dyadic_add(a, b)
    RSQRT = 3                   # dyadic_rsqrt(a)
    RECIPROCAL = 4              # dyadic_mul(scale, dyadic_reciprocal(a)): the unit's scale


def bit_length(value):
    """An Amaranth expression: the bits of unsigned ``value`` (0 for 0), as a tree of halves:
    ``log2`` levels of a 2:1 select, not a priority chain."""
    width = len(value)
    if width == 1:
        return value
    high_width = width // 2
    low, high = value[:width - high_width], value[width - high_width:]
    return Mux(high != 0, (width - high_width) + bit_length(high), bit_length(low))


class _ShiftRound:
    """``golden.fixedpoint.shift_round(value, shift)`` for unsigned ``value`` in three stages:
    right by ``shift > 0`` rounding half up (by at most ``limit``; further gives 0, which a
    value below ``2**limit`` does anyway), left by ``-shift`` otherwise (at most
    :data:`MANTISSA_BITS`: only a value of fewer than 17 bits is shifted left, up to 17).

    :meth:`amounts` registers the amounts (``right - 1`` and ``left``) and the direction;
    :meth:`shifted` the value shifted right by ``right - 1`` or left by ``left``; :meth:`rounded`
    is the result, the last bit added and dropped for a right shift, as an expression
    (``(value + 2**(right-1)) >> right == ((value >> (right-1)) + 1) >> 1``)."""

    def __init__(self, m, name, *, limit):
        self._m = m
        self._right = Signal(range(limit), name=f"{name}_right")     # right - 1
        self._left = Signal(range(MANTISSA_BITS + 1), name=f"{name}_left")
        self._positive = Signal(name=f"{name}_positive")
        self._limit = limit

    def amounts(self, shift):
        limit = self._limit
        right = Mux(shift > limit, limit, Mux(shift > 0, shift, 1))
        self._m.d.sync += [self._right.eq((right - 1).as_unsigned()),
                           self._left.eq(Mux(shift < 0, -shift, 0).as_unsigned()),
                           self._positive.eq(shift > 0)]

    def shifted(self, value, into):
        positive = Signal.like(self._positive, name=f"{into.name}_positive")
        self._m.d.sync += [positive.eq(self._positive),
                           into.eq(Mux(self._positive, value >> self._right,
                                       value << self._left))]
        return _Shifted(into, positive)


class _Shifted:
    def __init__(self, value, positive):
        self.value, self.positive = value, positive

    def rounded(self, width):
        """The result's low ``width`` bits."""
        return Mux(self.positive, (self.value[:width + 1] + 1) >> 1, self.value)[:width]


class ScalarUnit(wiring.Component):
    """One dyadic operation per command, results in command order.

    A command taken in cycle ``t`` has its result offered from cycle ``t + latency_of(op)``;
    the unit takes its next command once that result has left. RSQRT and RECIPROCAL of a zero
    are not defined (:mod:`golden.fixedpoint` raises): a caller never asks for them.

    Parameters
    ----------
    value_bits : int
        Width of the unsigned integer NORMALISE takes, in ``[17, 62]``.
    reciprocal_scale : golden.fixedpoint.Dyadic
        The constant RECIPROCAL multiplies by, non-zero: 1 (``Dyadic(2**16, -16)``, which
        leaves ``dyadic_reciprocal`` as it is) by default. Its products with every entry of the
        reciprocal table are in the ROM, so the scaled reciprocal costs one table read.

    Members
    -------
    i_stream : In(stream.Signature(StructLayout({"op": ScalarOp, "a": DYADIC, "b": DYADIC,
                                                "value": value_bits,
                                                "exponent": signed(EXPONENT_BITS)})))
        Commands: NORMALISE reads ``value`` and ``exponent``; the others ``a`` (and ``b``).
    o_stream : Out(stream.Signature(DYADIC))
        Results.
    """

    def __init__(self, *, value_bits, reciprocal_scale=_ONE):
        if isinstance(value_bits, bool) or not isinstance(value_bits, int) \
                or not MANTISSA_BITS <= value_bits <= 62:
            raise ValueError(f"value_bits must be an integer in [{MANTISSA_BITS}, 62], "
                             f"not {value_bits!r}")
        mantissa, exponent = (int(v) for v in reciprocal_scale)
        if not (1 << (MANTISSA_BITS - 1)) <= mantissa < 1 << MANTISSA_BITS:
            raise ValueError(f"reciprocal_scale must be a non-zero dyadic (mantissa in "
                             f"[2**16, 2**17)), not {reciprocal_scale!r}")
        self._value_bits, self._scale = value_bits, Dyadic(mantissa, exponent)
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "op": ScalarOp, "a": DYADIC, "b": DYADIC, "value": value_bits,
                "exponent": signed(EXPONENT_BITS)}))),
            "o_stream": Out(stream.Signature(DYADIC)),
        })

    # The operand of NORMALISE and MULTIPLY is registered in the command's first cycle; ADD's
    # aligns its two mantissas first: the larger exponent, their shifts, the shift amounts, the
    # shifted mantissas, the rounded ones, then their sum.
    _ALIGN_STAGES = 5
    # The normalisation after the operand: its leading one, the shift amounts, the shifted
    # operand, then the rounded result.
    _NORMALISE_STAGES = 4

    @staticmethod
    def latency_of(op):
        """Cycles from a command taken to its result offered: four for a table read (the
        command, the address, the data, the data in fabric), and for the others the command,
        the operand (ADD's after its alignment) and the normalisation."""
        if op in (ScalarOp.RSQRT, ScalarOp.RECIPROCAL):
            return 4
        align = ScalarUnit._ALIGN_STAGES if op == ScalarOp.ADD else 0
        return 1 + 1 + align + ScalarUnit._NORMALISE_STAGES

    def elaborate(self, platform):
        m = Module()
        tables = build_tables()
        m.submodules.rsqrt = rsqrt = Memory(shape=MANTISSA_BITS, depth=len(tables.rsqrt),
                                            init=[int(v) for v in tables.rsqrt])
        # The scaled reciprocal of a mantissa-table entry r at a's exponent e is golden's
        # dyadic_mul(scale, Dyadic(r, -33 - e)): the mantissa and exponent of dyadic_mul(scale,
        # Dyadic(r, 0)), then -33 - e. The ROM holds each entry's mantissa and its exponent
        # above the least of them.
        scaled = dyadic_mul(self._scale, Dyadic(tables.reciprocal, 0))
        least = int(scaled.exponent.min())
        offset_bits = max(1, int(scaled.exponent.max()) - least).bit_length()
        reciprocal_entry = data.StructLayout({"mantissa": MANTISSA_BITS,
                                              "offset": offset_bits})
        m.submodules.reciprocal = reciprocal = Memory(
            shape=reciprocal_entry, depth=len(tables.reciprocal),
            init=[{"mantissa": int(v), "offset": int(e) - least}
                  for v, e in zip(scaled.mantissa, scaled.exponent)])
        rsqrt_read, reciprocal_read = rsqrt.read_port(), reciprocal.read_port()

        command = Signal.like(self.i_stream.payload)
        a, b, op = command.a, command.b, command.op
        table_op = (op == ScalarOp.RSQRT) | (op == ScalarOp.RECIPROCAL)
        # Cycles since the command was taken, less one, at which the result is registered.
        done_at = Mux(table_op, self.latency_of(ScalarOp.RSQRT),
                      Mux(op == ScalarOp.ADD, self.latency_of(ScalarOp.ADD),
                          self.latency_of(ScalarOp.MULTIPLY))) - 2
        stage = Signal(range(self.latency_of(ScalarOp.ADD) - 1))
        busy = Signal()
        m.d.comb += self.i_stream.ready.eq(~busy)
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [command.eq(self.i_stream.payload), busy.eq(1), stage.eq(0)]
        with m.Elif(busy & ~self.o_stream.valid):
            m.d.sync += stage.eq(stage + 1)
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += [busy.eq(0), self.o_stream.valid.eq(0)]

        # Every register below follows the command, which holds still while the unit is busy;
        # the stage counter says when the result has arrived. The tables' addresses come from
        # the command; their words are registered in fabric (a DP16KD delivers its word late).
        odd = a.exponent[0]
        m.d.comb += [
            rsqrt_read.addr.eq(((a.mantissa << odd) >> 7) - (1 << 9)),
            reciprocal_read.addr.eq((a.mantissa >> 6) - (1 << RECIPROCAL_INDEX_BITS)),
        ]
        table_word = Signal(MANTISSA_BITS)
        reciprocal_offset = Signal.like(reciprocal_read.data.offset)
        m.d.sync += [table_word.eq(Mux(op == ScalarOp.RSQRT, rsqrt_read.data,
                                       reciprocal_read.data.mantissa)),
                     reciprocal_offset.eq(reciprocal_read.data.offset)]

        # ADD's alignment: both mantissas to the larger exponent less 17 (the other's if one is
        # zero), rounded; the sum is NORMALISE'd from there.
        exponent_shape = signed(EXPONENT_BITS + 2)
        top = Mux(a.mantissa == 0, b.exponent,
                  Mux((b.mantissa == 0) | (a.exponent > b.exponent), a.exponent, b.exponent))
        top_held = Signal(signed(EXPONENT_BITS))
        base = Signal(exponent_shape)
        m.d.sync += [top_held.eq(top), base.eq(top_held - MANTISSA_BITS)]
        align_shifts = [Signal(exponent_shape, name=f"align_shift_{n}") for n in "ab"]
        m.d.sync += [shift.eq(top_held - MANTISSA_BITS - x.exponent)
                     for shift, x in zip(align_shifts, (a, b))]
        aligners = [_ShiftRound(m, f"align_{n}", limit=MANTISSA_BITS + 1) for n in "ab"]
        aligned = []
        for n, aligner, shift, x in zip("ab", aligners, align_shifts, (a, b)):
            aligner.amounts(shift)
            pre = Signal(2 * MANTISSA_BITS, name=f"align_{n}_shifted")
            rounded = Signal(2 * MANTISSA_BITS, name=f"aligned_{n}")
            m.d.sync += rounded.eq(aligner.shifted(x.mantissa, pre).rounded(len(rounded)))
            aligned.append(rounded)

        # The operand to normalise: the value, the product, or the aligned sum.
        wide = max(self._value_bits, 2 * MANTISSA_BITS + 1)
        operand = Signal(wide)
        operand_exponent = Signal(exponent_shape)
        with m.Switch(op):
            with m.Case(ScalarOp.NORMALISE):
                m.d.sync += [operand.eq(command.value), operand_exponent.eq(command.exponent)]
            with m.Case(ScalarOp.MULTIPLY):
                m.d.sync += [operand.eq(a.mantissa * b.mantissa),
                             operand_exponent.eq(a.exponent + b.exponent)]
            with m.Case(ScalarOp.ADD):
                m.d.sync += [operand.eq(aligned[0] + aligned[1]),
                             operand_exponent.eq(base)]

        # Normalisation: the operand's leading one; the shift to 17 bits; the shifted operand;
        # rounded half up, where a rounding that reaches 2**17 gives one more bit
        # (golden.fixedpoint.dyadic).
        held = Signal(wide)
        held_exponent = Signal(exponent_shape)
        bits = Signal(range(wide + 1))
        m.d.sync += [held.eq(operand), held_exponent.eq(operand_exponent),
                     bits.eq(bit_length(operand))]
        shift = Signal(signed(Shape.cast(range(-MANTISSA_BITS, wide + 1)).width))
        m.d.comb += shift.eq(bits - MANTISSA_BITS)
        normaliser = _ShiftRound(m, "normalise", limit=wide)
        normaliser.amounts(shift)
        shifted_exponent = Signal(exponent_shape)
        zero = Signal()
        amounts_held = Signal(wide)
        m.d.sync += [shifted_exponent.eq(held_exponent + shift), zero.eq(held == 0),
                     amounts_held.eq(held)]
        pre = Signal(wide + MANTISSA_BITS)
        shifted = normaliser.shifted(amounts_held, pre)
        result_exponent = Signal(exponent_shape)
        result_zero = Signal()
        m.d.sync += [result_exponent.eq(shifted_exponent), result_zero.eq(zero)]
        rounded = Signal(MANTISSA_BITS + 1)
        m.d.comb += rounded.eq(shifted.rounded(len(rounded)))
        carry = rounded[MANTISSA_BITS]
        result = Signal(DYADIC)
        m.d.comb += [
            result.mantissa.eq(Mux(carry, rounded >> 1, rounded)),
            result.exponent.eq(Mux(result_zero, 0, result_exponent + carry)),
        ]

        with m.If(busy & ~self.o_stream.valid & (stage == done_at)):
            m.d.sync += self.o_stream.valid.eq(1)
            with m.Switch(op):
                with m.Case(ScalarOp.RSQRT):
                    # -25 - (e - odd) / 2, which is -25 - floor(e / 2).
                    m.d.sync += [self.o_stream.payload.mantissa.eq(table_word),
                                 self.o_stream.payload.exponent.eq(-25 - (a.exponent >> 1))]
                with m.Case(ScalarOp.RECIPROCAL):
                    m.d.sync += [self.o_stream.payload.mantissa.eq(table_word),
                                 self.o_stream.payload.exponent.eq(
                                     least - 33 - a.exponent + reciprocal_offset)]
                with m.Default():
                    m.d.sync += self.o_stream.payload.eq(result)
        return m
