"""The BitLinear epilogue: a GEMV's int32 results rescaled, and the residual added, where they
leave the banks, so that they need not cross the link (``golden.integer.rescale`` and the
residual add of ``IntegerModel``, bit for bit).

Per element: ``round(acc * mantissa / 2**-exponent)`` (round half up; a left shift for an
exponent above zero), plus ``residual``. The factor is one dyadic per token (the token's
``rho`` times the matrix's constant, from :class:`hw.dyadic.ScalarUnit`); each element carries
its own, so a new factor needs no draining. Golden's widths guarantee the result fits
``out_bits`` for a model the decoder accepts; the unit does not saturate.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import MANTISSA_BITS
from golden.integer import PROJECTION_BITS

from .dyadic import DYADIC

__all__ = ["Epilogue", "shift_round"]


class Epilogue(wiring.Component):
    """``o = shift_round(acc * factor.mantissa, -factor.exponent) + residual``, one element a
    cycle, three cycles from an element taken to its result offered.

    The multiply is ``acc_bits x 18`` (the unsigned mantissa on a signed port): two MULT18X18D
    for an accumulator wider than 18 bits, the stated composition of
    ``golden.integer.integer_formats``. Its product is registered before the rounding shift.
    The pipeline holds whole while the result is refused: ``i_stream.ready`` follows
    ``o_stream.ready``.

    Parameters
    ----------
    config : hw.config.Config
        ``acc_bits`` is the accumulator's width.
    out_bits : int
        The result's width: 16 for q, k, v, gate and up (golden's ``projection``), 32 for the
        residual stream after o_proj and down.

    Members
    -------
    i_stream : In(stream.Signature(StructLayout({"acc": signed(acc_bits), "factor": DYADIC,
                                                "residual": signed(out_bits)})))
        An accumulator, its token's factor and the residual element to add (0 for none).
    o_stream : Out(stream.Signature(signed(out_bits)))
    """

    LATENCY = 3

    def __init__(self, config, *, out_bits=PROJECTION_BITS):
        if isinstance(out_bits, bool) or not isinstance(out_bits, int) \
                or not 2 <= out_bits <= 32:
            raise ValueError(f"out_bits must be an integer in [2, 32], not {out_bits!r}")
        self._acc_bits = config.acc_bits
        self._out_bits = out_bits
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "acc": signed(config.acc_bits), "factor": DYADIC,
                "residual": signed(out_bits)}))),
            "o_stream": Out(stream.Signature(signed(out_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        # The whole pipeline moves when its last stage can: a result leaves, or there is none.
        advance = ~self.o_stream.valid | self.o_stream.ready
        m.d.comb += self.i_stream.ready.eq(advance)

        # Stage 1: the operands. Stage 2: the product and the rounding shift's amount. Stage 3:
        # the rounded product plus the residual.
        taken = self.i_stream.payload
        product_bits = self._acc_bits + MANTISSA_BITS
        operand = Signal.like(taken, reset_less=True)
        product = Signal(signed(product_bits), reset_less=True)
        right = Signal(range(product_bits + 2), reset_less=True)
        left = Signal(range(self._out_bits + 1), reset_less=True)
        residual = Signal(signed(self._out_bits), reset_less=True)
        valid = Signal(2)
        with m.If(advance):
            m.d.sync += [
                operand.eq(taken),
                valid.eq(Cat(self.i_stream.valid, valid[0])),
                product.eq(operand.acc * operand.factor.mantissa),
                # A right shift beyond the product's width rounds every value to 0, as one of
                # product_bits + 1 does; a left shift beyond out_bits leaves nothing in range.
                right.eq(Mux(operand.factor.exponent < -(product_bits + 1), product_bits + 1,
                             Mux(operand.factor.exponent < 0, -operand.factor.exponent, 0))),
                left.eq(Mux(operand.factor.exponent > self._out_bits, self._out_bits,
                            Mux(operand.factor.exponent > 0, operand.factor.exponent, 0))),
                residual.eq(operand.residual),
                self.o_stream.valid.eq(valid[1]),
                self.o_stream.payload.eq(shift_round(product, right, left) + residual),
            ]
        return m


def shift_round(value, right, left=0):
    """An Amaranth expression, ``golden.fixedpoint.shift_round`` of signed ``value``: right by
    ``right`` rounding half up, or left by ``left`` (one of the two is 0)."""
    half = Mux(right == 0, 0, Const(1) << (right - 1).as_unsigned())
    return ((value + half) >> right) << left
