"""BitLinear, the W1.58 A8 layer of BitNet b1.58 (docs/design.md, the numeric contract).

Contract
    Weights, one scale per matrix: ``gamma = max(mean(|W|), 1e-5)``,
    ``W_t = clip(rint(W * float32(1 / gamma)), -1, 1)`` as int8 trits.
    Activations, one scale per token (last axis): ``s_x = 127 / max(max|x|, 1e-5)``,
    ``x_q = clip(rint(x * s_x), -128, 127)`` as int8. Since ``|x * s_x| <= 127``, the
    effective range is [-127, 127]; -128 is never produced.
    Integer core: ``acc = x_q @ W_t.T``, exact, int32. This is what the hardware computes.
    Output: ``y = acc / s_x * gamma`` in float32, no bias.

``rint`` rounds half to even, as ``torch.round`` does. Every float step is float32.
"""

import numpy as np

from golden.trits import check_trits

__all__ = [
    "quantize_weights", "quantize_activations", "bitlinear_int", "matmul_int", "rescale",
    "bitlinear", "MAX_REDUCTION",
]

WEIGHT_SCALE_FLOOR = np.float32(1e-5)
ACT_ABSMAX_FLOOR = np.float32(1e-5)
ACT_LEVELS = np.float32(127)
INT8_MIN, INT8_MAX = -128, 127

# |acc| <= 128 * K, so every K up to this bound fits an int32 accumulator.
MAX_REDUCTION = (2**31 - 1) // 128
# Below this K every partial sum is an integer < 2**24, so a float32 matmul is exact.
_FLOAT32_EXACT_REDUCTION = 2**24 // 128


def _float_array(value, name):
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise ValueError(f"{name} must be a floating-point array, not dtype {array.dtype}")
    if array.ndim == 0 or array.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last axis, not shape {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds a non-finite value (NaN or infinity)")
    return array


def _int8_array(value, name):
    array = np.asarray(value)
    if array.dtype != np.int8:
        raise ValueError(f"{name} must be an int8 array, not dtype {array.dtype}")
    if array.ndim == 0:
        raise ValueError(f"{name} must have a last axis of K features, not shape ()")
    return array


def _ternary_matrix(value, name="W_t"):
    trits = check_trits(value, name=name)
    if trits.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, K) matrix, not shape {trits.shape}")
    return trits


def _scale(value, name="gamma"):
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "fiu" or not 0 < array < np.inf:
        raise ValueError(f"{name} must be a positive finite scalar, not {value!r}")
    return np.float32(array)


def quantize_weights(W):
    """Float master weights ``(N, K)`` -> ``(W_t, gamma)``: int8 trits and a float32 scale."""
    W = _float_array(W, "W")
    if W.ndim != 2 or W.size == 0:
        raise ValueError(f"W must be a non-empty 2-D (N, K) matrix, not shape {W.shape}")
    # The mean is summed in float64 and rounded once to float32, so gamma does not depend on the
    # summation order (torch sums in float32 and may land one ulp away on large matrices).
    gamma = max(np.float32(np.abs(W).mean(dtype=np.float64)), WEIGHT_SCALE_FLOOR)
    # Multiply by the float32 reciprocal, as the official code, HF WeightQuant and the GPU
    # converter all do (`w * scale`, `scale = 1 / gamma`). `W / gamma` can land one ulp away,
    # and that moves a weight sitting on a tie (|W| / gamma = 0.5 or 1.5) to the other side.
    reciprocal = np.float32(1) / gamma
    trits = np.clip(np.rint(W * reciprocal), -1, 1).astype(np.int8)
    return trits, gamma


def quantize_activations(x):
    """Float activations ``(..., K)`` -> ``(x_q, s_x)``: int8, and float32 ``(..., 1)``."""
    x = _float_array(x, "x")
    absmax = np.abs(x).max(axis=-1, keepdims=True)
    s_x = ACT_LEVELS / np.maximum(absmax, ACT_ABSMAX_FLOOR)
    x_q = np.clip(np.rint(x * s_x), INT8_MIN, INT8_MAX).astype(np.int8)
    return x_q, s_x


def bitlinear_int(x_q, W_t):
    """Integer core: int8 ``x_q (..., K)`` times trits ``W_t (N, K)`` -> exact int32 ``(..., N)``.

    NumPy's int8 matmul wraps around, so the product runs in floating point instead: every
    partial sum is an integer no larger than ``128 * K``, which float32 holds exactly for
    ``K <= 131072`` and float64 for any ``K`` up to :data:`MAX_REDUCTION`.
    """
    x_q = _int8_array(x_q, "x_q")
    W_t = _ternary_matrix(W_t)
    k = _check_reduction(x_q, W_t)
    exact = np.float32 if k <= _FLOAT32_EXACT_REDUCTION else np.float64
    return (x_q.astype(exact) @ W_t.T.astype(exact)).astype(np.int32)


def matmul_int(x, W):
    """Exact integer product ``x (..., K) @ W.T`` for ``W (N, K)`` of any integer weights, as
    int64: the reference for a tensor unit whose weights are not trits (the int8 baseline PE)."""
    x, W = np.asarray(x), np.asarray(W)
    if x.dtype.kind not in "iu" or W.dtype.kind not in "iu":
        raise ValueError(f"x and W must be integer arrays, not {x.dtype} and {W.dtype}")
    return x.astype(np.int64) @ W.T.astype(np.int64)


def _check_reduction(x_q, W_t):
    k = W_t.shape[1]
    if x_q.shape[-1] != k:
        raise ValueError(f"x_q has {x_q.shape[-1]} features on its last axis but W_t has {k} "
                         f"columns; expected x_q (..., K) and W_t (N, K)")
    if k > MAX_REDUCTION:
        raise ValueError(f"K = {k} can overflow the int32 accumulator; at most {MAX_REDUCTION}")
    return k


def rescale(acc, s_x, gamma):
    """int32 accumulators ``(..., N)`` -> float32 outputs ``acc / s_x * gamma``."""
    acc = np.asarray(acc)
    if acc.dtype != np.int32:
        raise ValueError(f"acc must be an int32 array, not dtype {acc.dtype}")
    s_x = np.asarray(s_x, dtype=np.float32)
    return acc.astype(np.float32) / s_x * _scale(gamma)


def bitlinear(x, W_t, gamma, core=None):
    """BitLinear ``y = x W^T`` in the W1.58 A8 contract; float32 ``(..., N)``.

    ``core(x_q, W_t) -> acc`` does the integer work (default :func:`bitlinear_int`), so a
    device can stand in for it.
    """
    W_t = _ternary_matrix(W_t)
    gamma = _scale(gamma)
    x_q, s_x = quantize_activations(x)
    _check_reduction(x_q, W_t)
    acc = np.asarray((core or bitlinear_int)(x_q, W_t))
    expected = x_q.shape[:-1] + W_t.shape[:1]
    if acc.shape != expected:
        raise ValueError(f"core returned shape {acc.shape}, expected {expected}")
    return rescale(acc, s_x, gamma)
