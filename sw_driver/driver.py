"""The device driver: the command set as methods, over any transport.

A transport moves words; it knows nothing of commands. ``transact(words, count)`` sends command
words and returns the next ``count`` response words. The same :class:`Accelerator` drives the
behavioural device (:class:`sw_driver.behavioural.BehaviouralTransport`), the RTL under
Verilator (``sim.harness.HarnessTransport``) and a board over a serial link
(:class:`sw_driver.serial_link.SerialTransport`), so whatever runs on one runs on all.
"""

from dataclasses import dataclass

import numpy as np

from golden import trits
from hw.commands import STATUS, STATUS_MAGIC, CommandFormat, ErrorCode, Opcode, unpack_header
from hw.words import pack_ints

__all__ = ["DeviceError", "Transport", "Counters", "Accelerator"]


class DeviceError(RuntimeError):
    """The device reported an error, or answered what it should not have."""


class Transport:
    """Moves command words to a device and response words back.

    ``burst_words`` is how many command words the transport can have on their way to a device
    that is not taking them: ``None`` when flow control reaches back to the host (a stream, the
    model), a buffer's size on a link without it (a UART). The device takes every command's words
    at once except a GEMM's tokens, which wait while their results leave, so
    :meth:`Accelerator.gemm` keeps each GEMM command within ``burst_words``.
    """

    burst_words = None

    def transact(self, words, count):
        """Send ``words``; return the next ``count`` response words."""
        raise NotImplementedError

    def resynchronise(self):
        """Bring the device back in step after a response that is not the one owed, and say how
        (for the driver's error). Words are never lost, added or corrupted on a stream or in the
        model: there is nothing to do."""
        return ""


@dataclass
class Counters:
    """A snapshot of the device's performance counters."""
    cycles_busy: int
    cycles_idle: int
    cycles_stalled: int
    macs: int
    words_read: list

    def __sub__(self, other):
        def delta(a, b):
            return (a - b) & 0xFFFF_FFFF          # the counters wrap at 32 bits
        return Counters(*(delta(getattr(self, f), getattr(other, f))
                          for f in ("cycles_busy", "cycles_idle", "cycles_stalled", "macs")),
                        [delta(a, b) for a, b in zip(self.words_read, other.words_read)])

    @property
    def cycles_working(self):
        """Cycles spent inside commands (busy or waiting on the host)."""
        return self.cycles_busy + self.cycles_stalled


class Accelerator:
    """One device of ``config`` behind ``transport``."""

    MAX_ITEMS = 0xFFFF                         # the header's ``b`` field

    def __init__(self, transport, config):
        self.transport = transport
        self.config = config
        self.format = CommandFormat(config)

    def _respond(self, words, opcode, count):
        out = self.transport.transact(words, count + 1)
        header = unpack_header(out[0])
        # The response header repeats the opcode, and GEMV's rows, GEMM's tokens or
        # READ_LOGITS' logits (``b``), or counts the data words that follow.
        owed = (unpack_header(words[0])["b"]
                if opcode in (Opcode.GEMV, Opcode.GEMM, Opcode.READ_LOGITS) else count)
        if (header["opcode"], header["b"]) != (opcode.value, owed):
            how = self.transport.resynchronise()
            raise DeviceError(f"expected a {opcode.name} response, got header {out[0]:#010x}"
                              + (f"; {how}" if how else ""))
        if header["a"] != ErrorCode.NONE.value:
            raise DeviceError(f"device error {ErrorCode(header['a']).name} "
                              f"(reported with {opcode.name})")
        return out[1:]

    def status(self):
        data = self._respond(self.format.simple(Opcode.READ_STATUS), Opcode.READ_STATUS,
                             len(STATUS))
        status = dict(zip(STATUS, data))
        if status["magic"] != STATUS_MAGIC:
            raise DeviceError(f"not a Bittern device of this format version: magic "
                              f"{status['magic']:#010x}, expected {STATUS_MAGIC:#010x}")
        return status

    def check(self):
        """Raise :class:`DeviceError` naming the sticky error, if one is set."""
        error = self.status()["error"]
        if error != ErrorCode.NONE.value:
            raise DeviceError(f"device error {ErrorCode(error).name}")

    def clear_errors(self):
        self.transport.transact(self.format.simple(Opcode.CLEAR_ERRORS), 0)

    def counters(self):
        names = self.format.counter_names
        data = self._respond(self.format.simple(Opcode.READ_COUNTERS), Opcode.READ_COUNTERS,
                             len(names))
        return Counters(*data[:4], list(data[4:]))

    def write_weights(self, bank, addr, trit_rows):
        """Write ``trit_rows`` (words x lanes trits) into ``bank`` from word ``addr``."""
        words = [w[0] for w in trits.pack_words(trit_rows, self.format.lanes)]
        for start in range(0, len(words), self.MAX_ITEMS):
            chunk = words[start:start + self.MAX_ITEMS]
            self.transport.transact(self.format.write_weights(bank, addr + start, chunk), 0)

    def load_activations(self, x_q):
        """Load one activation vector (zero-padded to whole chunks) at chunk 0."""
        lanes = self.format.lanes
        padded = np.zeros(-(-len(x_q) // lanes) * lanes, np.int8)
        padded[:len(x_q)] = x_q
        chunks = pack_ints(padded.reshape(-1, lanes), self.config.act_bits)
        self.transport.transact(self.format.load_acts(0, chunks), 0)

    def gemv(self, base, rows, words_per_row):
        """Results ``(rows, banks)`` as int64."""
        data = self._respond(self.format.gemv(base, rows, words_per_row), Opcode.GEMV,
                             rows * self.format.banks)
        return _results(data).reshape(rows, -1)

    def load_tensor(self, tensor, items):
        """Load a resident tensor's ``items`` (unsigned ints of its width) from item 0."""
        for start in range(0, len(items), self.MAX_ITEMS):
            self.transport.transact(self.format.load_tensor(
                tensor, start, items[start:start + self.MAX_ITEMS]), 0)

    def generate(self, prompt, tokens):
        """Prefill ``prompt`` (token ids) on the resident units and generate ``tokens``
        greedily: their ids."""
        return self._respond(self.format.generate(prompt, tokens), Opcode.GENERATE, tokens)

    def read_logits(self):
        """The integer logits the last generated token was chosen from (int64 ``(vocab,)``),
        read back in commands of at most :attr:`MAX_ITEMS`."""
        fmt, parts = self.format, []
        for start in range(0, fmt.vocab, self.MAX_ITEMS):
            count = min(self.MAX_ITEMS, fmt.vocab - start)
            parts.append(fmt.logits(self._respond(fmt.read_logits(start, count),
                                                  Opcode.READ_LOGITS,
                                                  count * fmt.logit_words)))
        return np.concatenate(parts)

    def load_tile(self, w_t):
        """Load a ``(cols, rows)`` tile of weights (``w_t[n, k]``) into the array."""
        self.transport.transact(self.format.load_tile(w_t), 0)

    def gemm(self, x_q):
        """Stream tokens ``(T, rows)`` through the loaded tile: results ``(T, cols)``.

        Tokens go in commands of at most :attr:`MAX_ITEMS`, and of at most the transport's
        ``burst_words`` words (header included) where it has a limit.
        """
        per_command = self.MAX_ITEMS
        if self.transport.burst_words is not None:
            per_command = max(1, min(per_command, (self.transport.burst_words - 1)
                                     // self.format.token_words))
        out = []
        for start in range(0, len(x_q), per_command):
            tokens = pack_ints(x_q[start:start + per_command], self.config.act_bits)
            data = self._respond(self.format.gemm(tokens), Opcode.GEMM,
                                 len(tokens) * self.format.cols)
            out += data
        return _results(out).reshape(len(x_q), self.format.cols)


def _results(words):
    """Response words as the signed 32-bit results they carry, in int64."""
    return np.array(words, np.uint32).view(np.int32).astype(np.int64)
