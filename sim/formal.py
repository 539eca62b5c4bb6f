"""Formal proofs: property harnesses around the real components, and the table that runs them.

A harness is a component with no ports. It builds one unit (in a small configuration, so that a
proof takes seconds), drives every input of it from free values (``AnySeq``: anything, every
cycle), and states the unit's contract as ``Assert``s; its ``Assume``s restate only what the
unit's documentation asks of its inputs. Its ``Cover``s name the states the asserts are about
(the largest sum, a full FIFO, a chunk offered with a GEMV, every error code): the cover task
must reach each of them, so a harness that constrains its unit into doing nothing fails. Where a
contract is about a unit's parts (the banks' read ports inside the bank group, the units inside
the device), the harness builds the unit as a subclass that hands it the elaborated module, and
names the parts it watches there.

:data:`PROOFS` lists the proofs: a harness, the mode (``prove``: k-induction, a proof for every
cycle; ``bmc``: every trace of ``depth`` cycles from reset) and whether ``make test`` runs it.
:data:`MUTANTS` lists faulty units, each with the proof that must reject it: every proof is shown
to be able to fail. :func:`run_proof` runs either through :func:`sw_driver.flow.run_sby`.
"""

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
from amaranth import Array, Cat, Const, Module, Mux, ResetSignal, Shape, Signal, Value, signed
from amaranth.asserts import AnySeq
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cover
from amaranth.lib import data, enum, wiring

from golden.widths import signed_bits_for
from hw.array import SystolicArray
from hw.commands import HEADER, RESIDENT_ERRORS, WORD_BITS, CommandFormat, ErrorCode, Opcode
from hw.config import ArrayConfig, Config, PimConfig
from hw.device import Device
from hw.pe import Int8PE, ProcessingElement, TernaryPE
from hw.pim import LEVELS_PER_STAGE, AdderTree, PimBankGroup
from hw.trit import Trit
from sw_driver import flow

__all__ = ["PEContract", "AdderTreeContract", "ArrayCredits", "BankGroupContract",
           "CommandContract", "SignFlipPE", "NarrowAdderTree", "EagerArray", "UngatedBankGroup",
           "BusyWriteBankGroup", "LaxDevice", "Proof", "PROOFS", "Mutant", "MUTANTS",
           "run_proof"]


def _check_class(name, value, base):
    if not (isinstance(value, type) and issubclass(value, base)):
        raise TypeError(f"{name} must be a {base.__name__} subclass, not {value!r}")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer of at least {low}, not {value!r}")


def _check_config(config):
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config, not {config!r}")


def _harness_module():
    """A harness's module: its ``sync`` domain is the top's, and is not reset after the start
    (the initial state is the reset state)."""
    m = Module()
    m.d.comb += Assume(~ResetSignal())
    return m


def _past(m, value, cycles=1):
    """``value`` of ``cycles`` cycles ago (its initial value before then)."""
    for _ in range(cycles):
        delayed = Signal.like(value)
        m.d.sync += delayed.eq(value)
        value = delayed
    return value


def _after(m, cycles):
    """A flag that rises ``cycles`` cycles after the start and stays high."""
    if cycles == 0:
        return Const(1)
    count = Signal(range(cycles + 1))
    with m.If(count != cycles):
        m.d.sync += count.eq(count + 1)
    return count == cycles


def _watching(unit, watch):
    """A subclass of ``unit`` that hands its module to ``watch`` once elaborated: how a harness
    sees the parts a unit builds inside (its named submodules) and states properties of them."""
    class Watched(unit):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            watch(m)
            return m

    Watched.__name__ = Watched.__qualname__ = f"Watched{unit.__name__}"
    return Watched


def _value_table(values):
    """The integers ``values`` as a table of constants, indexed by a code."""
    bits = signed_bits_for(max(abs(int(v)) for v in values) or 1)
    return Array(Const(int(v), signed(bits)) for v in values)


class PEContract(wiring.Component):
    """Properties of one processing element, built as the array builds its row ``row``.

    Every cycle after the first: ``psum_out`` is ``psum_in + w * x_in`` of the cycle before, at
    full width (so the derived ``psum_out`` width cannot overflow), where ``w`` is the value that
    the kind's codec (:meth:`~hw.pe.ProcessingElement.decode_weights`) gives the held code; a code
    that is no weight counts as it decodes (ternary ``0b10``: zero). ``x_out`` is ``x_in`` of the
    cycle before. The held code is ``w_in`` of the cycle before if ``w_load`` was high, else what
    it was. Inputs are free; ``psum_in`` is within the ``row`` products it sums.

    Covers: the largest sum (``row + 1`` times the kind's ``max_product``: the most negative
    activation times the most negative weight); each code that is no weight times a non-zero
    activation; a weight held while another waits on ``w_in``.

    Parameters
    ----------
    pe : type
        :class:`~hw.pe.ProcessingElement` subclass.
    act_bits : int
        Activation width.
    row : int
        The PE's row: ``psum_in`` sums ``row`` products (none in row 0).
    """

    def __init__(self, *, pe=TernaryPE, act_bits=8, row=1):
        _check_class("pe", pe, ProcessingElement)
        _check_int("act_bits", act_bits, 2)
        _check_int("row", row, 0)
        self._pe, self._act_bits, self._row = pe, act_bits, row
        super().__init__({})

    def elaborate(self, platform):
        m = _harness_module()
        kind, act_bits, row = self._pe, self._act_bits, self._row
        largest = kind.max_product(act_bits)
        # The widths SystolicArray.psum_bits_after derives for its row ``row``.
        psum_in_bits = signed_bits_for(row * largest) if row else 0
        pe = m.submodules.pe = kind(act_bits=act_bits, psum_in_bits=psum_in_bits,
                                    psum_out_bits=signed_bits_for((row + 1) * largest))
        psum_in = 0
        if row:
            psum_in = AnySeq(signed(psum_in_bits))
            m.d.comb += [pe.psum_in.eq(psum_in),
                         Assume((psum_in >= -row * largest) & (psum_in <= row * largest))]
        code, w_in = Value.cast(pe.w).as_unsigned(), Value.cast(pe.w_in).as_unsigned()
        m.d.comb += [pe.x_in.eq(AnySeq(signed(act_bits))), pe.w_load.eq(AnySeq(1)),
                     pe.w_in.eq(AnySeq(kind.weight_bits()))]

        codes = np.arange(1 << kind.weight_bits())
        values = kind.decode_weights(codes)
        total = _past(m, psum_in + _value_table(values)[code] * pe.x_in)
        x_in = _past(m, pe.x_in)
        next_code = _past(m, Mux(pe.w_load, w_in, code))
        started = _after(m, 1)
        with m.If(started):
            m.d.comb += [
                Assert(pe.psum_out == total, "psum_out = psum_in + w * x_in"),
                Assert(pe.x_out == x_in, "x_out = x_in"),
                Assert(code == next_code, "the weight changes only with w_load"),
            ]
        m.d.comb += Cover(started & (pe.psum_out == (row + 1) * largest))
        zero_code = int(kind.encode_weights(np.zeros(1, np.int64))[0])
        for c in codes[(values == 0) & (codes != zero_code)]:
            m.d.comb += Cover(started & _past(m, (code == int(c)) & (pe.x_in != 0)))
        m.d.comb += Cover(started & _past(m, ~pe.w_load & (w_in != code)))
        return m


class AdderTreeContract(wiring.Component):
    """Properties of an :class:`~hw.pim.AdderTree`.

    From cycle ``latency`` on, ``o`` is the sum of the terms of ``latency`` cycles before, at
    full width (so the tree's derived widths cannot overflow). The terms are free within
    ``[-magnitude, magnitude]``. Covers: both extreme sums, ``±count * magnitude``.

    Parameters
    ----------
    count, magnitude, levels_per_stage, levels_before : int
        As for :class:`~hw.pim.AdderTree`.
    tree : type
        :class:`~hw.pim.AdderTree` subclass.
    """

    def __init__(self, *, count, magnitude=128, levels_per_stage=LEVELS_PER_STAGE,
                 levels_before=0, tree=AdderTree):
        _check_class("tree", tree, AdderTree)
        self._tree = tree(count=count, magnitude=magnitude, levels_per_stage=levels_per_stage,
                          levels_before=levels_before)
        self._count, self._magnitude = count, magnitude
        super().__init__({})

    def elaborate(self, platform):
        m = _harness_module()
        tree = m.submodules.tree = self._tree
        count, magnitude = self._count, self._magnitude
        terms = [AnySeq(signed(signed_bits_for(magnitude))) for _ in range(count)]
        for n, term in enumerate(terms):
            m.d.comb += [tree.i[n].eq(term), Assume((term >= -magnitude) & (term <= magnitude))]
        total = _past(m, sum(terms), tree.latency)
        filled = _after(m, tree.latency)
        with m.If(filled):
            m.d.comb += Assert(tree.o == total, "o = the sum of the terms latency cycles before")
        for extreme in (count * magnitude, -count * magnitude):
            m.d.comb += Cover(filled & (tree.o == extreme))
        return m


def _count_ones(bits):
    """The number of bits set in ``bits``, as a value."""
    return sum(bits[n] for n in range(len(bits)))


class ArrayCredits(wiring.Component):
    """Properties of a :class:`~hw.array.SystolicArray`'s flow control, seen at its ports.

    The harness keeps its own account of the array's contract, written from its documentation:
    a token taken in cycle ``t`` has its result written into the result FIFO in ``t + latency``;
    a beat of weights lands a cycle after it is taken, and tokens are taken only once the last
    ``rows`` beats make a whole tile. Every cycle it asserts:

    - a token is taken only with room: fewer than ``fifo_depth`` tokens taken and not delivered;
    - ``i_stream.ready`` is exactly "a whole tile, no beat landing, and room" (the registered
      ``room`` flag is what it derives from), ``w_stream.ready`` exactly "no token in the grid
      and none taken now" (the registered ``grid_empty``), ``busy`` exactly "a token in the grid,
      a result waiting or a beat landing";
    - ``o_stream.valid`` is exactly "a result is waiting" (taken minus delivered, less those in
      the grid): no result is dropped or repeated;
    - taken minus delivered is at most ``fifo_depth``.

    Inputs (both streams, ``o_stream.ready``) are free, payloads included. Covers: a full FIFO
    with a token refused for room; a token taken in the cycle a result leaves with the FIFO
    nearly full; weights reloaded after tokens.

    Parameters
    ----------
    config : Config
        The array's configuration (a small one: every cycle of the grid is state).
    array : type
        :class:`~hw.array.SystolicArray` subclass.
    """

    def __init__(self, config, *, array=SystolicArray):
        _check_config(config)
        _check_class("array", array, SystolicArray)
        self._array = array(config)
        super().__init__({})

    def elaborate(self, platform):
        m = _harness_module()
        array = m.submodules.array = self._array
        rows, depth = array.config.array.rows, array.fifo_depth
        i, w, o = array.i_stream, array.w_stream, array.o_stream
        for port in (i.valid, i.payload, w.valid, w.payload, o.ready):
            m.d.comb += port.eq(AnySeq(len(Value.cast(port))))

        token = i.valid & i.ready
        beat = w.valid & w.ready
        result = o.valid & o.ready
        grid = Signal(array.latency)                # tokens taken in the last `latency` cycles
        m.d.sync += grid.eq(Cat(token, grid[:-1]))
        in_grid = _count_ones(grid)
        owed = Signal(range(depth + 2))             # tokens taken, results not delivered
        m.d.sync += owed.eq(owed + token - result)
        waiting = owed - in_grid                    # results in the FIFO
        landing = _past(m, beat)
        landed = Signal(range(rows))                # beats landed, modulo rows
        tile = Signal()                             # the last `rows` beats landed make a tile
        with m.If(landing):
            m.d.sync += [landed.eq(Mux(landed == rows - 1, 0, landed + 1)),
                         tile.eq(landed == rows - 1)]

        m.d.comb += [
            Assert(~token | (owed < depth), "a token is taken only with room for its result"),
            Assert(i.ready == (tile & ~landing & (owed < depth)), "i_stream.ready"),
            Assert(w.ready == ((in_grid == 0) & ~token), "w_stream.ready"),
            Assert(array.busy == ((in_grid != 0) | (waiting != 0) | landing), "busy"),
            Assert(o.valid == (waiting != 0), "a result leaves exactly when one waits"),
            Assert(owed <= depth, "results owed fit the FIFO"),
        ]
        m.d.comb += [
            Cover((waiting == depth) & i.valid & ~i.ready & tile & ~landing),
            Cover(token & result & (owed == depth - 1)),
            Cover(beat & _past(m, token, array.latency + 1)),
        ]
        return m


class BankGroupContract(wiring.Component):
    """Properties of a :class:`~hw.pim.PimBankGroup`: the chunk hazard, and the chunks it reads.

    Every cycle, a chunk write and a GEMV are never taken in the same cycle.

    With ``reads``, also, every cycle:

    - every bank read is dotted with the chunk last written before its GEMV was taken: each
      bank's ``x`` in the cycle after its ``n``-th read of a row is the harness's copy of chunk
      ``n`` (so the first read of a GEMV taken right after a chunk sees that chunk; when both
      could be taken together, it saw the old one);
    - the buffer holds what was written (lanes past ``max_k`` as zero), bar a write landing.

    The harness keeps its own copy of the buffer, written as chunks are taken, and watches the
    banks' read ports and the buffer inside the group (by their names there: ``bank<n>``,
    ``chunks``). This part holds to a bound only: where the sequencer is within a row is state
    the harness does not see, and it can wait there for as long as the results are not taken.

    Inputs are free; commands stay within the banks (``base + rows * words_per_row <= depth``,
    as the controller checks). Covers: a chunk offered with a GEMV; with ``reads``, the first
    read of a GEMV taken the cycle after a chunk.

    Parameters
    ----------
    config : Config
        The group's configuration (a small one: every word of the buffer is state).
    group : type
        :class:`~hw.pim.PimBankGroup` subclass.
    reads : bool
        Also check the chunks the banks read.
    """

    def __init__(self, config, *, group=PimBankGroup, reads=False):
        _check_config(config)
        _check_class("group", group, PimBankGroup)
        self._config, self._group, self._reads = config, group, bool(reads)
        super().__init__({})

    def elaborate(self, platform):
        m = _harness_module()
        config, pim = self._config, self._config.pim
        chunks = Array(Signal(data.ArrayLayout(signed(config.act_bits), pim.lanes),
                              name=f"chunk{n}") for n in range(config.act_words))
        group_class = self._group
        if self._reads:     # the watch runs when the group is elaborated, after this module
            group_class = _watching(group_class, lambda inside: self._watch(inside, group, chunks))
        group = m.submodules.group = group_class(config)
        w, x, cmd, o = group.w_stream, group.x_stream, group.cmd_stream, group.o_stream
        for port in (w.valid, w.payload, x.valid, x.payload, cmd.valid, cmd.payload, o.ready):
            m.d.comb += port.eq(AnySeq(len(Value.cast(port))))
        m.d.comb += Assume(~cmd.valid | (cmd.p.base + cmd.p.rows * cmd.p.words_per_row
                                         <= pim.depth))

        chunk = x.valid & x.ready
        gemv = cmd.valid & cmd.ready
        m.d.comb += [
            Assert(~(chunk & gemv), "a chunk and a GEMV are not taken in the same cycle"),
            Cover(x.valid & cmd.valid & chunk),
        ]
        with m.If(chunk):
            for lane in range(pim.lanes):
                past_max_k = (x.p.addr * pim.lanes + lane) >= config.max_k
                m.d.sync += chunks[x.p.addr][lane].eq(Mux(past_max_k, 0, x.p.data[lane]))
        return m

    @staticmethod
    def _watch(m, group, chunks):
        """Properties of the group's parts, stated in the group's module ``m``."""
        buffer = m.submodules.chunks
        chunk = group.x_stream.valid & group.x_stream.ready
        landing, landing_addr = _past(m, chunk), _past(m, group.x_stream.p.addr)
        for n in range(group.act_words):
            port = buffer.read_port(domain="comb")
            m.d.comb += [port.addr.eq(n),
                         Assert((landing & (landing_addr == n)) | (port.data == chunks[n]),
                                "the buffer holds the chunks written")]
        # A GEMV taken the cycle after a chunk, until its first read is dotted (for the cover).
        fresh = Signal()
        with m.If(group.cmd_stream.valid & group.cmd_stream.ready & landing):
            m.d.sync += fresh.eq(1)
        for b in range(group.config.pim.banks):
            bank = m.submodules[f"bank{b}"]
            read = bank.rd_stream
            index = Signal(range(group.act_words), name=f"bank{b}_index")   # of the last read
            with m.If(read.valid):
                m.d.sync += index.eq(Mux(read.p.first, 0, index + 1))
            dotted = _past(m, read.valid)
            with m.If(dotted):
                m.d.comb += Assert(bank.x.as_value() == chunks[index].as_value(),
                                   "a read is dotted with its chunk as written before its GEMV")
            first = dotted & _past(m, read.p.first)
            if b == 0:
                with m.If(first):
                    m.d.sync += fresh.eq(0)
            m.d.comb += Cover(first & fresh)


class _Phase(enum.Enum, shape=2):
    """Where a command word falls, as the harness reads the command stream."""
    HEADER = 0
    ARGUMENTS = 1
    DATA = 2


class CommandContract(wiring.Component):
    """Properties of the :class:`~hw.device.Device`'s command validation.

    The harness reads the words the device takes with a decoder of its own, written from
    :mod:`hw.commands` (header, arguments, data; the checks in the order the behavioural device
    makes them, with plain full-width arithmetic), and asserts every cycle:

    - the error raised (the register file's ``fail``) is the one the rules give: a bad header's
      in the cycle the header is taken, a bad argument's in the cycle after the last argument,
      none otherwise;
    - a unit is written or started exactly by a valid command's own words: the bank group takes
      a weight word in the cycle a valid ``WRITE_WEIGHTS`` completes one (to bank ``a``, at
      ``addr`` plus its index), a chunk likewise for ``LOAD_ACTS``, and a GEMV once for each
      valid ``GEMV`` (with its arguments), before the word after it is read; the array takes a
      tile row exactly with a ``LOAD_TILE``'s words and a token exactly with a valid ``GEMM``'s.

    So a rejected command writes nothing and starts nothing, and the words after it are read as
    commands. The command words (valid and payload) and ``o_stream.ready`` are free. The
    harness watches the units' streams and the register file inside the device (by their names
    there: ``pim``, ``array``, ``registers``). This holds to a bound: the device's state is more
    than the harness sees. Covers: every error code, and each unit handshake.

    Parameters
    ----------
    config : Config
        The device's configuration (a small one).
    device : type
        :class:`~hw.device.Device` subclass.
    """

    def __init__(self, config, *, device=Device):
        _check_config(config)
        _check_class("device", device, Device)
        self._config, self._device = config, device
        super().__init__({})

    def elaborate(self, platform):
        m = _harness_module()
        fmt = CommandFormat(self._config)
        # What the units should see, for the watch: filled in below, read when the device is
        # elaborated (after this module).
        expected = {}
        device = m.submodules.device = _watching(
            self._device, lambda inside: self._watch(inside, expected))(self._config)
        i = device.i_stream
        m.d.comb += [i.valid.eq(AnySeq(1)), i.payload.eq(AnySeq(WORD_BITS)),
                     device.o_stream.ready.eq(AnySeq(1))]
        word = i.payload
        taken = i.valid & i.ready
        error = {code: Const(code.value, 8) for code in ErrorCode}
        ops = {op: Const(op.value, 8) for op in Opcode}

        # The command being read: its header, arguments, and the data words still to come.
        phase = Signal(_Phase)
        op, a, b = Signal(8), Signal(8), Signal(16)
        args = Array(Signal(WORD_BITS, name=f"arg{n}") for n in range(2))
        arg_n = Signal(range(2))
        left = Signal(range(fmt.max_command_words))
        per_item = Mux(op == ops[Opcode.WRITE_WEIGHTS], fmt.weight_word_words,
                       Mux(op == ops[Opcode.LOAD_ACTS], fmt.act_chunk_words,
                           Mux(op == ops[Opcode.LOAD_TILE], fmt.tile_row_words,
                               fmt.token_words)))
        in_item = Signal(range(max(fmt.weight_word_words, fmt.act_chunk_words,
                                   fmt.tile_row_words, fmt.token_words)))
        item = Signal(16)
        tile = Signal()                 # a whole LOAD_TILE has been read
        gemv_due = Signal()             # a valid GEMV's arguments are in, no word since
        late = Signal(8)                # the error of the arguments just read

        # The header's checks, in the behavioural device's order.
        h = HEADER(word)
        header_error = Signal(8)
        with m.Switch(h.opcode):
            with m.Case(Opcode.WRITE_WEIGHTS):
                m.d.comb += header_error.eq(Mux(h.a >= fmt.banks, error[ErrorCode.BAD_BANK],
                                                Mux(h.b == 0, error[ErrorCode.BAD_LENGTH],
                                                    error[ErrorCode.NONE])))
            with m.Case(Opcode.LOAD_ACTS, Opcode.GEMV, Opcode.GEMM):
                no_tile = (h.opcode == ops[Opcode.GEMM]) & ~tile
                m.d.comb += header_error.eq(Mux(h.a != 0, error[ErrorCode.RESERVED_FIELD],
                                                Mux(h.b == 0, error[ErrorCode.BAD_LENGTH],
                                                    Mux(no_tile, error[ErrorCode.NO_TILE],
                                                        error[ErrorCode.NONE]))))
            with m.Case(Opcode.NOP, Opcode.LOAD_TILE, Opcode.READ_STATUS, Opcode.READ_COUNTERS,
                        Opcode.CLEAR_ERRORS):
                m.d.comb += header_error.eq(Mux((h.a != 0) | (h.b != 0),
                                                error[ErrorCode.RESERVED_FIELD],
                                                error[ErrorCode.NONE]))
            with m.Default():
                m.d.comb += header_error.eq(error[ErrorCode.UNKNOWN_OPCODE])
        # The arguments' checks, on the last argument (``word``).
        words_per_row = word[:Shape.cast(range(fmt.act_words + 1)).width]
        bad_shape = (word == 0) | (word > fmt.act_words)
        argument_error = Mux(
            op == ops[Opcode.GEMV],
            Mux(bad_shape, error[ErrorCode.BAD_SHAPE],
                Mux(args[0] + b * words_per_row > fmt.depth, error[ErrorCode.BAD_ADDRESS],
                    error[ErrorCode.NONE])),
            Mux(word + b > Mux(op == ops[Opcode.LOAD_ACTS], fmt.act_words, fmt.depth),
                error[ErrorCode.BAD_ADDRESS], error[ErrorCode.NONE]))
        last_argument = arg_n == Mux(op == ops[Opcode.GEMV], 1, 0)

        gemv_in = Signal()              # this word is the last argument of a valid GEMV
        m.d.sync += late.eq(error[ErrorCode.NONE])
        with m.If(taken):
            m.d.sync += gemv_due.eq(gemv_in)
            with m.Switch(phase):
                with m.Case(_Phase.HEADER):
                    m.d.sync += [op.eq(h.opcode), a.eq(h.a), b.eq(h.b), arg_n.eq(0),
                                 in_item.eq(0), item.eq(0)]
                    with m.If(header_error == error[ErrorCode.NONE]):
                        with m.Switch(h.opcode):
                            with m.Case(Opcode.WRITE_WEIGHTS, Opcode.LOAD_ACTS, Opcode.GEMV):
                                m.d.sync += phase.eq(_Phase.ARGUMENTS)
                            with m.Case(Opcode.LOAD_TILE):
                                m.d.sync += [phase.eq(_Phase.DATA), tile.eq(0),
                                             left.eq(fmt.rows * fmt.tile_row_words)]
                            with m.Case(Opcode.GEMM):
                                m.d.sync += [phase.eq(_Phase.DATA),
                                             left.eq(h.b * fmt.token_words)]
                with m.Case(_Phase.ARGUMENTS):
                    m.d.sync += [args[arg_n].eq(word), arg_n.eq(arg_n + 1)]
                    with m.If(last_argument):
                        m.d.sync += [late.eq(argument_error), phase.eq(_Phase.HEADER)]
                        with m.If(argument_error == error[ErrorCode.NONE]):
                            with m.If(op == ops[Opcode.GEMV]):
                                m.d.comb += gemv_in.eq(1)
                            with m.Else():
                                m.d.sync += [phase.eq(_Phase.DATA),
                                             left.eq(b * Mux(op == ops[Opcode.LOAD_ACTS],
                                                             fmt.act_chunk_words,
                                                             fmt.weight_word_words))]
                with m.Case(_Phase.DATA):
                    m.d.sync += [left.eq(left - 1),
                                 in_item.eq(Mux(in_item == per_item - 1, 0, in_item + 1))]
                    with m.If(in_item == per_item - 1):
                        m.d.sync += item.eq(item + 1)
                    with m.If(left == 1):
                        m.d.sync += phase.eq(_Phase.HEADER)
                        with m.If(op == ops[Opcode.LOAD_TILE]):
                            m.d.sync += tile.eq(1)

        data_word = taken & (phase == _Phase.DATA) & (in_item == per_item - 1)
        expected.update({
            "fail": Mux(taken & (phase == _Phase.HEADER), header_error, late),
            "weight": data_word & (op == ops[Opcode.WRITE_WEIGHTS]),
            "chunk": data_word & (op == ops[Opcode.LOAD_ACTS]),
            "tile_row": data_word & (op == ops[Opcode.LOAD_TILE]),
            "token": data_word & (op == ops[Opcode.GEMM]),
            "bank": a, "addr": args[0] + item,
            "gemv_in": gemv_in, "gemv_due": gemv_due, "taken": taken,
            "base": args[0], "rows": b, "words_per_row": args[1],
        })
        return m

    @staticmethod
    def _watch(m, expected):
        """Properties of the device's units, stated in the device's module ``m``."""
        pim, array, registers = m.submodules.pim, m.submodules.array, m.submodules.registers

        def handshake(stream):
            return stream.valid & stream.ready

        weight, chunk = handshake(pim.w_stream), handshake(pim.x_stream)
        gemv = handshake(pim.cmd_stream)
        tile_row, token = handshake(array.w_stream), handshake(array.i_stream)
        command = pim.cmd_stream.payload
        started = Signal()              # the bank group took the last valid GEMV
        with m.If(gemv):
            m.d.sync += started.eq(1)
        with m.Elif(expected["gemv_in"]):
            m.d.sync += started.eq(0)
        m.d.comb += [
            Assert(registers.fail == expected["fail"], "the error raised is the rules' one"),
            Assert(weight == expected["weight"], "weight words: a valid WRITE_WEIGHTS's"),
            Assert(~weight | ((pim.w_stream.p.bank == expected["bank"])
                              & (pim.w_stream.p.addr == expected["addr"])),
                   "a weight word goes to its bank and address"),
            Assert(chunk == expected["chunk"], "chunks: a valid LOAD_ACTS's"),
            Assert(~chunk | (pim.x_stream.p.addr == expected["addr"]),
                   "a chunk goes to its address"),
            Assert(~gemv | (expected["gemv_due"] & ~started & (command.base == expected["base"])
                            & (command.rows == expected["rows"])
                            & (command.words_per_row == expected["words_per_row"])),
                   "a GEMV starts once, only as a valid GEMV asked"),
            Assert(~(expected["taken"] & expected["gemv_due"]) | started,
                   "a valid GEMV starts before the next word is read"),
            Assert(tile_row == expected["tile_row"], "tile rows: a LOAD_TILE's"),
            Assert(token == expected["token"], "tokens: a valid GEMM's"),
        ]
        # The harness's device has no resident units: their error codes cannot be raised.
        m.d.comb += [Cover(registers.fail == code.value) for code in ErrorCode
                     if code is not ErrorCode.NONE and code not in RESIDENT_ERRORS]
        m.d.comb += [Cover(event) for event in (weight, chunk, gemv, tile_row, token)]


# Mutants: faulty units that the proofs must reject. ----------------------------------------

class SignFlipPE(TernaryPE):
    """A -1 weight adds the activation instead of subtracting it."""

    def product(self):
        return Mux(self.w == Trit.ZERO, 0, self.x_in)


class NarrowAdderTree(AdderTree):
    """Sized for terms one less than its ``magnitude``: ``+128``, a -128 activation times -1,
    does not fit its terms nor its sums."""

    def __init__(self, *, count, magnitude, **kwargs):
        super().__init__(count=count, magnitude=magnitude - 1, **kwargs)


class EagerArray(SystolicArray):
    """Takes a token whenever its result FIFO has a free entry now, forgetting the tokens in the
    grid (and whether a tile is loaded)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.i_stream.ready.eq(m.submodules.results0.w_rdy)
        return m


class UngatedBankGroup(PimBankGroup):
    """Takes a GEMV whenever it is idle, with no regard for a chunk taken in the same cycle
    (the hazard before the rule)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.cmd_stream.ready.eq(~self.busy)
        return m


class LaxDevice(Device):
    """Lets an address past the end of the bank or the buffer through (``WRITE_WEIGHTS`` and
    ``LOAD_ACTS``)."""

    def _check_argument(self, m, word, *, first, opcode, count, checks, tensor):
        super()._check_argument(m, word, first=first, opcode=opcode, count=count, checks=checks,
                                tensor=tensor)
        with m.If(first):
            m.d.sync += [checks.clean.eq(1), checks.verdict.eq(ErrorCode.NONE.value)]


class BusyWriteBankGroup(PimBankGroup):
    """Takes a chunk even while a GEMV runs: the buffer changes under the GEMV's reads."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.x_stream.ready.eq(1)
        return m


# The proofs. -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Proof:
    """A proof: a harness (called with a mutant's faulty unit, if any), its mode and depths
    (``prove``: k-induction of length ``depth``; ``bmc``: every trace of ``depth`` cycles from
    reset), and whether ``make test`` runs it (``quick``)."""
    name: str
    harness: Callable
    mode: str
    depth: int
    cover_depth: int
    quick: bool


@dataclass(frozen=True)
class Mutant:
    """A faulty unit (``unit``: the harness keyword and the faulty class) and the proof that
    must reject it."""
    name: str
    proof: str
    unit: dict

    @property
    def summary(self):
        """The fault, as the faulty class's docstring states it."""
        (cls,) = self.unit.values()
        return " ".join(cls.__doc__.split())


def _small(*, act_bits=2, max_k=4, rows=1, cols=1, banks=1, lanes=2, depth=2):
    """A configuration small enough for a proof to take seconds."""
    return Config(act_bits=act_bits, max_k=max_k, array=ArrayConfig(rows=rows, cols=cols),
                  pim=PimConfig(banks=banks, lanes=lanes, depth=depth))


def _tree(count, levels_per_stage, levels_before):
    return partial(AdderTreeContract, count=count, levels_per_stage=levels_per_stage,
                   levels_before=levels_before)


# max_k = 3 with 2 lanes: the buffer's second chunk has a lane past max_k, stored as zero.
_GROUP = _small(max_k=3, banks=2, depth=4)
_DEVICE = _small(cols=2, banks=2, depth=4)

PROOFS = {proof.name: proof for proof in [
    Proof("pe-ternary", partial(PEContract, pe=TernaryPE), "prove", 3, 3, quick=True),
    Proof("pe-ternary-row0", partial(PEContract, pe=TernaryPE, row=0), "prove", 3, 3,
          quick=True),
    Proof("pe-int8", partial(PEContract, pe=Int8PE), "prove", 3, 3, quick=True),
    # (count, levels_per_stage, levels_before): odd counts, a pass-through term, registers
    # after every level; then the banks' trees of the tiny, icebreaker and default presets.
    Proof("adder-tree-3-1-0", _tree(3, 1, 0), "prove", 3, 3, quick=True),
    Proof("adder-tree-5-2-1", _tree(5, 2, 1), "prove", 3, 3, quick=True),
    Proof("adder-tree-7-2-0", _tree(7, 2, 0), "prove", 3, 3, quick=True),
    Proof("adder-tree-4-2-1", _tree(4, 2, 1), "prove", 3, 3, quick=True),
    Proof("adder-tree-8-2-1", _tree(8, 2, 1), "prove", 4, 4, quick=False),
    Proof("adder-tree-16-2-1", _tree(16, 2, 1), "prove", 4, 4, quick=False),
    Proof("array-credits-1x2", partial(ArrayCredits, _small(cols=2)), "bmc", 16, 14,
          quick=True),
    Proof("array-credits-2x2", partial(ArrayCredits, _small(rows=2, cols=2)), "bmc", 24, 16,
          quick=False),
    Proof("pim-chunk-hazard", partial(BankGroupContract, _GROUP), "prove", 2, 8, quick=True),
    Proof("pim-chunk-reads", partial(BankGroupContract, _GROUP, reads=True), "bmc", 16, 10,
          quick=True),
    Proof("pim-chunk-reads-deep", partial(BankGroupContract, _GROUP, reads=True), "bmc", 24,
          10, quick=False),
    Proof("device-commands", partial(CommandContract, _DEVICE), "bmc", 8, 10, quick=True),
    Proof("device-commands-deep", partial(CommandContract, _DEVICE), "bmc", 16, 10,
          quick=False),
]}

MUTANTS = {mutant.name: mutant for mutant in [
    Mutant("sign-flip-pe", "pe-ternary", {"pe": SignFlipPE}),
    Mutant("narrow-adder-tree", "adder-tree-5-2-1", {"tree": NarrowAdderTree}),
    Mutant("eager-array", "array-credits-1x2", {"array": EagerArray}),
    Mutant("ungated-bank-group", "pim-chunk-hazard", {"group": UngatedBankGroup}),
    Mutant("busy-write-bank-group", "pim-chunk-reads", {"group": BusyWriteBankGroup}),
    Mutant("lax-device", "device-commands", {"device": LaxDevice}),
]}


def run_proof(name, *, mutant=None, timeout=1800, progress=None, rebuild=False):
    """Run the proof ``name`` of :data:`PROOFS`, on the faulty unit of ``mutant`` (a name in
    :data:`MUTANTS`) if given; returns the :class:`~sw_driver.flow.SbyResult`."""
    if name not in PROOFS:
        raise ValueError(f"unknown proof {name!r}; known proofs: {', '.join(PROOFS)}")
    if mutant is not None and mutant not in MUTANTS:
        raise ValueError(f"unknown mutant {mutant!r}; known mutants: {', '.join(MUTANTS)}")
    proof = PROOFS[name]
    harness = proof.harness(**(MUTANTS[mutant].unit if mutant else {}))
    design = rtlil.convert(harness, name="top", platform="formal")
    return flow.run_sby(design, name=f"{name}-{mutant}" if mutant else name, mode=proof.mode,
                        depth=proof.depth, cover_depth=proof.cover_depth, timeout=timeout,
                        progress=progress, rebuild=rebuild)
