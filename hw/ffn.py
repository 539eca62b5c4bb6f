"""The FFN's inner product ``relu(gate)**2 * up`` of the integer decoder, one element a cycle
(``golden.integer.ffn_inner``, bit for bit).

Per token: ``a = max(gate, 0)``; ``a**2`` is shifted right by ``s`` (rounding half up) until it
is at most ``2**16``, ``s = max(bit_length(max a**2) - 16, 0)``, then multiplied by ``up``. The
shift depends on the whole gate vector, so the unit keeps ``a`` in a buffer while it finds the
largest (``max a**2 = (max a)**2``: a running maximum of ``a`` suffices, squared once, on the
last gate element), then reads it back as ``up`` streams in. The token's exponent is ``s - 2
gate_fraction - up_fraction``; the unit reports ``s``, the constant part is the sequencer's.
"""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.integer import PROJECTION_BITS, SHIFTED_BITS
from golden.widths import signed_bits_for

from .dyadic import bit_length
from .rounding import register_half, rounding_shift

__all__ = ["FfnInner"]

_PROJECTION_MAX = (1 << (PROJECTION_BITS - 1)) - 1
_A_BITS = PROJECTION_BITS - 1                       # a = max(gate, 0) <= 32767
_SQUARE_BITS = (_PROJECTION_MAX ** 2).bit_length()  # golden's "square"
_SHIFT_MAX = _SQUARE_BITS - SHIFTED_BITS
_SHIFTED_SQUARE_BITS = SHIFTED_BITS + 1             # golden's "square_shifted": <= 2**16
# golden's "ffn_inner": 2**16 x 32767 at most.
INNER_BITS = signed_bits_for((1 << SHIFTED_BITS) * _PROJECTION_MAX)


class FfnInner(wiring.Component):
    """``relu(gate)**2 * up`` of one token at a time, ``2 length`` elements in, ``length`` out.

    A token is a command with its length, then its ``length`` gate elements, then its
    ``length`` up elements on one stream (the order in which the banks produce the rows of the
    gate|up matrix, so the epilogue's results feed it directly). The command is taken only
    between tokens, so a token takes ``2 length + 1`` cycles of input; each result leaves
    :data:`LATENCY` cycles after its up element is taken, and a new token's gate may enter
    while the last one's results drain. The pipeline holds whole while a result is refused.
    The square and the product by up are one MULT18X18D each.

    Parameters
    ----------
    config : hw.config.Config
        The device (the unit has no device parameters).
    ffn : int
        The longest token (the model's ffn width): the buffer's depth.

    Members
    -------
    cmd : In(stream.Signature(StructLayout({"length": range(ffn + 1)})))
        A token's length, from 1 to ``ffn``.
    i_stream : In(stream.Signature(signed(16)))
        The token's gate elements, then its up elements (golden's ``projection``).
    o_stream : Out(stream.Signature(StructLayout({"value": signed(32), "shift": range(15)})))
        ``shift_round(a**2, shift) * up`` per up element, in order, each with its token's
        ``shift`` (golden's ``ffn_inner`` and the ``s`` of its exponent).
    """

    LATENCY = 7

    def __init__(self, config, *, ffn):
        if isinstance(ffn, bool) or not isinstance(ffn, int) or ffn < 1:
            raise ValueError(f"ffn must be a positive integer, not {ffn!r}")
        self._ffn = ffn
        super().__init__({
            "cmd": In(stream.Signature(data.StructLayout({"length": range(ffn + 1)}))),
            "i_stream": In(stream.Signature(signed(PROJECTION_BITS))),
            "o_stream": Out(stream.Signature(data.StructLayout({
                "value": signed(INNER_BITS), "shift": range(_SHIFT_MAX + 1)}))),
        })

    def elaborate(self, platform):
        m = Module()
        ffn = self._ffn
        m.submodules.buffer = buffer = Memory(shape=unsigned(_A_BITS), depth=ffn, init=[])

        # Every stage moves together, and waits while a result is refused.
        advance = ~self.o_stream.valid | self.o_stream.ready

        # Which element the stream holds: the command's length, the phase, the index.
        length = Signal(range(ffn + 1))
        phase = Signal(data.StructLayout({"active": 1, "up": 1}))
        index = Signal(range(ffn))
        end = index == length - 1
        m.d.comb += [self.cmd.ready.eq(~phase.active),
                     self.i_stream.ready.eq(advance & phase.active)]
        with m.If(self.cmd.valid & ~phase.active):
            m.d.sync += [length.eq(self.cmd.payload.length), phase.active.eq(1), phase.up.eq(0)]
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += index.eq(Mux(end, 0, index + 1))
            with m.If(end):
                m.d.sync += [phase.up.eq(~phase.up), phase.active.eq(~phase.up)]

        # A gate element's a is written into the buffer; an up element reads its a back.
        gate_a = Mux(self.i_stream.payload < 0, 0, self.i_stream.payload)[:_A_BITS]
        write, read = buffer.write_port(), buffer.read_port()
        m.d.comb += [write.en.eq(self.i_stream.valid & self.i_stream.ready & ~phase.up),
                     write.addr.eq(index), write.data.eq(gate_a),
                     read.en.eq(advance), read.addr.eq(index)]

        control = data.StructLayout({"valid": 1, "up": 1, "first": 1, "end": 1})
        taken = Signal(control)
        m.d.comb += [taken.valid.eq(self.i_stream.valid & self.i_stream.ready),
                     taken.up.eq(phase.up), taken.first.eq(index == 0), taken.end.eq(end)]
        # Stage 1: the element (a gate's a, or an up and its a read). Stage 2: the operand of
        # the square: the running maximum of a for a gate element, a for an up. Stage 3: the
        # square; on the last gate element, (max a)**2 gives the token's shift. Stages 4 to 6:
        # the rounding shift, one step a stage (the token's shift and its half; the half
        # added; the right shift): in one stage, a decoder, a carry chain and a barrel shifter
        # ran at 96 MHz on the ECP5. Stage 7: the product by up. Every stage's copy of up and
        # the shift moves with it.
        c = [None] + [Signal(control, name=f"control{n}") for n in range(1, 7)]
        element1 = Signal(signed(PROJECTION_BITS), reset_less=True)
        running = Signal(_A_BITS, reset_less=True)          # max a of the token's gate so far
        a2 = Signal(_A_BITS, reset_less=True)
        square3 = Signal(_SQUARE_BITS, reset_less=True)
        shift = Signal(range(_SHIFT_MAX + 1), reset_less=True)
        square4 = Signal(_SQUARE_BITS, reset_less=True)
        biased5 = Signal(_SQUARE_BITS + 1, reset_less=True)
        shifted6 = Signal(_SHIFTED_SQUARE_BITS, reset_less=True)
        ups = {n: Signal(signed(PROJECTION_BITS), name=f"up{n}", reset_less=True)
               for n in range(2, 7)}
        shifts = {n: Signal.like(shift, name=f"shift{n}") for n in range(4, 7)}
        a1 = Mux(element1 < 0, 0, element1)[:_A_BITS]
        larger = Mux(c[1].first | (a1 > running), a1, running)
        length3 = bit_length(square3)
        with m.If(advance):
            m.d.sync += [
                *(c[n].eq(c[n - 1]) for n in range(2, 7)), c[1].eq(taken),
                element1.eq(self.i_stream.payload),
                a2.eq(Mux(c[1].up, read.data, larger)), ups[2].eq(element1),
                square3.eq(a2 * a2),
                *(ups[n].eq(ups[n - 1]) for n in range(3, 7)),
                square4.eq(square3), shifts[4].eq(shift),
                shifts[5].eq(shifts[4]), shifts[6].eq(shifts[5]),
                self.o_stream.valid.eq(c[6].valid & c[6].up),
                self.o_stream.payload.value.eq(shifted6 * ups[6]),
                self.o_stream.payload.shift.eq(shifts[6]),
            ]
            half4 = register_half(m, shift, _SQUARE_BITS, "half4")
            rounding_shift(m, square4, half=half4, right=shifts[5], biased=biased5,
                           right_shifted=shifted6)
            with m.If(c[1].valid & ~c[1].up):
                m.d.sync += running.eq(larger)
            with m.If(c[3].valid & ~c[3].up & c[3].end):
                m.d.sync += shift.eq(Mux(length3 > SHIFTED_BITS, length3 - SHIFTED_BITS, 0))
        return m
