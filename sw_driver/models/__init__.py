"""Models shipped with Bittern, and the text they were trained and measured on.

``tiny.safetensors`` (Bittern format) is a byte-level BitNet b1.58 language model trained by
:mod:`sw_driver.train_tiny` on the English text of ``pydoc_data.topics``, which ships with
CPython. ``tiny.json`` records its config, its training run, its held-out bits per byte as the
golden model computes them, and a sample of its text. Nothing here needs torch.
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from golden import Model
from sw_driver.checkpoint import load_bittern

__all__ = ["TINY_MODEL", "TINY_INFO", "HELD_OUT_FRACTION", "load_tiny", "tiny_info", "corpus",
           "corpus_sha256", "split", "windows", "bits_per_byte"]

TINY_MODEL = Path(__file__).with_name("tiny.safetensors")
TINY_INFO = Path(__file__).with_name("tiny.json")
HELD_OUT_FRACTION = 0.1


def load_tiny():
    """``(ModelConfig, ModelWeights)`` of the shipped tiny model."""
    return load_bittern(TINY_MODEL)


def tiny_info():
    """The shipped ``tiny.json`` as a dict."""
    return json.loads(TINY_INFO.read_text())


def corpus():
    """The ``pydoc_data.topics`` values joined in stored order, as UTF-8 bytes (uint8 array)."""
    from pydoc_data.topics import topics
    return np.frombuffer("".join(topics.values()).encode("utf-8"), dtype=np.uint8)


def corpus_sha256(data):
    """Hex SHA-256 of ``data``; the corpus changes with the CPython release."""
    return hashlib.sha256(data.tobytes()).hexdigest()


def split(data):
    """``(train, held_out)``: the held-out part is the last :data:`HELD_OUT_FRACTION`."""
    cut = len(data) - int(len(data) * HELD_OUT_FRACTION)
    return data[:cut], data[cut:]


def windows(data, length, count):
    """The first ``count`` non-overlapping ``length``-byte windows, int64 ``(count, length)``."""
    if count * length > len(data):
        raise ValueError(f"{count} windows of {length} bytes need {count * length} bytes, "
                         f"the data has {len(data)}")
    return data[:count * length].reshape(count, length).astype(np.int64)


def bits_per_byte(cfg, weights, batch):
    """Mean bits per predicted byte of the golden model over ``batch`` (windows, length).

    Each window starts from an empty cache and predicts its bytes ``1 ..`` from the ones before.
    """
    model = Model(cfg, weights)
    nats, count = 0.0, 0
    for window in batch:
        logits = model.forward(window[:-1], 0).astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
        nats += float((log_z - logits[np.arange(len(window) - 1), window[1:]]).sum())
        count += len(window) - 1
    return nats / count / math.log(2)
