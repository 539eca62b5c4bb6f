"""RMSNorm and activation quantisation of the integer decoder, ``lanes`` elements a cycle
(``golden.integer.norm_statistics`` and ``quantize``, bit for bit).

A vector sits in the unit's buffer (with its gains). STATISTICS needs the shift that takes
``|x|`` to at most ``2**14`` (``bit_length`` of the largest ``|x|`` is that of the OR of every
``|x|``, so no comparisons are needed): the OR of each word's ``|x|`` is kept as the word is
written, so STATISTICS only ORs the vector's words' and reads the vector once, shifting ``x``,
multiplying by the gain and gathering the shift of ``u = g x``, the largest and smallest ``u``
and the sum of squares. The unit offers x's shift and sum of squares as the pass ends, and
u's shift and peak (golden's :class:`NormStatistics` between them) three cycles later, once
the extremes are rounded; a sequencer turns the peak into ``127 / peak`` (and the sum into
``rho``, from the earlier offer) with :class:`hw.dyadic.ScalarUnit` and sends it on
``factor``; QUANTISE's pass streams out ``x_q``, one word of ``lanes`` int8 a cycle. Its words
wait for the factor only where they are multiplied by it, so a sequencer sends QUANTISE as
soon as the statistics are taken and the pass's first stages run while the factor is made.
The shifted ``u``'s extremes come from the unshifted ones because rounding half up is
monotonic: ``max shift_round(u) = shift_round(max u)``.
"""

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import MANTISSA_BITS
from golden.integer import ACT_MAX, GAIN_BITS, NORM_INPUT_BITS, RESIDUAL_BITS, SHIFTED_BITS

from .dyadic import DYADIC, bit_length
from .pim import AdderTree, delayed
from .rounding import register_half, rounding_half, rounding_shift

__all__ = ["NormOp", "NormQuantizer"]

_SHIFTED_X_BITS = NORM_INPUT_BITS + 2           # |x| <= 2**14 after the shift, signed
_GAINED_BITS = GAIN_BITS + NORM_INPUT_BITS + 1  # g x
_U_BITS = SHIFTED_BITS + 2                      # |u| <= 2**16 after its shift, signed

# The pipeline's stages, each a register under the pipeline's advance (see elaborate): a word is
# read (1), registered in fabric (2), x's rounding half added (3), x shifted (4); u = g x and x
# squared (5), u's half added and |u| taken (6), u shifted and the OR of |u| (7); u's extremes
# come from a comparison tree on stage 5, one level a stage. The quantise product (8), its half
# added (9), shifted (10) and clipped: x_q (11); a QUANTISE word waits before the product until
# the factor has been taken. A rounding shift in one stage (a carry chain then a barrel shifter)
# is too slow for 100 MHz on the ECP5. A written word's OR of |x| takes three stages of its
# own: the word, |x|, the OR.
_X_WORD, _U, _OR_U, _PRODUCT, _X_Q = 2, 5, 7, 8, 11
_SETTLE = 3     # STATISTICS taken to its first word issued: the ORs gathered, then the shift


class NormOp(enum.Enum, shape=1):
    STATISTICS = 0          # one pass; then the statistics are offered
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
        ``range(gain_words)``. Taken only while no command runs and none is offered (a word
        written in the cycle before a STATISTICS is taken is still counted in its shift).
    cmd : In(stream.Signature(StructLayout({"op": NormOp, "words": range(words + 1),
                                           "gain_base": range(gain_words)})))
        ``words`` is the vector's length in words (at least 1); element ``i``'s gain is in gain
        word ``gain_base + i // lanes`` (``gain_base + words <= gain_words``). A QUANTISE reads
        the gains of the STATISTICS before it, so it names the same ``gain_base``.
    factor : In(stream.Signature(DYADIC))
        QUANTISE's ``127 / peak``, whose exponent is negative: one a QUANTISE, taken from the
        cycle after its command is taken.
    x_stats : Out(stream.Signature(StructLayout({"shift", "sum_squares"})))
        Offered :meth:`x_statistics_latency` cycles after a STATISTICS is taken.
    u_stats : Out(stream.Signature(StructLayout({"gained_shift", "peak"})))
        Offered :meth:`statistics_latency` cycles after a STATISTICS is taken; the unit takes
        its next command once both have been taken.
    o_stream : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
        The first ``x_q`` word is offered :data:`QUANTISE_LATENCY` cycles after QUANTISE is
        taken or :data:`FACTOR_LATENCY` cycles after its factor is taken, whichever is later,
        then one a cycle without back-pressure; the unit takes its next command in the cycle
        after the last.
    """

    # Cycles from QUANTISE taken to its first x_q word, the factor in time: the first word
    # issued, then through every stage to the x_q register (see elaborate).
    QUANTISE_LATENCY = _X_Q + 1
    # Cycles from the factor taken to the first x_q word, QUANTISE taken early enough: the
    # factor registered, the first word into the product's stage the cycle after, then on.
    FACTOR_LATENCY = _X_Q - _PRODUCT + 2
    # Cycles from x_stats offered to u_stats offered: u's extremes rounded by the gained shift
    # (two stages), then the peak.
    U_STATS_AFTER = 3

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
                "op": NormOp, "words": range(self._words + 1),
                "gain_base": range(gain_words)}))),
            "factor": In(stream.Signature(DYADIC)),
            "x_stats": Out(stream.Signature(data.StructLayout({
                "shift": range(in_bits + 1), "sum_squares": unsigned(self._sum_bits)}))),
            "u_stats": Out(stream.Signature(data.StructLayout({
                "gained_shift": range(_GAINED_BITS + 1),
                "peak": unsigned(SHIFTED_BITS + 1)}))),
            "o_stream": Out(stream.Signature(data.ArrayLayout(signed(8), lanes))),
        })

    @property
    def words(self):
        return self._words

    @staticmethod
    def x_statistics_latency(words, lanes):
        """Cycles from a STATISTICS of ``words`` taken to ``x_stats`` offered: the written
        words' ORs gathered and the shift set (:data:`_SETTLE` cycles), then the pass issues a
        word a cycle; its last word reaches the last accumulator (:meth:`_pass_end`) that many
        stages later; the pass's end takes a cycle to register and is acted on in it; then one
        to offer."""
        return _SETTLE + words + NormQuantizer._pass_end(lanes) + 2

    @staticmethod
    def statistics_latency(words, lanes):
        """Cycles from a STATISTICS of ``words`` taken to ``u_stats`` offered:
        :data:`U_STATS_AFTER` after ``x_stats``."""
        return NormQuantizer.x_statistics_latency(words, lanes) + NormQuantizer.U_STATS_AFTER

    @staticmethod
    def _pass_end(lanes):
        """The stage of the pass's last accumulator: the latest of u's extremes (a comparison
        tree registered every level), the OR of ``|u|`` and the sum of squares (an
        :class:`hw.pim.AdderTree`)."""
        return max(_U + (lanes - 1).bit_length(), _OR_U, _U + AdderTree.latency_for(lanes))

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
            m.d.comb += [port.ready.eq(~running & ~self.cmd.valid), write.en.eq(port.valid
                                                                        & port.ready),
                         write.addr.eq(port.payload.index), write.data.eq(port.payload.data)]

        # Each written word's OR of |x| (a rewritten word replaces its own): the word, |x|,
        # then the OR into the word's register, three stages after the write.
        def lanes_of(shape, name):
            return Signal(data.ArrayLayout(shape, lanes), name=name, reset_less=True)

        written = [Signal(data.StructLayout({"valid": 1, "index": range(words)}),
                          name=f"written{n}") for n in range(2)]
        in_word = lanes_of(signed(self._in_bits), "in_word")
        in_abs = lanes_of(unsigned(self._in_bits), "in_abs")
        word_or = [Signal(self._in_bits, name=f"word_or{n}") for n in range(words)]
        m.d.sync += [written[0].valid.eq(self.x_stream.valid & self.x_stream.ready),
                     written[0].index.eq(self.x_stream.payload.index), written[1].eq(written[0]),
                     in_word.eq(self.x_stream.payload.data),
                     *(in_abs[n].eq(abs(in_word[n])) for n in range(lanes))]
        with m.If(written[1].valid):
            with m.Switch(written[1].index):
                for n in range(words):
                    with m.Case(n):
                        m.d.sync += word_or[n].eq(_or_all(in_abs[i] for i in range(lanes)))

        # Every stage moves together, and waits while an x_q word is refused or a QUANTISE word
        # would reach the product before its factor is taken.
        command = Signal.like(self.cmd.payload)
        factor = Signal(DYADIC)
        has_factor = Signal()       # QUANTISE's factor is taken
        stages = max(_X_Q, self._pass_end(lanes))
        control = data.StructLayout({"valid": 1, "pass": 2, "first": 1, "last": 1})
        c = {n: Signal(control, name=f"control{n}") for n in range(1, stages + 1)}
        waiting = c[_PRODUCT - 1].valid & (c[_PRODUCT - 1]["pass"] == 3) & ~has_factor
        advance = (~self.o_stream.valid | self.o_stream.ready) & ~waiting
        passes = Signal(2)          # the pass being issued: 2 (STATISTICS) or 3 (QUANTISE)
        issuing = Signal()
        addr = Signal(range(words))
        shift = Signal.like(self.x_stats.payload.shift)
        gained_shift = Signal.like(self.u_stats.payload.gained_shift)
        pass_done = Signal()        # the pass's last word reached the accumulators

        x_read = x_buffer.read_port()
        gain_read = gains.read_port()
        m.d.comb += [x_read.addr.eq(addr), gain_read.addr.eq(command.gain_base + addr),
                     x_read.en.eq(advance), gain_read.en.eq(advance)]
        issued = Signal(control)
        m.d.comb += [issued.valid.eq(issuing), issued["pass"].eq(passes),
                     issued.first.eq(addr == 0), issued.last.eq(addr == command.words - 1)]
        # The stages (_X_WORD ... _X_Q above). The rounding halves come from the shift amounts,
        # which hold still during a pass. The sum of squares leaves its adder tree
        # ``sums.latency`` cycles after stage _U; only STATISTICS uses it, and nothing stalls
        # then (no x_q word is waiting).
        product_bits = _U_BITS + MANTISSA_BITS + 1
        right = Signal(range(product_bits + 2))     # QUANTISE's rounding shift
        half_x = register_half(m, shift, self._in_bits, "half_x")
        half_u = register_half(m, gained_shift, _GAINED_BITS, "half_u")
        half_product = register_half(m, right, product_bits + 1, "half_product")

        x_word = lanes_of(signed(self._in_bits), "x_word")
        x_biased = lanes_of(signed(self._in_bits + 2), "x_biased")
        x_shifted = lanes_of(signed(_SHIFTED_X_BITS), "x_shifted")
        gain = {n: Signal(gain_layout, name=f"gain{n}", reset_less=True)
                for n in range(_X_WORD, _U)}
        u = lanes_of(signed(_GAINED_BITS), "u")
        square = lanes_of(unsigned(2 * NORM_INPUT_BITS + 1), "square")
        sums = m.submodules.sums = AdderTree(count=lanes, magnitude=1 << (2 * NORM_INPUT_BITS))
        u_biased = lanes_of(signed(_GAINED_BITS + 2), "u_biased")
        abs_u = lanes_of(unsigned(_GAINED_BITS), "abs_u")
        u_shifted = lanes_of(signed(_U_BITS), "u_shifted")
        or_u = Signal(_GAINED_BITS, reset_less=True)
        product = lanes_of(signed(product_bits), "product")
        product_biased = lanes_of(signed(product_bits + 2), "product_biased")
        product_shifted = lanes_of(signed(product_bits + 2), "product_shifted")
        with m.If(advance):
            m.d.sync += [c[1].eq(issued), gain[_X_WORD].eq(gain_read.data),
                         x_word.eq(x_read.data),
                         or_u.eq(_or_all(abs_u[n] for n in range(lanes))),
                         self.o_stream.valid.eq(c[_X_Q - 1].valid & (c[_X_Q - 1]["pass"] == 3))]
            m.d.sync += [c[n].eq(c[n - 1]) for n in range(2, stages + 1)]
            m.d.sync += [gain[n].eq(gain[n - 1]) for n in range(_X_WORD + 1, _U)]
            for n in range(lanes):
                m.d.sync += [
                    u[n].eq(gain[_U - 1][n] * x_shifted[n]),
                    square[n].eq(x_shifted[n] * x_shifted[n]),
                    abs_u[n].eq(abs(u[n])),
                    product[n].eq(u_shifted[n] * factor.mantissa),
                    self.o_stream.payload[n].eq(_clip(product_shifted[n], ACT_MAX)),
                ]
                rounding_shift(m, x_word[n], half=half_x, right=shift, biased=x_biased[n],
                               right_shifted=x_shifted[n])
                rounding_shift(m, u[n], half=half_u, right=gained_shift, biased=u_biased[n],
                               right_shifted=u_shifted[n])
                rounding_shift(m, product[n], half=half_product, right=right,
                               biased=product_biased[n], right_shifted=product_shifted[n])
            u_max, extremes_stage = _pipelined_tree(m, [u[n] for n in range(lanes)], _larger,
                                                    _U, "u_max")
            u_min, _ = _pipelined_tree(m, [u[n] for n in range(lanes)], _smaller, _U, "u_min")
        for n in range(lanes):
            m.d.comb += sums.i[n].eq(square[n])
        at_sum = delayed(m, c[_U], sums.latency, "sum")

        # Accumulators over the pass's words, each at its operand's stage: the OR of |u|, u's
        # extremes and the sum of squares. ``or_x``: the vector's words' ORs of |x|, each word
        # within the command's length by a mask registered with the command (a compare of the
        # length a word in front of the OR tree is too slow for 100 MHz).
        or_x = Signal(self._in_bits)
        in_vector = Signal(words)
        or_u_all = Signal(_GAINED_BITS)
        u_largest = Signal(signed(_GAINED_BITS))
        u_smallest = Signal(signed(_GAINED_BITS))
        sum_squares = Signal(self._sum_bits)

        def at(stage, pass_):
            return advance & c[stage].valid & (c[stage]["pass"] == pass_)

        with m.If(at(_OR_U, 2)):
            m.d.sync += or_u_all.eq(Mux(c[_OR_U].first, 0, or_u_all) | or_u)
        with m.If(at(extremes_stage, 2)):
            first = c[extremes_stage].first
            m.d.sync += [
                u_largest.eq(Mux(first | (u_max > u_largest), u_max, u_largest)),
                u_smallest.eq(Mux(first | (u_min < u_smallest), u_min, u_smallest)),
            ]
        with m.If(at_sum.valid & (at_sum["pass"] == 2)):
            m.d.sync += sum_squares.eq(Mux(at_sum.first, 0, sum_squares) + sums.o)
        end = self._pass_end(lanes)
        m.d.sync += pass_done.eq(at(end, 2) & c[end].last | at(_X_Q - 1, 3) & c[_X_Q - 1].last)

        # The extremes rounded by the gained shift: the half added (ROUND), then shifted
        # (SHIFT); then the peak. These registers run every cycle: the extremes and the shift
        # hold still from ROUND on, and only PEAK reads the result. The half's decoder shares
        # ROUND's stage with the add (half_u would be a cycle late for a new gained shift).
        largest, smallest = (Signal(signed(_GAINED_BITS + 2), name=name)
                             for name in ("largest", "smallest"))
        for extreme, rounded in ((u_largest, largest), (u_smallest, smallest)):
            biased = Signal(signed(_GAINED_BITS + 2), name=f"{rounded.name}_biased")
            rounding_shift(m, extreme, half=rounding_half(gained_shift, _GAINED_BITS),
                           right=gained_shift,
                           biased=biased, right_shifted=rounded)

        # The factor, from the cycle after QUANTISE is taken until its pass ends.
        m.d.comb += self.factor.ready.eq(running & (passes == 3) & ~has_factor)
        with m.If(self.factor.valid & self.factor.ready):
            exponent = self.factor.payload.exponent
            m.d.sync += [factor.eq(self.factor.payload), has_factor.eq(1),
                         right.eq(Mux(exponent < -(product_bits + 1), product_bits + 1,
                                      Mux(exponent < 0, -exponent, 0)))]

        m.d.comb += [self.cmd.ready.eq(~running), self.x_stats.payload.shift.eq(shift),
                     self.x_stats.payload.sum_squares.eq(sum_squares)]
        with m.If(self.x_stats.ready):
            m.d.sync += self.x_stats.valid.eq(0)
        x_done = ~self.x_stats.valid | self.x_stats.ready
        u_done = ~self.u_stats.valid | self.u_stats.ready
        stats = self.u_stats.payload
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.cmd.valid):
                    quantise = self.cmd.payload.op == NormOp.QUANTISE
                    m.d.sync += [command.eq(self.cmd.payload), running.eq(1), addr.eq(0),
                                 issuing.eq(quantise), passes.eq(Mux(quantise, 3, 2)),
                                 has_factor.eq(0),
                                 *(in_vector[n].eq(self.cmd.payload.words > n)
                                   for n in range(words))]
                    with m.If(quantise):
                        m.next = "ISSUE"
                    with m.Else():
                        m.next = "SETTLE"
            with m.State("SETTLE"):
                # A word written in the cycle before the command reaches its OR register now.
                m.next = "GATHER"
            with m.State("GATHER"):
                m.d.sync += or_x.eq(_or_all(Mux(in_vector[n], word_or[n], 0)
                                            for n in range(words)))
                m.next = "SHIFT_X"
            with m.State("SHIFT_X"):
                m.d.sync += [shift.eq(_excess(or_x, NORM_INPUT_BITS)), issuing.eq(1)]
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
                        with m.Case(2):
                            m.d.sync += [gained_shift.eq(_excess(or_u_all, SHIFTED_BITS)),
                                         self.x_stats.valid.eq(1)]
                            m.next = "ROUND"
                        with m.Default():
                            m.d.sync += running.eq(0)
                            m.next = "IDLE"
            with m.State("ROUND"):
                m.next = "SHIFT"
            with m.State("SHIFT"):
                m.next = "PEAK"
            with m.State("PEAK"):
                m.d.sync += [stats.gained_shift.eq(gained_shift),
                             stats.peak.eq(Mux(largest > -smallest, largest, -smallest)),
                             self.u_stats.valid.eq(1)]
                m.next = "OFFER"
            with m.State("OFFER"):
                with m.If(self.u_stats.ready):
                    m.d.sync += self.u_stats.valid.eq(0)
                with m.If(x_done & u_done):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
        return m


def _excess(value, bits):
    """``max(bit_length(value) - bits, 0)``: the bit length of ``value >> bits``, a tree of
    selects with no subtraction or compare after it (one in the shift's path missed 100 MHz)."""
    return bit_length(value[bits:]) if len(value) > bits else Const(0)


def _or_all(values):
    result = Const(0)
    for value in values:
        result = result | value
    return result


def _larger(a, b):
    return Mux(a > b, a, b)


def _smaller(a, b):
    return Mux(a < b, a, b)


def _pipelined_tree(m, nodes, pick, stage, name):
    """``pick`` over ``nodes`` (registered at ``stage``) as a balanced tree with a register
    under the current condition after every level; returns the result and its stage."""
    level = 0
    while len(nodes) > 1:
        level += 1
        picked = [pick(nodes[n], nodes[n + 1]) if n + 1 < len(nodes) else nodes[n]
                  for n in range(0, len(nodes), 2)]
        nodes = [Signal.like(nodes[0], name=f"{name}_l{level}_{n}", reset_less=True)
                 for n in range(len(picked))]
        m.d.sync += [node.eq(value) for node, value in zip(nodes, picked)]
    return nodes[0], stage + level


def _clip(value, limit):
    return Mux(value > limit, limit, Mux(value < -limit, -limit, value))
