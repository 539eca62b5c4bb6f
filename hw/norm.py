"""RMSNorm and activation quantisation of the integer decoder, ``lanes`` elements a cycle
(``golden.integer.norm_statistics`` and ``quantize``, bit for bit).

A vector sits in the unit's buffer (with its gains). STATISTICS reads it twice: the first pass
finds the shift that takes ``|x|`` to at most ``2**14`` (``bit_length`` of the largest ``|x|``
is that of the OR of every ``|x|``, so no comparisons are needed); the second shifts ``x``,
multiplies by the gain and gathers the shift of ``u = g x``, the largest and smallest ``u`` and
the sum of squares. The unit offers them as :class:`NormStatistics`; a sequencer turns the peak
into ``127 / peak`` (and the sums into ``rho``) with :class:`hw.dyadic.ScalarUnit`, then sends
QUANTISE with that factor, and the third pass streams out ``x_q``, one word of ``lanes`` int8 a
cycle. The shifted ``u``'s extremes come from the unshifted ones because rounding half up is
monotonic: ``max shift_round(u) = shift_round(max u)``.
"""

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import MANTISSA_BITS
from golden.integer import ACT_MAX, GAIN_BITS, NORM_INPUT_BITS, RESIDUAL_BITS, SHIFTED_BITS

from .dyadic import DYADIC, bit_length
from .epilogue import shift_round
from .pim import AdderTree, delayed

__all__ = ["NormOp", "NormQuantizer"]

_SHIFTED_X_BITS = NORM_INPUT_BITS + 2           # |x| <= 2**14 after the shift, signed
_GAINED_BITS = GAIN_BITS + NORM_INPUT_BITS + 1  # g x
_U_BITS = SHIFTED_BITS + 2                      # |u| <= 2**16 after its shift, signed


class NormOp(enum.Enum, shape=1):
    STATISTICS = 0          # two passes; then the statistics are offered
    QUANTISE = 1            # one pass with the command's factor; x_q words are offered


class NormQuantizer(wiring.Component):
    """The norm and quantisation of one vector of up to ``size`` elements.

    Parameters
    ----------
    config : hw.config.Config
        The device; the unit has a bank's lanes unless ``lanes`` says.
    size : int
        The longest vector (the model's hidden or ffn width).
    lanes : int
        Elements a cycle.
    in_bits : int
        The input's width (32: the residual stream, attention's output, ReLU^2 x up).
    gain_words : int
        Words of the gain memory, at least ``ceil(size / lanes)``: room for the gains of several
        norms, each at its own base word (a command's ``gain_base``).

    Members
    -------
    x_stream, gain_stream : In(stream.Signature(StructLayout({"index": range(words),
                                                             "data": lanes elements})))
        The vector and its gains, word ``index`` holding elements ``index * lanes + i``; lanes
        past the vector's length must hold 0 in ``x``. Gain words are addressed in
        ``range(gain_words)``. Taken only while no command runs.
    cmd : In(stream.Signature(StructLayout({"op": NormOp, "words": range(words + 1),
                                           "gain_base": range(gain_words),
                                           "factor": DYADIC})))
        ``words`` is the vector's length in words (at least 1); element ``i``'s gain is in gain
        word ``gain_base + i // lanes`` (``gain_base + words <= gain_words``); ``factor`` is
        QUANTISE's ``127 / peak``, whose exponent is negative. A QUANTISE reads the gains of
        the STATISTICS before it, so it names the same ``gain_base``.
    stats : Out(stream.Signature(StructLayout({"shift", "gained_shift", "peak",
                                              "sum_squares"})))
        Offered :meth:`statistics_latency` cycles after a STATISTICS is taken.
    o_stream : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
        The first ``x_q`` word is offered :data:`QUANTISE_LATENCY` cycles after QUANTISE is
        taken, then one a cycle without back-pressure; the unit takes its next command in the
        cycle after the last.
    """

    # Cycles from QUANTISE taken to its first x_q word: the first word issued, read, shifted,
    # gained, shifted again, multiplied by the factor, rounded and clipped.
    QUANTISE_LATENCY = 7

    def __init__(self, config, *, size, lanes=None, in_bits=RESIDUAL_BITS, gain_words=None):
        lanes = config.pim.lanes if lanes is None else lanes
        for name, value in (("size", size), ("lanes", lanes), ("in_bits", in_bits)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self._lanes, self._in_bits = lanes, in_bits
        self._words = -(-size // lanes)
        gain_words = self._words if gain_words is None else gain_words
        if isinstance(gain_words, bool) or not isinstance(gain_words, int) \
                or gain_words < self._words:
            raise ValueError(f"gain_words must be an integer of at least {self._words} "
                             f"(ceil(size / lanes)), not {gain_words!r}")
        self._gain_words = gain_words
        self._sum_bits = (self._words * lanes * (1 << (2 * NORM_INPUT_BITS))).bit_length()
        super().__init__({
            "x_stream": In(stream.Signature(data.StructLayout({
                "index": range(self._words), "data": data.ArrayLayout(signed(in_bits), lanes)}))),
            "gain_stream": In(stream.Signature(data.StructLayout({
                "index": range(gain_words),
                "data": data.ArrayLayout(signed(GAIN_BITS), lanes)}))),
            "cmd": In(stream.Signature(data.StructLayout({
                "op": NormOp, "words": range(self._words + 1), "gain_base": range(gain_words),
                "factor": DYADIC}))),
            "stats": Out(stream.Signature(data.StructLayout({
                "shift": range(in_bits + 1), "gained_shift": range(_GAINED_BITS + 1),
                "peak": unsigned(SHIFTED_BITS + 1), "sum_squares": unsigned(self._sum_bits)}))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
        })

    @property
    def words(self):
        return self._words

    @staticmethod
    def statistics_latency(words, lanes):
        """Cycles from a STATISTICS of ``words`` taken to its statistics offered: each pass
        issues a word a cycle; pass 1's last word reaches its accumulator four cycles later,
        pass 2's three cycles and the sum's adder tree later; each pass's end takes a cycle to
        register and one to act on; then a cycle for the shifted extremes and one to offer."""
        return 2 * words + 11 + AdderTree.latency_for(lanes)

    def elaborate(self, platform):
        m = Module()
        lanes, words = self._lanes, self._words
        x_layout = data.ArrayLayout(signed(self._in_bits), lanes)
        gain_layout = data.ArrayLayout(signed(GAIN_BITS), lanes)
        m.submodules.x_buffer = x_buffer = Memory(shape=x_layout, depth=words, init=[])
        m.submodules.gains = gains = Memory(shape=gain_layout, depth=self._gain_words, init=[])

        running = Signal()          # a command has been taken and not finished
        for memory, port in ((x_buffer, self.x_stream), (gains, self.gain_stream)):
            write = memory.write_port()
            m.d.comb += [port.ready.eq(~running), write.en.eq(port.valid & ~running),
                         write.addr.eq(port.payload.index), write.data.eq(port.payload.data)]

        # Every stage moves together, and waits while an x_q word is refused.
        advance = ~self.o_stream.valid | self.o_stream.ready
        command = Signal.like(self.cmd.payload)
        passes = Signal(2)          # the pass being issued: 1, 2 (STATISTICS) or 3 (QUANTISE)
        issuing = Signal()
        addr = Signal(range(words))
        shift = Signal.like(self.stats.payload.shift)
        gained_shift = Signal.like(self.stats.payload.gained_shift)
        pass_done = Signal()        # the pass's last word reached the accumulators

        x_read = x_buffer.read_port()
        gain_read = gains.read_port()
        m.d.comb += [x_read.addr.eq(addr), gain_read.addr.eq(command.gain_base + addr),
                     x_read.en.eq(advance), gain_read.en.eq(advance)]
        control = data.StructLayout({"valid": 1, "pass": 2, "first": 1, "last": 1})
        issued = Signal(control)
        m.d.comb += [issued.valid.eq(issuing), issued["pass"].eq(passes),
                     issued.first.eq(addr == 0), issued.last.eq(addr == command.words - 1)]

        # Stage 1: the words read. Stage 2: x shifted, and the OR of |x|. Stage 3: u = g x and
        # x squared. Stage 4: u's reductions and its shift. Stage 5: u x factor. Stage 6: x_q.
        # The sum of squares leaves its adder tree ``sums.latency`` cycles after stage 3; only
        # STATISTICS uses it, and nothing stalls then (no x_q word is waiting).
        c1, c2, c3, c4, c5 = (Signal(control, name=f"control{n}") for n in range(1, 6))
        x_shifted = Signal(data.ArrayLayout(signed(_SHIFTED_X_BITS), lanes), reset_less=True)
        gain = Signal(gain_layout, reset_less=True)
        or_word = [Signal(self._in_bits, name=f"or_x{n}", reset_less=True) for n in (2, 3, 4)]
        u = Signal(data.ArrayLayout(signed(_GAINED_BITS), lanes), reset_less=True)
        square = Signal(data.ArrayLayout(unsigned(2 * NORM_INPUT_BITS + 1), lanes),
                        reset_less=True)
        sums = m.submodules.sums = AdderTree(count=lanes, magnitude=1 << (2 * NORM_INPUT_BITS))
        u_max = Signal(signed(_GAINED_BITS), reset_less=True)
        u_min = Signal(signed(_GAINED_BITS), reset_less=True)
        or_u = Signal(_GAINED_BITS, reset_less=True)
        u_shifted = Signal(data.ArrayLayout(signed(_U_BITS), lanes), reset_less=True)
        product_bits = _U_BITS + MANTISSA_BITS + 1
        product = Signal(data.ArrayLayout(signed(product_bits), lanes), reset_less=True)
        right = Signal(range(product_bits + 2))     # QUANTISE's rounding shift
        with m.If(advance):
            m.d.sync += [c1.eq(issued), c2.eq(c1), c3.eq(c2), c4.eq(c3), c5.eq(c4),
                         gain.eq(gain_read.data),
                         or_word[0].eq(_or_all(abs(x_read.data[n]) for n in range(lanes))),
                         or_word[1].eq(or_word[0]), or_word[2].eq(or_word[1]),
                         u_max.eq(_tree([u[n] for n in range(lanes)], _larger)),
                         u_min.eq(_tree([u[n] for n in range(lanes)], _smaller)),
                         or_u.eq(_or_all(abs(u[n]) for n in range(lanes))),
                         self.o_stream.valid.eq(c5.valid & (c5["pass"] == 3))]
            for n in range(lanes):
                m.d.sync += [
                    x_shifted[n].eq(shift_round(x_read.data[n], shift)),
                    u[n].eq(gain[n] * x_shifted[n]),
                    square[n].eq(x_shifted[n] * x_shifted[n]),
                    u_shifted[n].eq(shift_round(u[n], gained_shift)),
                    product[n].eq(u_shifted[n] * command.factor.mantissa),
                    self.o_stream.payload[n].eq(_clip(shift_round(product[n], right), ACT_MAX)),
                ]
        for n in range(lanes):
            m.d.comb += sums.i[n].eq(square[n])
        at_sum = delayed(m, c3, sums.latency, "sum")

        # Accumulators over a pass's words: the OR of |x| (pass 1); the OR of |u|, u's extremes
        # and the sum of squares (pass 2).
        or_x = Signal(self._in_bits)
        or_u_all = Signal(_GAINED_BITS)
        u_largest = Signal(signed(_GAINED_BITS))
        u_smallest = Signal(signed(_GAINED_BITS))
        sum_squares = Signal(self._sum_bits)
        at_4 = advance & c4.valid
        with m.If(at_4 & (c4["pass"] == 1)):
            m.d.sync += or_x.eq(Mux(c4.first, 0, or_x) | or_word[2])
        with m.If(at_4 & (c4["pass"] == 2)):
            m.d.sync += [
                or_u_all.eq(Mux(c4.first, 0, or_u_all) | or_u),
                u_largest.eq(Mux(c4.first | (u_max > u_largest), u_max, u_largest)),
                u_smallest.eq(Mux(c4.first | (u_min < u_smallest), u_min, u_smallest)),
            ]
        with m.If(at_sum.valid & (at_sum["pass"] == 2)):
            m.d.sync += sum_squares.eq(Mux(at_sum.first, 0, sum_squares) + sums.o)
        m.d.sync += pass_done.eq(
            at_4 & c4.last & (c4["pass"] == 1)
            | at_sum.valid & at_sum.last & (at_sum["pass"] == 2)
            | advance & c5.valid & c5.last & (c5["pass"] == 3))

        m.d.comb += self.cmd.ready.eq(~running)
        stats = self.stats.payload
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.cmd.valid):
                    quantise = self.cmd.payload.op == NormOp.QUANTISE
                    exponent = self.cmd.payload.factor.exponent
                    m.d.sync += [command.eq(self.cmd.payload), running.eq(1), addr.eq(0),
                                 issuing.eq(1), passes.eq(Mux(quantise, 3, 1)),
                                 right.eq(Mux(exponent < -(product_bits + 1), product_bits + 1,
                                              Mux(exponent < 0, -exponent, 0)))]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                with m.If(advance):
                    m.d.sync += addr.eq(addr + 1)
                    with m.If(issued.last):
                        m.d.sync += [issuing.eq(0), addr.eq(0)]
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(pass_done):
                    with m.Switch(passes):
                        with m.Case(1):
                            m.d.sync += [shift.eq(_excess(or_x, NORM_INPUT_BITS)), passes.eq(2),
                                         issuing.eq(1)]
                            m.next = "ISSUE"
                        with m.Case(2):
                            m.d.sync += gained_shift.eq(_excess(or_u_all, SHIFTED_BITS))
                            m.next = "STATISTICS"
                        with m.Default():
                            m.d.sync += running.eq(0)
                            m.next = "IDLE"
            with m.State("STATISTICS"):
                largest = shift_round(u_largest, gained_shift)
                smallest = shift_round(u_smallest, gained_shift)
                m.d.sync += [stats.shift.eq(shift), stats.gained_shift.eq(gained_shift),
                             stats.peak.eq(Mux(largest > -smallest, largest, -smallest)),
                             stats.sum_squares.eq(sum_squares), self.stats.valid.eq(1)]
                m.next = "OFFER"
            with m.State("OFFER"):
                with m.If(self.stats.ready):
                    m.d.sync += [self.stats.valid.eq(0), running.eq(0)]
                    m.next = "IDLE"
        return m


def _excess(value, bits):
    """``max(bit_length(value) - bits, 0)``."""
    length = bit_length(value)
    return Mux(length > bits, length - bits, 0)


def _or_all(values):
    result = Const(0)
    for value in values:
        result = result | value
    return result


def _larger(a, b):
    return Mux(a > b, a, b)


def _smaller(a, b):
    return Mux(a < b, a, b)


def _tree(nodes, pick):
    """``pick`` over ``nodes`` as a balanced tree."""
    while len(nodes) > 1:
        nodes = [pick(nodes[n], nodes[n + 1]) if n + 1 < len(nodes) else nodes[n]
                 for n in range(0, len(nodes), 2)]
    return nodes[0]


def _clip(value, limit):
    return Mux(value > limit, limit, Mux(value < -limit, -limit, value))
