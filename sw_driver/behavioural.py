"""The behavioural device: the same command words in, the same response words out.

It follows :mod:`hw.commands` word for word (validation, dropping, sticky errors, the order of
response words) and computes every result with golden's integer core, so the RTL testbench can
compare the device with it exactly, and the driver can run whole models without a simulator.
Weight codes decode as the hardware computes with them (:mod:`golden.trits` for the banks, the
PE kind's codec for the array's tile): an invalid trit code (``0b10``) acts as zero.

Counters: ``macs`` (the non-zero weights met: a zero weight is a skip) and ``words_read`` are
exact. The cycle counters are exact for a host that offers every word as soon as the device can
take it and takes every response word at once: ``cycles_busy`` from :mod:`sw_driver.timing`,
``cycles_idle`` one cycle per header, ``cycles_stalled`` none. For a host of any other timing,
:class:`sw_driver.cycles.DeviceCycles` steps the device's control cycle by cycle around this
device and reads out the counters the RTL does.
"""

import numpy as np

from golden import trits
from golden.bitlinear import bitlinear_int, matmul_int
from hw.commands import (ARGUMENT_WORDS, STATUS, STATUS_FLAGS, STATUS_MAGIC, WORD_BITS,
                         CommandFormat, ErrorCode, Opcode, Tensor, pack_header, unpack_header)
from hw.resident_core import layout_core
from hw.words import unpack_ints

from .driver import DeviceError, Transport
from .resident import image_decoder
from .timing import CommandTiming

__all__ = ["BehaviouralDevice", "BehaviouralTransport"]

_MASK = (1 << WORD_BITS) - 1


class BehaviouralDevice:
    """Executes command words; :meth:`feed` returns the response words they produce."""

    def __init__(self, config):
        self.config = config
        self.format = CommandFormat(config)
        self.timing = CommandTiming(config)
        self.reset()

    def reset(self):
        """Power-on state: memories are not cleared (as in the RTL), everything else is."""
        fmt = self.format
        if not hasattr(self, "banks"):
            self.banks = np.zeros((fmt.banks, fmt.depth, fmt.lanes), np.int8)
            self.acts = np.zeros((fmt.act_words, fmt.lanes), np.int8)
            self.tensors = {tensor: [0] * items for tensor, (items, _) in fmt.tensors.items()}
            # The core's logits memory: the last GENERATE's last position.
            self.logits = np.zeros(fmt.vocab, np.int64)
        self.loaded = set()             # the tensors loaded to their last item
        self.have_logits = False        # a GENERATE has finished since reset
        self.tile = np.zeros((fmt.rows, fmt.cols), np.int64)       # tile[k, n]
        self.tile_loaded = False
        self.error = ErrorCode.NONE.value
        self.errors = 0
        self.macs = 0
        self.busy = self.idle = 0
        self.words_read = [0] * fmt.banks
        self._out = []
        self._words, self._next = [], 0
        self._parser = self._commands()
        self._wants = next(self._parser)

    def feed(self, words):
        """Process command words; return the response words they completed."""
        self._words.extend(int(word) & _MASK for word in words)
        while True:
            least, most = self._wants
            ready = len(self._words) - self._next
            if ready < least:
                break
            take = min(ready - ready % least, most)
            chunk = self._words[self._next:self._next + take]
            self._next += take
            self._wants = self._parser.send(chunk)
        del self._words[:self._next]
        self._next = 0
        out, self._out = self._out, []
        return out

    # The command parser: it yields ``(least, most)`` words it wants next (whole items of a
    # command's data come in any number at once) and is sent a list of that many. --------

    def _fail(self, code):
        self.errors = (self.errors + 1) & _MASK
        if self.error == ErrorCode.NONE.value:
            self.error = code.value

    def _word(self):
        (word,) = yield 1, 1
        return word

    def _respond(self, opcode, b, data):
        self._out.append(pack_header(opcode, self.error, b))
        self._out.extend(int(v) & _MASK for v in data)

    def _commands(self):
        fmt = self.format
        while True:
            header = unpack_header((yield from self._word()))
            self.idle += 1                      # the cycle the header is decoded in
            op, a, b = header["opcode"], header["a"], header["b"]
            problem = fmt.header_error(op, a, b, tile_loaded=self.tile_loaded,
                                       loaded=self.loaded, logits=self.have_logits)
            if problem:
                self._fail(problem)
                continue
            op = Opcode(op)
            args = []
            for _ in range(ARGUMENT_WORDS.get(op, 0)):
                args.append((yield from self._word()))
            problem = fmt.argument_error(op, b, args, tensor=a)
            if problem:
                self._fail(problem)
                self.busy += self.timing.rejected_after_arguments(op)
                continue
            if op is Opcode.READ_COUNTERS:      # read as the header leaves, RESPOND uncounted
                self._respond(op, len(fmt.counter_names), self.counters())
                self.busy += self.timing.simple(op)
                continue
            self.busy += (self.timing.gemv(b, args[1]) if op is Opcode.GEMV else
                          self.timing.gemm(b) if op is Opcode.GEMM else
                          0 if op is Opcode.GENERATE else     # once its prompt is in
                          self.timing.simple(op, b, a))
            if op is Opcode.WRITE_WEIGHTS:
                yield from self._data(b, fmt.weight_word_words, lambda done, values:
                                      self._write_weights(a, args[0] + done, values))
            elif op is Opcode.LOAD_ACTS:
                yield from self._data(b, fmt.act_chunk_words, lambda done, values:
                                      self._load_acts(args[0] + done, values))
            elif op is Opcode.GEMV:
                self._respond(op, b, self._gemv(args[0], b, args[1]).ravel())
            elif op is Opcode.LOAD_TILE:
                self.tile_loaded = False
                yield from self._data(fmt.rows, fmt.tile_row_words, self._load_tile)
                self.tile_loaded = True
            elif op is Opcode.GEMM:
                self._out.append(pack_header(op, self.error, b))
                yield from self._data(b, fmt.token_words, lambda done, values:
                                      self._gemm(values))
            elif op is Opcode.READ_STATUS:
                flags = int(self.tile_loaded) << STATUS_FLAGS["tile_loaded"].offset
                self._respond(op, len(STATUS), [STATUS_MAGIC, self.error, self.errors, flags])
            elif op is Opcode.CLEAR_ERRORS:
                self.error, self.errors = ErrorCode.NONE.value, 0
            elif op is Opcode.LOAD_TENSOR:
                tensor = Tensor(a)
                items, words = fmt.tensors[tensor]
                yield from self._data(b, words, lambda done, values: self._store(
                    tensor, args[0] + done, values))
                if args[0] + b == items:
                    self.loaded.add(tensor)
            elif op is Opcode.GENERATE:
                prompt = []
                yield from self._data(args[0], 1, lambda done, values: prompt.extend(values))
                if max(prompt) >= fmt.vocab:
                    self.busy += self.timing.generate(len(prompt), 0)
                    self._fail(ErrorCode.BAD_TOKEN)
                    continue
                self.busy += self.timing.generate(len(prompt), b)
                self._core_reads(len(prompt) - 1, last=False)
                self._core_reads(b, last=True)
                tokens, self.logits = image_decoder(self.config, self.tensors,
                                                    self.banks).generate(prompt, b, logits=True)
                self.have_logits = True
                self._respond(op, b, tokens)
            elif op is Opcode.READ_LOGITS:
                self._respond(op, b, [word for logit in self.logits[args[0]:args[0] + b]
                                      for word in fmt.split(int(logit), fmt.logit_words)])

    def _core_reads(self, tokens, *, last):
        """The bank reads of the resident core's ``tokens`` runs (``last`` or not): each
        matrix a token reads (``ResidentCore.placements_read``) once, each bank reading its
        row slots (padding included) and meeting their non-zero weights."""
        for placement in layout_core(self.config).placements_read(last):
            span = self.banks[:, placement.base:placement.base + placement.words]
            self.macs += tokens * int(np.count_nonzero(span))
            for bank in range(self.format.banks):
                self.words_read[bank] += tokens * placement.words

    def _data(self, count, words, consume):
        """Take a command's ``count`` data items of ``words`` words each, as they come: each
        chunk of whole items goes to ``consume(items before it, their values)``."""
        done = 0
        while done < count:
            chunk = yield words, (count - done) * words
            values = [sum(chunk[i + n] << (WORD_BITS * n) for n in range(words))
                      for i in range(0, len(chunk), words)]
            consume(done, values)
            done += len(values)

    def _write_weights(self, bank, addr, values):
        words = np.array(values, dtype=object) & ((1 << self.config.word_bits) - 1)
        self.banks[bank, addr:addr + len(values)] = trits.unpack_words(
            words, self.format.lanes, invalid_as_zero=True).reshape(len(values), -1)

    def _store(self, tensor, addr, values):
        self.tensors[tensor][addr:addr + len(values)] = values

    def _load_tile(self, done, values):
        for k, row in enumerate(values, start=done):
            self.tile[k] = self.format.tile_row_weights(row)

    def _load_acts(self, addr, values):
        self.acts[addr:addr + len(values)] = unpack_ints(values, self.config.act_bits,
                                                         self.format.lanes)

    def _gemm(self, values):
        tokens = unpack_ints(values, self.config.act_bits, self.format.rows).astype(np.int8)
        self.macs += len(tokens) * int(np.count_nonzero(self.tile))
        self._out.extend(int(v) & _MASK for v in matmul_int(tokens, self.tile.T).ravel())

    def _gemv(self, base, rows, words_per_row):
        """Results ``(rows, banks)``: bank b's row r dotted with the activation chunks."""
        fmt = self.format
        span = self.banks[:, base:base + rows * words_per_row]        # (banks, words, lanes)
        weights = span.reshape(fmt.banks * rows, words_per_row * fmt.lanes)
        x_q = self.acts[:words_per_row].reshape(-1)
        self.macs += int(np.count_nonzero(span))
        for bank in range(fmt.banks):
            self.words_read[bank] += rows * words_per_row
        return bitlinear_int(x_q, weights).reshape(fmt.banks, rows).T

    def counters(self):
        """Counter values, in ``CommandFormat.counter_names`` order (for a host that never waits:
        see the module docstring)."""
        return [self.busy & _MASK, self.idle & _MASK, 0, self.macs & _MASK,
                *[w & _MASK for w in self.words_read]]


class BehaviouralTransport(Transport):
    """The behavioural device as a transport: bit-exact, with the RTL's busy-cycle counts."""

    def __init__(self, config):
        self.device = BehaviouralDevice(config)

    def transact(self, words, count):
        out = self.device.feed(words)
        if len(out) != count:
            raise DeviceError(f"expected {count} response words, the device sent {len(out)}")
        return out
