"""The resident decoder's linear stage: one BitLinear's GEMV on the bank group, its results
rescaled, and the residual added or not (``golden.integer.rescale``, then ``IntegerModel``'s
``h + out`` after o_proj and down, bit for bit).

The stage does not own the bank group (the device keeps it for the offload commands): a parent
connects :attr:`LinearStage.cmd_stream` to the group's ``cmd_stream`` and the group's
``o_stream`` to :attr:`LinearStage.acc_stream`. Matrix row ``r`` is bank ``r % banks``'s result
in row slot ``r // banks`` (``hw.placement``'s placement), so a result beat of ``banks``
elements is ``banks`` consecutive output rows. The stage regroups them into beats of the
epilogue's ``lanes`` elements (splitting a beat into ``banks / lanes`` parts, or gathering
``lanes / banks`` beats into one), drops the rows past the matrix's ``n`` (padding), joins the
residual beats and rescales in an :class:`hw.epilogue.Epilogue`.
"""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.integer import PROJECTION_BITS

from .dyadic import DYADIC
from .epilogue import Epilogue
from .pim import PimBankGroup

__all__ = ["LinearStage"]


class LinearStage(wiring.Component):
    """One BitLinear per ``start``: its GEMV issued, its ``n`` results rescaled by the start's
    factor, the residual added when ``add_residual``, offered ``lanes`` rows a beat in row
    order.

    ``start`` is taken while the stage is idle (not :attr:`busy`). The stage then offers the
    GEMV ``(base, rows, words_per_row)`` on ``cmd_stream``, takes the ``rows`` result beats on
    ``acc_stream`` and offers ``ceil(n / lanes)`` beats on ``o_stream``; the beat with
    ``index`` ``i`` holds rows ``i .. i + lanes - 1``, and its lanes at or past ``n`` are 0.
    The stage is idle again the cycle after its last beat is taken and every result beat has
    been taken from the bank group. The sequencer keeps ``rows >= 1``, ``words_per_row >= 1``
    and ``1 <= n <= rows * banks``; results past ``n`` are dropped, whole beats of them too.

    Residuals: when ``add_residual``, ``r_stream`` must supply ``ceil(n / lanes)`` beats, beat
    ``j`` holding the residual elements of rows ``j * lanes .. j * lanes + lanes - 1`` (lanes at
    or past ``n`` are ignored); each is taken with the accumulators of its rows, so a parent
    reads its buffer in row order, ahead of the results it writes back. Without
    ``add_residual`` no residual beat is taken.

    Flow: ``acc_stream.ready`` is a flip-flop (the bank group's ready fans out to every bank),
    in front of a two-beat skid buffer that takes a beat a cycle. Back-pressure on
    ``o_stream`` holds the epilogue, then fills the skid buffer, then stalls the bank group,
    whose credits keep every result; none is dropped.

    Cycles, with ``o_stream`` ready and the residuals offered: a start taken in cycle ``s``
    offers its GEMV in ``s + 1`` (taken then by an idle bank group), whose beat for row slot
    ``j`` leaves the group in ``s + 1 + (j + 1) * words_per_row + latency`` (the group's
    latency); its first part is offered :attr:`LATENCY` cycles after it is taken, and a split
    beat's further parts one a cycle after that. The stage keeps up with the banks when
    ``words_per_row >= banks / lanes`` (always when gathering): :meth:`cycles` is then the
    count from the start taken to the last beat offered.

    Parameters
    ----------
    config : hw.config.Config
        The bank group's device: ``pim.banks``, ``pim.depth``, ``act_words`` and ``acc_bits``.
    out_bits : int
        The results' width: 16 for q, k, v, gate and up (golden's ``projection``), 32 for the
        residual stream after o_proj and down; in ``[2, 32]``.
    lanes : int
        Elements a beat, a divisor or a multiple of ``banks``, at most 64. The default, 4, is
        ``banks / words_per_row`` of the shipped model on ulx3s-85f (16 banks, K = 128 in words
        of 32 trits): the rate at which its GEMVs deliver results.

    Members
    -------
    start : In(stream.Signature(StructLayout({"base": range(depth), "rows": range(depth + 1),
                                             "words_per_row": range(act_words + 1),
                                             "n": range(depth * banks + 1), "factor": DYADIC,
                                             "add_residual": 1})))
        One BitLinear: its GEMV, its output rows, its factor ``dyadic_mul(rho, constant)``.
    cmd_stream : Out(stream.Signature(PimBankGroup.layouts(config)["cmd_stream"]))
        To the bank group's ``cmd_stream``.
    acc_stream : In(stream.Signature(ArrayLayout(signed(acc_bits), banks)))
        From the bank group's ``o_stream``. Taken only while a GEMV's beats are due.
    r_stream : In(stream.Signature(ArrayLayout(signed(out_bits), lanes)))
        Residual elements, in row order.
    o_stream : Out(stream.Signature(StructLayout({"index": range(depth * banks),
                                                 "data": ArrayLayout(signed(out_bits), lanes)})))
        Results: ``index`` is the beat's first row.
    busy : Out(1)
        A start has been taken and its last beat has not.
    """

    LATENCY = 1 + Epilogue.LATENCY      # a result beat taken to its first part offered

    def __init__(self, config, *, out_bits=PROJECTION_BITS, lanes=4):
        banks = config.pim.banks
        if isinstance(out_bits, bool) or not isinstance(out_bits, int) \
                or not 2 <= out_bits <= 32:
            raise ValueError(f"out_bits must be an integer in [2, 32], not {out_bits!r}")
        if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= 64 \
                or (banks % lanes and lanes % banks):
            raise ValueError(f"lanes must be a divisor or a multiple of banks ({banks}) in "
                             f"[1, 64], not {lanes!r}")
        self._config, self._out_bits, self.lanes = config, out_bits, lanes
        depth, rows = config.pim.depth, config.pim.depth * banks
        results = data.ArrayLayout(signed(out_bits), lanes)
        super().__init__({
            "start": In(stream.Signature(data.StructLayout({
                "base": range(depth), "rows": range(depth + 1),
                "words_per_row": range(config.act_words + 1), "n": range(rows + 1),
                "factor": DYADIC, "add_residual": 1}))),
            "cmd_stream": Out(stream.Signature(PimBankGroup.layouts(config)["cmd_stream"])),
            "acc_stream": In(stream.Signature(PimBankGroup.layouts(config)["o_stream"])),
            "r_stream": In(stream.Signature(results)),
            "o_stream": Out(stream.Signature(data.StructLayout({
                "index": range(rows), "data": results}))),
            "busy": Out(1),
        })

    @property
    def config(self):
        return self._config

    def cycles(self, *, words_per_row, n):
        """Cycles from a start taken to its last beat offered, both counted, with ``o_stream``
        ready, the residuals offered, an idle bank group and ``words_per_row >= banks / lanes``:
        the GEMV's reads up to the last row slot within ``n``, the group's latency, the
        command's register, :attr:`LATENCY`, and a split beat's parts within ``n`` after its
        first."""
        banks = self._config.pim.banks
        slots = -(-n // banks)
        parts = -(-(n - (slots - 1) * banks) // self.lanes) if self.lanes < banks else 1
        return (2 + slots * words_per_row + PimBankGroup.latency_for(self._config)
                + self.LATENCY + parts - 1)

    def elaborate(self, platform):
        m = Module()
        banks, lanes = self._config.pim.banks, self.lanes
        acc_bits = self._config.acc_bits
        m.submodules.epilogue = epilogue = Epilogue(self._config, out_bits=self._out_bits,
                                                    lanes=lanes)
        n_shape = self.start.payload.n.shape()

        # The operation: registered from the start, fixed until the stage is idle.
        op = Signal(self.start.payload.shape())
        issuing = Signal()              # the GEMV waits on cmd_stream
        accepting = Signal()            # result beats are due from the bank group
        rows_left = Signal.like(self.start.payload.rows)
        outputs_done = Signal()
        m.d.comb += [
            self.start.ready.eq(~self.busy),
            self.cmd_stream.valid.eq(issuing),
            self.cmd_stream.payload.base.eq(op.base),
            self.cmd_stream.payload.rows.eq(op.rows),
            self.cmd_stream.payload.words_per_row.eq(op.words_per_row),
        ]
        with m.If(self.cmd_stream.ready):
            m.d.sync += issuing.eq(0)

        # The skid buffer: ``held`` is the beat being regrouped; ``spare`` takes a beat that
        # arrives while ``held`` stays, and the next beat waits in the bank group until it
        # empties. ``acc_stream.ready`` is then two flip-flops' AND.
        held = Signal(self.acc_stream.payload.shape(), reset_less=True)
        spare = Signal.like(held, reset_less=True)
        held_valid, spare_valid = Signal(), Signal()
        consume = Signal()              # ``held`` leaves this cycle
        m.d.comb += self.acc_stream.ready.eq(accepting & ~spare_valid)
        arrived = self.acc_stream.valid & self.acc_stream.ready
        with m.If(arrived):
            m.d.sync += [rows_left.eq(rows_left - 1), accepting.eq(rows_left != 1)]
        with m.If(consume | ~held_valid):
            m.d.sync += held_valid.eq(spare_valid | arrived)
            with m.If(spare_valid):
                m.d.sync += [held.eq(spare), spare_valid.eq(0)]
            with m.Else():
                m.d.sync += held.eq(self.acc_stream.payload)
        with m.Elif(arrived):
            m.d.sync += [spare.eq(self.acc_stream.payload), spare_valid.eq(1)]

        # Regrouping into the epilogue's beats. ``remaining``: rows from the offered beat's
        # first to n (0 once past n); its lanes from ``remaining`` on are padding, zeroed.
        remaining = Signal(n_shape)
        offer = Signal()                # a beat of accumulators for the epilogue
        accs = Signal(data.ArrayLayout(signed(acc_bits), lanes))
        offered = offer & (~op.add_residual | self.r_stream.valid)
        taken = offered & epilogue.i_stream.ready
        with m.If(taken):
            m.d.sync += remaining.eq(Mux(remaining > lanes, remaining - lanes, 0))
        if lanes <= banks:
            # Split: part ``part`` of ``held`` is rows ``part * lanes ..`` of the beat; a beat
            # past n leaves unoffered.
            parts = banks // lanes
            part = Signal(range(parts))
            wanted = remaining != 0
            with m.Switch(part):
                for p in range(parts):
                    with m.Case(p):
                        m.d.comb += accs.eq(Cat(held[p * lanes + i] for i in range(lanes)))
            m.d.comb += [
                offer.eq(held_valid & wanted),
                consume.eq(held_valid & ~wanted | taken & (part == parts - 1)),
            ]
            with m.If(held_valid & ~wanted):
                m.d.sync += part.eq(0)
            with m.Elif(taken):
                m.d.sync += part.eq(Mux(part == parts - 1, 0, part + 1))
        else:
            # Gather: beats before a group's last wait in ``gathered`` at their slot; the last
            # (slot ``groups - 1``, or the last beat within n) is offered with them from
            # ``held``. ``beat_remaining`` counts rows from ``held``'s first to n.
            groups = lanes // banks
            slot = Signal(range(groups))
            gathered = Signal(data.ArrayLayout(signed(acc_bits), lanes - banks),
                              reset_less=True)
            beat_remaining = Signal(n_shape)
            wanted = beat_remaining != 0
            closes = (slot == groups - 1) | (beat_remaining <= banks)
            for s in range(groups):
                for b in range(banks):
                    lane = s * banks + b
                    m.d.comb += accs[lane].eq(held[b] if s == groups - 1 else
                                              Mux(slot == s, held[b], gathered[lane]))
            m.d.comb += [
                offer.eq(held_valid & wanted & closes),
                consume.eq(held_valid & (~wanted | ~closes | taken)),
            ]
            with m.If(held_valid & wanted & ~closes):
                m.d.sync += slot.eq(slot + 1)
                for s in range(groups - 1):
                    with m.If(slot == s):
                        m.d.sync += [gathered[s * banks + b].eq(held[b]) for b in range(banks)]
            with m.If(taken):
                m.d.sync += slot.eq(0)
            with m.If(held_valid & wanted & (~closes | taken)):
                m.d.sync += beat_remaining.eq(Mux(beat_remaining > banks,
                                                  beat_remaining - banks, 0))

        # Into the epilogue, with the residuals when they are added.
        m.d.comb += [
            epilogue.i_stream.valid.eq(offered),
            epilogue.i_stream.payload.factor.eq(op.factor),
            self.r_stream.ready.eq(offer & op.add_residual & epilogue.i_stream.ready),
        ]
        for i in range(lanes):
            inside = remaining > i
            m.d.comb += [
                epilogue.i_stream.payload.acc[i].eq(Mux(inside, accs[i], 0)),
                epilogue.i_stream.payload.residual[i].eq(
                    Mux(inside & op.add_residual, self.r_stream.payload[i], 0)),
            ]

        # Out: the beats in row order, counted to n.
        index = Signal.like(self.o_stream.payload.index)
        out_remaining = Signal(n_shape)
        m.d.comb += [
            self.o_stream.valid.eq(epilogue.o_stream.valid),
            self.o_stream.payload.data.eq(epilogue.o_stream.payload),
            self.o_stream.payload.index.eq(index),
            epilogue.o_stream.ready.eq(self.o_stream.ready),
        ]
        last_taken = self.o_stream.valid & self.o_stream.ready & (out_remaining <= lanes)
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += [index.eq(index + lanes), out_remaining.eq(out_remaining - lanes)]
        with m.If(last_taken):
            m.d.sync += outputs_done.eq(1)

        with m.If(self.busy & (outputs_done | last_taken) & ~accepting & ~held_valid
                  & ~spare_valid):
            m.d.sync += self.busy.eq(0)
        with m.If(self.start.valid & self.start.ready):
            start = self.start.payload
            m.d.sync += [
                op.eq(start), self.busy.eq(1), issuing.eq(1), accepting.eq(1),
                rows_left.eq(start.rows), outputs_done.eq(0), remaining.eq(start.n),
                index.eq(0), out_remaining.eq(start.n),
            ]
            if lanes > banks:
                m.d.sync += [beat_remaining.eq(start.n), slot.eq(0)]
            else:
                m.d.sync += part.eq(0)
        return m
