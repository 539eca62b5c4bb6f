"""Cycle-exact timing of the device's commands, for the behavioural model.

Each function returns the cycles a command adds to the device's ``cycles_busy`` counter when
the host sends every word of it back to back and takes every response word at once (an ideal
link). The pipelines (bank read sequencer with its result-FIFO credit, systolic array with its
own) are stepped cycle by cycle, mirroring :mod:`hw.pim`, :mod:`hw.array` and the controller in
:mod:`hw.device`; ``tests`` and the device testbench compare these figures with the RTL's
counters.
"""

from hw.commands import ARGUMENT_WORDS, STATUS, CommandFormat, Opcode

__all__ = ["CommandTiming"]


class _ResultPath:
    """A producer writing beats into a first-word-fall-through FIFO with credit, and the
    controller's serialiser: each word of a beat is written into the response FIFO, one per
    cycle, and leaves it the cycle after. A beat leaves its FIFO the cycle after its first word
    is written (the others wait in the serialiser), or with it if it has one element."""

    def __init__(self, *, latency, fifo_depth, elements, registered_credit=False):
        self.latency, self.depth, self.elements = latency, fifo_depth, elements
        self.registered_credit = registered_credit
        self.in_flight = 0              # beats issued, not yet written into the FIFO
        self.level = 0                  # beats in the FIFO
        self.arrivals = {}              # cycle -> beats written into the FIFO in that cycle
        self.element = 0                # the beat's next word to write
        self.pop = False                # the head beat's first word was written a cycle ago
        self.word_last = False          # the response FIFO holds a beat's last word
        self._room = True               # the registered credit, as computed a cycle ago

    def room(self):
        """Whether a beat may issue now. A registered credit is a cycle old, so it keeps one
        entry in reserve (``PimBankGroup``); the array's is computed from the next state, so
        it uses them all (``SystolicArray``)."""
        if self.registered_credit:
            return self._room
        return self.in_flight + self.level < self.depth

    def issue(self, cycle):
        """A beat enters the pipeline in ``cycle``; it reaches the FIFO ``latency`` later."""
        self.arrivals[cycle + self.latency] = self.arrivals.get(cycle + self.latency, 0) + 1

    def step(self, cycle, issued, serialising):
        """End of ``cycle``: returns True if a beat's last word left in it."""
        finished = False
        popped, self.pop = self.pop, False
        if serialising:
            finished = self.word_last          # the host takes every word at once
            self.word_last = False
            if self.element or self.level:
                self.word_last = self.element == self.elements - 1
                if self.element == 0:
                    if self.elements == 1:
                        popped = True
                    else:
                        self.pop = True
                self.element = 0 if self.word_last else self.element + 1
        written = self.arrivals.pop(cycle, 0)
        self._room = self.in_flight + self.level < self.depth - 1
        self.in_flight += issued - written
        self.level += written - popped
        return finished


class CommandTiming:
    """Busy cycles of each command for one configuration."""

    def __init__(self, config):
        from hw.array import SystolicArray
        from hw.pim import PimBankGroup

        self.format = CommandFormat(config)
        # A row issued in cycle t is written into the FIFO in t + latency - 1 and leaves it
        # from t + latency (``PimBankGroup.latency`` counts to the beat leaving).
        self.pim_latency = PimBankGroup.latency_for(config) - 1
        self.array_latency = SystolicArray.latency_for(config)
        # The result FIFOs (each bank's, each column's) hold every beat in flight plus one
        # being read and one being written (``PimBankGroup.fifo_depth``,
        # ``SystolicArray.fifo_depth``).
        self.pim_fifo_depth = PimBankGroup.fifo_depth_for(config)
        self.array_fifo_depth = SystolicArray.fifo_depth_for(config)

    def simple(self, opcode, b=0):
        """Commands with no pipeline: loads, status and counter reads, NOP."""
        fmt = self.format
        if opcode is Opcode.WRITE_WEIGHTS:
            return ARGUMENT_WORDS[opcode] + 1 + b * fmt.weight_word_words + 1
        if opcode is Opcode.LOAD_ACTS:
            return ARGUMENT_WORDS[opcode] + 1 + b * fmt.act_chunk_words + 1
        if opcode is Opcode.LOAD_TILE:
            return fmt.rows * fmt.tile_row_words + 1
        if opcode is Opcode.READ_STATUS:
            return 1 + len(STATUS)
        if opcode is Opcode.READ_COUNTERS:
            return 1 + len(fmt.counter_names)
        return 0

    def rejected_after_arguments(self, opcode):
        """A command refused by its argument checks: its argument words and the check."""
        return ARGUMENT_WORDS[opcode] + 1

    def gemv(self, rows, words_per_row):
        """ARGUMENTS, CHECK (bank command issued), RESPOND, then results until the last beat."""
        path = _ResultPath(latency=self.pim_latency, fifo_depth=self.pim_fifo_depth,
                           elements=self.format.banks, registered_credit=True)
        reads_left, chunk, results_left = rows * words_per_row, 0, rows
        busy = ARGUMENT_WORDS[Opcode.GEMV] + 1
        cycle = 0                       # cycle 0 is RESPOND, the first cycle reads can issue
        while True:
            row_end = chunk == words_per_row - 1
            read = reads_left > 0 and (not row_end or path.room())
            if read:
                reads_left -= 1
                chunk = 0 if row_end else chunk + 1
                if row_end:
                    path.issue(cycle)
            serialising = cycle >= 1 and results_left > 0
            busy += 1
            if cycle >= 1 and results_left == 0:
                return busy
            if path.step(cycle, int(read and row_end), serialising):
                results_left -= 1
            cycle += 1

    def gemm(self, tokens):
        """RESPOND, then tokens in (``token_words`` words each) while results go out."""
        fmt = self.format
        path = _ResultPath(latency=self.array_latency, fifo_depth=self.array_fifo_depth,
                           elements=fmt.cols)
        words_left, chunk, results_left = tokens * fmt.token_words, 0, tokens
        busy = 1                        # RESPOND
        cycle = 0                       # cycle 0 is the first cycle of the GEMM state
        while True:
            busy += 1
            if results_left == 0:
                return busy
            taken = False
            if words_left:
                last = chunk == fmt.token_words - 1
                if not last:
                    chunk, words_left = chunk + 1, words_left - 1
                elif path.room():
                    chunk, words_left, taken = 0, words_left - 1, True
                    path.issue(cycle)
            if path.step(cycle, int(taken), True):
                results_left -= 1
            cycle += 1
