"""The device: controller, PIM bank group and systolic array behind one command stream.

The controller decodes the command words of :mod:`hw.commands`, validates every field before
acting, and drives the bank group (GEMV, decode) and the array (GEMM tiles, prefill). A bad
command sets the sticky error code and is dropped; the controller returns to fetching commands,
so nothing a host sends can hang it.

Parts: a :class:`~hw.streams.WordAssembler` per unit input joins command words into beats, a
:class:`~hw.streams.ResultSerialiser` per unit output splits result beats into response words,
and a :class:`~hw.registers.RegisterFile` holds status and counters; the controller here wires
them and runs the control FSM.

Every response word leaves through a FIFO (``response``) with room for a whole result beat:
nothing inside the device depends on the host's ``ready`` but that FIFO's read side and the
count of result beats sent, so the host's ``ready`` is not the start of a path across the die
to the banks. With the host taking every word at once, every word leaves the cycle after it is
written; while the FIFO lacks room, the work that produces the next word waits (counted as
stalled cycles).

Timing rule, here and in every unit: a net that fans out across the die (to all banks, to every
PE, back to the link) starts at a flip-flop, and the control FSM's state is not on the path of
a beat's data.
"""

import operator
from functools import reduce
from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Shape, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .array import SystolicArray
from .commands import (ARGUMENT_WORDS, HEADER, STATUS, WORD_BITS, CommandFormat, ErrorCode,
                       Opcode, Tensor, TENSOR_PORTS)
from .config import Config
from .pim import PimBankGroup
from .queues import registered_room
from .registers import RegisterFile
from .resident_core import LOAD_PORTS, ResidentCore
from .streams import RESPONSE_WORD, ResultSerialiser, WordAssembler

__all__ = ["DEVICE_STATUS", "Device"]

DEVICE_STATUS = data.StructLayout({"busy": 1, "error": 1})


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
    status : Out(DEVICE_STATUS)
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
            "status": Out(DEVICE_STATUS),
        })

    @property
    def config(self):
        return self._config

    @property
    def format(self):
        """The :class:`~hw.commands.CommandFormat` of this configuration."""
        return self._format

    @property
    def max_macs(self):
        """Multiply-accumulates in a cycle at most: every bank lane and the whole array."""
        cfg = self._config
        return cfg.pim.banks * cfg.pim.lanes + cfg.array.rows * cfg.array.cols

    def elaborate(self, platform):
        m = Module()
        cfg, fmt = self._config, self._format
        pim = m.submodules.pim = PimBankGroup(cfg)
        array = m.submodules.array = SystolicArray(cfg, pe=self._pe)
        registers = m.submodules.registers = RegisterFile(fmt, max_macs=self.max_macs)
        i, o = self.i_stream, self.o_stream
        resident = cfg.resident is not None
        core = None
        if resident:
            core = m.submodules.core = ResidentCore(cfg)
        # The bank group's command, chunk and result ports: the controller's, or, while a
        # GENERATE runs, the resident core's.
        generating = Signal()
        if resident:
            bank_x, bank_cmd = (stream.Signature(port.payload.shape()).create()
                                for port in (pim.x_stream, pim.cmd_stream))
            bank_o = stream.Signature(pim.o_stream.payload.shape()).create()
            with m.If(generating):
                wiring.connect(m, core.chunk_stream, pim.x_stream)
                wiring.connect(m, core.cmd_stream, pim.cmd_stream)
                wiring.connect(m, pim.o_stream, core.acc_stream)
            with m.Else():
                wiring.connect(m, bank_x, pim.x_stream)
                wiring.connect(m, bank_cmd, pim.cmd_stream)
                wiring.connect(m, pim.o_stream, wiring.flipped(bank_o))
        else:
            bank_x, bank_cmd, bank_o = pim.x_stream, pim.cmd_stream, pim.o_stream

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
        # entering the state and cleared with ``no_results`` rising, so that the state decode
        # is not in front of the response FIFO's write enable.
        sending_rows = Signal()
        sending_tokens = Signal()
        addr = Signal(WORD_BITS)
        tile_loaded = Signal()
        fail = Signal(8)                # the error raised this cycle (NONE: none)
        checks = Signal(self._checks_layout())  # the argument checks, for CHECK
        bad_token = Signal()            # a GENERATE's prompt holds a token >= vocab
        m.d.comb += [
            registers.fail.eq(fail),
            registers.flags.tile_loaded.eq(tile_loaded),
        ]

        def reject(code):
            m.d.comb += fail.eq(code.value)
            m.next = "FETCH"

        # Word assembly: each unit's beat from its words. The beats go to their units in every
        # state; only the words' ``valid`` follows the control FSM (``feed``).
        def assembler(name, target, destination, words):
            unit = m.submodules[f"{name}_words"] = WordAssembler(words=words)
            m.d.comb += [destination.eq(unit.o_stream.payload),
                         target.valid.eq(unit.o_stream.valid),
                         unit.o_stream.ready.eq(target.ready),
                         unit.i_stream.payload.eq(i.payload)]
            return unit

        def feed(unit):
            """Take the command's data words into ``unit`` (called in the state that loads it)."""
            m.d.comb += [unit.i_stream.valid.eq(i.valid), i.ready.eq(unit.i_stream.ready)]
            with m.If(unit.o_stream.valid & unit.o_stream.ready):
                m.d.sync += [remaining.eq(remaining - 1), no_items.eq(remaining == 1),
                             addr.eq(addr + 1)]

        weights_in = assembler("weight", pim.w_stream, pim.w_stream.payload.data,
                               fmt.weight_word_words)
        acts_in = assembler("act", bank_x, bank_x.payload.data, fmt.act_chunk_words)
        tile_in = assembler("tile", array.w_stream, array.w_stream.payload, fmt.tile_row_words)
        tokens_in = assembler("token", array.i_stream, array.i_stream.payload, fmt.token_words)
        m.d.comb += [pim.w_stream.payload.bank.eq(a), pim.w_stream.payload.addr.eq(addr),
                     bank_x.payload.addr.eq(addr)]
        # LOAD_TENSOR: each tensor's items into its port of the core, at ``addr``.
        tensors_in = {}
        loaded = Signal(len(Tensor))        # each tensor loaded to its last item
        have_logits = Signal()              # a GENERATE has finished since reset
        if resident:
            for tensor, name in TENSOR_PORTS.items():
                port = getattr(core, name)
                tensors_in[tensor] = assembler(f"tensor{tensor.value}", port, port.payload.data,
                                               fmt.tensors[tensor][1])
                m.d.comb += getattr(port.payload, LOAD_PORTS[name]).eq(addr)

        # Responses: every word leaves through a FIFO with room for a whole result beat, so that
        # a beat, once started, never waits.
        response = m.submodules.response = fifo.SyncFIFO(width=WORD_BITS + 1,
                                                          depth=max(fmt.banks, fmt.cols) + 1)
        sent = Signal(RESPONSE_WORD)
        m.d.comb += [
            sent.eq(response.r_data),
            o.valid.eq(response.r_rdy),
            o.payload.eq(sent.word),
            response.r_en.eq(o.ready),
        ]
        with m.If(o.valid & o.ready & sent.ends_beat):
            m.d.sync += [results_left.eq(results_left - 1), no_results.eq(results_left == 1)]
            with m.If(results_left == 1):
                m.d.sync += [sending_rows.eq(0), sending_tokens.eq(0)]
        space = registered_room(m, response, 1, name="space")

        # The words that may be written, each with the flag that selects it (a flip-flop or a
        # state): the write data is their AND-OR, not a chain of priority multiplexers, so that
        # every source is one level of logic from the FIFO.
        writers = []
        blocked = Signal()              # a word waits for room in the response FIFO

        def respond(word, *, selected):
            """Write ``word`` (a header or a register) when the FIFO has room; the cycle is
            stalled otherwise. ``selected`` is true whenever this call may write."""
            m.d.comb += [response.w_en.eq(space), blocked.eq(~space)]
            writers.append((selected, Cat(word, Const(0, 1))))

        for name, source, count, sending in (("rows", bank_o, fmt.banks, sending_rows),
                                             ("tokens", array.o_stream, fmt.cols,
                                              sending_tokens)):
            serialiser = m.submodules[f"{name}_out"] = ResultSerialiser(
                count=count, element_shape=source.payload.shape().elem_shape)
            wiring.connect(m, source, serialiser.i_stream)
            m.d.comb += [serialiser.enable.eq(sending),
                         serialiser.room.eq(registered_room(m, response, count,
                                                            name=f"{name}_room"))]
            with m.If(serialiser.o_stream.valid):
                m.d.comb += response.w_en.eq(1)
            with m.If(serialiser.blocked):
                m.d.comb += blocked.eq(1)
            writers.append((sending, serialiser.o_stream.payload))

        prompt = self._prompt_buffer(m, i=i, addr=addr) if resident else None
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
                                 registers=registers, response_words=b,
                                 all_loaded=loaded.all(), have_logits=have_logits)

            with m.State("ARGUMENTS"):
                m.d.comb += i.ready.eq(1)
                with m.If(i.valid):
                    m.d.sync += [args[arg_index].eq(i.payload), arg_index.eq(arg_index + 1)]
                    self._check_argument(m, i.payload, first=arg_index == 0, opcode=opcode,
                                         count=b, checks=checks, tensor=a)
                    with m.If(arg_index == Mux(opcode == Opcode.GEMV.value,
                                               ARGUMENT_WORDS[Opcode.GEMV] - 1, 0)):
                        m.next = "CHECK"

            with m.State("CHECK"):
                # Acts on the checks registered with the argument words and flags registered
                # with the header: between them and the bank group's command port there is
                # only one comparison and a gate.
                m.d.sync += addr.eq(args[0])
                with m.If(~checks.clean):
                    m.d.comb += fail.eq(checks.verdict)
                    m.next = "FETCH"
                with m.Elif(~is_gemv):
                    with m.Switch(opcode):
                        with m.Case(Opcode.WRITE_WEIGHTS):
                            m.next = "WRITE_WEIGHTS"
                        with m.Case(Opcode.LOAD_ACTS):
                            m.next = "LOAD_ACTS"
                        if resident:
                            with m.Case(Opcode.LOAD_TENSOR):
                                m.next = "LOAD_TENSOR"
                            with m.Case(Opcode.GENERATE):
                                # The prompt's words into the prompt buffer from item 0.
                                m.d.sync += [remaining.eq(args[0]), no_items.eq(0),
                                             addr.eq(0), bad_token.eq(0)]
                                m.next = "PROMPT"
                            with m.Case(Opcode.READ_LOGITS):
                                m.next = "RESPOND"
                with m.Elif(checks.too_far | (checks.product > checks.room)):
                    reject(ErrorCode.BAD_ADDRESS)
                with m.Else():
                    m.d.comb += bank_cmd.valid.eq(1)
                    with m.If(bank_cmd.ready):
                        m.next = "RESPOND"
                    with m.Else():
                        m.next = "GEMV_START"

            with m.State("WRITE_WEIGHTS"):
                with m.If(no_items):
                    m.next = "FETCH"
                with m.Else():
                    feed(weights_in)

            with m.State("LOAD_ACTS"):
                with m.If(no_items):
                    m.next = "FETCH"
                with m.Else():
                    feed(acts_in)

            with m.State("LOAD_TILE"):
                with m.If(no_items):
                    m.d.sync += tile_loaded.eq(1)
                    m.next = "FETCH"
                with m.Else():
                    feed(tile_in)

            with m.State("GEMV_START"):
                m.d.comb += bank_cmd.valid.eq(1)
                with m.If(bank_cmd.ready):
                    m.next = "RESPOND"

            if resident:
                self._resident_states(m, core=core, prompt=prompt, i=i, a=a, b=b, feed=feed,
                                      tensors_in=tensors_in, loaded=loaded,
                                      completes=checks.completes, no_items=no_items,
                                      remaining=remaining, addr=addr, args=args,
                                      bad_token=bad_token, generating=generating,
                                      have_logits=have_logits,
                                      reject=reject, response=response, space=space,
                                      blocked=blocked, writers=writers, fsm=fsm)

            with m.State("RESPOND"):
                respond(Cat(opcode, registers.error, b), selected=fsm.ongoing("RESPOND"))
                with m.If(space):
                    with m.Switch(opcode):
                        with m.Case(Opcode.GEMV):
                            m.d.sync += sending_rows.eq(1)
                            m.next = "GEMV_RESULTS"
                        with m.Case(Opcode.GEMM):
                            m.d.sync += sending_tokens.eq(1)
                            m.next = "GEMM"
                        if resident:
                            with m.Case(Opcode.GENERATE):
                                m.d.sync += generating.eq(1)
                                m.next = "GENERATE"
                            with m.Case(Opcode.READ_LOGITS):
                                m.next = "LOGITS"
                        with m.Default():
                            m.d.comb += registers.take.eq(1)
                            m.next = "REGISTERS"

            with m.State("GEMV_RESULTS"):
                with m.If(no_results):
                    m.next = "FETCH"

            with m.State("GEMM"):
                # Tokens go in while results come out: the array's FIFO would fill otherwise.
                with m.If(~no_items):
                    feed(tokens_in)
                with m.If(no_results):
                    m.next = "FETCH"

            with m.State("REGISTERS"):
                respond(registers.word, selected=fsm.ongoing("REGISTERS"))
                with m.If(space):
                    m.d.comb += registers.take.eq(1)
                    with m.If((registers.index == len(STATUS))
                              | (registers.index == len(fmt.registers))):
                        m.next = "FETCH"

        m.d.comb += [
            response.w_data.eq(reduce(operator.or_, (Mux(selected, word, 0)
                                                     for selected, word in writers))),
            bank_cmd.payload.base.eq(args[0]),
            bank_cmd.payload.rows.eq(b),
            bank_cmd.payload.words_per_row.eq(args[1]),
        ]
        idle = fsm.ongoing("FETCH")
        stalled = blocked | (~idle & i.ready & ~i.valid)
        m.d.comb += [
            registers.cycle.busy.eq(~idle & ~stalled),
            registers.cycle.idle.eq(idle),
            registers.cycle.stalled.eq(~idle & stalled),
            registers.macs.eq(pim.macs + array.macs),
            registers.words_read.eq(pim.words_read),
            self.status.busy.eq(~idle),
            self.status.error.eq(registers.error_set),
        ]
        return m

    def _prompt_buffer(self, m, *, i, addr):
        """GENERATE's prompt buffer: written at ``addr`` from the command words, read at the
        position the core is started at (one cycle later)."""
        model = self._config.resident
        m.submodules.prompt = prompt = Memory(shape=range(model.vocab), depth=model.max_seq,
                                              init=[])
        buffer = SimpleNamespace(write=prompt.write_port(), read=prompt.read_port(),
                                 position=Signal(range(model.max_seq + 1)))
        m.d.comb += [buffer.write.addr.eq(addr), buffer.write.data.eq(i.payload),
                     buffer.read.addr.eq(buffer.position)]
        return buffer

    def _resident_states(self, m, *, core, prompt, i, a, b, feed, tensors_in, loaded, completes,
                         no_items, remaining, addr, args, bad_token, generating, have_logits,
                         reject,
                         response, space, blocked, writers, fsm):
        """LOAD_TENSOR's data, GENERATE's prompt and its run on the resident core, and
        READ_LOGITS' words.

        GENERATE takes its prompt into a buffer (a token id of ``vocab`` or more fails it with
        BAD_TOKEN once the prompt is in: nothing runs), sends its response header, then offers
        the core each prompt token at positions 0, 1, ... (``last`` on the final one) as soon
        as it took the one before (the core takes them ahead), and each generated token while
        more are owed; each greedy token goes into the response
        FIFO as its own beat, as soon as the core offers it and the FIFO has room.
        READ_LOGITS, after its response header, writes a word a cycle while the FIFO has room.
        """
        model = self._config.resident
        with m.State("LOAD_TENSOR"):
            with m.If(no_items):
                m.d.sync += loaded.eq(loaded | (completes << a[:len(Tensor).bit_length()]))
                m.next = "FETCH"
            with m.Else():
                with m.Switch(a):
                    for tensor, unit in tensors_in.items():
                        with m.Case(tensor.value):
                            feed(unit)

        prompt_write, prompt_read, position = prompt.write, prompt.read, prompt.position
        last_token = Signal(range(model.vocab))
        running_last = Signal()         # the token running is a last one: a greedy token follows
        generated = Signal(16)
        prompt_length = args[0]
        with m.State("PROMPT"):
            with m.If(no_items):
                with m.If(bad_token):
                    reject(ErrorCode.BAD_TOKEN)
                with m.Else():
                    m.d.sync += [position.eq(0), generated.eq(0)]
                    m.next = "RESPOND"
            with m.Else():
                m.d.comb += [i.ready.eq(1), prompt_write.en.eq(i.valid)]
                with m.If(i.valid):
                    m.d.sync += [remaining.eq(remaining - 1), no_items.eq(remaining == 1),
                                 addr.eq(addr + 1), bad_token.eq(bad_token
                                                                  | (i.payload >= model.vocab))]
        with m.State("GENERATE"):
            start = core.start.payload
            is_last = position + 1 >= prompt_length
            m.d.comb += [core.start.valid.eq(1),
                         start.token.eq(Mux(position < prompt_length, prompt_read.data,
                                            last_token)),
                         start.position.eq(position), start.last.eq(is_last)]
            with m.If(core.start.ready):
                m.d.sync += [position.eq(position + 1), running_last.eq(is_last)]
                m.next = "GENERATE_RUN"
        with m.State("GENERATE_RUN"):
            with m.If(~running_last):
                # The next prompt token is offered at once: the core takes it ahead, while
                # this one's last layer runs, or once idle.
                m.next = "GENERATE"
            with m.Else():
                m.d.comb += core.o_stream.ready.eq(space)
                with m.If(core.o_stream.valid):
                    m.d.comb += [response.w_en.eq(space), blocked.eq(~space)]
                    with m.If(space):
                        m.d.sync += [last_token.eq(core.o_stream.payload.token),
                                     generated.eq(generated + 1)]
                        with m.If(generated == b - 1):
                            m.d.sync += [generating.eq(0), have_logits.eq(1)]
                            m.next = "GEMV_RESULTS"         # until the last word has left
                        with m.Else():
                            m.next = "GENERATE"
        writers.append((fsm.ongoing("GENERATE_RUN"),
                        Cat(core.o_stream.payload.token, Const(0, WORD_BITS
                                                               - len(core.o_stream.payload.token)),
                            Const(1, 1))))

        # READ_LOGITS: logit ``addr`` from the core, sign-extended, a word at a time. The
        # core's read address is the row the next cycle sends, so its logit is always there.
        words = self._format.logit_words
        logit = Signal(signed(WORD_BITS * words))
        part = Signal(range(words))
        row_sent = space & (part == words - 1)
        m.d.comb += logit.eq(core.logit)
        with m.State("LOGITS"):
            m.d.comb += [response.w_en.eq(space), blocked.eq(~space)]
            with m.If(space):
                m.d.sync += part.eq(part + 1)
                with m.If(part == words - 1):
                    m.d.sync += [part.eq(0), addr.eq(addr + 1), remaining.eq(remaining - 1)]
                    with m.If(remaining == 1):
                        m.next = "FETCH"
        m.d.comb += core.logit_addr.eq(Mux(fsm.ongoing("LOGITS") & row_sent, addr + 1, addr))
        writers.append((fsm.ongoing("LOGITS"),
                        Cat(logit.word_select(part, WORD_BITS), Const(0, 1))))

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
            "completes": 1,                     # LOAD_TENSOR: its last item is the tensor's
        })

    def _check_argument(self, m, word, *, first, opcode, count, checks, tensor):
        """Check argument ``word`` as it arrives, registering what ``CHECK`` needs.

        The first argument is an address: ``addr + count`` must not pass the end of the bank
        (``WRITE_WEIGHTS``) or of the activation buffer (``LOAD_ACTS``). For ``GEMV`` it is the
        base, and ``count`` rows of ``words_per_row`` words (its second argument, which must
        be in ``[1, act_words]``, else ``BAD_SHAPE``) must fit between it and the end of a
        bank, else ``BAD_ADDRESS``. The factors are range checked before they are multiplied,
        so the product is only ``log2(depth) x log2(act_words)`` bits, and it is registered:
        no multiplier sits in ``CHECK`` or between the argument word and the verdict.
        """
        fmt = self._format
        limit = Mux(opcode == Opcode.LOAD_ACTS.value, fmt.act_words, fmt.depth)
        limits = [fmt.depth, fmt.act_words]
        if fmt.tensors:
            # LOAD_TENSOR: the tensor's items; GENERATE: ``prompt + count - 1 <= max_seq``;
            # READ_LOGITS: the vocabulary.
            items = [items for items, _ in fmt.tensors.values()]
            limit = Mux(opcode == Opcode.LOAD_TENSOR.value,
                        Array(items + [0] * ((1 << 8) - len(items)))[tensor],
                        Mux(opcode == Opcode.GENERATE.value, fmt.max_seq + 1,
                            Mux(opcode == Opcode.READ_LOGITS.value, fmt.vocab, limit)))
            limits += [*items, fmt.max_seq + 1, fmt.vocab]
        rows = count[:Shape.cast(range(fmt.depth + 1)).width]
        words_per_row = word[:Shape.cast(range(fmt.act_words + 1)).width]
        span = Shape.cast(range(max(limits) + 1)).width

        def exceeds(bound):
            """``word > bound`` for a ``bound`` of ``span`` bits: the word's high bits are only
            ORed, so no carry chain is as wide as the word."""
            return (word[span:] != 0) | (word[:span] > bound)

        with m.If(first):
            # ``word + count > limit``, with the header's side (``limit - count``) worked out
            # apart from the word: the word arrives late, from the link, so no adder as wide
            # as the word follows it.
            past_end = (count > limit) | exceeds((limit - count)[:span])
            verdict = Mux(past_end, ErrorCode.BAD_ADDRESS.value, ErrorCode.NONE.value)
            if fmt.tensors:
                # A prompt of no token, or one that leaves no room for the tokens, is a bad
                # length; a load that ends at the tensor's last item completes it.
                generate = opcode == Opcode.GENERATE.value
                past_end = past_end | (generate & (word == 0))
                verdict = Mux(past_end, Mux(generate, ErrorCode.BAD_LENGTH.value,
                                            ErrorCode.BAD_ADDRESS.value), ErrorCode.NONE.value)
                m.d.sync += checks.completes.eq((word[span:] == 0)
                                                & (word[:span] == (limit - count)[:span]))
            m.d.sync += [
                checks.verdict.eq(verdict),
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

    def _decode(self, m, h, *, reject, tile_loaded, registers, response_words, all_loaded,
                have_logits):
        """Header checks and dispatch, in the order of :meth:`CommandFormat.header_error`."""
        fmt = self._format
        with m.Switch(h.opcode):
            if fmt.tensors:
                with m.Case(Opcode.LOAD_TENSOR):
                    with m.If(h.a >= len(Tensor)):
                        reject(ErrorCode.BAD_TENSOR)
                    with m.Elif(h.b == 0):
                        reject(ErrorCode.BAD_LENGTH)
                    with m.Else():
                        m.next = "ARGUMENTS"
                with m.Case(Opcode.GENERATE):
                    with m.If(h.a != 0):
                        reject(ErrorCode.RESERVED_FIELD)
                    with m.Elif(h.b == 0):
                        reject(ErrorCode.BAD_LENGTH)
                    with m.Elif(~all_loaded):
                        reject(ErrorCode.NOT_LOADED)
                    with m.Else():
                        m.next = "ARGUMENTS"
                with m.Case(Opcode.READ_LOGITS):
                    with m.If(h.a != 0):
                        reject(ErrorCode.RESERVED_FIELD)
                    with m.Elif(h.b == 0):
                        reject(ErrorCode.BAD_LENGTH)
                    with m.Elif(~have_logits):
                        reject(ErrorCode.NO_LOGITS)
                    with m.Else():
                        m.next = "ARGUMENTS"
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
                    m.d.sync += response_words.eq(len(STATUS))
                    m.d.comb += [registers.restart.eq(1), registers.restart_at.eq(0)]
                    m.next = "RESPOND"
                with m.Elif(h.opcode == Opcode.READ_COUNTERS.value):
                    m.d.sync += response_words.eq(len(fmt.counter_names))
                    m.d.comb += [registers.restart.eq(1), registers.restart_at.eq(len(STATUS))]
                    m.next = "RESPOND"
                with m.Elif(h.opcode == Opcode.CLEAR_ERRORS.value):
                    m.d.comb += registers.clear.eq(1)
            with m.Default():
                reject(ErrorCode.UNKNOWN_OPCODE)
