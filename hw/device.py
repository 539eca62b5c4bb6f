"""The device: controller, PIM bank group and systolic array behind one command stream.

The controller decodes the command words of :mod:`hw.commands`, validates every field before
acting, and drives the bank group (GEMV, decode) and the array (GEMM tiles, prefill). A bad
command sets the sticky error code and is dropped; the controller returns to fetching commands,
so nothing a host sends can hang it. Every response word leaves through a FIFO (``response``)
with room for a whole result beat to ``o_stream``: nothing inside the device depends on the
host's ``ready`` but that FIFO's read side and the count of result beats sent, so it is not the
start of a path across the die to the banks (the ulx3s-85f critical path, through the
serialiser's select, was 75 MHz). With the host taking every word at once, every word leaves
the cycle after it is written, and a command's timing is what it was with a one-word output
register; while the FIFO lacks room, the work that produces the next word waits (counted as
stalled cycles).
"""

import operator
from functools import reduce

from amaranth import Array, Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .array import SystolicArray
from .commands import (ARGUMENT_WORDS, HEADER, STATUS_FLAGS, STATUS_MAGIC, WORD_BITS,
                       CommandFormat, ErrorCode, Opcode)
from .config import Config
from .pim import PimBankGroup
from .queues import registered_room

__all__ = ["Device"]

READ_GROUP_BITS = 3
READ_GROUP = 1 << READ_GROUP_BITS   # registers per group in the first step of a register read


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
        is_gemv = Signal()              # header.opcode == GEMV, registered with it
        opcode, a, b = header.opcode, header.a, header.b
        args = Array(Signal(WORD_BITS, name=f"arg{n}") for n in range(2))
        arg_index = Signal(range(2))
        remaining = Signal(16)          # data items (words, chunks, rows, tokens) still to take
        no_items = Signal()             # remaining == 0, registered: it gates every beat's enable
        results_left = Signal(16)       # GEMV rows / GEMM tokens whose results are still owed
        no_results = Signal()           # results_left == 0, registered: the results are all out
        # The serialisers' enables: GEMV_RESULTS or GEMM, with results owed. Flip-flops, set on
        # entering the state and cleared with ``no_results`` rising: decoded from the state
        # and ``no_results``, they were on the ulx3s-85f critical path into the response
        # FIFO's write enable (96.6 MHz).
        sending_rows = Signal()
        sending_tokens = Signal()
        addr = Signal(WORD_BITS)
        register = Signal(range(len(fmt.registers) + 1))    # the next register to read
        tile_loaded = Signal()
        error = Signal(8)               # sticky: the first error since CLEAR_ERRORS
        errors = Signal(WORD_BITS)      # every error since CLEAR_ERRORS
        fail = Signal(8)                # the error raised this cycle (NONE: none)
        fail_q = Signal(8)              # ... registered: error and errors take it a cycle later
        checks = Signal(self._checks_layout())  # the argument checks, for CHECK
        flags = Signal(WORD_BITS)
        counters = [Signal(WORD_BITS, name=name) for name in fmt.counter_names]
        cycle = Signal(data.StructLayout({"busy": 1, "idle": 1, "stalled": 1}))  # this one's kind
        # What the registers read: the stored values plus what is still on its way in.
        error_now = Mux(error != ErrorCode.NONE.value, error, fail_q)
        errors_now = errors + (fail_q != ErrorCode.NONE.value)
        counters_now = self._count(m, counters, cycle=cycle, pim=pim, array=array)
        registers = [Const(STATUS_MAGIC, WORD_BITS), error_now, errors_now, flags, *counters_now]
        n_status = len(fmt.registers) - len(counters)

        # Errors are recorded from a register, so that the decoder's verdict is not the start
        # of a path through a 32-bit adder (``CLEAR_ERRORS``, later in this module, wins).
        m.d.sync += fail_q.eq(fail)
        with m.If(fail_q != ErrorCode.NONE.value):
            m.d.sync += errors.eq(errors + 1)
            with m.If(error == ErrorCode.NONE.value):
                m.d.sync += error.eq(fail_q)
        for name, bit in STATUS_FLAGS.items():
            m.d.comb += flags[bit].eq({"tile_loaded": tile_loaded, "pim_busy": pim.busy}[name])

        # A register read selects in two steps. Taking a word registers, for each group of
        # ``READ_GROUP`` registers, the one the index's low bits name (``fetched``); the word
        # that leaves is then the group its high bits name. A one-step select over every
        # register and counter adder, 24 to 1, was the ulx3s-85f critical path (95.0 MHz).
        groups = [registers[n:n + READ_GROUP] for n in range(0, len(registers), READ_GROUP)]
        fetched = Array(Signal(WORD_BITS, name=f"fetched{n}") for n in range(len(groups)))
        fetched_group = Signal(range(len(groups)))
        register_word = fetched[fetched_group]                  # the register leaving

        def take_register():
            """Register the next register's value (its group's step of the select) before it
            leaves: the read sees every cycle before that one."""
            low = register[:READ_GROUP_BITS]
            for group, values in zip(fetched, groups):
                padded = values + [Const(0, WORD_BITS)] * (READ_GROUP - len(values))
                m.d.sync += group.eq(Array(padded)[low])
            m.d.sync += [fetched_group.eq(register[READ_GROUP_BITS:]), register.eq(register + 1)]

        def reject(code):
            m.d.comb += fail.eq(code.value)
            m.next = "FETCH"

        def assembler(target, destination, words):
            """Make beats for ``target`` whose ``destination`` (the payload or a field of it) is
            made of ``words`` input words; returns the function that feeds them, to be called in
            the state that loads them. The data is wired in every state and only ``valid``
            depends on the state: the beats cross the die to the banks and the array, and the
            control FSM is kept off that path. The last word completes a beat combinationally,
            so beats move at one per ``words`` input words."""
            chunk = Signal(range(words), name="chunk")
            low = Signal((words - 1) * WORD_BITS, name="low_words")
            # chunk == words - 1, registered: it is on the path from the target's ``ready``,
            # through ``i.ready``, back to the link (ulx3s-85f: 98.9 MHz).
            last = Signal(init=words == 1, name="last_word")
            m.d.comb += destination.eq(Cat(low, i.payload))

            def feed():
                m.d.comb += [
                    target.valid.eq(i.valid & last),
                    i.ready.eq(~last | target.ready),
                ]
                # The low words' enable leaves ``target.ready`` out (it is 1 when ``~last``): it
                # fans out to every bit of the beat.
                with m.If(i.valid & ~last):
                    m.d.sync += [chunk.eq(chunk + 1), low.eq(Cat(low[WORD_BITS:], i.payload)),
                                 last.eq(chunk == words - 2)]
                with m.If(i.valid & last & target.ready):
                    m.d.sync += [chunk.eq(0), last.eq(words == 1), remaining.eq(remaining - 1),
                                 no_items.eq(remaining == 1), addr.eq(addr + 1)]
            return feed

        feed_weights = assembler(pim.w_stream, pim.w_stream.payload.data, fmt.weight_word_words)
        feed_acts = assembler(pim.x_stream, pim.x_stream.payload.data, fmt.act_chunk_words)
        feed_tile = assembler(array.w_stream, array.w_stream.payload, fmt.tile_row_words)
        feed_tokens = assembler(array.i_stream, array.i_stream.payload, fmt.token_words)
        m.d.comb += [pim.w_stream.payload.bank.eq(a), pim.w_stream.payload.addr.eq(addr),
                     pim.x_stream.payload.addr.eq(addr)]

        # Room for a whole result beat, so that a beat, once started, never waits.
        response = m.submodules.response = fifo.SyncFIFO(width=WORD_BITS + 1,
                                                          depth=max(fmt.banks, fmt.cols) + 1)
        sent = Signal(data.StructLayout({"word": WORD_BITS, "ends_beat": 1}))
        m.d.comb += [
            sent.eq(response.r_data),
            o.valid.eq(response.r_rdy),
            o.payload.eq(sent.word),
            response.r_en.eq(o.ready),
        ]
        blocked = Signal()              # a word waits for room in the response FIFO
        with m.If(o.valid & o.ready & sent.ends_beat):
            m.d.sync += [results_left.eq(results_left - 1), no_results.eq(results_left == 1)]
            with m.If(results_left == 1):
                m.d.sync += [sending_rows.eq(0), sending_tokens.eq(0)]

        space = registered_room(m, response, 1, name="space")

        # The words that may be written, each beside the flag that selects it. The write data
        # is their AND-OR: with the sources' conditions chained as priority multiplexers, a
        # column's word went through five LUTs from its FIFO to the response FIFO, the
        # ulx3s-85f critical path (99.8 MHz).
        writers = []

        def respond(word, *, selected, ends_beat=Const(0, 1), room=space):
            """Write ``word`` into the response FIFO if ``room`` says it has room; the cycle
            is stalled otherwise. ``selected`` is true whenever this call may write: it is
            this word's select into the write data, and no other call's may be true with it."""
            m.d.comb += [response.w_en.eq(room), blocked.eq(~room)]
            writers.append((selected, Cat(word, ends_beat)))

        def serialiser(source, count, *, sending):
            """Send ``count``-element result beats from ``source`` as sign-extended words
            while ``sending`` (a flip-flop: the state that sends them, with results owed).

            Element 0 is written into the response FIFO while the others are loaded into a
            shift register (``rest``) whose head is the next word, and the beat leaves its FIFOs
            the cycle after, popped by a flip-flop (``pop``). A beat starts only when the
            response FIFO has room for all of it, so the shift register moves every cycle of a
            beat and nothing holds it. Register ``e`` of ``rest`` loads the head beat or takes
            its neighbour's under its own flag (``load``), so no single net reaches every bit
            of it. The flags are a thermometer code: all up until a beat starts, then each
            rises once its register's word has gone. When it rises does not matter to the
            data, but it makes each flag a different function, which no synthesis step can
            merge back into one net.

            The beat's FIFOs and ``rest`` spread over the die with the banks and the array's
            columns. Each of these was the ulx3s-85f critical path: a select of each word out
            of the beat (79 MHz), a pop decided in the cycle it is made (81.7 MHz), and one
            enable holding every bit of ``rest`` while the FIFO was full (82.4 MHz). A
            one-element beat (one bank, one column: no die to cross) leaves with its word, as
            a registered pop would cost it a bubble.
            """
            element = Signal(range(count), name="element")
            first = Signal(init=1, name="first")                # element == 0, registered
            last = Signal(init=count == 1, name="last")         # element == count - 1, registered
            word = Signal(WORD_BITS, name="word")               # the element, sign-extended
            elements = source.payload
            beat_room = registered_room(m, response, count, name="beat_room")
            if count > 1:
                pop = Signal(name="pop")                        # element 0 left last cycle
                m.d.sync += pop.eq(0)
                m.d.comb += source.ready.eq(pop)
                # rest[e] holds element e + 1 + (the words sent after element 0); the top one
                # is needed only in the cycle after element 0, so it always loads.
                rest = Signal(data.ArrayLayout(elements.shape().elem_shape, count - 1),
                              name="rest", reset_less=True)
                if count > 2:
                    load = Signal(count - 2, init=-1, name="load")
                for e in range(count - 1):
                    m.d.sync += rest[e].eq(elements[e + 1] if e == count - 2 else
                                           Mux(load[e], elements[e + 1], rest[e + 1]))
                m.d.comb += word.eq(Mux(first, elements[0], rest[0]))
            else:
                m.d.comb += word.eq(elements[0])
            has_word = Mux(first, source.valid, 1)              # after element 0, it is in rest
            room = Mux(first, beat_room, 1)                     # a started beat has its room

            with m.If(sending & has_word):
                respond(word, selected=sending, ends_beat=last, room=room)
                with m.If(room):
                    m.d.sync += [element.eq(Mux(last, 0, element + 1)), first.eq(last),
                                 last.eq(Mux(last, count == 1, element == count - 2))]
                    if count > 2:
                        m.d.sync += load.eq(Mux(last, -1, Mux(first, 0, Cat(load[1:], 1))))
                    if count > 1:
                        m.d.sync += pop.eq(first)
                    else:
                        m.d.comb += source.ready.eq(1)

        serialiser(pim.o_stream, fmt.banks, sending=sending_rows)
        serialiser(array.o_stream, fmt.cols, sending=sending_tokens)

        with m.FSM(name="control") as fsm:
            with m.State("FETCH"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    # Decoded as it arrives: a command costs no cycle of its own to decode.
                    incoming = HEADER(i.payload)
                    items = Mux(incoming.opcode == Opcode.LOAD_TILE.value, cfg.array.rows,
                                incoming.b)
                    m.d.sync += [header.eq(i.payload), arg_index.eq(0),
                                 is_gemv.eq(incoming.opcode == Opcode.GEMV.value),
                                 remaining.eq(items), no_items.eq(items == 0),
                                 results_left.eq(incoming.b), no_results.eq(incoming.b == 0)]
                    self._decode(m, incoming, reject=reject, tile_loaded=tile_loaded,
                                 register=register, response_words=b, n_status=n_status,
                                 n_counters=len(counters), clear=[error.eq(0), errors.eq(0)])

            with m.State("ARGUMENTS"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    m.d.sync += [args[arg_index].eq(i.payload), arg_index.eq(arg_index + 1)]
                    self._check_argument(m, i.payload, first=arg_index == 0, opcode=opcode,
                                         count=b, checks=checks)
                    with m.If(arg_index == Mux(opcode == Opcode.GEMV.value,
                                               ARGUMENT_WORDS[Opcode.GEMV] - 1, 0)):
                        m.next = "CHECK"

            with m.State("CHECK"):
                # Acts on the checks registered with the argument words and flags registered
                # with the header: between them and the bank group's command port there is
                # only one comparison and a gate (through the opcode's and the verdict's
                # comparisons, this was the ulx3s-85f critical path at 80.8 MHz).
                m.d.sync += addr.eq(args[0])
                with m.If(~checks.clean):
                    m.d.comb += fail.eq(checks.verdict)
                    m.next = "FETCH"
                with m.Elif(~is_gemv):
                    with m.If(opcode == Opcode.WRITE_WEIGHTS.value):
                        m.next = "WRITE_WEIGHTS"
                    with m.Else():
                        m.next = "LOAD_ACTS"
                with m.Elif(checks.too_far | (checks.product > checks.room)):
                    reject(ErrorCode.BAD_ADDRESS)
                with m.Else():
                    m.d.comb += pim.cmd_stream.valid.eq(1)
                    with m.If(pim.cmd_stream.ready):
                        m.next = "RESPOND"
                    with m.Else():
                        m.next = "GEMV_START"

            with m.State("WRITE_WEIGHTS"):
                with m.If(no_items):
                    m.next = "FETCH"
                with m.Else():
                    feed_weights()

            with m.State("LOAD_ACTS"):
                with m.If(no_items):
                    m.next = "FETCH"
                with m.Else():
                    feed_acts()

            with m.State("LOAD_TILE"):
                with m.If(no_items):
                    m.d.sync += tile_loaded.eq(1)
                    m.next = "FETCH"
                with m.Else():
                    feed_tile()

            with m.State("GEMV_START"):
                m.d.comb += pim.cmd_stream.valid.eq(1)
                with m.If(pim.cmd_stream.ready):
                    m.next = "RESPOND"

            with m.State("RESPOND"):
                respond(Cat(opcode, error, b), selected=fsm.ongoing("RESPOND"))
                with m.If(space):
                    with m.Switch(opcode):
                        with m.Case(Opcode.GEMV):
                            m.d.sync += sending_rows.eq(1)
                            m.next = "GEMV_RESULTS"
                        with m.Case(Opcode.GEMM):
                            m.d.sync += sending_tokens.eq(1)
                            m.next = "GEMM"
                        with m.Default():
                            take_register()
                            m.next = "REGISTERS"

            with m.State("GEMV_RESULTS"):
                with m.If(no_results):
                    m.next = "FETCH"

            with m.State("GEMM"):
                # Tokens go in while results come out: the array's FIFO would fill otherwise.
                with m.If(~no_items):
                    feed_tokens()
                with m.If(no_results):
                    m.next = "FETCH"

            with m.State("REGISTERS"):
                respond(register_word, selected=fsm.ongoing("REGISTERS"))
                with m.If(space):
                    take_register()
                    with m.If((register == n_status) | (register == len(registers))):
                        m.next = "FETCH"

        m.d.comb += [
            response.w_data.eq(reduce(operator.or_, (Mux(selected, word, 0)
                                                     for selected, word in writers))),
            pim.cmd_stream.payload.base.eq(args[0]),
            pim.cmd_stream.payload.rows.eq(b),
            pim.cmd_stream.payload.words_per_row.eq(args[1]),
        ]
        idle = fsm.ongoing("FETCH")
        stalled = blocked | (~idle & i.ready & ~i.valid)
        m.d.comb += [
            cycle.busy.eq(~idle & ~stalled),
            cycle.idle.eq(idle),
            cycle.stalled.eq(~idle & stalled),
            self.status.busy.eq(~idle),
            self.status.error.eq(error_now != ErrorCode.NONE.value),
        ]
        return m

    def _checks_layout(self):
        fmt = self._format
        rows_bits = Shape.cast(range(fmt.depth + 1)).width
        words_bits = Shape.cast(range(fmt.act_words + 1)).width
        return data.StructLayout({
            "verdict": 8,                       # ErrorCode of the checks done so far
            "clean": 1,                         # verdict == NONE
            "too_far": 1,                       # GEMV: base or rows beyond the bank
            "room": range(fmt.depth + 1),       # GEMV: words from base to the end of the bank
            "product": rows_bits + words_bits,  # GEMV: rows * words_per_row (both in range)
        })

    def _check_argument(self, m, word, *, first, opcode, count, checks):
        """Check argument ``word`` as it arrives, registering what ``CHECK`` needs.

        The first argument is an address: ``addr + count`` must not pass the end of the bank
        (``WRITE_WEIGHTS``) or of the activation buffer (``LOAD_ACTS``). For ``GEMV`` it is the
        base, and ``count`` rows of ``words_per_row`` words (its second argument, which must
        be in ``[1, act_words]``, else ``BAD_SHAPE``) must fit between it and the end of a
        bank, else ``BAD_ADDRESS``. The factors are range checked before they are multiplied,
        so the product is only ``log2(depth) x log2(act_words)`` bits, and it is registered:
        the multiplier, in ``CHECK`` or between the argument word and the verdict, was the
        critical path of both boards' builds.
        """
        fmt = self._format
        limit = Mux(opcode == Opcode.LOAD_ACTS.value, fmt.act_words, fmt.depth)
        rows = count[:Shape.cast(range(fmt.depth + 1)).width]
        words_per_row = word[:Shape.cast(range(fmt.act_words + 1)).width]
        span = Shape.cast(range(max(fmt.depth, fmt.act_words) + 1)).width

        def exceeds(bound):
            """``word > bound`` for a ``bound`` of ``span`` bits: the word's high bits are only
            ORed, so no carry chain is as wide as the word."""
            return (word[span:] != 0) | (word[:span] > bound)

        with m.If(first):
            # ``word + count > limit``, with the header's side (``limit - count``) worked out
            # apart from the word: the word arrives late, from the link, and a 33-bit adder
            # and comparison after it were the ulx3s-85f critical path (93.8 MHz).
            past_end = (count > limit) | exceeds((limit - count)[:span])
            m.d.sync += [
                checks.verdict.eq(Mux(past_end, ErrorCode.BAD_ADDRESS.value, ErrorCode.NONE.value)),
                checks.clean.eq(~past_end),
                checks.too_far.eq(exceeds(fmt.depth) | (count > fmt.depth)),
                checks.room.eq(fmt.depth - word),       # meaningful unless too_far
            ]
        with m.Else():
            # GEMV's words_per_row. A bad shape outranks the base's BAD_ADDRESS (the first
            # argument's verdict, implied by the product check in CHECK when the shape is good).
            bad_shape = (word == 0) | exceeds(fmt.act_words)
            m.d.sync += [
                checks.verdict.eq(Mux(bad_shape, ErrorCode.BAD_SHAPE.value, ErrorCode.NONE.value)),
                checks.clean.eq(~bad_shape),
                checks.product.eq(rows * words_per_row),
            ]

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

    def _count(self, m, counters, *, cycle, pim, array):
        """Performance counters (32-bit, wrapping), in ``CommandFormat.counter_names`` order;
        returns the values a read sees.

        Every cycle is exactly one of: idle (waiting for a command), stalled (inside a command,
        waiting for the host to send or to take a word) or busy (``cycle``, driven by the
        controller). ``macs`` counts trit-lanes consumed: the bank group's, plus
        ``rows * cols`` per token the array takes.

        A cycle's increments are registered first and added the cycle after, so the control
        logic that classifies a cycle never ends in a 32-bit adder; a read adds the pending
        increments, so it sees every cycle before the one that registers its word, as if counted
        at once.
        """
        cfg = self._config
        array_token = array.i_stream.valid & array.i_stream.ready
        increments = [cycle.busy, cycle.idle, cycle.stalled,
                      pim.macs + Mux(array_token, cfg.array.rows * cfg.array.cols, 0),
                      *pim.words_read]
        now = []
        for count, increment in zip(counters, increments):
            pending = Signal(range(cfg.pim.banks * cfg.pim.lanes
                                   + cfg.array.rows * cfg.array.cols + 1),
                             name=f"{count.name}_pending")
            m.d.sync += [pending.eq(increment), count.eq(count + pending)]
            now.append(count + pending)
        return now
