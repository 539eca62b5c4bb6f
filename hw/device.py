"""The device: controller, PIM bank group and systolic array behind one command stream.

The controller decodes the command words of :mod:`hw.commands`, validates every field before
acting, and drives the bank group (GEMV, decode) and the array (GEMM tiles, prefill). A bad
command sets the sticky error code and is dropped; the controller returns to fetching commands,
so nothing a host sends can hang it. Every response leaves through ``o_stream``; while the host
does not take a response word, the work that produces it waits (counted as stalled cycles).
"""

from amaranth import Array, Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .array import SystolicArray
from .commands import (ARGUMENT_WORDS, HEADER, STATUS_FLAGS, STATUS_MAGIC, WORD_BITS,
                       CommandFormat, ErrorCode, Opcode)
from .config import Config
from .pim import PimBankGroup

__all__ = ["Device"]


class Device(wiring.Component):
    """One Bittern accelerator.

    Parameters
    ----------
    config : Config
    pe : type, optional
        PE class overriding ``config.array.pe``.

    Members
    -------
    i_stream : In(stream.Signature(32))
        Command words (:mod:`hw.commands`).
    o_stream : Out(stream.Signature(32))
        Response words.
    status : Out(StructLayout({"busy": 1, "error": 1}))
        A command is executing; the sticky error is set (for LEDs).
    """

    def __init__(self, config, *, pe=None):
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {config!r}")
        self._config = config
        self._pe = pe
        self._format = CommandFormat(config)
        super().__init__({
            "i_stream": In(stream.Signature(WORD_BITS)),
            "o_stream": Out(stream.Signature(WORD_BITS)),
            "status": Out(data.StructLayout({"busy": 1, "error": 1})),
        })

    @property
    def config(self):
        return self._config

    @property
    def format(self):
        """The :class:`~hw.commands.CommandFormat` of this configuration."""
        return self._format

    def elaborate(self, platform):
        m = Module()
        cfg, fmt = self._config, self._format
        pim = m.submodules.pim = PimBankGroup(cfg)
        array = m.submodules.array = SystolicArray(cfg, pe=self._pe)
        i, o = self.i_stream, self.o_stream

        header = Signal(HEADER)
        opcode, a, b = header.opcode, header.a, header.b
        args = Array(Signal(WORD_BITS, name=f"arg{n}") for n in range(2))
        arg_index = Signal(range(2))
        remaining = Signal(16)          # data items (words, chunks, rows, tokens) still to take
        results_left = Signal(16)       # GEMV rows / GEMM tokens whose results are still owed
        addr = Signal(WORD_BITS)
        element = Signal(range(max(fmt.banks, fmt.cols)))
        register = Signal(range(len(fmt.registers)))
        tile_loaded = Signal()
        error = Signal(8)               # sticky: the first error since CLEAR_ERRORS
        errors = Signal(WORD_BITS)      # every error since CLEAR_ERRORS
        fail = Signal(8)                # the error raised this cycle (NONE: none)
        flags = Signal(WORD_BITS)
        counters = [Signal(WORD_BITS, name=name) for name in fmt.counter_names]
        registers = Array([Const(STATUS_MAGIC, WORD_BITS), error, errors, flags, *counters])
        n_status = len(fmt.registers) - len(counters)

        with m.If(fail != ErrorCode.NONE.value):
            m.d.sync += errors.eq(errors + 1)
            with m.If(error == ErrorCode.NONE.value):
                m.d.sync += error.eq(fail)
        for name, bit in STATUS_FLAGS.items():
            m.d.comb += flags[bit].eq({"tile_loaded": tile_loaded, "pim_busy": pim.busy}[name])

        def reject(code):
            m.d.comb += fail.eq(code.value)
            m.next = "FETCH"

        def assemble(target, destination, words):
            """Feed ``target`` beats whose ``destination`` (the payload or a field of it) is
            made of ``words`` input words. The last word completes a beat combinationally, so
            beats move at one per ``words`` input words."""
            chunk = Signal(range(words), name="chunk")
            low = Signal((words - 1) * WORD_BITS, name="low_words")
            last = chunk == words - 1
            m.d.comb += [
                target.valid.eq(i.valid & last),
                destination.eq(Cat(low, i.payload)),
                i.ready.eq(~last | target.ready),
            ]
            with m.If(i.valid & i.ready):
                with m.If(last):
                    m.d.sync += [chunk.eq(0), remaining.eq(remaining - 1), addr.eq(addr + 1)]
                with m.Else():
                    m.d.sync += [chunk.eq(chunk + 1), low.eq(Cat(low[WORD_BITS:], i.payload))]

        def serialise(source, count):
            """Send each ``count``-element result beat as sign-extended words."""
            last = element == count - 1
            m.d.comb += [
                o.valid.eq(source.valid),
                o.payload.eq(source.payload[element]),
                source.ready.eq(o.ready & last),
            ]
            with m.If(o.valid & o.ready):
                m.d.sync += element.eq(Mux(last, 0, element + 1))
                with m.If(last):
                    m.d.sync += results_left.eq(results_left - 1)

        with m.FSM(name="control") as fsm:
            with m.State("FETCH"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    # Decoded as it arrives: a command costs no cycle of its own to decode.
                    incoming = HEADER(i.payload)
                    m.d.sync += [header.eq(i.payload), arg_index.eq(0),
                                 remaining.eq(Mux(incoming.opcode == Opcode.LOAD_TILE.value,
                                                  cfg.array.rows, incoming.b)),
                                 results_left.eq(incoming.b)]
                    self._decode(m, incoming, reject=reject, tile_loaded=tile_loaded,
                                 register=register, response_words=b, n_status=n_status,
                                 n_counters=len(counters), clear=[error.eq(0), errors.eq(0)])

            with m.State("ARGUMENTS"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    m.d.sync += [args[arg_index].eq(i.payload), arg_index.eq(arg_index + 1)]
                    with m.If(arg_index == Mux(opcode == Opcode.GEMV.value,
                                               ARGUMENT_WORDS[Opcode.GEMV] - 1, 0)):
                        m.next = "CHECK"

            with m.State("CHECK"):
                m.d.sync += addr.eq(args[0])
                end = args[0] + b                    # 33 bits: no wrap-around
                with m.Switch(opcode):
                    with m.Case(Opcode.WRITE_WEIGHTS):
                        with m.If(end > fmt.depth):
                            reject(ErrorCode.BAD_ADDRESS)
                        with m.Else():
                            m.next = "WRITE_WEIGHTS"
                    with m.Case(Opcode.LOAD_ACTS):
                        with m.If(end > fmt.act_words):
                            reject(ErrorCode.BAD_ADDRESS)
                        with m.Else():
                            m.next = "LOAD_ACTS"
                    with m.Case(Opcode.GEMV):
                        words_per_row = args[1]
                        # Checked in range first, so the product below is only 16 x log2(K).
                        short = words_per_row[:Shape.cast(range(fmt.act_words + 1)).width]
                        with m.If((words_per_row == 0) | (words_per_row > fmt.act_words)):
                            reject(ErrorCode.BAD_SHAPE)
                        with m.Elif(args[0] + b * short > fmt.depth):
                            reject(ErrorCode.BAD_ADDRESS)
                        with m.Else():
                            m.d.comb += pim.cmd_stream.valid.eq(1)
                            with m.If(pim.cmd_stream.ready):
                                m.next = "RESPOND"
                            with m.Else():
                                m.next = "GEMV_START"

            with m.State("WRITE_WEIGHTS"):
                with m.If(remaining == 0):
                    m.next = "FETCH"
                with m.Else():
                    assemble(pim.w_stream, pim.w_stream.payload.data, fmt.weight_word_words)
                    m.d.comb += [pim.w_stream.payload.bank.eq(a),
                                 pim.w_stream.payload.addr.eq(addr)]

            with m.State("LOAD_ACTS"):
                with m.If(remaining == 0):
                    m.next = "FETCH"
                with m.Else():
                    assemble(pim.x_stream, pim.x_stream.payload.data, fmt.act_chunk_words)
                    m.d.comb += pim.x_stream.payload.addr.eq(addr)

            with m.State("LOAD_TILE"):
                with m.If(remaining == 0):
                    m.d.sync += tile_loaded.eq(1)
                    m.next = "FETCH"
                with m.Else():
                    assemble(array.w_stream, array.w_stream.payload, fmt.tile_row_words)

            with m.State("GEMV_START"):
                m.d.comb += pim.cmd_stream.valid.eq(1)
                with m.If(pim.cmd_stream.ready):
                    m.next = "RESPOND"

            with m.State("RESPOND"):
                m.d.comb += [o.valid.eq(1), o.payload.eq(Cat(opcode, error, b))]
                with m.If(o.ready):
                    with m.Switch(opcode):
                        with m.Case(Opcode.GEMV):
                            m.next = "GEMV_RESULTS"
                        with m.Case(Opcode.GEMM):
                            m.next = "GEMM"
                        with m.Default():
                            m.next = "REGISTERS"

            with m.State("GEMV_RESULTS"):
                with m.If(results_left == 0):
                    m.next = "FETCH"
                with m.Else():
                    serialise(pim.o_stream, fmt.banks)

            with m.State("GEMM"):
                # Tokens go in while results come out: the array's FIFO would fill otherwise.
                with m.If(remaining != 0):
                    assemble(array.i_stream, array.i_stream.payload, fmt.token_words)
                with m.If(results_left == 0):
                    m.next = "FETCH"
                with m.Else():
                    serialise(array.o_stream, fmt.cols)

            with m.State("REGISTERS"):
                m.d.comb += [o.valid.eq(1), o.payload.eq(registers[register])]
                with m.If(o.ready):
                    m.d.sync += register.eq(register + 1)
                    with m.If((register == n_status - 1) | (register == len(registers) - 1)):
                        m.next = "FETCH"

        m.d.comb += [
            pim.cmd_stream.payload.base.eq(args[0]),
            pim.cmd_stream.payload.rows.eq(b),
            pim.cmd_stream.payload.words_per_row.eq(args[1]),
        ]
        idle = fsm.ongoing("FETCH")
        self._count(m, counters, idle=idle, stalled=(o.valid & ~o.ready) |
                    (~idle & i.ready & ~i.valid), pim=pim, array=array)
        m.d.comb += [
            self.status.busy.eq(~idle),
            self.status.error.eq(error != ErrorCode.NONE.value),
        ]
        return m

    def _decode(self, m, h, *, reject, tile_loaded, register, response_words, n_status,
                n_counters, clear):
        """Header checks and dispatch, in the order :class:`BehaviouralDevice` mirrors."""
        fmt = self._format
        with m.Switch(h.opcode):
            with m.Case(Opcode.WRITE_WEIGHTS):
                with m.If(h.a >= fmt.banks):
                    reject(ErrorCode.BAD_BANK)
                with m.Elif(h.b == 0):
                    reject(ErrorCode.BAD_LENGTH)
                with m.Else():
                    m.next = "ARGUMENTS"
            with m.Case(Opcode.LOAD_ACTS, Opcode.GEMV, Opcode.GEMM):
                with m.If(h.a != 0):
                    reject(ErrorCode.RESERVED_FIELD)
                with m.Elif(h.b == 0):
                    reject(ErrorCode.BAD_LENGTH)
                with m.Elif(h.opcode != Opcode.GEMM.value):
                    m.next = "ARGUMENTS"
                with m.Elif(~tile_loaded):
                    reject(ErrorCode.NO_TILE)
                with m.Else():
                    m.next = "RESPOND"
            with m.Case(Opcode.NOP, Opcode.LOAD_TILE, Opcode.READ_STATUS, Opcode.READ_COUNTERS,
                        Opcode.CLEAR_ERRORS):
                with m.If((h.a != 0) | (h.b != 0)):
                    reject(ErrorCode.RESERVED_FIELD)
                with m.Elif(h.opcode == Opcode.LOAD_TILE.value):
                    m.d.sync += tile_loaded.eq(0)
                    m.next = "LOAD_TILE"
                with m.Elif(h.opcode == Opcode.READ_STATUS.value):
                    m.d.sync += [response_words.eq(n_status), register.eq(0)]
                    m.next = "RESPOND"
                with m.Elif(h.opcode == Opcode.READ_COUNTERS.value):
                    m.d.sync += [response_words.eq(n_counters), register.eq(n_status)]
                    m.next = "RESPOND"
                with m.Elif(h.opcode == Opcode.CLEAR_ERRORS.value):
                    m.d.sync += clear
            with m.Default():
                reject(ErrorCode.UNKNOWN_OPCODE)

    def _count(self, m, counters, *, idle, stalled, pim, array):
        """Performance counters (32-bit, wrapping), in ``CommandFormat.counter_names`` order.

        Every cycle is exactly one of: idle (waiting for a command), stalled (inside a command,
        waiting for the host to send or to take a word) or busy. ``macs`` counts trit-lanes
        consumed: the bank group's, plus ``rows * cols`` per token the array takes.
        """
        busy_cycles, idle_cycles, stalled_cycles, macs, *words_read = counters
        array_token = array.i_stream.valid & array.i_stream.ready
        m.d.sync += [
            busy_cycles.eq(busy_cycles + (~idle & ~stalled)),
            idle_cycles.eq(idle_cycles + idle),
            stalled_cycles.eq(stalled_cycles + (~idle & stalled)),
            macs.eq(macs + pim.macs + Mux(array_token, self._config.array.rows
                                          * self._config.array.cols, 0)),
        ]
        for bank, count in enumerate(words_read):
            m.d.sync += count.eq(count + pim.words_read[bank])
