"""The BitLinear epilogue: a GEMV's int32 results rescaled, and the residual added, where they
leave the banks, so that they need not cross the link (``golden.integer.rescale`` and the
residual add of ``IntegerModel``, bit for bit).

Per element: ``round(acc * mantissa / 2**-exponent)`` (round half up; a left shift for an
exponent above zero), plus ``residual``. The factor is one dyadic per token (the token's
``rho`` times the matrix's constant, from :class:`hw.dyadic.ScalarUnit`); each beat of
``lanes`` elements carries its own, so a new factor needs no draining. ``lanes`` sets the
throughput: a GEMV delivers ``banks`` results every ``ceil(K / lanes)`` cycles, so an epilogue
that keeps up with the banks has ``banks / words_per_row`` lanes (4 for the shipped model's
K = 128 on ulx3s-85f). Golden's widths guarantee the result fits
``out_bits`` for a model the decoder accepts; the unit does not saturate.
"""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import MANTISSA_BITS
from golden.integer import PROJECTION_BITS

from .dyadic import DYADIC
from .rounding import register_half, rounding_shift

__all__ = ["Epilogue"]


class Epilogue(wiring.Component):
    """``o[i] = shift_round(acc[i] * factor.mantissa, -factor.exponent) + residual[i]``,
    ``lanes`` elements a cycle, six cycles from a beat taken to its results offered.

    Each lane's multiply is ``acc_bits x 18`` (the unsigned mantissa on a signed port): two
    MULT18X18D for an accumulator wider than 18 bits, the stated composition of
    ``golden.integer.integer_formats``. The rounding shift takes three stages of its own (the
    half added, the right shift, the left shift: :mod:`hw.rounding`). The pipeline holds whole
    while the result is refused: ``i_stream.ready`` follows ``o_stream.ready``.

    Parameters
    ----------
    config : hw.config.Config
        ``acc_bits`` is the accumulator's width.
    out_bits : int
        The result's width: 16 for q, k, v, gate and up (golden's ``projection``), 32 for the
        residual stream after o_proj and down.
    lanes : int
        Elements a beat.

    Members
    -------
    i_stream : In(stream.Signature(StructLayout({"acc": ArrayLayout(signed(acc_bits), lanes),
                                                "factor": DYADIC,
                                                "residual": ArrayLayout(signed(out_bits), lanes)})))
        Accumulators of one token, its factor and the residual elements to add (0 for none).
    o_stream : Out(stream.Signature(ArrayLayout(signed(out_bits), lanes)))
    """

    LATENCY = 6

    def __init__(self, config, *, out_bits=PROJECTION_BITS, lanes=1):
        for name, value, low, high in (("out_bits", out_bits, 2, 32), ("lanes", lanes, 1, 64)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], not {value!r}")
        self._acc_bits = config.acc_bits
        self._out_bits = out_bits
        self.lanes = lanes
        results = data.ArrayLayout(signed(out_bits), lanes)
        super().__init__({
            "i_stream": In(stream.Signature(data.StructLayout({
                "acc": data.ArrayLayout(signed(config.acc_bits), lanes), "factor": DYADIC,
                "residual": results}))),
            "o_stream": Out(stream.Signature(results)),
        })

    def elaborate(self, platform):
        m = Module()
        # The whole pipeline moves when its last stage can: a result leaves, or there is none.
        advance = ~self.o_stream.valid | self.o_stream.ready
        m.d.comb += self.i_stream.ready.eq(advance)

        # Stage 1: the operands. Stage 2: the products, and the shift amounts and rounding half
        # from the factor's exponent, one for the beat. Stage 3: the half added. Stage 4: the
        # right shift. Stage 5: the left shift. Stage 6: the residual added. The rounding
        # shift is spread over three stages: in one, a barrel shifter between two carry chains
        # ran at 46 MHz on the ECP5. Every stage's copy of the shift amounts and the residual
        # moves with it.
        taken = self.i_stream.payload
        product_bits = self._acc_bits + MANTISSA_BITS
        wide = data.ArrayLayout(signed(product_bits + 2), self.lanes)   # room for the half
        operand = Signal.like(taken, reset_less=True)
        exponent = operand.factor.exponent
        # A right shift beyond the product's width rounds every value to 0, as one of
        # product_bits + 1 does; a left shift beyond out_bits leaves nothing in range.
        right_by = Mux(exponent < -(product_bits + 1), product_bits + 1,
                       Mux(exponent < 0, -exponent, 0))
        left_by = Mux(exponent > self._out_bits, self._out_bits, Mux(exponent > 0, exponent, 0))

        def stages(value, shape, first, last, name):
            """``value`` registered in stages ``first`` to ``last``: the one of each stage."""
            copies = {}
            for n in range(first, last + 1):
                copies[n] = Signal(shape, name=f"{name}{n}", reset_less=True)
                m.d.sync += copies[n].eq(value) if n == first else copies[n].eq(copies[n - 1])
            return copies

        products = Signal(wide, reset_less=True)
        biased = Signal(wide, reset_less=True)
        shifted = Signal(wide, reset_less=True)
        scaled = Signal.like(self.o_stream.payload, reset_less=True)
        valid = Signal(self.LATENCY - 1)
        with m.If(advance):
            right = stages(right_by, range(product_bits + 2), 2, 3, "right")
            left = stages(left_by, range(self._out_bits + 1), 2, 4, "left")
            residual = stages(operand.residual, operand.residual.shape(), 2, 5, "residual")
            half = register_half(m, right_by, product_bits + 1, "half")
            m.d.sync += [
                operand.eq(taken),
                valid.eq(Cat(self.i_stream.valid, valid[:-1])),
                self.o_stream.valid.eq(valid[-1]),
            ]
            for i in range(self.lanes):
                m.d.sync += products[i].eq(operand.acc[i] * operand.factor.mantissa)
                rounding_shift(m, products[i], half=half, right=right[3], biased=biased[i],
                               right_shifted=shifted[i], left=left[4], left_shifted=scaled[i])
                m.d.sync += self.o_stream.payload[i].eq(scaled[i] + residual[5][i])
        return m

