"""The device's command format: the one definition shared by hw/, sim/ and sw_driver/.

The host talks to the device through two streams of 32-bit words. A command is a header word,
then its argument words, then its data words; a command that answers sends a response: a header
word, then its data words. Wide values (weight words, activation chunks, tile rows, tokens) are
split into 32-bit words, least significant first; each result is one word, sign-extended. On a
byte link (the boards' UART) a word is 4 bytes, least significant first.

Command header (:data:`HEADER`): ``opcode`` (bits 0-7), ``a`` (8-15), ``b`` (16-31).
:data:`COMMANDS` says what every opcode carries: its header fields, argument words, data words
and response (``bittern generate`` writes it out, with this configuration's word counts, as the
device's interface page).

A response header has the same layout: ``opcode`` of the command, ``a`` = the sticky error code,
``b`` = rows (GEMV), tokens (GEMM, GENERATE) or logits (READ_LOGITS) as in the command, or the
number of data words that follow (READ_STATUS, READ_COUNTERS).

Validation: every header and argument is checked before any data word is taken. A bad command
sets the sticky error (the first error is kept until ``CLEAR_ERRORS``; ``errors`` counts them all),
is dropped (its header and arguments are consumed, its data words are not: they are read as
commands), and the device goes on accepting commands. Every valid command finishes in a bounded
number of words, so a host that keeps sending ``READ_STATUS`` always gets an answer.
"""

import math
from dataclasses import dataclass

import numpy as np
from amaranth.lib import data, enum

from .pe import PE_KINDS

__all__ = ["WORD_BITS", "WORD_BYTES", "Opcode", "ErrorCode", "Tensor", "TENSOR_PORTS",
           "RESIDENT_OPCODES", "RESIDENT_ERRORS", "HEADER", "STATUS", "STATUS_FLAGS",
           "STATUS_MAGIC", "Command", "COMMANDS", "ARGUMENT_WORDS", "words_for", "pack_header",
           "unpack_header", "CommandFormat"]

WORD_BITS = 32
WORD_BYTES = WORD_BITS // 8
STATUS_MAGIC = 0xB177_E201      # "Bittern", format version 1


class Opcode(enum.Enum, shape=8):
    NOP = 0x00
    WRITE_WEIGHTS = 0x01
    LOAD_ACTS = 0x02
    GEMV = 0x03
    LOAD_TILE = 0x04
    GEMM = 0x05
    READ_STATUS = 0x06
    READ_COUNTERS = 0x07
    CLEAR_ERRORS = 0x08
    LOAD_TENSOR = 0x09
    GENERATE = 0x0A
    READ_LOGITS = 0x0B


class ErrorCode(enum.Enum, shape=8):
    NONE = 0x00
    UNKNOWN_OPCODE = 0x01       # opcode not in Opcode
    RESERVED_FIELD = 0x02       # a header field that must be 0 is not
    BAD_BANK = 0x03             # WRITE_WEIGHTS bank >= banks
    BAD_ADDRESS = 0x04          # addr + count beyond the bank or the activation buffer
    BAD_LENGTH = 0x05           # count, rows or tokens of 0
    BAD_SHAPE = 0x06            # GEMV words_per_row of 0 or beyond the activation buffer
    NO_TILE = 0x07              # GEMM before a complete LOAD_TILE
    BAD_TENSOR = 0x08           # LOAD_TENSOR of a tensor not in Tensor
    NOT_LOADED = 0x09           # GENERATE before every resident tensor is loaded to its end
    BAD_TOKEN = 0x0A            # a GENERATE prompt token >= vocab
    NO_LOGITS = 0x0B            # READ_LOGITS before a GENERATE has finished since reset


class Tensor(enum.Enum, shape=8):
    """The resident decoder's on-chip tensors (LOAD_TENSOR's ``a``); the ternary weights go
    into the banks with WRITE_WEIGHTS, as in offload mode."""
    GAINS = 0                   # every norm's gains: a word of pim.lanes int16 an item
    EMBEDDING = 1               # the tied int8 embedding: a word of the head's lanes an item
    ROW_SCALES = 2              # the embedding's 17-bit row scales
    ROPE_STEPS = 3              # RoPE's 32-bit phase steps
    CONSTANTS = 4               # the constants records: one a layer, then the model's


# The resident core's port each tensor is loaded through (hw.resident_core.LOAD_PORTS).
TENSOR_PORTS = {Tensor.GAINS: "gain_stream", Tensor.EMBEDDING: "emb_stream",
                Tensor.ROW_SCALES: "scale_stream", Tensor.ROPE_STEPS: "step_stream",
                Tensor.CONSTANTS: "const_stream"}

# Only a device with resident units (config.resident) knows these opcodes: elsewhere they are
# UNKNOWN_OPCODE, and these error codes cannot be raised.
RESIDENT_OPCODES = (Opcode.LOAD_TENSOR, Opcode.GENERATE, Opcode.READ_LOGITS)
RESIDENT_ERRORS = (ErrorCode.BAD_TENSOR, ErrorCode.NOT_LOADED, ErrorCode.BAD_TOKEN,
                   ErrorCode.NO_LOGITS)


HEADER = data.StructLayout({"opcode": 8, "a": 8, "b": 16})
STATUS = ["magic", "error", "errors", "flags"]       # the READ_STATUS response data words
# The ``flags`` status word, bit 0 first.
STATUS_FLAGS = data.StructLayout({"tile_loaded": 1})


@dataclass(frozen=True)
class Command:
    """What one opcode carries. ``a`` and ``b`` name the header fields (``"0"``: must be 0);
    ``data`` and ``response`` describe the words after the arguments and the response's data
    words (``""``: none), with ``{name}`` for a :class:`CommandFormat` size."""
    opcode: Opcode
    summary: str
    a: str = "0"
    b: str = "0"
    arguments: tuple = ()
    data: str = ""
    response: str = ""


COMMANDS = {command.opcode: command for command in [
    Command(Opcode.NOP, "do nothing"),
    Command(Opcode.WRITE_WEIGHTS, "write weight words into one bank", a="bank", b="count",
            arguments=("addr",),
            data="count weight words of {weight_word_words} word(s), for bank words addr .. "
                 "addr + count - 1"),
    Command(Opcode.LOAD_ACTS, "write activation chunks into the activation buffer",
            b="count", arguments=("addr",),
            data="count activation chunks of {act_chunk_words} word(s), for chunks addr .. "
                 "addr + count - 1"),
    Command(Opcode.GEMV, "all-bank GEMV: every bank dots rows of words_per_row words from "
            "base with the activation chunks 0 ..", b="rows", arguments=("base", "words_per_row"),
            response="rows x {banks} results; bank b's result for row r is word r * {banks} + b"),
    Command(Opcode.LOAD_TILE, "load a weight tile into the array",
            data="{rows} tile rows (k = 0 first) of {tile_row_words} word(s)"),
    Command(Opcode.GEMM, "stream tokens through the loaded tile", b="tokens",
            data="tokens of {token_words} word(s) ({rows} activations each)",
            response="tokens x {cols} results, one token's {cols} in a row"),
    Command(Opcode.READ_STATUS, "read the status registers",
            response="{status_words} words: " + ", ".join(STATUS)),
    Command(Opcode.READ_COUNTERS, "read the performance counters",
            response="{counter_words} words: {counters}"),
    Command(Opcode.CLEAR_ERRORS, "forget the sticky error and the error count"),
    Command(Opcode.LOAD_TENSOR, "write items of a resident tensor (resident units only)",
            a="tensor", b="count", arguments=("addr",),
            data="count items of the tensor's width, for items addr .. addr + count - 1"),
    Command(Opcode.GENERATE, "prefill a prompt and decode greedily (resident units only)",
            b="tokens", arguments=("prompt",),
            data="prompt token ids, one word each (prompt + tokens - 1 <= max_seq)",
            response="tokens words: each generated token id, sent as soon as it is known"),
    Command(Opcode.READ_LOGITS, "read back the integer logits the last generated token was "
            "chosen from (resident units only; once a GENERATE has finished since reset)",
            b="count",
            arguments=("addr",),
            response="count logits of {logit_words} word(s) each, sign-extended, for vocabulary "
                     "rows addr .. addr + count - 1"),
]}
ARGUMENT_WORDS = {opcode: len(command.arguments) for opcode, command in COMMANDS.items()
                  if command.arguments}
_HEADER_FIELDS = {name: (field.offset, field.width) for name, field in HEADER}
_OPCODES = {opcode.value for opcode in Opcode}


def words_for(bits):
    """32-bit words needed to carry a ``bits``-wide value."""
    return max(1, math.ceil(bits / WORD_BITS))


def pack_header(opcode, a=0, b=0):
    """A header word (command or response) from its fields."""
    fields = {"opcode": opcode.value if isinstance(opcode, Opcode) else opcode, "a": a, "b": b}
    word = 0
    for name, (offset, width) in _HEADER_FIELDS.items():
        if not 0 <= fields[name] < 1 << width:
            raise ValueError(f"header field {name} must be in [0, {(1 << width) - 1}], "
                             f"not {fields[name]}")
        word |= fields[name] << offset
    return word


def unpack_header(word):
    """A header word as a dict of its fields."""
    return {name: (word >> offset) & ((1 << width) - 1)
            for name, (offset, width) in _HEADER_FIELDS.items()}


class CommandFormat:
    """Word counts and encoders for one configuration (what the driver and testbenches use).

    A tile row holds ``cols`` weights of the configured PE kind (``pe``, from
    :data:`hw.pe.PE_KINDS`), each in its own code, weight ``n`` in bits
    ``[n * weight_bits, (n + 1) * weight_bits)``.
    """

    def __init__(self, config, *, pe=None):
        self.config = config
        self.pe = pe or PE_KINDS[config.array.pe]
        self.banks, self.lanes, self.depth = config.pim.banks, config.pim.lanes, config.pim.depth
        self.rows, self.cols = config.array.rows, config.array.cols
        self.act_words = config.act_words
        self.weight_bits = self.pe.weight_bits()
        self.weight_word_words = words_for(config.word_bits)
        self.act_chunk_words = words_for(self.lanes * config.act_bits)
        self.tile_row_words = words_for(self.weight_bits * self.cols)
        self.token_words = words_for(self.rows * config.act_bits)
        self.counter_names = ["cycles_busy", "cycles_idle", "cycles_stalled", "macs",
                              *[f"words_read_{b}" for b in range(self.banks)]]
        self.registers = [*STATUS, *self.counter_names]     # READ_STATUS, then READ_COUNTERS
        # The resident tensors: {Tensor: (items, item words)}; none without resident units.
        self.tensors = _resident_tensors(config) if config.resident else {}
        self.max_seq = config.resident.max_seq if config.resident else 0
        self.vocab = config.resident.vocab if config.resident else 0
        # READ_LOGITS: a logit's width (golden's) and its words.
        self.logit_bits = _logit_bits(config) if config.resident else 0
        self.logit_words = words_for(self.logit_bits)
        self.max_command_words = 1 + 2 + (1 << 16) * max(
            self.weight_word_words, self.act_chunk_words, self.token_words,
            *(words for _, words in self.tensors.values()))

    # Helpers shared by every encoder -------------------------------------------------------

    @staticmethod
    def split(value, words):
        """``value`` as ``words`` 32-bit words, least significant first (a negative one in
        two's complement, sign-extended)."""
        return [(value >> (WORD_BITS * i)) & 0xFFFF_FFFF for i in range(words)]

    @staticmethod
    def signed(word):
        """A 32-bit response word as a signed integer."""
        return word - (1 << 32) if word & (1 << 31) else word

    # Encoders -----------------------------------------------------------------------------

    def write_weights(self, bank, addr, words):
        return [pack_header(Opcode.WRITE_WEIGHTS, bank, len(words)), addr,
                *[w for word in words for w in self.split(word, self.weight_word_words)]]

    def load_acts(self, addr, chunks):
        return [pack_header(Opcode.LOAD_ACTS, 0, len(chunks)), addr,
                *[w for chunk in chunks for w in self.split(chunk, self.act_chunk_words)]]

    def gemv(self, base, rows, words_per_row):
        return [pack_header(Opcode.GEMV, 0, rows), base, words_per_row]

    def load_tile(self, w_t):
        """Load the ``(cols, rows)`` weight tile ``w_t`` (``w_t[n, k]``)."""
        return [pack_header(Opcode.LOAD_TILE),
                *[w for row in self.tile_rows(w_t) for w in self.split(row, self.tile_row_words)]]

    def tile_rows(self, w_t):
        """The tile's rows as integers: row ``k`` holds ``w_t[:, k]`` in the PE's codes."""
        w_t = np.asarray(w_t)
        if w_t.shape != (self.cols, self.rows):
            raise ValueError(f"a tile is (cols, rows) = {(self.cols, self.rows)}, not "
                             f"{w_t.shape}")
        codes = self.pe.encode_weights(w_t.T).astype(object)
        shifts = np.array([1 << (self.weight_bits * n) for n in range(self.cols)], object)
        return [int(row) for row in (codes * shifts).sum(axis=1)]

    def tile_row_weights(self, row):
        """Inverse of :meth:`tile_rows` for one row: the ``cols`` weights the PEs compute
        with (every code decodes)."""
        mask = (1 << self.weight_bits) - 1
        codes = np.array([(row >> (self.weight_bits * n)) & mask for n in range(self.cols)])
        return self.pe.decode_weights(codes)

    def load_tensor(self, tensor, addr, items):
        """Items (ints of the tensor's width) for items ``addr ..`` of ``tensor``."""
        words = self.tensors[tensor][1]
        return [pack_header(Opcode.LOAD_TENSOR, tensor.value, len(items)), addr,
                *[w for item in items for w in self.split(item, words)]]

    def generate(self, prompt, tokens):
        """Prefill ``prompt`` (token ids) and generate ``tokens`` more."""
        return [pack_header(Opcode.GENERATE, 0, tokens), len(prompt), *map(int, prompt)]

    def read_logits(self, addr, count):
        """Read back logits ``addr .. addr + count - 1``."""
        return [pack_header(Opcode.READ_LOGITS, 0, count), addr]

    def logits(self, words):
        """READ_LOGITS' response data words as the logits, int64."""
        width = WORD_BITS * self.logit_words
        values = [sum(words[i + n] << (WORD_BITS * n) for n in range(self.logit_words))
                  for i in range(0, len(words), self.logit_words)]
        return np.array([v - (1 << width) if v >> (width - 1) else v for v in values],
                        np.int64)

    def gemm(self, tokens):
        return [pack_header(Opcode.GEMM, 0, len(tokens)),
                *[w for token in tokens for w in self.split(token, self.token_words)]]

    @staticmethod
    def simple(opcode):
        """A command with no arguments and no data (``READ_STATUS``, ``CLEAR_ERRORS``...)."""
        return [pack_header(opcode)]

    # Validation: what the device's decoder decides, in the order it checks ------------------

    def header_error(self, opcode, a, b, *, tile_loaded, loaded=(), logits=False):
        """The :class:`ErrorCode` a header earns (``None``: valid), as the device decodes it;
        ``loaded`` holds the :class:`Tensor` s loaded to their last item, ``logits`` says a
        GENERATE has finished since reset."""
        if opcode not in _OPCODES or (Opcode(opcode) in RESIDENT_OPCODES and not self.tensors):
            return ErrorCode.UNKNOWN_OPCODE
        opcode = Opcode(opcode)
        if opcode is Opcode.LOAD_TENSOR:
            return (ErrorCode.BAD_TENSOR if a >= len(Tensor) else
                    ErrorCode.BAD_LENGTH if b == 0 else None)
        if opcode is Opcode.GENERATE:
            return (ErrorCode.RESERVED_FIELD if a else ErrorCode.BAD_LENGTH if b == 0 else
                    ErrorCode.NOT_LOADED if set(Tensor) - set(loaded) else None)
        if opcode is Opcode.READ_LOGITS:
            return (ErrorCode.RESERVED_FIELD if a else ErrorCode.BAD_LENGTH if b == 0 else
                    None if logits else ErrorCode.NO_LOGITS)
        if opcode is Opcode.WRITE_WEIGHTS:
            return (ErrorCode.BAD_BANK if a >= self.banks else
                    ErrorCode.BAD_LENGTH if b == 0 else None)
        if opcode in (Opcode.LOAD_ACTS, Opcode.GEMV, Opcode.GEMM):
            return (ErrorCode.RESERVED_FIELD if a else ErrorCode.BAD_LENGTH if b == 0 else
                    ErrorCode.NO_TILE if opcode is Opcode.GEMM and not tile_loaded else None)
        return ErrorCode.RESERVED_FIELD if a or b else None

    def argument_error(self, opcode, b, args, *, tensor=0):
        """The :class:`ErrorCode` a valid header's arguments earn (``None``: valid); for
        LOAD_TENSOR, ``tensor`` is its header's ``a``."""
        if opcode is Opcode.WRITE_WEIGHTS and args[0] + b > self.depth:
            return ErrorCode.BAD_ADDRESS
        if opcode is Opcode.LOAD_ACTS and args[0] + b > self.act_words:
            return ErrorCode.BAD_ADDRESS
        if opcode is Opcode.LOAD_TENSOR and args[0] + b > self.tensors[Tensor(tensor)][0]:
            return ErrorCode.BAD_ADDRESS
        if opcode is Opcode.GENERATE and not 1 <= args[0] <= self.max_seq + 1 - b:
            return ErrorCode.BAD_LENGTH
        if opcode is Opcode.READ_LOGITS and args[0] + b > self.vocab:
            return ErrorCode.BAD_ADDRESS
        if opcode is Opcode.GEMV:
            if not 1 <= args[1] <= self.act_words:
                return ErrorCode.BAD_SHAPE
            if args[0] + b * args[1] > self.depth:
                return ErrorCode.BAD_ADDRESS
        return None

    def sizes(self):
        """The word counts and sizes that :data:`COMMANDS`' descriptions name."""
        return {"banks": self.banks, "lanes": self.lanes, "depth": self.depth,
                "rows": self.rows, "cols": self.cols, "act_words": self.act_words,
                "weight_word_words": self.weight_word_words,
                "act_chunk_words": self.act_chunk_words, "tile_row_words": self.tile_row_words,
                "token_words": self.token_words, "status_words": len(STATUS),
                "counter_words": len(self.counter_names), "logit_words": self.logit_words,
                "counters": ", ".join(self.counter_names)}

    def data_words(self, opcode, b=0, a=0, args=()):
        """Data words that follow a valid command's arguments (``a``, ``b`` from its header)."""
        if opcode is Opcode.LOAD_TENSOR:
            return b * self.tensors[Tensor(a)][1]
        if opcode is Opcode.GENERATE:
            return args[0]
        return {Opcode.WRITE_WEIGHTS: b * self.weight_word_words,
                Opcode.LOAD_ACTS: b * self.act_chunk_words,
                Opcode.LOAD_TILE: self.rows * self.tile_row_words,
                Opcode.GEMM: b * self.token_words}.get(opcode, 0)

    def response_words(self, opcode, b=0):
        """Data words of the response to a valid command (``None``: it sends no response)."""
        return {Opcode.GEMV: b * self.banks, Opcode.GEMM: b * self.cols, Opcode.GENERATE: b,
                Opcode.READ_LOGITS: b * self.logit_words,
                Opcode.READ_STATUS: len(STATUS),
                Opcode.READ_COUNTERS: len(self.counter_names)}.get(opcode)


def _logit_bits(config):
    """The width of the resident core's logits (golden's ``logit`` width)."""
    from .resident_core import layout_core

    return len(layout_core(config).logit)


def _resident_tensors(config):
    """``{Tensor: (items, item words)}`` of the resident core's loadable memories."""
    from .resident_core import load_ports       # the core's units import this module's peers

    ports = load_ports(config)
    return {tensor: (ports[port][0], words_for(ports[port][1]))
            for tensor, port in TENSOR_PORTS.items()}
