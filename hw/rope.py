"""Rotary position embedding of the integer decoder: one token's sine and cosine factors, then
its heads rotated ``lanes`` pairs a cycle (``golden.integer.rope_factors`` and ``apply_rope``,
bit for bit).

For pair ``i`` of a head (elements ``i`` and ``i + head_dim / 2``, the rotate-half layout) and
the token's ``position``: the phase ``position * step[i] mod 2**32`` (turns, 32 fraction bits)
rounded to a 12-bit angle; ``cos`` and ``sin`` from the quarter-sine table, the quadrant
mirroring the index and negating; then ``(first cos - second sin, second cos + first sin)``
rounded by 16 bits. Golden's widths guarantee the results fit int16 for a model the decoder
accepts; the unit does not saturate.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import ANGLE_BITS, PHASE_BITS, SINE_BITS, build_tables
from golden.integer import PROJECTION_BITS
from golden.widths import signed_bits_for

from .pim import delayed

__all__ = ["Rope"]

FACTOR_BITS = signed_bits_for(1 << SINE_BITS)           # golden's rope_factor: |value| <= 2**16
PAIR = data.StructLayout({"first": signed(PROJECTION_BITS), "second": signed(PROJECTION_BITS)})
_FACTORS = data.StructLayout({"cos": signed(FACTOR_BITS), "sin": signed(FACTOR_BITS)})
# The phase multiply splits the 32-bit step into a 17-bit unsigned low part and the rest, each
# a product with the position on one 18 x 18 signed multiplier (golden's "rope_phase"
# composition), so a position has at most 17 bits.
_LOW_BITS = 17
_MAX_SEQ = 1 << _LOW_BITS


class Rope(wiring.Component):
    """RoPE for one token at a time: ``start`` computes the position's factors, then every pair
    taken is rotated.

    ``start`` takes a position and computes its ``head_dim / 2`` (cos, sin) pairs into a
    buffer, one a cycle: :attr:`factor_cycles` cycles from the start taken until the first
    pairs can be taken. Then ``i_stream`` takes a beat of ``lanes`` (first, second) pairs a
    cycle, pair indices ``i .. i + lanes - 1`` with ``i`` counting ``0, lanes, ..`` to
    ``head_dim / 2`` and wrapping (so any number of whole heads, q's and k's alike), and
    ``o_stream`` offers each beat rotated :attr:`LATENCY` cycles later; the pipeline holds
    whole while a result is refused. A pair is rotated by the factors of the last position
    started before it was taken: a start taken in the same cycle as a beat applies from the
    next beat on, and restarts the pair index at 0.

    The phase multiply is ``position x 32`` bits as two 18 x 18 products (golden's
    ``rope_phase``), the rotation four ``16 x 18``-bit products a lane (golden's ``rope``). The
    quarter-sine table's first 1024 entries are a ROM with two read ports (cos and sin); its
    last entry, ``2**16``, is a constant.

    Parameters
    ----------
    config : hw.config.Config
        The device (the unit uses none of its parameters).
    head_dim : int
        Elements a head: even, at least 2.
    max_seq : int
        Positions: ``0 .. max_seq - 1``, ``1 <= max_seq <= 2**17``.
    lanes : int
        Pairs a beat, a divisor of ``head_dim / 2``.

    Members
    -------
    step_stream : In(stream.Signature(StructLayout({"addr": range(head_dim // 2),
                                                   "data": unsigned(32)})))
        The model's phase steps (``golden.integer.rope_steps``), loaded once. Taken only while
        no factors are being computed.
    start : In(stream.Signature(range(max_seq)))
        A token's position. Taken while no factors are being computed.
    i_stream : In(stream.Signature(ArrayLayout(StructLayout({"first": signed(16),
                                                             "second": signed(16)}), lanes)))
        Lane ``j``: elements ``i + j`` and ``i + j + head_dim / 2`` of a head. Taken once the
        factors are ready.
    o_stream : Out(stream.Signature(ArrayLayout(StructLayout({"first": signed(16),
                                                              "second": signed(16)}), lanes)))
    """

    LATENCY = 3                 # a pair taken to its rotation offered
    # Beyond head_dim / 2 issue cycles: the start's own cycle, then the last factor's seven
    # stages after its issue (products, phase, addresses, ROM read, word, sign, write).
    FACTOR_LATENCY = 8

    def __init__(self, config, *, head_dim, max_seq, lanes=1):
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 \
                or head_dim % 2:
            raise ValueError(f"head_dim must be an even integer >= 2, not {head_dim!r}")
        if isinstance(max_seq, bool) or not isinstance(max_seq, int) \
                or not 1 <= max_seq <= _MAX_SEQ:
            raise ValueError(f"max_seq must be an integer in [1, {_MAX_SEQ}], not {max_seq!r}")
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1 \
                or (head_dim // 2) % lanes:
            raise ValueError(f"lanes must be a positive divisor of head_dim / 2 "
                             f"({head_dim // 2}), not {lanes!r}")
        self._pairs = head_dim // 2
        self._max_seq, self.lanes = max_seq, lanes
        super().__init__({
            "step_stream": In(stream.Signature(data.StructLayout({
                "addr": range(self._pairs), "data": unsigned(PHASE_BITS)}))),
            "start": In(stream.Signature(range(max_seq))),
            "i_stream": In(stream.Signature(data.ArrayLayout(PAIR, lanes))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(PAIR, lanes))),
        })

    @property
    def factor_cycles(self):
        """Cycles from a start taken to the first beat that can be taken: ``head_dim / 2 +
        FACTOR_LATENCY``."""
        return self._pairs + self.FACTOR_LATENCY

    def elaborate(self, platform):
        m = Module()
        pairs = self._pairs
        quarter = 1 << (ANGLE_BITS - 2)
        quarter_sine = build_tables().quarter_sine
        m.submodules.steps = steps = Memory(shape=PHASE_BITS, depth=pairs, init=[])
        m.submodules.factors = factors = Memory(shape=_FACTORS, depth=pairs, init=[])
        m.submodules.sine = sine = Memory(shape=SINE_BITS + 1, depth=quarter,
                                          init=[int(v) for v in quarter_sine[:quarter]])
        top = Const(int(quarter_sine[quarter]), SINE_BITS + 1)

        # The factors: from a start taken until the last pair's factors are written.
        busy = Signal()
        ready = Signal()            # the buffer holds the last started position's factors
        position = Signal(range(self._max_seq))
        issuing = Signal()
        issue = Signal(range(pairs))
        step_write = steps.write_port()
        m.d.comb += [
            self.step_stream.ready.eq(~busy),
            step_write.en.eq(self.step_stream.valid & ~busy),
            step_write.addr.eq(self.step_stream.payload.addr),
            step_write.data.eq(self.step_stream.payload.data),
            self.start.ready.eq(~busy),
        ]
        started = self.start.valid & ~busy
        with m.If(started):
            m.d.sync += [busy.eq(1), ready.eq(0), position.eq(self.start.payload),
                         issuing.eq(1), issue.eq(0)]
        with m.Elif(issuing):
            m.d.sync += issue.eq(issue + 1)
            with m.If(issue == pairs - 1):
                m.d.sync += issuing.eq(0)

        # Stage 1: the step read. Stage 2: the two partial products. Stage 3: the phase.
        # Stage 4: the ROM addresses and the quadrants' flags. Stage 5: the ROM read. Stage 6:
        # its words in registers. Stage 7: the factors, signed. Then they are written. The
        # ROM's output goes straight into registers: a DP16KD without its output register takes
        # over half of a 10 ns cycle to deliver its word, too long to negate it after.
        control = data.StructLayout({"valid": 1, "addr": range(pairs)})
        c1, c2, c3, c4, c5, c6, c7 = (Signal(control, name=f"factor_control{n}")
                                      for n in range(1, 8))
        step_read = steps.read_port(domain="comb")
        m.d.comb += step_read.addr.eq(issue)
        step = Signal(PHASE_BITS, reset_less=True)
        low = Signal(len(position) + _LOW_BITS, reset_less=True)
        high = Signal(PHASE_BITS - _LOW_BITS, reset_less=True)   # only its low bits are kept
        phase = Signal(PHASE_BITS, reset_less=True)
        m.d.sync += [
            c1.valid.eq(issuing), c1.addr.eq(issue), c2.eq(c1), c3.eq(c2), c4.eq(c3),
            c5.eq(c4), c6.eq(c5), c7.eq(c6),
            step.eq(step_read.data),
            low.eq(position * step[:_LOW_BITS]),
            high.eq(position * step[_LOW_BITS:]),
            phase.eq(low + (high << _LOW_BITS)),
        ]
        # shift_round(phase, 20), masked to 12 bits: the carry of the rounding wraps a turn.
        rounded = phase + (1 << (PHASE_BITS - ANGLE_BITS - 1))
        angle = rounded[PHASE_BITS - ANGLE_BITS:PHASE_BITS]
        sign = data.StructLayout({"top": 1, "negate": 1})
        looked_up = []
        for name, at in (("cos", angle + quarter), ("sin", angle)):
            at = at[:ANGLE_BITS]
            quadrant, offset = at[ANGLE_BITS - 2:], at[:ANGLE_BITS - 2]
            address = Signal(ANGLE_BITS - 2, name=f"{name}_address", reset_less=True)
            flags = Signal(sign, name=f"{name}_sign", reset_less=True)
            m.d.sync += [address.eq(Mux(quadrant[0], quarter - offset, offset)),
                         flags.top.eq(quadrant[0] & (offset == 0)),
                         flags.negate.eq(quadrant[1])]
            read = sine.read_port()
            m.d.comb += read.addr.eq(address)
            word = Signal(SINE_BITS + 1, name=f"{name}_word", reset_less=True)
            word_flags = delayed(m, flags, 2, f"{name}_word_sign")
            factor = Signal(signed(FACTOR_BITS), name=name, reset_less=True)
            magnitude = Mux(word_flags.top, top, word)
            m.d.sync += [word.eq(read.data),
                         factor.eq(Mux(word_flags.negate, -magnitude, magnitude))]
            looked_up.append(factor)
        factor_write = factors.write_port()
        m.d.comb += [factor_write.en.eq(c7.valid), factor_write.addr.eq(c7.addr),
                     factor_write.data.cos.eq(looked_up[0]),
                     factor_write.data.sin.eq(looked_up[1])]
        with m.If(c7.valid & (c7.addr == pairs - 1)):
            m.d.sync += [busy.eq(0), ready.eq(1)]

        # The rotation: every stage moves together, and waits while a result is refused.
        lanes = self.lanes
        advance = ~self.o_stream.valid | self.o_stream.ready
        taken = self.i_stream.valid & self.i_stream.ready
        m.d.comb += self.i_stream.ready.eq(advance & ready)
        pair = Signal(range(pairs))         # the beat's first pair index
        with m.If(started):
            m.d.sync += pair.eq(0)
        with m.Elif(taken):
            m.d.sync += pair.eq(Mux(pair == pairs - lanes, 0, pair + lanes))

        # Stage 1: the pairs and their factors. Stage 2: the four products a lane. Stage 3:
        # the sums, rounded.
        valid = Signal(2)
        half = 1 << (SINE_BITS - 1)
        product_bits = PROJECTION_BITS + FACTOR_BITS
        with m.If(advance):
            m.d.sync += [valid.eq(Cat(taken, valid[0])), self.o_stream.valid.eq(valid[1])]
        for lane in range(lanes):
            factor_read = factors.read_port(domain="comb")
            m.d.comb += factor_read.addr.eq(pair + lane)
            operand = Signal(PAIR, name=f"operand{lane}", reset_less=True)
            factor = Signal(_FACTORS, name=f"factor{lane}", reset_less=True)
            products = [Signal(signed(product_bits), name=f"{name}{lane}", reset_less=True)
                        for name in ("first_cos", "second_sin", "second_cos", "first_sin")]
            result = self.o_stream.payload[lane]
            with m.If(advance):
                m.d.sync += [
                    operand.eq(self.i_stream.payload[lane]), factor.eq(factor_read.data),
                    products[0].eq(operand.first * factor.cos),
                    products[1].eq(operand.second * factor.sin),
                    products[2].eq(operand.second * factor.cos),
                    products[3].eq(operand.first * factor.sin),
                    result.first.eq((products[0] - products[1] + half) >> SINE_BITS),
                    result.second.eq((products[2] + products[3] + half) >> SINE_BITS),
                ]
        return m
