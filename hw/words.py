"""Vectors of integers in hardware words, in the element order of ``data.ArrayLayout``.

Element ``i`` of a ``bits``-wide array sits at bits ``[i*bits, (i+1)*bits)`` in two's
complement. Testbenches and the driver pack stream payloads with these (NumPy-speed, no
Amaranth import); ``tests/test_words.py`` pins them to ``ArrayLayout.const``.
"""

import numpy as np

__all__ = ["pack_ints", "unpack_ints"]


def pack_ints(values, bits):
    """Pack the last axis of ``values`` into one int per row (element 0 least significant)."""
    values = np.asarray(values, dtype=np.int64)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if values.size and (values.min() < low or values.max() > high):
        raise ValueError(f"values must be in [{low}, {high}] for {bits}-bit elements")
    fields = (values & ((1 << bits) - 1)).astype(object)
    shifts = np.array([1 << (bits * i) for i in range(values.shape[-1])], dtype=object)
    packed = (fields * shifts).sum(axis=-1)
    return packed.tolist() if isinstance(packed, np.ndarray) else int(packed)


def unpack_ints(words, bits, count):
    """Inverse of :func:`pack_ints`: ``count`` signed elements per word, as int64."""
    words = np.asarray(words, dtype=object)
    shifts = np.array([bits * i for i in range(count)], dtype=object)
    fields = ((words[..., None] >> shifts) & ((1 << bits) - 1)).astype(np.int64)
    return np.where(fields >> (bits - 1), fields - (1 << bits), fields)
