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
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.integer import PROJECTION_BITS

from .dyadic import DYADIC
from .epilogue import Epilogue
from .pim import PimBankGroup

__all__ = ["LinearStage"]


class LinearStage(wiring.Component):
    """One BitLinear per ``start``: its GEMV issued, its ``n`` results rescaled by the start's
    factor, the residual added when ``add_residual``, offered ``lanes`` rows a beat in row
    order; starts run one after another, their GEMVs back to back.

    A start's factor comes on ``factors``, in start order, and may follow its start: the GEMV
    runs meanwhile, and its results wait for the factor (then the bank group, as under
    back-pressure). ``factors`` is taken whenever fewer than :attr:`QUEUE` factors wait, so a
    parent can offer each as soon as it is computed.

    ``start`` is taken once the previous start's GEMV command is with the bank group and fewer
    than :attr:`QUEUE` operations wait (at once when the stage is idle). The stage then offers
    the GEMV ``(base, rows, words_per_row)`` on ``cmd_stream`` (the bank group takes it with
    the previous GEMV's last read), takes the ``rows`` result beats on ``acc_stream`` and
    offers ``ceil(n / lanes)`` beats on ``o_stream`` after the previous start's; the beat with
    ``index`` ``i`` holds rows ``i .. i + lanes - 1``, its lanes at or past ``n`` are 0, and
    ``last`` marks the start's last beat. :attr:`busy` falls the cycle after the last beat of
    every start taken is taken and every result beat has been taken from the bank group. The
    sequencer keeps ``rows >= 1``, ``words_per_row >= 1`` and ``1 <= n <= rows * banks``;
    results past ``n`` are dropped, whole beats of them too.

    Residuals: when ``add_residual``, ``r_stream`` must supply ``ceil(n / lanes)`` beats, beat
    ``j`` holding the residual elements of rows ``j * lanes .. j * lanes + lanes - 1`` (lanes at
    or past ``n`` are ignored); each is taken with the accumulators of its rows, so a parent
    reads its buffer in row order, ahead of the results it writes back. Without
    ``add_residual`` no residual beat is taken.

    Flow: ``acc_stream.ready`` is a flip-flop (the bank group's ready fans out to every bank),
    in front of a two-beat skid buffer that takes a beat a cycle. Back-pressure on
    ``o_stream`` holds the epilogue, then fills the skid buffer, then stalls the bank group,
    whose credits keep every result; none is dropped.

    Cycles, with ``o_stream`` ready, the residuals offered and each factor taken in time (by
    the cycle ``words_per_row + latency`` after its start): a GEMV command taken in cycle
    ``c`` (:meth:`command_cycle`) has its beat for row slot ``j`` leave the group in
    ``c + (j + 1) * words_per_row + latency`` (the group's latency); its first part is
    offered :attr:`LATENCY` cycles after it is taken, and a split beat's further parts one a
    cycle after that. The stage keeps up with the banks when
    ``words_per_row >= banks / lanes`` (always when gathering): :meth:`cycles` is then the
    count from the cycle before the command is taken (the start's, for an idle group) to the
    last beat offered.

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
                                             "n": range(depth * banks + 1),
                                             "add_residual": 1})))
        One BitLinear: its GEMV and its output rows.
    factors : In(stream.Signature(DYADIC))
        Each start's factor ``dyadic_mul(rho, constant)``, in start order.
    cmd_stream : Out(stream.Signature(PimBankGroup.layouts(config)["cmd_stream"]))
        To the bank group's ``cmd_stream``.
    acc_stream : In(stream.Signature(ArrayLayout(signed(acc_bits), banks)))
        From the bank group's ``o_stream``. Taken only while a GEMV's beats are due.
    r_stream : In(stream.Signature(ArrayLayout(signed(out_bits), lanes)))
        Residual elements, in row order.
    o_stream : Out(stream.Signature(StructLayout({"index": range(depth * banks), "last": 1,
                                                 "data": ArrayLayout(signed(out_bits), lanes)})))
        Results: ``index`` is the beat's first row within its start's, ``last`` its last beat.
    busy : Out(1)
        A start has been taken and its last beat has not, or result beats are due.
    """

    LATENCY = 1 + Epilogue.LATENCY      # a result beat taken to its first part offered
    QUEUE = 3                           # started operations waiting to be regrouped

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
                "add_residual": 1}))),
            "factors": In(stream.Signature(DYADIC)),
            "cmd_stream": Out(stream.Signature(PimBankGroup.layouts(config)["cmd_stream"])),
            "acc_stream": In(stream.Signature(PimBankGroup.layouts(config)["o_stream"])),
            "r_stream": In(stream.Signature(results)),
            "o_stream": Out(stream.Signature(data.StructLayout({
                "index": range(rows), "last": 1, "data": results}))),
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
        first. A start whose GEMV waits for the one before it counts from the cycle before its
        command is taken (:meth:`command_cycle`)."""
        banks = self._config.pim.banks
        slots = -(-n // banks)
        parts = -(-(n - (slots - 1) * banks) // self.lanes) if self.lanes < banks else 1
        return (2 + slots * words_per_row + PimBankGroup.latency_for(self._config)
                + self.LATENCY + parts - 1)

    @staticmethod
    def command_cycle(start, previous=None):
        """The cycle the bank group takes a start's GEMV command, the start taken in cycle
        ``start``: the next, or, while the GEMV before it runs (its command taken in cycle
        ``c`` to read ``r`` words, ``previous = (c, r)``), the cycle of that one's last read,
        ``c + r``. Without back-pressure the bank group reads every cycle from its first
        command to its last."""
        if previous is None:
            return start + 1
        taken, reads = previous
        return max(start + 1, taken + reads)

    def elaborate(self, platform):
        m = Module()
        banks, lanes = self._config.pim.banks, self.lanes
        acc_bits = self._config.acc_bits
        m.submodules.epilogue = epilogue = Epilogue(self._config, out_bits=self._out_bits,
                                                    lanes=lanes)
        start = self.start.payload
        n_shape = start.n.shape()
        started = self.start.valid & self.start.ready

        # Operations in flight, oldest first: one queue for the regrouping of result beats,
        # one for the output count, both written with the start, and one for the factors,
        # written as they come. A start is taken once the previous GEMV command is with the
        # bank group, so the group reads one matrix after another without a gap while earlier
        # results drain through the epilogue.
        op_layout = data.StructLayout({"rows": start.rows.shape(), "n": n_shape,
                                       "add_residual": 1})
        m.submodules.ops = ops = fifo.SyncFIFO(width=op_layout.size, depth=self.QUEUE)
        m.submodules.counts = counts = fifo.SyncFIFO(width=n_shape.width, depth=self.QUEUE)
        m.submodules.factor_queue = factor_queue = fifo.SyncFIFO(width=DYADIC.size,
                                                                 depth=self.QUEUE)
        entry = Signal(op_layout)
        m.d.comb += [
            factor_queue.w_en.eq(self.factors.valid),
            factor_queue.w_data.eq(self.factors.payload),
            self.factors.ready.eq(factor_queue.w_rdy),
            *(getattr(entry, name).eq(getattr(start, name))
              for name in ("rows", "n", "add_residual")),
            ops.w_en.eq(started),
            ops.w_data.eq(entry),
            counts.w_en.eq(started),
            counts.w_data.eq(start.n),
        ]

        # The GEMV command: registered from the start, offered until the bank group takes it.
        command = Signal(self.cmd_stream.payload.shape())
        issuing = Signal()
        m.d.comb += [
            self.start.ready.eq(~issuing & ops.w_rdy & counts.w_rdy),
            self.cmd_stream.valid.eq(issuing),
            self.cmd_stream.payload.eq(command),
        ]
        with m.If(self.cmd_stream.ready):
            m.d.sync += issuing.eq(0)
        with m.If(started):
            m.d.sync += [issuing.eq(1), command.base.eq(start.base), command.rows.eq(start.rows),
                         command.words_per_row.eq(start.words_per_row)]

        # Result beats due from the bank group, over every operation in flight (at most
        # QUEUE + 1: the queues' and the one leaving). ``acc_stream.ready`` is two flip-flops'
        # AND (the bank group's ready fans out to every bank).
        due = Signal(range((self.QUEUE + 1) * self._config.pim.depth + 1))
        accepting = Signal()
        held_valid, spare_valid = Signal(), Signal()
        m.d.comb += self.acc_stream.ready.eq(accepting & ~spare_valid)
        arrived = self.acc_stream.valid & self.acc_stream.ready
        due_next = due + Mux(started, start.rows, 0) - arrived
        m.d.sync += [due.eq(due_next), accepting.eq(due_next != 0)]

        # The skid buffer: ``held`` is the beat being regrouped; ``spare`` takes a beat that
        # arrives while ``held`` stays, and the next beat waits in the bank group until it
        # empties.
        held = Signal(self.acc_stream.payload.shape(), reset_less=True)
        spare = Signal.like(held, reset_less=True)
        consume = Signal()              # ``held`` leaves this cycle
        with m.If(consume | ~held_valid):
            m.d.sync += held_valid.eq(spare_valid | arrived)
            with m.If(spare_valid):
                m.d.sync += [held.eq(spare), spare_valid.eq(0)]
            with m.Else():
                m.d.sync += held.eq(self.acc_stream.payload)
        with m.Elif(arrived):
            m.d.sync += [spare.eq(self.acc_stream.payload), spare_valid.eq(1)]

        # The operation whose beats are regrouped: loaded from the queues, with its factor,
        # when the one before has consumed its last beat, in that cycle, so its first beat
        # follows without a gap.
        op = Signal(op_layout)
        factor = Signal(DYADIC)
        active = Signal()
        beats_left = Signal.like(op.rows)
        op_done = consume & (beats_left == 1)
        load = ops.r_rdy & factor_queue.r_rdy & (~active | op_done)
        m.d.comb += [ops.r_en.eq(load), factor_queue.r_en.eq(load)]
        with m.If(consume):
            m.d.sync += beats_left.eq(beats_left - 1)
        with m.If(op_done):
            m.d.sync += active.eq(0)

        # Regrouping into the epilogue's beats. ``remaining``: rows from the offered beat's
        # first to n (0 once past n); its lanes from ``remaining`` on are padding, zeroed.
        remaining = Signal(n_shape)
        offer = Signal()                # a beat of accumulators for the epilogue
        accs = Signal(data.ArrayLayout(signed(acc_bits), lanes))
        offered = offer & (~op.add_residual | self.r_stream.valid)
        taken = offered & epilogue.i_stream.ready
        present = held_valid & active
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
                offer.eq(present & wanted),
                consume.eq(present & ~wanted | taken & (part == parts - 1)),
            ]
            with m.If(present & ~wanted):
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
                offer.eq(present & wanted & closes),
                consume.eq(present & (~wanted | ~closes | taken)),
            ]
            with m.If(present & wanted & ~closes):
                m.d.sync += slot.eq(slot + 1)
                for s in range(groups - 1):
                    with m.If(slot == s):
                        m.d.sync += [gathered[s * banks + b].eq(held[b]) for b in range(banks)]
            with m.If(taken):
                m.d.sync += slot.eq(0)
            with m.If(present & wanted & (~closes | taken)):
                m.d.sync += beat_remaining.eq(Mux(beat_remaining > banks,
                                                  beat_remaining - banks, 0))
        with m.If(load):
            queued = op_layout(ops.r_data)
            m.d.sync += [op.eq(queued), factor.eq(factor_queue.r_data), active.eq(1),
                         beats_left.eq(queued.rows), remaining.eq(queued.n)]
            if lanes > banks:
                m.d.sync += [beat_remaining.eq(queued.n), slot.eq(0)]
            else:
                m.d.sync += part.eq(0)

        # Into the epilogue, with the residuals when they are added.
        m.d.comb += [
            epilogue.i_stream.valid.eq(offered),
            epilogue.i_stream.payload.factor.eq(factor),
            self.r_stream.ready.eq(offer & op.add_residual & epilogue.i_stream.ready),
        ]
        for i in range(lanes):
            inside = remaining > i
            m.d.comb += [
                epilogue.i_stream.payload.acc[i].eq(Mux(inside, accs[i], 0)),
                epilogue.i_stream.payload.residual[i].eq(
                    Mux(inside & op.add_residual, self.r_stream.payload[i], 0)),
            ]

        # Out: each operation's beats in row order, counted to its n (the head of ``counts``,
        # loaded when the operation before has left).
        index = Signal.like(self.o_stream.payload.index)
        out_remaining = Signal(n_shape)
        out_active = Signal()
        moved = self.o_stream.valid & self.o_stream.ready
        last = out_remaining <= lanes
        m.d.comb += [
            self.o_stream.valid.eq(epilogue.o_stream.valid),
            self.o_stream.payload.data.eq(epilogue.o_stream.payload),
            self.o_stream.payload.index.eq(index),
            self.o_stream.payload.last.eq(last),
            epilogue.o_stream.ready.eq(self.o_stream.ready),
        ]
        with m.If(moved):
            m.d.sync += [index.eq(index + lanes), out_remaining.eq(out_remaining - lanes)]
        with m.If(moved & last):
            m.d.sync += out_active.eq(0)
        out_load = counts.r_rdy & (~out_active | moved & last)
        m.d.comb += counts.r_en.eq(out_load)
        with m.If(out_load):
            m.d.sync += [out_active.eq(1), index.eq(0), out_remaining.eq(counts.r_data)]

        # Busy from a start until its last beat has left and every result beat has been taken
        # from the bank group (a row slot past n too).
        in_flight = Signal(range(self.QUEUE + 2))
        finished = moved & last
        m.d.sync += in_flight.eq(in_flight + started - finished)
        with m.If(self.busy & ((in_flight == 0) | (in_flight == 1) & finished) & ~accepting
                  & ~held_valid & ~spare_valid & ~issuing):
            m.d.sync += self.busy.eq(0)
        with m.If(started):
            m.d.sync += self.busy.eq(1)
        return m
