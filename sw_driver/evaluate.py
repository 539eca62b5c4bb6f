"""What the integer decoder costs: bits per byte of the float and the integer decoders on held-out
text, and how often their greedy choices agree (docs/design.md, "Integer decoder").

Teacher-forced, as :func:`sw_driver.models.bits_per_byte`: each window starts from an empty
cache and predicts its bytes ``1 ..`` from the ones before. The integer logits become floats
with their own fixed-point scale only here, for the log-softmax of the measurement.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np

from golden import IntegerModel, Model

from .models import windows as take_windows

__all__ = ["Evaluation", "evaluate"]


@dataclass
class Evaluation:
    """Bits per predicted byte of both decoders, and their top-1 agreement."""

    float_bits_per_byte: float
    integer_bits_per_byte: float
    top1_agreement: float
    windows: int
    window_bytes: int
    positions: int

    def to_dict(self):
        return asdict(self)


def _nats(logits, targets):
    """Summed ``-log softmax(logits)[target]`` (float64 logits ``(T, vocab)``)."""
    top = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return float((log_z - logits[np.arange(len(targets)), targets]).sum())


def _check_count(value, name, low, high=None):
    if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low
            or high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {allowed}, not {value!r}")


def evaluate(cfg, weights, data, *, windows, window_bytes, progress=None):
    """:class:`Evaluation` of ``(cfg, weights)`` over the first ``windows`` non-overlapping
    ``window_bytes``-byte windows of ``data`` (tokens, e.g. a uint8 array of bytes).

    ``progress(message)``, if given, hears about each window.
    """
    _check_count(windows, "windows", 1)
    _check_count(window_bytes, "window_bytes", 2, cfg.max_seq + 1)
    data = np.asarray(data)
    if data.ndim != 1 or data.dtype.kind not in "iu":
        raise ValueError(f"data must be a 1-D integer array, not {data.dtype} {data.shape}")
    batch = take_windows(data, window_bytes, windows)
    beyond = np.flatnonzero(batch.ravel() >= cfg.vocab)
    if beyond.size:
        raise ValueError(f"data[{beyond[0]}] = {batch.ravel()[beyond[0]]} is beyond the "
                         f"model's vocabulary of {cfg.vocab}")
    float_model, integer_model = Model(cfg, weights), IntegerModel(cfg, weights)
    float_nats = integer_nats = 0.0
    agree = 0
    for i, window in enumerate(batch):
        inputs, targets = window[:-1], window[1:]
        float_logits = float_model.forward(inputs, 0).astype(np.float64)
        integer_logits = integer_model.forward(inputs, 0)
        float_nats += _nats(float_logits, targets)
        integer_nats += _nats(integer_logits.to_float(), targets)
        agree += int(np.sum(np.argmax(float_logits, axis=-1) == integer_logits.argmax()))
        if progress:
            progress(f"window {i + 1}/{windows}")
    positions = windows * (window_bytes - 1)
    return Evaluation(
        float_bits_per_byte=float_nats / positions / math.log(2),
        integer_bits_per_byte=integer_nats / positions / math.log(2),
        top1_agreement=agree / positions, windows=windows, window_bytes=window_bytes,
        positions=positions)
