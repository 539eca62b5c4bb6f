"""Stimulus for the device testbench: operations whose golden results are known, drawn so that
a short run reaches the corners the coverage model (:mod:`sim.coverage`) names.

A :class:`Bag` deals its items in a random order, each once a round: every corner comes up
within a round instead of at the mercy of a uniform draw (``words_per_row = act_words`` is one
value among hundreds, an all -1 bank word one of ``3**lanes``).
"""

from dataclasses import dataclass

import numpy as np

from golden import trits
from golden.bitlinear import bitlinear_int, matmul_int
from hw.commands import RESIDENT_OPCODES, ErrorCode, Opcode, Tensor
from hw.commands import pack_header as header
from hw.words import pack_ints

from .coverage import token_corners, words_per_row_corners

__all__ = ["Bag", "WEIGHTS", "ACTIVATIONS", "weights", "activations", "Gemv", "gemv", "Gemm",
           "gemm", "load", "bad_commands", "fuzz_words"]

WEIGHTS = ("random", "sparse", "all +1", "all -1", "all 0")
ACTIVATIONS = ("random", "extremes", "all -128", "all 127", "all 0")


class Bag:
    """Deals ``items`` in a random order (``rng``: a NumPy generator), each once a round."""

    def __init__(self, rng, items):
        self._rng, self._items, self._left = rng, list(items), []

    def draw(self, allowed=None):
        """The next item; one that is not ``allowed(item)`` now stays for a later draw."""
        for _ in range(2):
            for position, item in enumerate(self._left):
                if allowed is None or allowed(item):
                    return self._left.pop(position)
            self._left += [self._items[i] for i in self._rng.permutation(len(self._items))]
        raise ValueError("no item may be drawn")


def weights(rng, pattern, shape, low=-1, high=1):
    """Weights in ``[low, high]`` of a :data:`WEIGHTS` pattern (``sparse``: four in five 0)."""
    if pattern in ("random", "sparse"):
        values = rng.integers(low, high + 1, shape)
        if pattern == "sparse":
            values[rng.random(shape) < 0.8] = 0
        return values
    return np.full(shape, {"all +1": 1, "all -1": -1, "all 0": 0}[pattern], np.int64)


def activations(rng, pattern, shape):
    """int8 activations of an :data:`ACTIVATIONS` pattern (``extremes``: -128, 127 and 0 among
    random values; golden's quantiser never gives -128, the device must take it)."""
    if pattern in ("random", "extremes"):
        values = rng.integers(-128, 128, shape)
        if pattern == "extremes":
            corner = rng.random(shape)
            values[corner < 0.5] = rng.choice([-128, 127, 0], values[corner < 0.5].shape)
        return values.astype(np.int8)
    return np.full(shape, {"all -128": -128, "all 127": 127, "all 0": 0}[pattern], np.int8)


@dataclass(frozen=True)
class Gemv:
    """A GEMV and its operands: ``setup`` writes every bank's rows at ``base`` and the
    activations from chunk 0, ``command`` runs it."""
    setup: list
    command: list
    weights: np.ndarray          # (banks, rows, k) trits
    x_q: np.ndarray              # (k,) int8
    words_per_row: int

    @property
    def words(self):
        return self.setup + self.command

    def expected(self):
        """Golden's results, ``(rows, banks)``."""
        return np.stack([bitlinear_int(self.x_q, w) for w in self.weights], axis=1)


def gemv(rng, fmt, *, words_per_row, rows=None, pattern="random", acts="random", max_rows=8):
    """A GEMV of ``words_per_row`` (an int, or a label of
    :func:`~sim.coverage.words_per_row_corners`), clipped to what the buffers hold, with a
    random K in its last word (K <= max_k) and base, and ``rows`` (default: random up to
    ``max_rows``) as far as a bank holds them."""
    if isinstance(words_per_row, str):
        words_per_row = words_per_row_corners(fmt)[words_per_row]
    words_per_row = min(max(words_per_row, 1), fmt.act_words, fmt.depth)
    max_k = fmt.config.max_k
    k = int(rng.integers((words_per_row - 1) * fmt.lanes + 1,
                         min(words_per_row * fmt.lanes, max_k) + 1))
    most = fmt.depth // words_per_row
    rows = min(rows, most) if rows else int(rng.integers(1, min(max_rows, most) + 1))
    base = int(rng.integers(0, fmt.depth - rows * words_per_row + 1))
    w = weights(rng, pattern, (fmt.banks, rows, k))
    x_q = activations(rng, acts, k)
    padded = np.zeros((fmt.banks, rows, words_per_row * fmt.lanes), np.int8)
    padded[:, :, :k] = w
    setup = []
    for bank in range(fmt.banks):
        bank_words = trits.pack_words(padded[bank].reshape(-1, fmt.lanes), fmt.lanes)
        setup += fmt.write_weights(bank, base, [word[0] for word in bank_words])
    x_padded = np.zeros(words_per_row * fmt.lanes, np.int8)
    x_padded[:k] = x_q
    setup += fmt.load_acts(0, pack_ints(x_padded.reshape(-1, fmt.lanes), fmt.config.act_bits))
    return Gemv(setup, fmt.gemv(base, rows, words_per_row), w, x_q, words_per_row)


@dataclass(frozen=True)
class Gemm:
    """A GEMM and its operands: ``setup`` loads the tile ``w_t`` (cols x rows), ``command``
    streams the tokens ``x_q`` (tokens x rows)."""
    setup: list
    command: list
    w_t: np.ndarray
    x_q: np.ndarray

    @property
    def words(self):
        return self.setup + self.command

    def expected(self):
        """Golden's results, ``(tokens, cols)``."""
        return matmul_int(self.x_q, self.w_t)


def gemm(rng, fmt, *, tokens, pattern="random", acts="random"):
    """A GEMM of ``tokens`` (an int, or a label of :func:`~sim.coverage.token_corners`; beyond
    the FIFO is up to three FIFOs), weights of the PE kind's range in ``pattern``."""
    if isinstance(tokens, str):
        corner = token_corners(fmt)[tokens]
        tokens = int(rng.integers(corner, 3 * corner + 1)) if tokens == "beyond the FIFO" \
            else corner
    low, high = fmt.pe.weight_range
    w_t = weights(rng, pattern, (fmt.cols, fmt.rows), low, high)
    x_q = activations(rng, acts, (tokens, fmt.rows))
    return Gemm(fmt.load_tile(w_t), fmt.gemm(pack_ints(x_q, fmt.config.act_bits)), w_t, x_q)


def load(rng, fmt, op, *, count=8, pattern="random", acts="random"):
    """A WRITE_WEIGHTS (to a random bank), LOAD_ACTS or LOAD_TILE of ``count`` items (as many
    as fit; a tile is always whole) at a random address, of random data in ``pattern`` (weights)
    or ``acts``. Activations past ``max_k`` are 0, as a host packs them."""
    if op is Opcode.LOAD_TILE:
        return fmt.load_tile(weights(rng, pattern, (fmt.cols, fmt.rows), *fmt.pe.weight_range))
    if op is Opcode.WRITE_WEIGHTS:
        count = min(count, fmt.depth)
        rows = weights(rng, pattern, (count, fmt.lanes))
        return fmt.write_weights(int(rng.integers(fmt.banks)),
                                 int(rng.integers(0, fmt.depth - count + 1)),
                                 [word[0] for word in trits.pack_words(rows, fmt.lanes)])
    count = min(count, fmt.act_words)
    addr = int(rng.integers(0, fmt.act_words - count + 1))
    chunks = activations(rng, acts, (count, fmt.lanes))
    chunks.reshape(-1)[max(fmt.config.max_k - addr * fmt.lanes, 0):] = 0
    return fmt.load_acts(addr, pack_ints(chunks, fmt.config.act_bits))


class _Recorder:
    """A transport that keeps the command words it is given (for commands with no answer)."""
    burst_words = None

    def __init__(self):
        self.words = []

    def transact(self, words, count):
        assert count == 0, "a recorded command cannot be answered"
        self.words += words
        return []


def resident_model(config, *, seed):
    """A random model of ``config``'s resident shape: ``(its load words, its golden integer
    decoder)``, the words every tensor in one command as ``sw_driver.resident.load_model``
    sends them."""
    import dataclasses

    from golden import IntegerModel, ModelWeights
    from sw_driver.driver import Accelerator
    from sw_driver.resident import load_model, model_config

    shape = dataclasses.replace(model_config(config), rope_theta=10000.0)
    weights = ModelWeights.random(shape, seed=seed)
    golden = IntegerModel(shape, weights)
    recorder = _Recorder()
    load_model(Accelerator(recorder, config), weights, golden.prepared)
    return recorder.words, golden


def bad_commands(fmt):
    """One malformed command of every kind, with the error code each must set: every opcode
    with a header field that must be 0 set, and every check of a length, bank, address, shape
    and tile. Each stands alone; NO_TILE needs no tile loaded."""
    return [
        ([header(0x7F)], ErrorCode.UNKNOWN_OPCODE),
        ([header(Opcode.NOP, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.READ_STATUS, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.READ_COUNTERS, 0, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.CLEAR_ERRORS, 0, 2)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.LOAD_TILE, 0, 3)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.LOAD_ACTS, 1, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.GEMV, 2, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.GEMM, 3, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.WRITE_WEIGHTS, fmt.banks, 1), 0, 0], ErrorCode.BAD_BANK),
        ([header(Opcode.WRITE_WEIGHTS, 0, 0)], ErrorCode.BAD_LENGTH),
        ([header(Opcode.LOAD_ACTS, 0, 0)], ErrorCode.BAD_LENGTH),
        ([header(Opcode.GEMV, 0, 0)], ErrorCode.BAD_LENGTH),
        ([header(Opcode.GEMM, 0, 0)], ErrorCode.BAD_LENGTH),
        (fmt.write_weights(0, fmt.depth - 1, [0, 0]), ErrorCode.BAD_ADDRESS),
        ([header(Opcode.WRITE_WEIGHTS, 0, 1), 0xFFFF_FFFF], ErrorCode.BAD_ADDRESS),
        (fmt.load_acts(fmt.act_words, [0]), ErrorCode.BAD_ADDRESS),
        (fmt.gemv(0, 1, 0), ErrorCode.BAD_SHAPE),
        (fmt.gemv(0, 1, fmt.act_words + 1), ErrorCode.BAD_SHAPE),
        (fmt.gemv(fmt.depth - 1, 2, 1), ErrorCode.BAD_ADDRESS),
        (fmt.gemv(0, 0xFFFF, 0xFFFF_FFFF), ErrorCode.BAD_SHAPE),
        ([header(Opcode.GEMM, 0, 1)], ErrorCode.NO_TILE),
        *(_resident_bad_commands(fmt) if fmt.tensors else
          [([header(op)], ErrorCode.UNKNOWN_OPCODE) for op in RESIDENT_OPCODES]),
    ]


def _resident_bad_commands(fmt):
    """The resident opcodes' bad commands on a device with resident units, none loaded and
    nothing generated."""
    items = fmt.tensors[Tensor.ROPE_STEPS][0]
    return [
        ([header(Opcode.LOAD_TENSOR, len(Tensor), 1)], ErrorCode.BAD_TENSOR),
        ([header(Opcode.LOAD_TENSOR, 0, 0)], ErrorCode.BAD_LENGTH),
        ([header(Opcode.LOAD_TENSOR, Tensor.ROPE_STEPS.value, 2), items - 1],
         ErrorCode.BAD_ADDRESS),
        ([header(Opcode.GENERATE, 1, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.GENERATE, 0, 0)], ErrorCode.BAD_LENGTH),
        ([header(Opcode.GENERATE, 0, 1)], ErrorCode.NOT_LOADED),   # refused at its header
        ([header(Opcode.READ_LOGITS, 1, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.READ_LOGITS, 0, 0)], ErrorCode.BAD_LENGTH),
        ([header(Opcode.READ_LOGITS, 0, 1)], ErrorCode.NO_LOGITS),     # refused at its header
    ]


def fuzz_words(rng, fmt, count):
    """Random words: half uniformly random, half headers of real opcodes with small fields."""
    words = []
    while len(words) < count:
        if rng.random() < 0.5:
            words.append(int(rng.integers(0, 1 << 32)))
        else:
            op = int(rng.choice([op.value for op in Opcode]))
            a = int(rng.choice([0, 0, 1, fmt.banks, 255]))
            b = int(rng.choice([0, 1, 2, 3, 255, 0xFFFF]))
            b = min(b, 255) if op == Opcode.GEMM.value else b     # keep the run short
            words.append(op | a << 8 | b << 16)
            words += [int(rng.integers(0, 64)) for _ in range(int(rng.integers(0, 4)))]
    return words[:count]
