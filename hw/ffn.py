"""The FFN's inner product ``relu(gate)**2 * up`` of the integer decoder, ``lanes`` elements a
cycle (``golden.integer.ffn_inner``, bit for bit).

Per token: ``a = max(gate, 0)``; ``a**2`` is shifted right by ``s`` (rounding half up) until it
is at most ``2**16``, ``s = max(bit_length(max a**2) - 16, 0)``, then multiplied by ``up``. The
shift depends on the whole gate vector, so the unit keeps ``a`` in a buffer while it finds the
largest (``max a**2 = (max a)**2``: a running maximum of ``a`` suffices, squared once, on the
last gate beat), then reads it back as ``up`` streams in. The token's exponent is ``s - 2
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


def _relu(value):
    return Mux(value < 0, 0, value)[:_A_BITS]


class FfnInner(wiring.Component):
    """``relu(gate)**2 * up`` of one token at a time, ``2 length`` elements in, ``length`` out,
    ``lanes`` a beat.

    A token is a command with its length, then its ``length / lanes`` gate beats, then its
    ``length / lanes`` up beats on one stream (the order in which the banks produce the rows of
    the gate|up matrix, so the epilogue's results feed it directly); element ``i`` of beat
    ``j`` is the vector's element ``j lanes + i``. The command is taken only between tokens, so
    a token takes ``2 length / lanes + 1`` cycles of input; each result beat leaves
    :attr:`latency` cycles after its up beat is taken, and a new token's gate may enter while
    the last one's results drain. The pipeline holds whole while a result is refused. Each lane
    squares and multiplies by up in a MULT18X18D of its own (``2 lanes`` in all).

    Parameters
    ----------
    config : hw.config.Config
        The device (the unit has no device parameters).
    ffn : int
        The longest token (the model's ffn width): the buffer holds ``ffn`` elements.
    lanes : int
        Elements a beat, a power of two dividing ``ffn`` (default 1). A command's length must
        be a multiple of ``lanes``.

    Members
    -------
    cmd : In(stream.Signature(StructLayout({"length": range(ffn + 1)})))
        A token's length, a multiple of ``lanes`` from ``lanes`` to ``ffn``.
    i_stream : In(stream.Signature(ArrayLayout(signed(16), lanes)))
        The token's gate beats, then its up beats (golden's ``projection``); a plain
        ``signed(16)`` for one lane.
    o_stream : Out(stream.Signature(StructLayout({"value": values, "shift": range(15)})))
        ``shift_round(a**2, shift) * up`` per up element, in order, each beat with its token's
        ``shift`` (golden's ``ffn_inner`` and the ``s`` of its exponent); ``values`` is
        ``ArrayLayout(signed(32), lanes)``, a plain ``signed(32)`` for one lane.
    """

    @staticmethod
    def latency_for(lanes):
        """Cycles from an up beat taken to its result beat offered: ``7 + log2(lanes)`` (each
        level of the compare tree over the beat's lanes takes a stage of its own)."""
        return 6 + lanes.bit_length()

    @property
    def latency(self):
        """:meth:`latency_for` this unit's lanes."""
        return self.latency_for(self.lanes)

    def __init__(self, config, *, ffn, lanes=1):
        if isinstance(ffn, bool) or not isinstance(ffn, int) or ffn < 1:
            raise ValueError(f"ffn must be a positive integer, not {ffn!r}")
        if (isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1
                or lanes & (lanes - 1) or ffn % lanes):
            raise ValueError(f"lanes must be a power of two dividing ffn ({ffn}), not {lanes!r}")
        self._ffn, self.lanes = ffn, lanes
        element = signed(PROJECTION_BITS)
        value = signed(INNER_BITS)
        if lanes > 1:
            element, value = data.ArrayLayout(element, lanes), data.ArrayLayout(value, lanes)
        super().__init__({
            "cmd": In(stream.Signature(data.StructLayout({"length": range(ffn + 1)}))),
            "i_stream": In(stream.Signature(element)),
            "o_stream": Out(stream.Signature(data.StructLayout({
                "value": value, "shift": range(_SHIFT_MAX + 1)}))),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        beats_max = self._ffn // lanes
        m.submodules.buffer = buffer = Memory(
            shape=data.ArrayLayout(unsigned(_A_BITS), lanes), depth=beats_max, init=[])

        def lane(value, i):
            return value if lanes == 1 else value[i]

        # Every stage moves together, and waits while a result is refused.
        advance = ~self.o_stream.valid | self.o_stream.ready

        # Which beat the stream holds: the command's length in beats, the phase, the index.
        beats = Signal(range(beats_max + 1))
        phase = Signal(data.StructLayout({"active": 1, "up": 1}))
        index = Signal(range(beats_max))
        end = index == beats - 1
        m.d.comb += [self.cmd.ready.eq(~phase.active),
                     self.i_stream.ready.eq(advance & phase.active)]
        with m.If(self.cmd.valid & ~phase.active):
            m.d.sync += [beats.eq(self.cmd.payload.length >> (lanes.bit_length() - 1)),
                         phase.active.eq(1), phase.up.eq(0)]
        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += index.eq(Mux(end, 0, index + 1))
            with m.If(end):
                m.d.sync += [phase.up.eq(~phase.up), phase.active.eq(~phase.up)]

        # A gate beat's a is written into the buffer; an up beat reads its a back.
        write, read = buffer.write_port(), buffer.read_port()
        m.d.comb += [write.en.eq(self.i_stream.valid & self.i_stream.ready & ~phase.up),
                     write.addr.eq(index),
                     *(write.data[i].eq(_relu(lane(self.i_stream.payload, i)))
                       for i in range(lanes)),
                     read.en.eq(advance), read.addr.eq(index)]

        control = data.StructLayout({"valid": 1, "up": 1, "first": 1, "end": 1})
        taken = Signal(control)
        m.d.comb += [taken.valid.eq(self.i_stream.valid & self.i_stream.ready),
                     taken.up.eq(phase.up), taken.first.eq(index == 0), taken.end.eq(end)]
        # Stage 1: the beat (a gate's, or an up and its a read). Stages 2 to M = 1 + log2(lanes):
        # the beat's largest a, a level of the compare tree a stage (two levels in one ran at
        # 101 MHz on the ECP5). Stage M + 1: the operands of the squares: lane 0 takes
        # the running maximum of a for a gate beat, each lane its a for an up beat. Stage M + 2:
        # the squares; on the last gate beat, lane 0's (max a)**2 gives the token's shift.
        # Stages M + 3 to M + 5: the rounding shift, one step a stage (the token's shift and its
        # half; the half added; the right shift): in one stage, a decoder, a carry chain and a
        # barrel shifter ran at 96 MHz on the ECP5. Stage M + 6: the products by up. Every
        # stage's copy of up and the shift moves with it.
        last = self.latency
        c = [None] + [Signal(control, name=f"control{n}") for n in range(1, last)]
        element1 = Signal.like(self.i_stream.payload, reset_less=True)
        sync = [c[1].eq(taken), element1.eq(self.i_stream.payload),
                *(c[n].eq(c[n - 1]) for n in range(2, last))]
        # Each level of the tree carries the beat's up and the a read along.
        most, ups_m, read_m = [_relu(lane(element1, i)) for i in range(lanes)], element1, read.data
        for stage in range(2, last - 5):
            pairs = [Mux(x > y, x, y) for x, y in zip(most[::2], most[1::2])]
            most = [Signal(_A_BITS, name=f"most{stage}_{i}", reset_less=True)
                    for i in range(len(pairs))]
            ups_next = Signal.like(element1, name=f"up{stage}", reset_less=True)
            read_next = Signal.like(read.data, name=f"read{stage}", reset_less=True)
            sync += [*(x.eq(y) for x, y in zip(most, pairs)), ups_next.eq(ups_m),
                     read_next.eq(read_m)]
            ups_m, read_m = ups_next, read_next
        most = most[0]
        s = last - 6                                        # stage M: the beat's largest a

        def lanes_signal(shape, name):
            return [Signal(shape, name=f"{name}_{i}", reset_less=True) for i in range(lanes)]

        running = Signal(_A_BITS, reset_less=True)          # max a of the token's gate so far
        operand = lanes_signal(_A_BITS, f"a{s + 1}")
        square = lanes_signal(_SQUARE_BITS, f"square{s + 2}")
        square_copy = lanes_signal(_SQUARE_BITS, f"square{s + 3}")
        biased = lanes_signal(_SQUARE_BITS + 1, f"biased{s + 4}")
        shifted = lanes_signal(_SHIFTED_SQUARE_BITS, f"shifted{s + 5}")
        shift = Signal(range(_SHIFT_MAX + 1), reset_less=True)
        ups = {n: Signal.like(element1, name=f"up{n}", reset_less=True)
               for n in range(s + 1, last)}
        ups[s] = ups_m
        shifts = {n: Signal.like(shift, name=f"shift{n}") for n in range(s + 3, last)}
        larger = Mux(c[s].first | (most > running), most, running)
        length = bit_length(square[0])
        sync += [*(ups[n].eq(ups[n - 1]) for n in range(s + 1, last)),
                 operand[0].eq(Mux(c[s].up, read_m[0], larger)),
                 *(operand[i].eq(read_m[i]) for i in range(1, lanes)),
                 *(square[i].eq(operand[i] * operand[i]) for i in range(lanes)),
                 *(square_copy[i].eq(square[i]) for i in range(lanes)),
                 shifts[s + 3].eq(shift), shifts[s + 4].eq(shifts[s + 3]),
                 shifts[s + 5].eq(shifts[s + 4]),
                 self.o_stream.valid.eq(c[last - 1].valid & c[last - 1].up),
                 *(lane(self.o_stream.payload.value, i).eq(shifted[i] * lane(ups[last - 1], i))
                   for i in range(lanes)),
                 self.o_stream.payload.shift.eq(shifts[last - 1])]
        with m.If(advance):
            m.d.sync += sync
            half = register_half(m, shift, _SQUARE_BITS, f"half{s + 3}")
            for i in range(lanes):
                rounding_shift(m, square_copy[i], half=half, right=shifts[s + 4],
                               biased=biased[i], right_shifted=shifted[i])
            with m.If(c[s].valid & ~c[s].up):
                m.d.sync += running.eq(larger)
            with m.If(c[s + 2].valid & ~c[s + 2].up & c[s + 2].end):
                m.d.sync += shift.eq(Mux(length > SHIFTED_BITS, length - SHIFTED_BITS, 0))
        return m
