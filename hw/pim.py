"""Processing-in-memory bank group: weights stay in block RAM, GEMV runs next to each bank.

Every bank holds weight words of ``lanes`` trits (trit ``i`` at bits ``[2i, 2i+2)``, exactly
as :func:`golden.trits.pack_words` packs them) in a block RAM with one synchronous read port
and one write port. Its near-bank engine reads one full word per cycle, multiplies it lane-wise
with a ``lanes``-wide activation chunk by ternary select (add, subtract or skip; no
multiplier), sums the lanes in a pipelined adder tree and accumulates ``words_per_row``
consecutive words into one row result.

In all-bank mode (HBM-PIM, AiM) one sequencer drives every bank in lock-step with the same
address, and one activation buffer broadcasts the same chunk to all of them, so a GEMV produces
``banks`` row results per row index.

Pipeline, from the sequencer issuing a read in cycle ``t``. Each stage holds at most two carry
levels (:data:`LEVELS_PER_STAGE`): the products' negation, an adder-tree level, the
accumulator's adder. With ``L = ceil(log2(lanes))`` tree levels, ``S = (1 + L) // 2``.

========  ===============================================================================
t         sequencer decides the read and addresses the activation buffer
t+1       the request and the chunk (out of the buffer) are registered in the group; with
          more than :data:`BANKS_PER_RELAY` banks, relays repeat both a cycle later (``R = 1``,
          else ``R = 0``)
t+1+R     the request addresses the banks (synchronous reads)
t+2+R     word and chunk enter each bank's operand registers
t+3+R ... lane products (add, subtract or skip), then the tree levels, in ``S`` full stages
t+3+R+S   the accumulator's adder, after the tree's last level if that stage has room; a
          finished row goes to the result FIFO
t+4+R+S   the accumulator holds the word's contribution: ``PimBankGroup.latency = 4 + R + S``
          (``PimBank.latency = 3 + S``, counted from the bank's read)
========  ===============================================================================

Timing rules, for 100 MHz on ECP5: a block RAM's clock-to-output time is 5.5-6 ns, so RAM
data gets a cycle with nothing but routing to a register, and so does every signal that fans out
to all banks (through the relays when the banks spread over the die). Two carry levels per stage
(chains of at most ``acc_bits`` bits) fit a cycle, at half the flops of a register per level.
``docs/timing.md`` has the builds that led here.
"""

from amaranth import Cat, Module, Mux, Signal, Value, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.widths import signed_bits_for

from .config import Config
from .queues import registered_r_rdy
from .trit import Trit

__all__ = ["LEVELS_PER_STAGE", "BANKS_PER_RELAY", "AdderTree", "delayed", "PimBank", "Relay",
           "PimBankGroup"]

LEVELS_PER_STAGE = 2


def _check_config(config):
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config, not {config!r}")


class AdderTree(wiring.Component):
    """Pipelined sum of ``count`` signed terms, each in ``[-magnitude, magnitude]``.

    Two-input adders pair neighbouring terms level by level (an odd term passes through). The
    tree is a slice of a longer pipeline in which every stage holds ``levels_per_stage`` carry
    levels: ``levels_before`` of them precede ``i`` in the first stage, and a register follows
    tree level ``j`` whenever ``levels_before + j`` fills a stage. A last stage left part-full
    is not registered; the caller's next level completes it. Every node is exactly as wide as
    the sum of its terms needs, so overflow is impossible.

    Parameters
    ----------
    count : int
        Number of terms, at least 1.
    magnitude : int
        Largest ``|term|``, at least 1.
    levels_per_stage : int
        Carry levels per pipeline stage, at least 1.
    levels_before : int
        Carry levels in front of ``i`` in its stage, in ``[0, levels_per_stage)``.

    Members
    -------
    i : In(ArrayLayout(signed(signed_bits_for(magnitude)), count))
        The terms.
    o : Out(signed(signed_bits_for(count * magnitude)))
        ``sum(i)`` of ``latency`` cycles earlier.
    """

    def __init__(self, *, count, magnitude, levels_per_stage=LEVELS_PER_STAGE, levels_before=0):
        for name, value in (("count", count), ("magnitude", magnitude),
                            ("levels_per_stage", levels_per_stage)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if isinstance(levels_before, bool) or not isinstance(levels_before, int) \
                or not 0 <= levels_before < levels_per_stage:
            raise ValueError(f"levels_before must be an integer in [0, {levels_per_stage - 1}], "
                             f"not {levels_before!r}")
        self._count, self._magnitude = count, magnitude
        self._levels_per_stage, self._levels_before = levels_per_stage, levels_before
        super().__init__({
            "i": In(data.ArrayLayout(signed(signed_bits_for(magnitude)), count)),
            "o": Out(signed(signed_bits_for(count * magnitude))),
        })

    @staticmethod
    def latency_for(count, levels_per_stage=LEVELS_PER_STAGE, levels_before=0):
        """Pipeline registers in a tree of ``count`` terms built with these parameters."""
        return (levels_before + (count - 1).bit_length()) // levels_per_stage

    @property
    def levels(self):
        """Adder levels: ``ceil(log2(count))``."""
        return (self._count - 1).bit_length()

    @property
    def latency(self):
        """Pipeline registers between ``i`` and ``o``."""
        return self.latency_for(self._count, self._levels_per_stage, self._levels_before)

    def elaborate(self, platform):
        m = Module()
        nodes = [(self.i[n], 1) for n in range(self._count)]   # (value, terms summed)
        for level in range(1, self.levels + 1):
            pairs = [nodes[n:n + 2] for n in range(0, len(nodes), 2)]
            nodes = [(pair[0][0] + pair[1][0], pair[0][1] + pair[1][1]) if len(pair) == 2
                     else pair[0] for pair in pairs]
            if (self._levels_before + level) % self._levels_per_stage == 0:
                registered = []
                for n, (value, terms) in enumerate(nodes):
                    stage = Signal(signed(signed_bits_for(terms * self._magnitude)),
                                   name=f"level{level}_{n}", reset_less=True)
                    m.d.sync += stage.eq(value)
                    registered.append((stage, terms))
                nodes = registered
        m.d.comb += self.o.eq(nodes[0][0])
        return m


def delayed(m, value, cycles, name):
    """``value`` through ``cycles`` registers."""
    for n in range(cycles):
        stage = Signal.like(value, name=f"{name}_d{n + 1}")
        m.d.sync += stage.eq(value)
        value = stage
    return value


class PimBank(wiring.Component):
    """One weight bank and its near-bank engine: a ``lanes``-wide ternary dot product per cycle.

    A read accepted in cycle ``t`` dots word ``rd_stream.addr`` with the chunk on ``x`` in cycle
    ``t+1`` (the cycle its word leaves the RAM, and the one in which a synchronous activation
    buffer addressed in cycle ``t`` delivers its chunk). ``first`` starts a new row result;
    ``last`` ends one, which is written into the bank's result FIFO in the cycle it is added
    into the accumulator, ``latency - 1`` cycles after that read, and can be taken from
    ``o_stream`` from the next cycle on. The accumulator is ``acc_bits`` wide: with at most
    ``max_k`` non-zero activations per row (the group guarantees it) a row result cannot
    overflow.

    Each bank keeps its own result FIFO, beside its engine and written by its own strobe: one
    FIFO for the whole group, ``banks * acc_bits`` wide, spread over the die with the banks, and
    its write enable and read select had to reach all of it in a cycle (the ulx3s-85f critical
    path). The FIFO is never written when full: the group's credits keep room for every row in
    flight.

    Parameters
    ----------
    config : Config
        Uses ``pim.lanes``, ``pim.depth``, ``act_bits`` and ``acc_bits``.
    fifo_depth : int
        Entries of the result FIFO (the group sizes it for its credits), at least 1.

    Members
    -------
    w_stream : In(stream.Signature(StructLayout({"addr": range(depth), "data": word_bits}),
                                   always_ready=True))
        Write one weight word. Must not coincide with a read of the same address.
    rd_stream : In(stream.Signature(StructLayout({"addr": range(depth), "first": 1,
                                                 "last": 1}), always_ready=True))
        Read one word into the dot product, one per cycle at most.
    x : In(ArrayLayout(signed(act_bits), lanes))
        The activation chunk for the word read in the previous cycle.
    o_stream : Out(stream.Signature(signed(acc_bits)))
        One row result per read with ``last`` set, in read order, out of the result FIFO.
    macs : Out(range(lanes + 1))
        The multiply-accumulates a read did, a cycle after its contribution entered the
        accumulator: its word's non-zero trits (each an add or a subtract; a zero trit, padding
        included, is a skip). 0 in every other cycle.
    """

    def __init__(self, config, *, fifo_depth):
        _check_config(config)
        if isinstance(fifo_depth, bool) or not isinstance(fifo_depth, int) or fifo_depth < 1:
            raise ValueError(f"fifo_depth must be a positive integer, not {fifo_depth!r}")
        self._config, self._fifo_depth = config, fifo_depth
        depth, lanes = config.pim.depth, config.pim.lanes
        super().__init__({
            "w_stream": In(stream.Signature(data.StructLayout({
                "addr": range(depth), "data": config.word_bits}), always_ready=True)),
            "rd_stream": In(stream.Signature(data.StructLayout({
                "addr": range(depth), "first": 1, "last": 1}), always_ready=True)),
            "x": In(data.ArrayLayout(signed(config.act_bits), lanes)),
            "o_stream": Out(stream.Signature(signed(config.acc_bits))),
            "macs": Out(range(lanes + 1)),
        })

    @property
    def config(self):
        return self._config

    @property
    def fifo_depth(self):
        """Entries of the result FIFO."""
        return self._fifo_depth

    @classmethod
    def latency_for(cls, config):
        """:attr:`latency` of a bank built for ``config``."""
        return 3 + AdderTree.latency_for(config.pim.lanes, levels_before=1)

    @property
    def latency(self):
        """Cycles from a read in cycle ``t`` to its contribution in the accumulator."""
        return self.latency_for(self._config)

    def product(self, lane, trit, x):
        """``trit * x`` by ternary select: add, subtract or skip (``lane`` is for subclasses)."""
        return Mux(trit == Trit.POS, x, Mux(trit == Trit.NEG, -x, 0))

    def elaborate(self, platform):
        m = Module()
        lanes = self._config.pim.lanes

        weights = m.submodules.weights = Memory(
            shape=data.ArrayLayout(Trit, lanes), depth=self._config.pim.depth, init=[])
        write = weights.write_port()
        # The RAM reads every cycle, and only the control pipeline follows ``rd_stream.valid``:
        # a read enable would reach every bit of the read data's register, from a relay that
        # feeds four banks.
        read = weights.read_port()
        m.d.comb += [
            write.en.eq(self.w_stream.valid),
            write.addr.eq(self.w_stream.p.addr),
            write.data.eq(self.w_stream.p.data),
            read.addr.eq(self.rd_stream.p.addr),
        ]

        # Operand registers: the RAMs' clock-to-output time gets a cycle of its own. Data-path
        # registers are reset-less: their contents matter only under a valid control bit.
        word = Signal.like(read.data, reset_less=True)
        chunk = Signal.like(self.x, reset_less=True)
        m.d.sync += [word.eq(read.data), chunk.eq(self.x)]
        # The products' negation is the first carry level of the tree's first stage; lane
        # products are at most 2**(act_bits-1) in magnitude (-128 * -1 for int8).
        tree = m.submodules.tree = AdderTree(count=lanes, levels_before=1,
                                             magnitude=self._config.act_max_magnitude)
        # The word's non-zero trits (bit 0 of a trit's code), counted in a tree of the same
        # stages, so the count is ready with the word's contribution.
        nonzero = m.submodules.nonzero = AdderTree(count=lanes, levels_before=1, magnitude=1)
        for lane in range(lanes):
            m.d.comb += [tree.i[lane].eq(self.product(lane, word[lane], chunk[lane])),
                         nonzero.i[lane].eq(Value.cast(word[lane])[0])]

        control = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1}))
        m.d.comb += control.eq(Cat(self.rd_stream.valid, self.rd_stream.p.first,
                                   self.rd_stream.p.last))
        at_acc = delayed(m, control, 2 + tree.latency, "control")

        # The accumulator's adder completes the tree's last stage, or has one of its own.
        acc = Signal(signed(self._config.acc_bits), reset_less=True)
        total = Signal(signed(self._config.acc_bits))
        m.d.comb += total.eq(Mux(at_acc.first, 0, acc) + tree.o)
        with m.If(at_acc.valid):
            m.d.sync += acc.eq(total)
        m.d.sync += self.macs.eq(Mux(at_acc.valid, nonzero.o, 0))
        results = m.submodules.results = fifo.SyncFIFO(width=self._config.acc_bits,
                                                       depth=self._fifo_depth)
        m.d.comb += [
            results.w_en.eq(at_acc.valid & at_acc.last),
            results.w_data.eq(total),
            self.o_stream.valid.eq(registered_r_rdy(m, results, name="result_waiting")),
            self.o_stream.payload.eq(results.r_data),
            results.r_en.eq(self.o_stream.ready),
        ]
        return m


BANKS_PER_RELAY = 4     # banks fed by one relay of the request, the activation chunk and writes


class Relay(wiring.Component):
    """One register of the bank group's broadcast tree: ``o`` is ``i`` a cycle later.

    The group's request, chunk and weight writes reach the banks through these,
    :data:`BANKS_PER_RELAY` banks each, so no single flip-flop drives a net across the whole die
    (on the ulx3s-85f build that net alone took 11.5 ns). Each relay is a module of its own so
    that synthesis can keep them apart (identical registers would otherwise be merged back
    into one).
    """

    def __init__(self, layout):
        super().__init__({"i": In(layout), "o": Out(layout)})

    @staticmethod
    def stages_for(config):
        """Relay stages between the group and its banks: none for up to
        :data:`BANKS_PER_RELAY` banks (the group's own registers drive them), else one."""
        return int(config.pim.banks > BANKS_PER_RELAY)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.o.eq(self.i)
        return m


class PimBankGroup(wiring.Component):
    """``banks`` PIM banks in all-bank mode plus the activation buffer: one GEMV per command.

    A command reads words ``base .. base + rows * words_per_row - 1`` of every bank in
    lock-step, one word per cycle; word ``i`` of a row is dotted with activation chunk
    ``i % words_per_row``. Row ``r``'s results leave as one beat with bank ``b``'s result in
    element ``b``. The controller keeps ``base + rows * words_per_row <= depth``; a command with
    ``rows == 0`` or ``words_per_row == 0`` is accepted and completes with no beat.

    Activations at index ``k >= max_k`` (lanes of the last chunk past ``max_k``) are stored as
    zero whatever is written, so no row can sum more than ``max_k`` non-zero terms and
    ``acc_bits`` results never overflow.

    Timing: with ``o_stream`` ready, a command accepted in cycle ``c`` issues its
    ``N = rows * words_per_row`` reads in cycles ``c+1 .. c+N`` (the banks read, and
    ``words_read`` pulses, a cycle later) and its last beat leaves in cycle ``c + N + latency``:
    ``N + latency + 1`` cycles, both ends counted. A command waiting behind a running one is
    accepted in the cycle that one issues its last read, so consecutive commands read with no
    bubble. Back-pressure on ``o_stream`` stalls reads at a row end once the banks' result FIFOs
    have no room for every row in flight; no result is lost or repeated.

    Parameters
    ----------
    config : Config
        Uses ``pim.banks``, ``pim.lanes``, ``pim.depth``, ``act_bits``, ``max_k``, ``acc_bits``.
    bank : type, optional
        :class:`PimBank` subclass for every bank (how a new or a faulty engine is tried).

    Members
    -------
    w_stream : In(stream.Signature(StructLayout({"bank": range(banks), "addr": range(depth),
                                                "data": word_bits})))
        Write one weight word. Ready only while not ``busy``.
    x_stream : In(stream.Signature(StructLayout({"addr": range(act_words),
                                                "data": ArrayLayout(signed(act_bits), lanes)})))
        Write one activation chunk (``data[i]`` is ``x[addr * lanes + i]``). Ready only while
        not ``busy``.
    cmd_stream : In(stream.Signature(StructLayout({"base": range(depth), "rows": range(depth+1),
                                                  "words_per_row": range(act_words + 1)})))
        Run one GEMV. Not ready in a cycle that takes a chunk: the chunk lands in the buffer a
        cycle after it is taken, as the GEMV's first read of the buffer would. (A weight word
        taken with a GEMV lands before the GEMV's first bank read.)
    o_stream : Out(stream.Signature(ArrayLayout(signed(acc_bits), banks)))
        One beat per row, in row order.
    busy : Out(1)
        A GEMV is reading, or a result is in the pipeline or waits in the FIFO.
    words_read : Out(ArrayLayout(1, banks))
        Bit ``b`` is high in every cycle bank ``b`` reads a weight word (its own read strobe).
    macs : Out(range(banks * lanes + 1))
        Multiply-accumulates done, summed over the banks' :attr:`PimBank.macs` (non-zero trits;
        zero trits are skips) in a pipelined tree: a read's count arrives ``1 + ceil(log2(banks))
        // 2`` cycles after its row's result can leave the group, before a beat of ``banks``
        words has been serialised.
    """

    def __init__(self, config, *, bank=PimBank):
        _check_config(config)
        if not (isinstance(bank, type) and issubclass(bank, PimBank)):
            raise TypeError(f"bank must be a PimBank subclass, not {bank!r}")
        self._config, self._bank = config, bank
        layouts = self.layouts(config)
        super().__init__({
            "w_stream": In(stream.Signature(layouts["w_stream"])),
            "x_stream": In(stream.Signature(layouts["x_stream"])),
            "cmd_stream": In(stream.Signature(layouts["cmd_stream"])),
            "o_stream": Out(stream.Signature(layouts["o_stream"])),
            "busy": Out(1),
            "words_read": Out(data.ArrayLayout(1, config.pim.banks)),
            "macs": Out(range(config.pim.banks * config.pim.lanes + 1)),
        })

    @staticmethod
    def layouts(config):
        """Payload layout of each stream, by member name (for drivers and testbenches)."""
        _check_config(config)
        pim, act_words = config.pim, config.act_words
        return {
            "w_stream": data.StructLayout({
                "bank": range(pim.banks), "addr": range(pim.depth), "data": config.word_bits}),
            "x_stream": data.StructLayout({
                "addr": range(act_words),
                "data": data.ArrayLayout(signed(config.act_bits), pim.lanes)}),
            "cmd_stream": data.StructLayout({
                "base": range(pim.depth), "rows": range(pim.depth + 1),
                "words_per_row": range(act_words + 1)}),
            "o_stream": data.ArrayLayout(signed(config.acc_bits), pim.banks),
        }

    @property
    def config(self):
        return self._config

    @property
    def act_words(self):
        """Activation-buffer chunks (``Config.act_words``)."""
        return self._config.act_words

    @staticmethod
    def latency_for(config, bank=PimBank):
        """:attr:`latency` of a group built for ``config`` with ``bank`` engines."""
        return 1 + Relay.stages_for(config) + bank.latency_for(config)

    @property
    def latency(self):
        """Cycles from the sequencer issuing a read to its contribution in the accumulator: one
        to register the request, one in a :class:`Relay` if there are relays, then the bank's
        :attr:`PimBank.latency`."""
        return self.latency_for(self._config, self._bank)

    @staticmethod
    def fifo_depth_for(config, bank=PimBank):
        """:attr:`fifo_depth` of a group built for ``config`` with ``bank`` engines."""
        return PimBankGroup.latency_for(config, bank) + 2

    @property
    def fifo_depth(self):
        """Entries of each bank's result FIFO: every row in flight (at most ``latency - 1``),
        one being read, one being written, and one for the credit being a cycle old."""
        return self.fifo_depth_for(self._config, self._bank)

    def elaborate(self, platform):
        m = Module()
        pim = self._config.pim
        act_words = self.act_words

        banks = [self._bank(self._config, fifo_depth=self.fifo_depth) for _ in range(pim.banks)]
        for b, bank in enumerate(banks):
            m.submodules[f"bank{b}"] = bank

        chunks = m.submodules.chunks = Memory(
            shape=data.ArrayLayout(signed(self._config.act_bits), pim.lanes),
            depth=act_words, init=[])
        chunk_write = chunks.write_port()
        chunk_read = chunks.read_port()

        # Writes: only while idle, so nothing changes under a running GEMV. Each write is
        # registered before it reaches the memories, which are spread over the die, and goes
        # through the relays with the reads (below); it lands ``1 + R`` cycles after it is
        # taken, before any GEMV command could read it. The data is registered only when taken:
        # registered every cycle, it would be the same flip-flop as every other copy of the
        # producer's word (Yosys merges them), one net from the bank RAMs to the array.
        weight_write = Signal(self.w_stream.payload.shape())
        weight_write_en = Signal()
        act_write = Signal(self.x_stream.payload.shape())
        act_write_en = Signal()
        m.d.comb += [
            self.w_stream.ready.eq(~self.busy),
            self.x_stream.ready.eq(~self.busy),
        ]
        weight_taken = self.w_stream.valid & self.w_stream.ready
        act_taken = self.x_stream.valid & self.x_stream.ready
        m.d.sync += [weight_write_en.eq(weight_taken), act_write_en.eq(act_taken)]
        with m.If(weight_taken):
            m.d.sync += weight_write.eq(self.w_stream.p)
        with m.If(act_taken):
            m.d.sync += act_write.eq(self.x_stream.p)
        m.d.comb += [
            chunk_write.en.eq(act_write_en),
            chunk_write.addr.eq(act_write.addr),
            chunk_write.data.eq(act_write.data),
        ]
        valid_lanes = self._config.max_k - (act_words - 1) * pim.lanes
        for lane in range(valid_lanes, pim.lanes):
            with m.If(act_write.addr == act_words - 1):
                m.d.comb += chunk_write.data[lane].eq(0)

        # Sequencer. In cycle d it decides to read word `addr`, to be dotted with chunk `chunk`
        # of the current row, and reads that chunk from the buffer. The decision reaches the
        # banks through a register (`request`, so the banks read in d+1) and the chunk through
        # another (`broadcast`, in d+2 as the banks' words leave their RAMs): every wire that
        # crosses the chip to the banks starts at a flip-flop. The decision itself depends on
        # flags computed a cycle ahead, so it is one gate deep.
        running = Signal()
        addr = Signal(range(pim.depth))
        chunk = Signal(range(act_words))
        last_chunk = Signal(range(act_words))
        rows_left = Signal(range(pim.depth + 1))
        row_end = Signal()                  # word `addr` is its row's last
        last_row = Signal()                 # the current row is the command's last
        rows_owed = Signal(range(self.fifo_depth + 1))     # issued, and not yet taken out
        # Credit, one cycle old: a row's last word is read only if the FIFOs have room for
        # every row in flight, even if one more was issued in the cycle the credit was computed.
        room = Signal()
        m.d.sync += room.eq(rows_owed < self.fifo_depth - 1)

        issue = Signal()
        gemv_end = row_end & last_row
        m.d.comb += [
            issue.eq(running & (~row_end | room)),
            self.cmd_stream.ready.eq((~running | (issue & gemv_end)) & ~act_taken),
            chunk_read.addr.eq(chunk),          # always enabled: no fan-in to its clock enable
        ]
        request = Signal(data.StructLayout({
            "valid": 1, "addr": range(pim.depth), "first": 1, "last": 1}))
        broadcast = Signal.like(chunk_read.data, reset_less=True)
        m.d.sync += [
            request.eq(Cat(issue, addr, chunk == 0, row_end)),
            broadcast.eq(chunk_read.data),
        ]
        # Weight writes ride the relays too, so that no register drives every bank's write
        # data. A write then lands a relay stage later, as the reads that could follow it do.
        operands = Signal(data.StructLayout({"request": request.shape(),
                                             "x": broadcast.shape(),
                                             "write_en": 1,
                                             "write": weight_write.shape()}))
        m.d.comb += [operands.request.eq(request), operands.x.eq(broadcast),
                     operands.write_en.eq(weight_write_en), operands.write.eq(weight_write)]
        for n, first_bank in enumerate(range(0, pim.banks, BANKS_PER_RELAY)):
            relayed = operands
            if Relay.stages_for(self._config):
                relay = m.submodules[f"relay{n}"] = Relay(operands.shape())
                m.d.comb += relay.i.eq(operands)
                relayed = relay.o
            for b, bank in enumerate(banks[first_bank:first_bank + BANKS_PER_RELAY],
                                     start=first_bank):
                m.d.comb += [
                    bank.w_stream.valid.eq(relayed.write_en & (relayed.write.bank == b)),
                    bank.w_stream.p.addr.eq(relayed.write.addr),
                    bank.w_stream.p.data.eq(relayed.write.data),
                    bank.rd_stream.valid.eq(relayed.request.valid),
                    bank.rd_stream.p.addr.eq(relayed.request.addr),
                    bank.rd_stream.p.first.eq(relayed.request.first),
                    bank.rd_stream.p.last.eq(relayed.request.last),
                    bank.x.eq(relayed.x),
                ]

        with m.If(issue):
            m.d.sync += addr.eq(addr + 1)
            with m.If(row_end):
                m.d.sync += [
                    chunk.eq(0),
                    row_end.eq(last_chunk == 0),
                    rows_left.eq(rows_left - 1),
                    last_row.eq(rows_left == 2),
                ]
                with m.If(last_row):
                    m.d.sync += running.eq(0)
            with m.Else():
                m.d.sync += [chunk.eq(chunk + 1), row_end.eq(chunk + 1 == last_chunk)]
        # Whenever a command could be taken, the sequencer loads its fields; only ``running``
        # waits for ``valid``. The controller's verdict then reaches one flip-flop, not the
        # enables and resets of them all.
        cmd = self.cmd_stream.p
        with m.If(self.cmd_stream.ready):
            m.d.sync += [
                addr.eq(cmd.base),
                chunk.eq(0),
                last_chunk.eq(cmd.words_per_row - 1),
                row_end.eq(cmd.words_per_row == 1),
                rows_left.eq(cmd.rows),
                last_row.eq(cmd.rows == 1),
                running.eq(self.cmd_stream.valid & (cmd.rows != 0) & (cmd.words_per_row != 0)),
            ]

        # Every bank runs the same schedule, so bank 0's FIFO stands for all of them.
        taken = self.o_stream.valid & self.o_stream.ready
        m.d.sync += rows_owed.eq(rows_owed + (issue & row_end) - taken)
        for bank in banks:
            m.d.comb += bank.o_stream.ready.eq(self.o_stream.ready)
        macs = m.submodules.macs = AdderTree(count=pim.banks, magnitude=pim.lanes)
        m.d.comb += [
            self.o_stream.valid.eq(banks[0].o_stream.valid),
            self.o_stream.payload.eq(Cat(bank.o_stream.payload for bank in banks)),
            self.busy.eq(running | (rows_owed != 0)),
            self.words_read.eq(Cat(bank.rd_stream.valid for bank in banks)),
            *[macs.i[b].eq(bank.macs) for b, bank in enumerate(banks)],
            self.macs.eq(macs.o),
        ]
        return m
