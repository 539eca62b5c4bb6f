"""Dyadic scalars in hardware: the per-token and per-matrix factors of the integer decoder.

A dyadic is ``mantissa * 2**exponent`` with an unsigned :data:`MANTISSA_BITS`-bit mantissa in
``[2**16, 2**17)``, or 0 with exponent 0 (:mod:`golden.fixedpoint`, whose functions define every
result bit for bit). :class:`ScalarUnit` computes one operation at a time: normalising an
integer, a product, a sum, a reciprocal square root and a reciprocal, the last two from the
tables of :func:`golden.fixedpoint.build_tables` in ROM. The resident decoder needs a handful of
these a token (a norm's reciprocal and rsqrt, each BitLinear's factor), so the unit is small and
sequential: one 17 x 17 multiply (a MULT18X18D), and a normalisation in two stages (find the
leading one in a tree, then shift and round) so that no stage holds a long chain.
"""

from amaranth import Module, Mux, Shape, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import MANTISSA_BITS, RECIPROCAL_INDEX_BITS, build_tables

__all__ = ["EXPONENT_BITS", "DYADIC", "ScalarOp", "ScalarUnit", "bit_length"]

EXPONENT_BITS = 12              # exponents in [-2048, 2047]: the decoder's stay within +-200
DYADIC = data.StructLayout({"mantissa": MANTISSA_BITS, "exponent": signed(EXPONENT_BITS)})


class ScalarOp(enum.Enum, shape=3):
    NORMALISE = 0               # golden.fixedpoint.dyadic(value, exponent)
    MULTIPLY = 1                # dyadic_mul(a, b)
    ADD = 2                     # dyadic_add(a, b)
    RSQRT = 3                   # dyadic_rsqrt(a)
    RECIPROCAL = 4              # dyadic_reciprocal(a)


def bit_length(value):
    """An Amaranth expression: the bits of unsigned ``value`` (0 for 0), as a tree of halves:
    ``log2`` levels of a 2:1 select, not a priority chain."""
    width = len(value)
    if width == 1:
        return value
    high_width = width // 2
    low, high = value[:width - high_width], value[width - high_width:]
    return Mux(high != 0, (width - high_width) + bit_length(high), bit_length(low))


def _shift_round(value, shift, *, limit):
    """``golden.fixedpoint.shift_round(value, shift)`` for unsigned ``value``: right by
    ``shift > 0`` rounding half up (by at most ``limit``; further gives 0, which a value below
    ``2**limit`` does anyway), left by ``-shift`` otherwise (at most :data:`MANTISSA_BITS`:
    only a value of fewer than 17 bits is shifted left, up to 17)."""
    right = Mux(shift > limit, limit, Mux(shift > 0, shift, 1))
    rounded = ((value >> (right - 1).as_unsigned()) + 1) >> 1   # (value + 2**(right-1)) >> right
    left = Mux(shift < 0, -shift, 0).as_unsigned()[:MANTISSA_BITS.bit_length()]
    return Mux(shift > 0, rounded, value << left)


class ScalarUnit(wiring.Component):
    """One dyadic operation per command, results in command order.

    A command taken in cycle ``t`` has its result offered from cycle ``t + latency_of(op)``;
    the unit takes its next command once that result has left. RSQRT and RECIPROCAL of a zero
    are not defined (:mod:`golden.fixedpoint` raises): a caller never asks for them.

    Parameters
    ----------
    value_bits : int
        Width of the unsigned integer NORMALISE takes, in ``[17, 62]``.

    Members
    -------
    i_stream : In(stream.Signature(StructLayout({"op": ScalarOp, "a": DYADIC, "b": DYADIC,
                                                "value": value_bits,
                                                "exponent": signed(EXPONENT_BITS)})))
        Commands: NORMALISE reads ``value`` and ``exponent``; the others ``a`` (and ``b``).
    o_stream : Out(stream.Signature(DYADIC))
        Results.
    """

    def __init__(self, *, value_bits):
        if isinstance(value_bits, bool) or not isinstance(value_bits, int) \
                or not MANTISSA_BITS <= value_bits <= 62:
            raise ValueError(f"value_bits must be an integer in [{MANTISSA_BITS}, 62], "
                             f"not {value_bits!r}")
        self._value_bits = value_bits
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "op": ScalarOp, "a": DYADIC, "b": DYADIC, "value": value_bits,
                "exponent": signed(EXPONENT_BITS)}))),
            "o_stream": Out(stream.Signature(DYADIC)),
        })

    @staticmethod
    def latency_of(op):
        """Cycles from a command taken to its result offered: three for a table read (the
        command, the address, the data), four for the others (the command, the operand, two
        stages of normalisation)."""
        return 3 if op in (ScalarOp.RSQRT, ScalarOp.RECIPROCAL) else 4

    def elaborate(self, platform):
        m = Module()
        tables = build_tables()
        m.submodules.rsqrt = rsqrt = Memory(shape=MANTISSA_BITS, depth=len(tables.rsqrt),
                                            init=[int(v) for v in tables.rsqrt])
        m.submodules.reciprocal = reciprocal = Memory(
            shape=MANTISSA_BITS, depth=len(tables.reciprocal),
            init=[int(v) for v in tables.reciprocal])
        rsqrt_read, reciprocal_read = rsqrt.read_port(), reciprocal.read_port()

        command = Signal.like(self.i_stream.payload)
        stage = Signal(range(4))            # cycles since the command was taken, less one
        busy = Signal()
        m.d.comb += self.i_stream.ready.eq(~busy)
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [command.eq(self.i_stream.payload), busy.eq(1), stage.eq(0)]
        with m.Elif(busy & ~self.o_stream.valid):
            m.d.sync += stage.eq(stage + 1)
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += [busy.eq(0), self.o_stream.valid.eq(0)]
        a, b, op = command.a, command.b, command.op
        table_op = (op == ScalarOp.RSQRT) | (op == ScalarOp.RECIPROCAL)

        # Stage 0: the operand to normalise (the value, a product, an aligned sum) and the
        # tables' addresses.
        wide = max(self._value_bits, 2 * MANTISSA_BITS + 1)
        exponent_shape = signed(EXPONENT_BITS + 2)
        operand = Signal(wide)
        operand_exponent = Signal(exponent_shape)
        top = Mux(a.mantissa == 0, b.exponent,
                  Mux((b.mantissa == 0) | (a.exponent > b.exponent), a.exponent, b.exponent))
        base = Signal(exponent_shape)
        m.d.comb += base.eq(top - MANTISSA_BITS)
        aligned = [_shift_round(x.mantissa, (base - x.exponent).as_signed(),
                                limit=MANTISSA_BITS + 1) for x in (a, b)]
        odd = a.exponent[0]
        m.d.comb += [
            rsqrt_read.addr.eq(((a.mantissa << odd) >> 7) - (1 << 9)),
            reciprocal_read.addr.eq((a.mantissa >> 6) - (1 << RECIPROCAL_INDEX_BITS)),
        ]
        with m.Switch(op):
            with m.Case(ScalarOp.NORMALISE):
                m.d.sync += [operand.eq(command.value), operand_exponent.eq(command.exponent)]
            with m.Case(ScalarOp.MULTIPLY):
                m.d.sync += [operand.eq(a.mantissa * b.mantissa),
                             operand_exponent.eq(a.exponent + b.exponent)]
            with m.Case(ScalarOp.ADD):
                m.d.sync += [operand.eq(aligned[0] + aligned[1]), operand_exponent.eq(base)]

        # Stage 1: the operand's leading one. Stage 2: to 17 bits, rounded half up; a rounding
        # that reaches 2**17 gives one more bit (golden.fixedpoint.dyadic).
        held = Signal(wide)
        held_exponent = Signal(exponent_shape)
        bits = Signal(range(wide + 1))
        m.d.sync += [held.eq(operand), held_exponent.eq(operand_exponent),
                     bits.eq(bit_length(operand))]
        shift = Signal(signed(Shape.cast(range(-MANTISSA_BITS, wide + 1)).width))
        m.d.comb += shift.eq(bits - MANTISSA_BITS)
        rounded = Signal(MANTISSA_BITS + 1)
        m.d.comb += rounded.eq(_shift_round(held, shift, limit=wide))
        carry = rounded[MANTISSA_BITS]
        result = Signal(DYADIC)
        m.d.comb += [
            result.mantissa.eq(Mux(carry, rounded >> 1, rounded)),
            result.exponent.eq(Mux(held == 0, 0, held_exponent + shift + carry)),
        ]

        with m.If(busy & ~self.o_stream.valid & (stage == Mux(table_op, 1, 2))):
            m.d.sync += self.o_stream.valid.eq(1)
            with m.Switch(op):
                with m.Case(ScalarOp.RSQRT):
                    # -25 - (e - odd) / 2, which is -25 - floor(e / 2).
                    m.d.sync += [self.o_stream.payload.mantissa.eq(rsqrt_read.data),
                                 self.o_stream.payload.exponent.eq(-25 - (a.exponent >> 1))]
                with m.Case(ScalarOp.RECIPROCAL):
                    m.d.sync += [self.o_stream.payload.mantissa.eq(reciprocal_read.data),
                                 self.o_stream.payload.exponent.eq(-33 - a.exponent)]
                with m.Default():
                    m.d.sync += self.o_stream.payload.eq(result)
        return m
