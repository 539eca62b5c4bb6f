"""The norm stage of the resident decoder: one RMSNorm and activation quantisation, and the
rescale factors of the BitLinears that read its output (``golden.integer.norm_quantize`` and
the ``dyadic_mul(rho, constant)`` of ``golden.integer.rescale``, bit for bit).

A stage is built from units and has its own small control FSM, so that a sequencer starts it
with one operation. This one holds a :class:`hw.norm.NormQuantizer` (whose gain memory keeps
every norm of the model, each at its own base word: :func:`gain_bases`) and three
:class:`hw.dyadic.ScalarUnit`. An operation runs STATISTICS; then, side by side, one scalar
unit turns the peak into ``127 * rcp(max(peak, 1))`` (NORMALISE, then RECIPROCAL on a unit
whose reciprocal ROM is scaled by ``dyadic(127)``: golden's ``quantize_factor``, whose multiply
by ``dyadic(127)`` rounds a product of the table entry alone) for QUANTISE, which streams
``x_q`` (sent as the statistics are taken, its pass waits for the factor where it needs it),
and the other computes ``rho`` (step 4 of ``norm_quantize``: the sum of squares' dyadic, plus
``eps_k``, its reciprocal square root, times the peak's dyadic, which the third makes
meanwhile; rho's chain starts from x's statistics, three cycles before the peak is known) and
the factors ``rho * constant_m`` of up to three matrices (q, k, v; gate, up; o; down; the
head). The next GEMV waits for ``x_q`` and for its factor to be due.
"""

from types import SimpleNamespace

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.fixedpoint import MANTISSA_BITS, dyadic
from golden.integer import ACT_MAX
from golden.model import ATTENTION_INPUTS, MLP_INPUTS, norm_sizes

from .dyadic import DYADIC, EXPONENT_BITS, ScalarOp, ScalarUnit
from .norm import NormOp, NormQuantizer

__all__ = ["MATRICES", "X_EXPONENT_BITS", "NormStage", "gain_bases"]

MATRICES = max(len(ATTENTION_INPUTS), len(MLP_INPUTS))     # BitLinears sharing one x_q
# x_exponent and the gain's fraction in [-512, 511]: every exponent the scalar unit meets then
# stays within EXPONENT_BITS (2 (shift + x_exponent) within +-1,100 for shifts up to 32, the
# peak's within +-1,100 with a gained shift up to 14), whatever the vector.
X_EXPONENT_BITS = EXPONENT_BITS - 2

_FACTOR_STEPS = (ScalarOp.NORMALISE, ScalarOp.RECIPROCAL)
_RHO_STEPS = (ScalarOp.NORMALISE, ScalarOp.ADD, ScalarOp.RSQRT, ScalarOp.MULTIPLY)
# The peak's dyadic for rho's last step, on a unit of its own beside rho's first three (never
# longer than they are, so it sets no cycle).
_PEAK_STEPS = (ScalarOp.NORMALISE,)


def gain_bases(*, hidden, ffn, layers, lanes):
    """``{norm name: base word}`` of every norm's gains in the stage's gain memory, in
    ``golden.model.norm_sizes`` order, each taking ``ceil(size / lanes)`` words (lanes past
    its size unused); and the words they take in all."""
    # norm_sizes reads only these three fields of a model configuration.
    sizes = norm_sizes(SimpleNamespace(hidden=hidden, ffn=ffn, layers=layers))
    bases, words = {}, 0
    for name, size in sizes.items():
        bases[name] = words
        words += -(-size // lanes)
    return bases, words


def _steps_cycles(ops):
    """Cycles of scalar operations run one after another: each result is taken in the cycle it
    is offered, and the unit takes the next command in the cycle after."""
    return sum(ScalarUnit.latency_of(op) + 1 for op in ops)


# From x's statistics taken to an operation's first factor offered: rho's chain, then the
# factor's multiply.
_FIRST_FACTOR = _steps_cycles(_RHO_STEPS + (ScalarOp.MULTIPLY,))


class NormStage(wiring.Component):
    """One operation: ``x_q`` and the factors ``rho * constant_m`` of the vector in the buffer.

    Without back-pressure an operation's outputs end :meth:`cycles` after its command is taken;
    the stage takes its next command two cycles after that. ``rho`` is 0 (so is every factor)
    for a vector whose ``g x`` is all zero: the peak's dyadic is then 0 and so is its product
    with the reciprocal square root, as golden's ``norm_quantize`` sets it.

    Parameters
    ----------
    config : hw.config.Config
        The device; the stage has a bank's lanes unless ``lanes`` says.
    hidden, ffn, layers : int
        The model's shape: ``4 layers + 1`` norms, the ``ffn_sub_norm`` of ``ffn`` elements and
        the others of ``hidden``.
    lanes : int
        Elements a cycle.
    first_lead : int
        ``factor_due``'s lead for an operation's first factor, at least
        ``FACTOR_INTERVAL - 1``: a reader that has this many cycles before it needs the factor
        (a GEMV's reads and the bank group's latency) can start as soon as it rises.

    Members
    -------
    x_stream : In(stream.Signature(StructLayout({"index": range(words),
                                                "data": ArrayLayout(signed(32), lanes)})))
        The vector (int32: the residual stream, attention's output, ReLU^2 x up), word
        ``index`` holding elements ``index * lanes + i``, lanes past its length 0; ``words`` is
        that of the longer of ``hidden`` and ``ffn``. Taken only between operations.
    gain_stream : In(stream.Signature(StructLayout({"index": range(gain_words),
                                                   "data": ArrayLayout(signed(16), lanes)})))
        Gain words of every norm (:func:`gain_bases`), loaded once. Taken between operations.
    cmd : In(stream.Signature(StructLayout({
            "words": range(words + 1), "gain_base": range(gain_words),
            "x_exponent": signed(X_EXPONENT_BITS), "fraction": signed(X_EXPONENT_BITS),
            "eps_k": DYADIC, "count": range(1, MATRICES + 1),
            "constants": ArrayLayout(DYADIC, MATRICES)})))
        The vector's length in words; its norm's gain base, gain ``fraction`` and ``eps_k``
        (``golden.integer.NormGain``); the vector stands for ``x * 2**x_exponent``; ``count``
        matrices' constants (``LinearScale.constant``), the first ``count`` of ``constants``.
    o_stream : Out(stream.Signature(ArrayLayout(signed(8), lanes)))
        ``x_q`` words, in order.
    factors : Out(stream.Signature(DYADIC))
        ``count`` factors an operation, ``rho * constants[m]`` for ``m`` in order. Their
        exponents stay within :data:`hw.dyadic.EXPONENT_BITS` for the decoder's constants
        (exponents within +-200).
    factor_due : Out(1)
        The next factor is due: it is offered at most ``first_lead`` cycles (the operation's
        first factor) or ``FACTOR_INTERVAL - 1`` cycles (each later one) after the first cycle
        this is high for it. Low while no factor is to come.
    """

    # From a factor taken to the next one offered: its multiply on rho's unit.
    FACTOR_INTERVAL = _steps_cycles((ScalarOp.MULTIPLY,))

    def __init__(self, config, *, hidden, ffn, layers, lanes=None,
                 first_lead=FACTOR_INTERVAL - 1):
        lanes = config.pim.lanes if lanes is None else lanes
        for name, value in (("hidden", hidden), ("ffn", ffn), ("layers", layers),
                            ("lanes", lanes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if isinstance(first_lead, bool) or not isinstance(first_lead, int) \
                or first_lead < self.FACTOR_INTERVAL - 1:
            raise ValueError(f"first_lead must be an integer of at least "
                             f"{self.FACTOR_INTERVAL - 1}, not {first_lead!r}")
        self.first_lead = first_lead
        self._bases, gain_words = gain_bases(hidden=hidden, ffn=ffn, layers=layers, lanes=lanes)
        self._norm = norm = NormQuantizer(config, size=max(hidden, ffn), lanes=lanes,
                                          gain_words=gain_words)
        words = norm.words
        super().__init__({
            "x_stream": In(stream.Signature(norm.x_stream.payload.shape())),
            "gain_stream": In(stream.Signature(norm.gain_stream.payload.shape())),
            "cmd": In(stream.Signature(data.StructLayout({
                "words": range(words + 1), "gain_base": range(gain_words),
                "x_exponent": signed(X_EXPONENT_BITS), "fraction": signed(X_EXPONENT_BITS),
                "eps_k": DYADIC, "count": range(1, MATRICES + 1),
                "constants": data.ArrayLayout(DYADIC, MATRICES)}))),
            "o_stream": Out(stream.Signature(norm.o_stream.payload.shape())),
            "factors": Out(stream.Signature(DYADIC)),
            "factor_due": Out(1),
        })

    @property
    def bases(self):
        """``{norm name: base word}`` of the gain memory (:func:`gain_bases`)."""
        return dict(self._bases)

    @staticmethod
    def cycles(words, count, lanes):
        """Cycles from an operation's command taken to its last output (an ``x_q`` word or a
        factor) without back-pressure, for a vector of ``words``, ``count`` matrices and a
        stage of ``lanes``: the later of :meth:`x_q_cycles` and the last factor's
        :meth:`factor_cycles`."""
        return max(NormStage.x_q_cycles(words, lanes),
                   NormStage.factor_cycles(words, count - 1, lanes))

    @staticmethod
    def x_q_cycles(words, lanes):
        """Cycles from a command taken to its last ``x_q`` word offered, without back-pressure:
        STATISTICS and u's statistics taken; then QUANTISE, taken the cycle after, and the
        factor's two scalar operations, their result taken by the quantiser as it is offered;
        the first word after the later of their latencies, then the other ``words - 1``."""
        return (NormQuantizer.statistics_latency(words, lanes)
                + max(1 + NormQuantizer.QUANTISE_LATENCY,
                      _steps_cycles(_FACTOR_STEPS) + NormQuantizer.FACTOR_LATENCY)
                + words - 1)

    @staticmethod
    def factor_cycles(words, matrix, lanes):
        """Cycles from a command taken to factor ``matrix`` (from 0) offered, each factor before
        it taken when offered: STATISTICS and x's statistics taken (before u's), then, on rho's
        own scalar unit beside the factor's, rho's four operations (the peak's dyadic made
        beside them) and ``matrix + 1`` multiplies."""
        return (NormQuantizer.x_statistics_latency(words, lanes) + _steps_cycles(_RHO_STEPS)
                + (matrix + 1) * NormStage.FACTOR_INTERVAL)

    def due_cycle(self, words, matrix, lanes):
        """The cycle (from the command taken, 0) ``factor_due`` rises for factor ``matrix``,
        as :meth:`factor_cycles` counts: its lead before that factor is offered."""
        lead = self.first_lead if matrix == 0 else self.FACTOR_INTERVAL - 1
        return self.factor_cycles(words, matrix, lanes) - lead

    def elaborate(self, platform):
        m = Module()
        m.submodules.norm = norm = self._norm
        # Three scalar units, so that rho's chain runs beside the factor's instead of after it,
        # and the peak's dyadic for rho beside rho's first steps; the factor's and the peak's
        # normalise only the peak, a narrower value than the sum of squares.
        peak_bits = max(len(norm.u_stats.payload.peak), MANTISSA_BITS)
        act_max = dyadic(ACT_MAX)
        m.submodules.factor_unit = factor_unit = ScalarUnit(value_bits=peak_bits,
                                                            reciprocal_scale=act_max)
        m.submodules.peak_unit = peak_unit = ScalarUnit(value_bits=peak_bits)
        m.submodules.rho_unit = rho_unit = ScalarUnit(
            value_bits=max(len(norm.x_stats.payload.sum_squares), MANTISSA_BITS))

        command = Signal.like(self.cmd.payload)
        x_stats = Signal.like(norm.x_stats.payload)
        u_stats = Signal.like(norm.u_stats.payload)
        idle = Signal()                     # between operations: the stage takes cmd and data
        for port in ("x_stream", "gain_stream"):
            outer, inner = getattr(self, port), getattr(norm, port)
            m.d.comb += [inner.payload.eq(outer.payload), inner.valid.eq(outer.valid & idle),
                         outer.ready.eq(inner.ready & idle)]
        wiring.connect(m, wiring.flipped(self.o_stream), norm.o_stream)

        # The exponents of step 4 of norm_quantize: sum_squares * 2**(2 e) and
        # peak * 2**(gained_shift + e - fraction), e = shift + x_exponent.
        exponent = Signal(signed(EXPONENT_BITS))
        m.d.comb += exponent.eq(x_stats.shift + command.x_exponent)
        peak_exponent = u_stats.gained_shift + exponent - command.fraction

        # QUANTISE is sent as u's statistics are taken (the quantiser, idle once they are,
        # takes it the cycle after); its factor follows straight from the factor unit's last
        # step, which the quantiser, running QUANTISE by then, takes as it is offered.
        quantise_pending = Signal()         # QUANTISE offered to the norm
        m.d.comb += [norm.cmd.valid.eq(quantise_pending),
                     norm.cmd.payload.op.eq(NormOp.QUANTISE),
                     norm.cmd.payload.words.eq(command.words),
                     norm.cmd.payload.gain_base.eq(command.gain_base)]
        with m.If(quantise_pending & norm.cmd.ready):
            m.d.sync += quantise_pending.eq(0)

        # The chains, each (operation, a, b, value, exponent, where its result goes).
        reciprocal = Signal(DYADIC)         # the peak's dyadic, for its scaled reciprocal
        held = Signal(DYADIC)               # rho's chain so far; rho from its last step
        peak = Signal(DYADIC)               # the peak's dyadic
        zero = 0
        factor_chain = [
            (ScalarOp.NORMALISE, zero, zero, Mux(u_stats.peak == 0, 1, u_stats.peak), 0,
             reciprocal),
            (ScalarOp.RECIPROCAL, reciprocal, zero, 0, 0, None),
        ]
        peak_chain = [(ScalarOp.NORMALISE, zero, zero, u_stats.peak, peak_exponent, peak)]
        rho_chain = [
            (ScalarOp.NORMALISE, zero, zero, x_stats.sum_squares, 2 * exponent, held),
            (ScalarOp.ADD, held, command.eps_k, 0, 0, held),
            (ScalarOp.RSQRT, held, zero, 0, 0, held),
            (ScalarOp.MULTIPLY, peak, held, 0, 0, held),
        ]
        assert tuple(step[0] for step in factor_chain) == _FACTOR_STEPS
        assert tuple(step[0] for step in rho_chain) == _RHO_STEPS
        assert tuple(step[0] for step in peak_chain) == _PEAK_STEPS
        assert (NormQuantizer.U_STATS_AFTER + _steps_cycles(_PEAK_STEPS)
                <= _steps_cycles(_RHO_STEPS[:-1]))
        matrix = Signal(range(MATRICES))

        # The operation: STATISTICS, then rho's chain from the cycle after x's statistics are
        # taken and the factor's and the peak's from the cycle after u's; it ends once the last
        # factor is taken and QUANTISE's pass has issued its last x_q word (which may still wait
        # on o_stream: the next STATISTICS then holds until it leaves).
        begin, begin_rho, rho_done = Signal(), Signal(), Signal()
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [idle.eq(1), self.cmd.ready.eq(norm.cmd.ready),
                             norm.cmd.valid.eq(self.cmd.valid),
                             norm.cmd.payload.op.eq(NormOp.STATISTICS),
                             norm.cmd.payload.words.eq(self.cmd.payload.words),
                             norm.cmd.payload.gain_base.eq(self.cmd.payload.gain_base)]
                with m.If(self.cmd.valid & norm.cmd.ready):
                    m.d.sync += [command.eq(self.cmd.payload), matrix.eq(0)]
                    m.next = "STATISTICS"
            with m.State("STATISTICS"):
                # x's statistics come first (the quantiser offers u's three cycles later).
                m.d.comb += [norm.x_stats.ready.eq(1), norm.u_stats.ready.eq(1),
                             begin_rho.eq(norm.x_stats.valid), begin.eq(norm.u_stats.valid)]
                with m.If(norm.x_stats.valid):
                    m.d.sync += x_stats.eq(norm.x_stats.payload)
                with m.If(norm.u_stats.valid):
                    m.d.sync += [u_stats.eq(norm.u_stats.payload), quantise_pending.eq(1)]
                    m.next = "CHAINS"
            with m.State("CHAINS"):
                # QUANTISE taken and the quantiser ready again: its pass has ended, which it
                # cannot before its factor is taken.
                with m.If(rho_done & ~quantise_pending & norm.cmd.ready):
                    m.d.sync += rho_done.eq(0)
                    m.next = "IDLE"

        assert _steps_cycles(_FACTOR_STEPS) > 1     # the factor comes after QUANTISE is taken
        last = _chain(m, factor_unit, factor_chain, begin, "factor")
        m.d.comb += [norm.factor.valid.eq(last),
                     norm.factor.payload.eq(factor_unit.o_stream.payload)]

        # Rho's chain (the peak's dyadic beside it), then each matrix's factor straight from its
        # unit to ``factors``.
        _chain(m, peak_unit, peak_chain, begin, "peak")
        rho = _chain(m, rho_unit, rho_chain, begin_rho, "rho")
        # The first factor is offered a fixed count of cycles after x's statistics are taken
        # (nothing holds rho's chain); it is due first_lead cycles before that.
        if self.first_lead > self.FACTOR_INTERVAL - 1:
            to_first = _FIRST_FACTOR - 1
            until_first = Signal(range(to_first + 1))
            with m.If(begin_rho):
                m.d.sync += until_first.eq(to_first)
            with m.Elif(until_first != 0):
                m.d.sync += until_first.eq(until_first - 1)
            m.d.comb += self.factor_due.eq((until_first != 0)
                                           & (until_first <= self.first_lead))
        with m.FSM(name="factors"):
            with m.State("WAIT_RHO"):
                with m.If(rho):
                    m.next = "ISSUE_MATRIX"
            with m.State("ISSUE_MATRIX"):
                request = rho_unit.i_stream.payload
                m.d.comb += [self.factor_due.eq(1),
                             rho_unit.i_stream.valid.eq(1), request.op.eq(ScalarOp.MULTIPLY),
                             request.a.eq(held), request.b.eq(command.constants[matrix])]
                with m.If(rho_unit.i_stream.ready):
                    m.next = "WAIT_MATRIX"
            with m.State("WAIT_MATRIX"):
                m.d.comb += [self.factor_due.eq(1),
                             self.factors.valid.eq(rho_unit.o_stream.valid),
                             self.factors.payload.eq(rho_unit.o_stream.payload),
                             rho_unit.o_stream.ready.eq(self.factors.ready)]
                with m.If(self.factors.valid & self.factors.ready):
                    m.d.sync += matrix.eq(matrix + 1)
                    with m.If(matrix + 1 < command.count):
                        m.next = "ISSUE_MATRIX"
                    with m.Else():
                        m.d.sync += rho_done.eq(1)
                        m.next = "WAIT_RHO"
        return m


def _chain(m, unit, steps, begin, name):
    """Run ``steps`` on the scalar ``unit`` one after another from the cycle after ``begin``,
    each result registered where its step says (``None``: nowhere, the caller takes it from
    the unit in the cycle returned); returns the cycle its last result is taken."""
    request, last = unit.i_stream.payload, Signal(name=f"{name}_last")
    with m.FSM(name=name):
        with m.State("IDLE"):
            with m.If(begin):
                m.next = "ISSUE_0"
        for n, (op, a, b, value, step_exponent, into) in enumerate(steps):
            with m.State(f"ISSUE_{n}"):
                m.d.comb += [unit.i_stream.valid.eq(1), request.op.eq(op), request.a.eq(a),
                             request.b.eq(b), request.value.eq(value),
                             request.exponent.eq(step_exponent)]
                with m.If(unit.i_stream.ready):
                    m.next = f"WAIT_{n}"
            with m.State(f"WAIT_{n}"):
                m.d.comb += unit.o_stream.ready.eq(1)
                with m.If(unit.o_stream.valid):
                    if into is not None:
                        m.d.sync += into.eq(unit.o_stream.payload)
                    m.next = f"ISSUE_{n + 1}" if n + 1 < len(steps) else "IDLE"
                    if n + 1 == len(steps):
                        m.d.comb += last.eq(1)
    return last
