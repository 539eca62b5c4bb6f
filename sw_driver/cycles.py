"""The device's control, cycle by cycle, against a host of any timing.

:class:`DeviceCycles` steps what decides the device's timing, as :mod:`hw.device`,
:mod:`hw.streams`, :mod:`hw.pim` and :mod:`hw.array` define it: the controller's FSM and its decode
and checks, word assembly, the response FIFO with its registered room flags and the two result
serialisers, the bank group's sequencer and result credit, the array's token credit and weight
loading, and GENERATE's tokens on the resident core (its cycle model,
``ResidentCore.prompt_cycles`` and ``token_cycles``). It knows when each command word is taken,
when each response word leaves, and what every cycle is (busy, idle or stalled), so the
counters it reads out are the RTL's. Values come from a functional device fed the words it
takes (:class:`BehaviouralDevice`); the cycle model replaces only the cycle counters, which it
alone can know.

The host (:class:`Host`) pauses a number of cycles before offering each command word, keeps it
offered until it is taken, and takes a response word in every cycle it is ready.

A registered flag that the RTL works out a cycle ahead from the next state (the FIFOs' room and
``r_rdy``, the array's ``room`` and ``grid_empty``) equals the same comparison of this cycle's
state, which is how it is modelled here.
"""

from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

from hw.commands import ARGUMENT_WORDS, STATUS, CommandFormat, Opcode, Tensor, unpack_header

__all__ = ["Host", "DeviceCycles"]

_MASK = 0xFFFF_FFFF
# Counters the cycle model reads out itself (indices into ``CommandFormat.counter_names``).
_CYCLE_COUNTERS = ("cycles_busy", "cycles_idle", "cycles_stalled")
_LOADS = {"WRITE_WEIGHTS": "weight", "LOAD_ACTS": "act", "LOAD_TILE": "tile",
          "LOAD_TENSOR": "tensor", "PROMPT": "prompt"}


@dataclass(frozen=True)
class Host:
    """A host's timing: ``pauses[n]`` idle cycles before it offers command word ``n`` (none if
    the sequence is shorter), and ``ready(t)``: it takes a response word in cycle ``t``."""
    pauses: Sequence[int] = ()
    ready: Callable[[int], bool] = lambda cycle: True

    def pause(self, n):
        return self.pauses[n] if n < len(self.pauses) else 0


class _Fifo:
    """A first-word-fall-through FIFO's level, with the beats due to be written into it."""

    def __init__(self):
        self.level = 0
        self.arrivals = {}          # cycle -> beats written in that cycle

    def schedule(self, cycle):
        self.arrivals[cycle] = self.arrivals.get(cycle, 0) + 1

    def written(self, cycle):
        return self.arrivals.pop(cycle, 0)

    @property
    def empty(self):
        return self.level == 0 and not self.arrivals


class _Serialiser:
    """:class:`hw.streams.ResultSerialiser`: ``count`` words a beat, a beat started only with
    room for all of it, its source popped the cycle after its first word (with it for one)."""

    def __init__(self, count):
        self.count = count
        self.element, self.first, self.pop = 0, True, False

    def step(self, enable, source_valid, beat_room):
        """One cycle: ``(writes, blocked, ends_beat, pops)``."""
        has_word = source_valid if self.first else True
        room = beat_room if self.first else True
        pops = self.pop
        self.pop = False
        if not (enable and has_word):
            return False, False, False, pops
        if not room:
            return False, True, False, pops
        last = self.element == self.count - 1
        if self.count == 1:
            pops = True
        elif self.first:
            self.pop = True
        self.element = 0 if last else self.element + 1
        self.first = last
        return True, False, last, pops


class _BankGroup:
    """:class:`hw.pim.PimBankGroup`'s sequencer, result credit and (bank 0's) result FIFO."""

    def __init__(self, latency, fifo_depth):
        self.write_delay = latency - 1      # a row's last read to its result in the FIFO
        self.depth = fifo_depth
        self.running = False
        self.chunk = self.last_chunk = self.rows_left = 0
        self.row_end = self.last_row = False
        self.rows_owed = 0
        self.room = True                    # registered: rows_owed < depth - 1 a cycle ago
        self.fifo = _Fifo()

    @property
    def busy(self):
        return self.running or self.rows_owed != 0

    def issue(self):
        return self.running and (not self.row_end or self.room)

    def cmd_ready(self):
        """Whether a command is taken this cycle (the controller never offers one with a
        chunk, which would hold it off)."""
        return not self.running or (self.issue() and self.row_end and self.last_row)

    def step(self, cycle, *, command, popped):
        """End of ``cycle``; ``command`` is ``(rows, words_per_row)`` if one was taken."""
        issued = self.issue()
        row_done = issued and self.row_end
        if issued:
            if self.row_end:
                self.fifo.schedule(cycle + self.write_delay)
                if self.last_row:
                    self.running = False
                self.chunk = 0
                self.row_end = self.last_chunk == 0
                self.last_row = self.rows_left == 2
                self.rows_left -= 1
            else:
                self.chunk += 1
                self.row_end = self.chunk == self.last_chunk
        if command:
            rows, words_per_row = command
            self.chunk, self.last_chunk = 0, words_per_row - 1
            self.row_end, self.rows_left = words_per_row == 1, rows
            self.last_row = rows == 1
            self.running = rows != 0 and words_per_row != 0
        self.room = self.rows_owed < self.depth - 1
        self.rows_owed += row_done - popped
        self.fifo.level += self.fifo.written(cycle) - popped


class _Array:
    """:class:`hw.array.SystolicArray`'s weight loading, token credit and result FIFOs."""

    def __init__(self, rows, latency, fifo_depth):
        self.rows, self.latency, self.depth = rows, latency, fifo_depth
        self.loaded_rows = 0
        self.w_pending = False
        self.in_flight = self.occupancy = 0
        self.fifo = _Fifo()

    def token_ready(self):
        return (self.loaded_rows == self.rows and self.occupancy < self.depth
                and not self.w_pending)

    def weight_ready(self):
        """In a load, no token is taken with it."""
        return self.in_flight == 0

    def step(self, cycle, *, weight, token, popped):
        if self.w_pending:
            self.loaded_rows = 1 if self.loaded_rows == self.rows else self.loaded_rows + 1
        self.w_pending = weight
        if token:
            self.fifo.schedule(cycle + self.latency)
        written = self.fifo.written(cycle)
        self.in_flight += token - written
        self.occupancy += token - popped
        self.fifo.level += written - popped


class _Core:
    """:class:`hw.resident_core.ResidentCore` as GENERATE runs it: the prompt's first token
    started in the cycle the device offers it (the core is idle then), the others taken ahead
    (the device offers each at once), and the prompt done, :meth:`prompt_cycles` later, when
    its greedy token is offered; then each decoded token, done :meth:`token_cycles` after its
    start."""

    def __init__(self, config):
        from hw.resident_core import layout_core

        core = layout_core(config)
        self.prompt_cycles, self.token_cycles = core.prompt_cycles, core.token_cycles
        self.prompt_length = self.position = self.generated = self.done = 0

    def begin(self, prompt_length):
        self.prompt_length, self.position, self.generated = prompt_length, 0, 0

    def start(self, cycle):
        if self.position == 0:
            self.done = cycle + self.prompt_cycles(self.prompt_length)
            self.position = self.prompt_length
        else:
            self.done = cycle + self.token_cycles(self.position, True)
            self.position += 1


class DeviceCycles:
    """The device of ``config`` fed command words by ``host``; ``device`` (optional) is the
    functional device whose response word values it reports."""

    def __init__(self, config, *, host=None, device=None):
        from hw.array import SystolicArray
        from hw.pim import PimBankGroup

        self.format = fmt = CommandFormat(config)
        self.host = host or Host()
        self.device = device
        self.response_depth = max(fmt.banks, fmt.cols) + 1
        self.pim = _BankGroup(PimBankGroup.latency_for(config),
                              PimBankGroup.fifo_depth_for(config))
        self.array = _Array(fmt.rows, SystolicArray.latency_for(config),
                            SystolicArray.fifo_depth_for(config))
        self.rows_out = _Serialiser(fmt.banks)
        self.tokens_out = _Serialiser(fmt.cols)
        self.cycle = 0
        self.totals = dict.fromkeys(_CYCLE_COUNTERS, 0)
        self.state = "FETCH"
        self.header = {"opcode": 0, "a": 0, "b": 0}
        self.args = []
        self.remaining = self.results_left = 0
        self.sending_rows = self.sending_tokens = False
        self.tile_loaded = False
        self.loaded, self.completes, self.prompt = set(), False, []
        self.logit_part = 0                 # READ_LOGITS: the logit's words sent
        self.have_logits = False            # a GENERATE has finished
        self.core = _Core(config) if config.resident else None
        self.chunks = {"weight": 0, "act": 0, "tile": 0, "token": 0, "tensor": 0}
        self.register = 0
        self.taken_register = None          # the value the last register take fetched
        self.response = deque()             # words in the response FIFO
        self.values = deque()               # the functional device's words, not yet written
        self.words, self.offered, self.next_offer = [], 0, self.host.pause(0)
        self.out = []                       # (word, cycle) as each leaves

    # The host's side ---------------------------------------------------------------------

    def feed(self, words):
        """Queue command words for the host to offer after those before."""
        self.words.extend(int(word) & _MASK for word in words)

    def run(self, *, limit=10_000_000):
        """Step until every queued word is taken and the device has nothing left to do or
        send; return the response words as ``(word, cycle it left)``."""
        start = self.cycle
        while not self._quiet():
            if self.cycle - start > limit:
                raise RuntimeError(f"the device model ran {limit} cycles without settling")
            self.step()
        out, self.out = self.out, []
        return out

    def _quiet(self):
        waiting = self.state == "FETCH" or self._wants_word()
        return (waiting and self.offered == len(self.words) and not self.response
                and self.pim.fifo.empty and not self.pim.busy and self.array.fifo.empty
                and self.array.in_flight == 0 and self.rows_out.first
                and self.tokens_out.first)

    def _wants_word(self):
        """The state takes command words (when its unit is ready)."""
        return self.state == "ARGUMENTS" or (self.state in (*_LOADS, "GEMM")
                                               and self.remaining != 0)

    # One cycle ---------------------------------------------------------------------------

    def step(self):
        t, fmt = self.cycle, self.format
        offered = self.offered < len(self.words) and t >= self.next_offer
        word = self.words[self.offered] if offered else None
        state = next_state = self.state
        i_ready = taken = weight = token = False
        command = None
        writes, blocked = [], False         # (value, ends_beat) written into the response FIFO
        space = len(self.response) < self.response_depth

        if state == "FETCH":
            i_ready, taken = True, offered
            if offered:
                next_state = self._decode(word)
        elif state == "ARGUMENTS":
            i_ready, taken = True, offered
            if offered:
                self.args.append(word)
                if len(self.args) == ARGUMENT_WORDS[Opcode(self.header["opcode"])]:
                    next_state = "CHECK"
        elif state == "CHECK":
            next_state, command = self._check()
        elif state in _LOADS:
            if self.remaining == 0:
                self.tile_loaded |= state == "LOAD_TILE"
                next_state = "FETCH"
                if state == "LOAD_TENSOR" and self.completes:
                    self.loaded.add(Tensor(self.header["a"]))
                if state == "PROMPT" and max(self.prompt) < self.format.vocab:
                    next_state = "RESPOND"
            else:
                kind = _LOADS[state]
                # The resident core takes its tensors whenever it is idle (between GENERATEs).
                ready = (self.array.weight_ready() if kind == "tile" else
                         kind in ("tensor", "prompt") or not self.pim.busy)
                i_ready, taken, weight = self._feed(kind, offered, ready)
                weight &= kind == "tile"
        elif state == "GEMV_START":
            if self.pim.cmd_ready():
                command, next_state = (self.header["b"], self.args[1]), "RESPOND"
        elif state == "RESPOND":
            blocked = not space
            if space:
                writes.append((self._next_value(), False))
                opcode = Opcode(self.header["opcode"])
                if opcode is Opcode.GEMV:
                    self.sending_rows, next_state = True, "GEMV_RESULTS"
                elif opcode is Opcode.GEMM:
                    self.sending_tokens, next_state = True, "GEMM"
                elif opcode is Opcode.GENERATE:
                    self.core.begin(len(self.prompt))
                    next_state = "GENERATE"
                elif opcode is Opcode.READ_LOGITS:
                    next_state = "LOGITS"
                else:
                    self._take_register()
                    next_state = "REGISTERS"
        elif state == "GENERATE":
            self.core.start(t)
            next_state = "GENERATE_RUN"
        elif state == "GENERATE_RUN":
            if t >= self.core.done:
                blocked = not space
                if space:
                    writes.append((self._next_value(), True))
                    self.core.generated += 1
                    self.have_logits |= self.core.generated == self.header["b"]
                    next_state = ("GEMV_RESULTS" if self.core.generated == self.header["b"]
                                  else "GENERATE")
        elif state == "LOGITS":             # a word a cycle while the FIFO has room
            blocked = not space
            if space:
                writes.append((self._next_value(), False))
                self.logit_part += 1
                if self.logit_part == fmt.logit_words:
                    self.logit_part, self.remaining = 0, self.remaining - 1
                    if self.remaining == 0:
                        next_state = "FETCH"
        elif state == "GEMV_RESULTS":
            if self.results_left == 0:
                next_state = "FETCH"
        elif state == "GEMM":
            if self.remaining:
                i_ready, taken, token = self._feed("token", offered, self.array.token_ready())
            if self.results_left == 0:
                next_state = "FETCH"
        elif state == "REGISTERS":
            blocked = not space
            if space:
                value = self._next_value()
                writes.append((value if self.taken_register is None else self.taken_register,
                               False))
                end = self.register in (len(STATUS), len(fmt.registers))
                self._take_register()
                if end:
                    next_state = "FETCH"

        # The serialisers, each starting a beat only with room for all of it.
        level, popped = len(self.response), {}
        for serialiser, enable, unit in ((self.rows_out, self.sending_rows, self.pim),
                                         (self.tokens_out, self.sending_tokens, self.array)):
            write, stall, ends, popped[unit] = serialiser.step(
                enable, unit.fifo.level > 0, level + serialiser.count <= self.response_depth)
            blocked |= stall
            if write:
                writes.append((self._next_value(), ends))

        # The host takes the head word; words written this cycle leave from the next.
        if self.response and self.host.ready(t):
            value, ends = self.response.popleft()
            self.out.append((value, t))
            if ends:
                self.results_left -= 1
                if self.results_left == 0:
                    self.sending_rows = self.sending_tokens = False
        self.response.extend(writes)

        idle = state == "FETCH"
        stalled = not idle and (blocked or (i_ready and not offered))
        self.totals["cycles_idle" if idle else "cycles_stalled" if stalled
                    else "cycles_busy"] += 1
        if taken:
            if self.device is not None:
                self.values.extend(self.device.feed([word]))
            self.offered += 1
            self.next_offer = t + 1 + self.host.pause(self.offered)
        self.pim.step(t, command=command, popped=popped[self.pim])
        self.array.step(t, weight=weight, token=token, popped=popped[self.array])
        self.state = next_state
        self.cycle += 1

    # The controller's decisions -----------------------------------------------------------

    def _decode(self, word):
        header = unpack_header(word)
        self.header, self.args = header, []
        opcode, a, b = header["opcode"], header["a"], header["b"]
        if self.format.header_error(opcode, a, b, tile_loaded=self.tile_loaded,
                                    loaded=self.loaded, logits=self.have_logits):
            return "FETCH"
        opcode = Opcode(opcode)
        self.remaining = self.format.rows if opcode is Opcode.LOAD_TILE else b
        self.results_left = b
        if opcode in ARGUMENT_WORDS:
            return "ARGUMENTS"
        if opcode is Opcode.LOAD_TILE:
            self.tile_loaded = False
            return "LOAD_TILE"
        if opcode is Opcode.GEMM:
            return "RESPOND"
        if opcode is Opcode.READ_STATUS:
            self.register = 0
            return "RESPOND"
        if opcode is Opcode.READ_COUNTERS:
            self.register = len(STATUS)
            return "RESPOND"
        return "FETCH"                      # NOP, CLEAR_ERRORS

    def _check(self):
        opcode, a, b = Opcode(self.header["opcode"]), self.header["a"], self.header["b"]
        if self.format.argument_error(opcode, b, self.args, tensor=a):
            return "FETCH", None
        if opcode is Opcode.LOAD_TENSOR:
            self.completes = self.args[0] + b == self.format.tensors[Tensor(a)][0]
            return "LOAD_TENSOR", None
        if opcode is Opcode.GENERATE:
            self.remaining, self.prompt = self.args[0], []
            return "PROMPT", None
        if opcode is Opcode.READ_LOGITS:
            self.logit_part = 0
            return "RESPOND", None
        if opcode is Opcode.WRITE_WEIGHTS:
            return "WRITE_WEIGHTS", None
        if opcode is Opcode.LOAD_ACTS:
            return "LOAD_ACTS", None
        if self.pim.cmd_ready():
            return "RESPOND", (b, self.args[1])
        return "GEMV_START", None

    def _feed(self, kind, offered, unit_ready):
        """A :class:`hw.streams.WordAssembler` in its state: ``(i_ready, taken, beat)``."""
        if kind == "prompt":                # one word a token, into the prompt buffer
            if offered:
                self.prompt.append(self.words[self.offered])
                self.remaining -= 1
            return True, offered, False
        words = {"weight": self.format.weight_word_words, "act": self.format.act_chunk_words,
                 "tile": self.format.tile_row_words, "token": self.format.token_words,
                 "tensor": (self.format.tensors[Tensor(self.header["a"])][1]
                            if kind == "tensor" else 0)}[kind]
        last = self.chunks[kind] == words - 1
        i_ready = not last or unit_ready
        if not (offered and i_ready):
            return i_ready, False, False
        if not last:
            self.chunks[kind] += 1
            return True, True, False
        self.chunks[kind] = 0
        self.remaining -= 1
        return True, True, True

    def _take_register(self):
        """Fetch register ``register`` (the first step of a read) and step to the next."""
        index = self.register - len(STATUS)
        name = self.format.counter_names[index] if 0 <= index < len(_CYCLE_COUNTERS) else None
        self.taken_register = self.totals[name] & _MASK if name else None
        self.register += 1

    def _next_value(self):
        """The functional device's next response word (``None`` without one)."""
        return self.values.popleft() if self.device is not None else None
