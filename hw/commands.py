"""The device's command format: the one definition shared by hw/, sim/ and sw_driver/.

The host talks to the device through two streams of 32-bit words. A command is a header word,
then its argument words, then its data words; a command that answers sends a response: a header
word, then its data words. Wide values (weight words, activation chunks, tile rows, tokens) are
split into 32-bit words, least significant first; each result is one word, sign-extended.

Command header (``HEADER``): ``opcode`` (bits 0-7), ``a`` (8-15), ``b`` (16-31).

========================  ===============  ====================  =================================
opcode                    a / b            argument words        data words / response
========================  ===============  ====================  =================================
``NOP``                   0 / 0            -                     -
``WRITE_WEIGHTS``         bank / count     addr                  count weight words
``LOAD_ACTS``             0 / count        addr                  count activation chunks
``GEMV``                  0 / rows         base, words_per_row   response: rows x banks results
``LOAD_TILE``             0 / 0            -                     array.rows tile rows (k = 0 first)
``GEMM``                  0 / tokens       -                     tokens; response: tokens x cols
``READ_STATUS``           0 / 0            -                     response: ``STATUS`` words
``READ_COUNTERS``         0 / 0            -                     response: ``counter_names`` words
``CLEAR_ERRORS``          0 / 0            -                     -
========================  ===============  ====================  =================================

A response header has the same layout: ``opcode`` of the command, ``a`` = the sticky error code,
``b`` = rows (GEMV) or tokens (GEMM) as in the command, or the number of data words that follow
(READ_STATUS, READ_COUNTERS).

Validation: every header and argument is checked before any data word is taken. A bad command
sets the sticky error (the first error is kept until ``CLEAR_ERRORS``; ``errors`` counts them all),
is dropped (its header and arguments are consumed, its data words are not: they are read as
commands), and the device goes on accepting commands. Every valid command finishes in a bounded
number of words, so a host that keeps sending ``READ_STATUS`` always gets an answer.

GEMV rows of every bank start at ``base`` and take ``words_per_row`` consecutive words; bank ``b``'s
result for row ``r`` is data word ``r * banks + b``. GEMM results are ``cols`` words per token.
"""

import math

from amaranth.lib import data, enum

__all__ = ["WORD_BITS", "Opcode", "ErrorCode", "HEADER", "STATUS", "STATUS_FLAGS",
           "STATUS_MAGIC", "ARGUMENT_WORDS", "words_for", "pack_header", "unpack_header",
           "CommandFormat"]

WORD_BITS = 32
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


class ErrorCode(enum.Enum, shape=8):
    NONE = 0x00
    UNKNOWN_OPCODE = 0x01       # opcode not in Opcode
    RESERVED_FIELD = 0x02       # a header field that must be 0 is not
    BAD_BANK = 0x03             # WRITE_WEIGHTS bank >= banks
    BAD_ADDRESS = 0x04          # addr + count beyond the bank or the activation buffer
    BAD_LENGTH = 0x05           # count, rows or tokens of 0
    BAD_SHAPE = 0x06            # GEMV words_per_row of 0 or beyond the activation buffer
    NO_TILE = 0x07              # GEMM before a complete LOAD_TILE


HEADER = data.StructLayout({"opcode": 8, "a": 8, "b": 16})
STATUS = ["magic", "error", "errors", "flags"]       # the READ_STATUS response data words
# The ``flags`` status word, bit 0 first.
STATUS_FLAGS = data.StructLayout({"tile_loaded": 1, "pim_busy": 1})
ARGUMENT_WORDS = {Opcode.WRITE_WEIGHTS: 1, Opcode.LOAD_ACTS: 1, Opcode.GEMV: 2}


def words_for(bits):
    """32-bit words needed to carry a ``bits``-wide value."""
    return max(1, math.ceil(bits / WORD_BITS))


def pack_header(opcode, a=0, b=0):
    """A header word (command or response) from its fields."""
    opcode = opcode.value if isinstance(opcode, Opcode) else opcode
    return HEADER.const({"opcode": opcode, "a": a, "b": b}).as_value().value


def unpack_header(word):
    """A header word as a dict of its fields."""
    view = HEADER.from_bits(word)
    return {name: int(view[name]) for name in ("opcode", "a", "b")}


class CommandFormat:
    """Word counts and encoders for one configuration (what the driver and testbenches use)."""

    def __init__(self, config):
        self.config = config
        self.banks, self.lanes, self.depth = config.pim.banks, config.pim.lanes, config.pim.depth
        self.rows, self.cols = config.array.rows, config.array.cols
        self.act_words = math.ceil(config.max_k / self.lanes)
        self.weight_word_words = words_for(config.word_bits)
        self.act_chunk_words = words_for(self.lanes * config.act_bits)
        self.tile_row_words = words_for(2 * self.cols)
        self.token_words = words_for(self.rows * config.act_bits)
        self.counter_names = ["cycles_busy", "cycles_idle", "cycles_stalled", "macs",
                              *[f"words_read_{b}" for b in range(self.banks)]]
        self.registers = [*STATUS, *self.counter_names]     # READ_STATUS, then READ_COUNTERS
        self.max_command_words = 1 + 2 + (1 << 16) * max(
            self.weight_word_words, self.act_chunk_words, self.token_words)

    # Helpers shared by every encoder -------------------------------------------------------

    @staticmethod
    def split(value, words):
        """A non-negative ``value`` as ``words`` 32-bit words, least significant first."""
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

    def load_tile(self, tile_rows):
        return [pack_header(Opcode.LOAD_TILE),
                *[w for row in tile_rows for w in self.split(row, self.tile_row_words)]]

    def gemm(self, tokens):
        return [pack_header(Opcode.GEMM, 0, len(tokens)),
                *[w for token in tokens for w in self.split(token, self.token_words)]]

    @staticmethod
    def simple(opcode):
        """A command with no arguments and no data (``READ_STATUS``, ``CLEAR_ERRORS``...)."""
        return [pack_header(opcode)]

    def response_words(self, opcode, b=0):
        """Data words of the response to a valid command (``None``: it sends no response)."""
        return {Opcode.GEMV: b * self.banks, Opcode.GEMM: b * self.cols,
                Opcode.READ_STATUS: len(STATUS),
                Opcode.READ_COUNTERS: len(self.counter_names)}.get(opcode)
