"""Trit encoding: the one definition of how a ternary weight is stored.

Every part of Bittern (golden model, RTL generator, testbenches, driver, checkpoint loaders)
imports this module; nothing else may define a trit code or a packing.

Code
    A trit ``t`` in {-1, 0, +1} is stored as the 2-bit two's complement of ``t``:
    ``0 -> 0b00``, ``+1 -> 0b01``, ``-1 -> 0b11``. The code ``0b10`` is not a trit.
    In hardware, bit 0 says "non-zero" and bit 1 says "negate", so a PE needs no decoder.

Word packing (2 bits per trit)
    A word of ``n`` trits holds trit ``i`` in bits ``[2*i, 2*i + 2)`` (trit 0 in the least
    significant bits). Words are Python ``int`` so that any width is exact.

Base-3 packing (5 trits per byte)
    Byte ``j`` holds trits ``5*j .. 5*j + 4`` as ``sum((t_i + 1) * 3**i)``, trit ``5*j`` least
    significant. Bytes above 242 are not valid. A trailing partial group is padded with zeros.
"""

import numpy as np

__all__ = [
    "CODE_BITS", "CODE_ZERO", "CODE_POS", "CODE_NEG", "CODE_INVALID", "TRITS_PER_BYTE",
    "TritError", "check_trits", "encode", "decode", "pack_words", "unpack_words",
    "pack_base3", "unpack_base3",
]

CODE_BITS = 2
CODE_ZERO = 0b00
CODE_POS = 0b01
CODE_NEG = 0b11
CODE_INVALID = 0b10
TRITS_PER_BYTE = 5
_BASE3_MAX = 3 ** TRITS_PER_BYTE - 1   # 242


class TritError(ValueError):
    """A value or a code that is not a trit; the message names its position."""


def _position(shape, flat_index):
    return ", ".join(str(i) for i in np.unravel_index(flat_index, shape))


def check_trits(trits, *, name="trits"):
    """Return ``trits`` as an int8 array, or raise :class:`TritError` naming the first bad one."""
    array = np.asarray(trits)
    if array.dtype.kind not in "iub":
        raise TritError(f"{name} must be an integer array, not dtype {array.dtype}")
    bad = np.flatnonzero((array < -1) | (array > 1))
    if bad.size:
        i = bad[0]
        raise TritError(f"{name}[{_position(array.shape, i)}] = {array.flat[i]} is not a trit "
                        f"(expected -1, 0 or +1)")
    return array.astype(np.int8)


def encode(trits):
    """Trits -> 2-bit codes (uint8 array of the same shape)."""
    return (check_trits(trits).astype(np.uint8) & 0b11)


def decode(codes, *, name="codes", invalid_as_zero=False):
    """2-bit codes -> trits (int8), or :class:`TritError` naming the first invalid code.

    With ``invalid_as_zero``, ``0b10`` decodes as 0, as the hardware computes with it (bit 0,
    "non-zero", is clear); codes outside two bits are still errors.
    """
    codes = np.asarray(codes)
    invalid = (codes < 0) | (codes > 0b11)
    if invalid_as_zero:
        codes = np.where(codes == CODE_INVALID, CODE_ZERO, codes)
    else:
        invalid |= codes == CODE_INVALID
    bad = np.flatnonzero(invalid)
    if bad.size:
        i = bad[0]
        raise TritError(f"{name}[{_position(codes.shape, i)}] = {int(codes.flat[i]):#04b} "
                        f"is not a trit code")
    codes = codes.astype(np.int8)
    return np.where(codes & 0b10, codes - 4, codes).astype(np.int8)


def pack_words(trits, trits_per_word):
    """Pack the last axis of ``trits`` into words of ``trits_per_word`` trits.

    The last axis is padded with zero trits to a whole number of words. Returns a list (for a
    1-D input) or nested lists of Python ints.
    """
    codes = encode(trits)
    if trits_per_word < 1:
        raise ValueError(f"trits_per_word must be at least 1, not {trits_per_word!r}")
    pad = -codes.shape[-1] % trits_per_word
    codes = np.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, pad)])
    grouped = codes.reshape(*codes.shape[:-1], -1, trits_per_word).astype(object)
    shifts = np.array([1 << (CODE_BITS * i) for i in range(trits_per_word)], dtype=object)
    return (grouped * shifts).sum(axis=-1).tolist()


def unpack_words(words, trits_per_word, *, count=None, invalid_as_zero=False):
    """Inverse of :func:`pack_words`: words -> int8 trits, the last axis cut to ``count``.

    ``invalid_as_zero`` reads ``0b10`` as the hardware does (see :func:`decode`)."""
    words = np.asarray(words, dtype=object)
    if np.any(words < 0) or np.any(words >> (CODE_BITS * trits_per_word)):
        bad = np.flatnonzero((words < 0) | (words >> (CODE_BITS * trits_per_word)) != 0)[0]
        raise TritError(f"word[{_position(words.shape, bad)}] does not fit "
                        f"{trits_per_word} trits")
    shifts = np.array([CODE_BITS * i for i in range(trits_per_word)], dtype=object)
    codes = ((words[..., None] >> shifts) & 0b11).astype(np.uint8)
    try:
        trits = decode(codes, name="word", invalid_as_zero=invalid_as_zero)
    except TritError as error:
        raise TritError(f"{error} (lane index last)") from None
    trits = trits.reshape(*words.shape[:-1], -1) if words.ndim else trits
    return trits if count is None else trits[..., :count]


def pack_base3(trits):
    """Pack a 1-D trit array into base-3 bytes, 5 trits per byte (see the module docstring)."""
    digits = check_trits(trits).ravel().astype(np.int16) + 1
    digits = np.pad(digits, (0, -digits.size % TRITS_PER_BYTE), constant_values=1)
    weights = 3 ** np.arange(TRITS_PER_BYTE, dtype=np.int16)
    return (digits.reshape(-1, TRITS_PER_BYTE) @ weights).astype(np.uint8).tobytes()


def unpack_base3(data, count):
    """Inverse of :func:`pack_base3`: the first ``count`` trits of ``data`` as int8."""
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    need = -(-count // TRITS_PER_BYTE)
    if raw.size < need:
        raise TritError(f"base-3 data holds {raw.size} bytes, {count} trits need {need}")
    bad = np.flatnonzero(raw > _BASE3_MAX)
    if bad.size:
        raise TritError(f"base-3 byte {bad[0]} = {raw[bad[0]]} is above {_BASE3_MAX}")
    digits = (raw[:, None].astype(np.int16) // 3 ** np.arange(TRITS_PER_BYTE)) % 3
    return (digits.ravel()[:count] - 1).astype(np.int8)
