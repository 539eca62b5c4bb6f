"""A unit of the resident decoder's layer program: one norm and the BitLinears that read its
output (``golden.integer.norm_quantize``, then ``golden.bitlinear.bitlinear_int`` and
``golden.integer.rescale`` for each matrix, the residual added after o_proj and down), as
``IntegerModel._attention_block`` and ``_mlp_block`` compose them: q, k, v; o; gate, up; down.

The block holds a :class:`hw.norm_stage.NormStage` and a :class:`hw.linear_stage.LinearStage`
and connects them to a bank group it does not own (the device keeps the group for the offload
commands): a parent connects :attr:`BitLinearBlock.chunk_stream` to the group's ``x_stream``,
:attr:`BitLinearBlock.cmd_stream` to its ``cmd_stream`` and the group's ``o_stream`` to
:attr:`BitLinearBlock.acc_stream`. The norm runs at the banks' ``pim.lanes``, so each ``x_q``
word it offers is the group's activation chunk of the same index, written as it leaves.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.integer import ACT_MAX, RESIDUAL_BITS
from golden.widths import signed_bits_for

from .linear_stage import LinearStage
from .norm_stage import MATRICES, NormStage
from .pim import PimBankGroup

__all__ = ["BitLinearBlock"]


class BitLinearBlock(wiring.Component):
    """One operation: a norm's ``x_q`` into the bank group, then 1 to ``MATRICES`` BitLinears
    over it, one after another, each rescaled by its factor ``rho * constant`` and its
    residual added or not.

    ``cmd`` is taken while the block is idle (not :attr:`busy`) and the norm stage takes
    commands. The vector must be in the norm stage's buffer (``x_stream``, taken whenever the
    norm stage is between operations, so a parent may write the next vector while this
    operation's GEMVs run). The ``x_q`` words go to the group's activation buffer as chunks
    0, 1, ...; matrix ``m``'s GEMV (words ``base .. base + rows * words - 1`` of every bank,
    ``words`` chunks a row: K is the vector's length) is started once every chunk has been
    taken by the group, factor ``m`` is due or taken, and the linear stage takes it (matrix
    ``m - 1``'s GEMV command is with the group: the group reads the matrices back to back);
    factor ``m`` follows it to the linear stage. The
    sequencer keeps ``1 <= words``, ``rows >= 1`` and ``1 <= n <= rows * banks`` for each of
    the ``count`` matrices, and the weights placed as ``hw.placement`` places them.

    Results leave on ``o_stream`` in matrix order, then row order, as
    :class:`hw.linear_stage.LinearStage` offers them (``lanes`` rows a beat, lanes past ``n``
    0), tagged with their matrix. Residuals: for each matrix with ``add_residual``,
    ``ceil(n / lanes)`` beats on ``r_stream`` in row order, as the linear stage takes them;
    none for the others.

    Cycles (:meth:`cycles`), with ``o_stream`` ready, the residuals offered and the group idle
    and taking chunks: the first GEMV starts once ``x_q`` is written (the cycle after its last
    chunk) and its factor is due (:attr:`NormStage.factor_due`, raised for a first factor as
    many cycles before it as the shorter vector's reads and the group's latency: rho's scalar
    chain is longer than a short vector's QUANTISE pass, and the factor reaches the linear
    stage by the GEMV's first results); each later one as :meth:`gemv_starts` counts. The
    factors go to the linear stage as they are offered. The block takes its next command two
    cycles after its last beat is taken.

    Parameters
    ----------
    config : hw.config.Config
        The bank group's device; ``act_bits`` at least 8 (``x_q`` is int8) and ``max_k`` at
        least ``max(hidden, ffn)``.
    hidden, ffn, layers : int
        The model's shape (:class:`hw.norm_stage.NormStage`); the norm has ``pim.lanes`` lanes.
    out_bits : int
        The results' width (:class:`hw.linear_stage.LinearStage`): 32 for the residual stream
        after o_proj and down; q, k, v, gate and up fit 16 (golden's ``projection``).
    lanes : int
        The linear stage's lanes: results a beat.

    Members
    -------
    x_stream, gain_stream : In
        The norm stage's vector and gain streams (:class:`hw.norm_stage.NormStage`).
    cmd : In(stream.Signature(StructLayout({
            "norm": NormStage's cmd layout,
            "matrices": ArrayLayout(StructLayout({"base": range(depth), "rows": range(depth + 1),
                                                  "n": range(depth * banks + 1),
                                                  "add_residual": 1}), MATRICES),
            "norm_only": 1})))
        The norm (``norm.words``: the vector's length in words, K's words a row of each matrix;
        ``norm.count`` matrices and their constants) and the first ``count`` matrices' placement.
        With ``norm_only`` the operation ends once ``x_q`` has left on ``chunk_stream`` and its
        ``count`` factors are computed: no GEMV, no result (the LM head's norm, whose ``x_q`` a
        parent sends to the head instead of the banks).
    chunk_stream : Out(stream.Signature(PimBankGroup.layouts(config)["x_stream"]))
        To the group's ``x_stream``: ``x_q`` word ``i`` as chunk ``i``.
    cmd_stream : Out(stream.Signature(PimBankGroup.layouts(config)["cmd_stream"]))
        To the group's ``cmd_stream``.
    acc_stream : In(stream.Signature(PimBankGroup.layouts(config)["o_stream"]))
        From the group's ``o_stream``.
    r_stream : In(stream.Signature(ArrayLayout(signed(out_bits), lanes)))
        Residual elements, in row order, for the matrices with ``add_residual``.
    o_stream : Out(stream.Signature(StructLayout({"matrix": range(MATRICES),
                                                 "index": range(depth * banks),
                                                 "data": ArrayLayout(signed(out_bits), lanes)})))
        Results: the matrix (0 to ``count - 1``), the beat's first row, ``lanes`` results.
    busy : Out(1)
        A command has been taken and its operation has not finished.
    """

    def __init__(self, config, *, hidden, ffn, layers, out_bits=RESIDUAL_BITS, lanes=4):
        if signed_bits_for(ACT_MAX) > config.act_bits:
            raise ValueError(f"config.act_bits must be at least {signed_bits_for(ACT_MAX)} "
                             f"(x_q is int8), not {config.act_bits!r}")
        for name, value in (("hidden", hidden), ("ffn", ffn), ("layers", layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if max(hidden, ffn) > config.max_k:
            raise ValueError(f"hidden and ffn must be at most config.max_k ({config.max_k}), "
                             f"not {max(hidden, ffn)}")
        # Every parameter is checked before the norm stage builds its quantiser.
        self._linear = LinearStage(config, out_bits=out_bits, lanes=lanes)
        # A first factor due when its GEMV starts need only reach the linear stage by the
        # GEMV's first results: the shorter vector's reads and the group's latency later.
        shortest = -(-min(hidden, ffn) // config.pim.lanes)
        first_lead = max(NormStage.FACTOR_INTERVAL - 1,
                         shortest + PimBankGroup.latency_for(config))
        self._norm = NormStage(config, hidden=hidden, ffn=ffn, layers=layers,
                               first_lead=first_lead)
        self._config, self.lanes = config, lanes
        norm, linear, layouts = self._norm.signature.members, self._linear.signature.members, \
            PimBankGroup.layouts(config)
        start = linear["start"].signature.members["payload"].shape
        placement = data.StructLayout({name: start[name].shape
                                       for name in ("base", "rows", "n", "add_residual")})
        results = linear["o_stream"].signature.members["payload"].shape
        super().__init__({
            "x_stream": norm["x_stream"],
            "gain_stream": norm["gain_stream"],
            "cmd": In(stream.Signature(data.StructLayout({
                "norm": norm["cmd"].signature.members["payload"].shape,
                "matrices": data.ArrayLayout(placement, MATRICES),
                "norm_only": 1}))),
            "chunk_stream": Out(stream.Signature(layouts["x_stream"])),
            "cmd_stream": linear["cmd_stream"],
            "acc_stream": linear["acc_stream"],
            "r_stream": linear["r_stream"],
            "o_stream": Out(stream.Signature(data.StructLayout({
                "matrix": range(MATRICES), "index": results["index"].shape,
                "data": results["data"].shape}))),
            "busy": Out(1),
        })

    @property
    def config(self):
        return self._config

    @property
    def bases(self):
        """The norm stage's gain bases (:func:`hw.norm_stage.gain_bases`)."""
        return self._norm.bases

    def first_start(self, words):
        """The cycle (from the command taken, 0) the first GEMV of an operation on a vector of
        ``words`` is started, without back-pressure: once ``x_q`` is complete and its factor is
        due (:meth:`NormStage.due_cycle`). 45 for the shipped model's hidden (4 words at 32
        lanes, x_q complete at 43, its factor offered at 57 and due 12 cycles before), 59 for
        its ffn (12 words, x_q the later)."""
        lanes = self._config.pim.lanes
        return max(NormStage.x_q_cycles(words, lanes) + 1,
                   self._norm.due_cycle(words, 0, lanes))

    def linear_cycles(self, words, n):
        """:meth:`hw.linear_stage.LinearStage.cycles` of one matrix of ``n`` rows on a vector of
        ``words``: from its start to its last beat, both counted."""
        return self._linear.cycles(words_per_row=words, n=n)

    def gemv_starts(self, words, ns):
        """For matrices of ``ns`` rows on a vector of ``words``, the cycle (from the command
        taken, 0) before each GEMV's command is taken, from which its results take
        :meth:`linear_cycles`, without back-pressure, with the group idle and no row slot past
        ``n``: the first at :meth:`first_start`; each later one as soon as the GEMV before it
        is with the group and its factor is due (each factor is taken as it is offered, the
        next offered :attr:`NormStage.FACTOR_INTERVAL` later); each GEMV command then with the
        one before's last read (:meth:`LinearStage.command_cycle`).

        A factor due when its GEMV starts reaches the linear stage before the GEMV's first
        results when ``words`` plus the group's latency is at least its lead: the norm stage's
        ``first_lead`` for the first, which the block sets so, and ``FACTOR_INTERVAL - 1`` for
        the others (always on the presets: the latency is 5 or more); a shape below that is
        refused."""
        banks, lanes = self._config.pim.banks, self._config.pim.lanes
        if words + PimBankGroup.latency_for(self._config) < NormStage.FACTOR_INTERVAL - 1:
            raise ValueError(f"the block's cycle model needs words + the bank group's latency "
                             f"of at least {NormStage.FACTOR_INTERVAL - 1}, not {words} + "
                             f"{PimBankGroup.latency_for(self._config)}")
        start = self.first_start(words)
        command = LinearStage.command_cycle(start)
        commands = [command]
        for matrix, n in enumerate(ns[:-1], 1):
            start = max(command + 1, self._norm.due_cycle(words, matrix, lanes))
            command = LinearStage.command_cycle(start, (command, -(-n // banks) * words))
            commands.append(command)
        return [command - 1 for command in commands]

    def cycles(self, words, ns):
        """Cycles from a command taken to its last beat offered, both counted, for a vector of
        ``words`` and matrices of ``ns`` rows, with ``o_stream`` ready, the residuals offered,
        the group idle, ``words >= banks / lanes`` and no row slot past ``n`` but in the last
        matrix (the linear stage is busy until the group's last beat, wanted or not): the last
        matrix's :meth:`gemv_starts` and :meth:`linear_cycles`."""
        return self.gemv_starts(words, ns)[-1] + self.linear_cycles(words, ns[-1])

    def elaborate(self, platform):
        m = Module()
        m.submodules.norm = norm = self._norm
        m.submodules.linear = linear = self._linear
        for port in ("x_stream", "gain_stream"):
            wiring.connect(m, wiring.flipped(getattr(self, port)), getattr(norm, port))
        wiring.connect(m, linear.cmd_stream, wiring.flipped(self.cmd_stream))
        wiring.connect(m, wiring.flipped(self.acc_stream), linear.acc_stream)
        wiring.connect(m, wiring.flipped(self.r_stream), linear.r_stream)

        op = Signal(self.cmd.payload.shape())
        written = Signal.like(norm.cmd.payload.words)   # x_q chunks taken by the group
        matrix = Signal(range(MATRICES))                # the next matrix to start
        current = Signal(range(MATRICES))               # the matrix whose results leave
        started = Signal()                              # every matrix has started
        factors_taken = Signal(range(MATRICES + 1))     # by the linear stage, or a norm_only op

        # The command: the norm's part goes straight to the norm stage.
        m.d.comb += [
            self.cmd.ready.eq(~self.busy & norm.cmd.ready),
            norm.cmd.valid.eq(self.cmd.valid & ~self.busy),
            norm.cmd.payload.eq(self.cmd.payload.norm),
        ]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [op.eq(self.cmd.payload), self.busy.eq(1), written.eq(0),
                         matrix.eq(0), started.eq(0), factors_taken.eq(0)]

        # x_q word i is chunk i of the activation buffer.
        m.d.comb += [
            self.chunk_stream.valid.eq(norm.o_stream.valid),
            self.chunk_stream.payload.addr.eq(written),
            *[self.chunk_stream.payload.data[i].eq(norm.o_stream.payload[i])
              for i in range(self._config.pim.lanes)],
            norm.o_stream.ready.eq(self.chunk_stream.ready),
        ]
        with m.If(self.chunk_stream.valid & self.chunk_stream.ready):
            m.d.sync += written.eq(written + 1)

        # Matrix m starts once every chunk is in the buffer (the group takes no chunk while a
        # GEMV runs, so a GEMV started earlier would read the previous vector's) and its factor
        # is due or taken: the factor then reaches the linear stage before the GEMV's first
        # results (:meth:`gemv_starts`). Factors go to the linear stage as they come; a
        # norm_only operation takes its factors itself once x_q has left, and starts nothing.
        placement = op.matrices[matrix]
        factor_here = (factors_taken > matrix) | (factors_taken == matrix) & norm.factor_due
        launch = self.busy & ~started & ~op.norm_only & (written == op.norm.words) & factor_here
        start = linear.start.payload
        m.d.comb += [
            linear.start.valid.eq(launch),
            start.base.eq(placement.base),
            start.rows.eq(placement.rows),
            start.words_per_row.eq(op.norm.words),
            start.n.eq(placement.n),
            start.add_residual.eq(placement.add_residual),
            linear.factors.valid.eq(norm.factors.valid & self.busy & ~op.norm_only),
            linear.factors.payload.eq(norm.factors.payload),
            norm.factors.ready.eq(self.busy & Mux(op.norm_only, written == op.norm.words,
                                                  linear.factors.ready)),
        ]
        with m.If(norm.factors.valid & norm.factors.ready):
            m.d.sync += factors_taken.eq(factors_taken + 1)
            with m.If(op.norm_only & (factors_taken + 1 == op.norm.count)):
                m.d.sync += started.eq(1)
        with m.If(linear.start.valid & linear.start.ready):
            with m.If(matrix + 1 == op.norm.count):
                m.d.sync += started.eq(1)
            with m.Else():
                m.d.sync += matrix.eq(matrix + 1)
        # The linear stage is busy from the cycle after its start until its last beat is taken.
        with m.If(self.busy & started & ~linear.busy):
            m.d.sync += self.busy.eq(0)

        # The results leave matrix after matrix: the tag moves on after each one's last beat.
        with m.If(linear.o_stream.valid & linear.o_stream.ready & linear.o_stream.payload.last):
            m.d.sync += current.eq(current + 1)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += current.eq(0)
        m.d.comb += [
            self.o_stream.valid.eq(linear.o_stream.valid),
            self.o_stream.payload.matrix.eq(current),
            self.o_stream.payload.index.eq(linear.o_stream.payload.index),
            self.o_stream.payload.data.eq(linear.o_stream.payload.data),
            linear.o_stream.ready.eq(self.o_stream.ready),
        ]
        return m
