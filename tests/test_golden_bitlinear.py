"""golden.bitlinear against the numeric contract (docs/design.md, numeric contract)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from golden.bitlinear import (
    MAX_REDUCTION, bitlinear, bitlinear_int, quantize_activations, quantize_weights, rescale,
)
from golden.trits import TritError

f32 = np.float32
FAST = settings(max_examples=60, deadline=None)

finite_floats = st.floats(-1e4, 1e4, allow_nan=False, width=32)


def python_int_matmul(x_q, W_t):
    """The integer core, written with Python ints only."""
    rows = x_q.reshape(-1, x_q.shape[-1]).tolist()
    acc = [[sum(a * b for a, b in zip(row, w_row)) for w_row in W_t.tolist()] for row in rows]
    return np.array(acc, dtype=np.int64).reshape(*x_q.shape[:-1], W_t.shape[0])


@st.composite
def bitlinear_cases(draw):
    tokens, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 48)), draw(st.integers(1, 16))
    x = draw(hnp.arrays(f32, (tokens, k), elements=finite_floats))
    W = draw(hnp.arrays(f32, (n, k), elements=st.floats(-4, 4, width=32)))
    return x, W


@FAST
@given(bitlinear_cases())
def test_integer_path_equals_fake_quant_form(case):
    x, W = case
    W_t, gamma = quantize_weights(W)
    x_q, s_x = quantize_activations(x)
    fake_quant = (x_q / s_x.astype(np.float64)) @ (W_t * np.float64(gamma)).T
    y = bitlinear(x, W_t, gamma)
    assert y.dtype == np.float32 and y.shape == fake_quant.shape
    # y rounds a few times in float32; the float64 sum can leave ~1e-16 where terms cancel.
    cancellation = 1e-12 * np.abs(x).max() * gamma * x.shape[-1]
    np.testing.assert_allclose(y, fake_quant, rtol=2e-6, atol=cancellation)


def test_known_activation_values():
    x_q, s_x = quantize_activations(np.array([[1.0, -0.5, 0.25, 0.0, 0.123]], dtype=f32))
    assert s_x.shape == (1, 1) and s_x.dtype == np.float32 and s_x[0, 0] == f32(127)
    # 0.123 * 127 = 15.621 -> 16; -63.5 is a tie and goes to even -64.
    np.testing.assert_array_equal(x_q, [[127, -64, 32, 0, 16]])


def test_activation_ties_round_to_even():
    ties = np.arange(-126, 126) + 0.5           # every k + 0.5 strictly inside (-127, 127)
    x = np.concatenate([[127.0], ties]).astype(f32)
    x_q, s_x = quantize_activations(x)
    assert s_x[0] == 1
    expected = np.where(np.floor(ties) % 2 == 0, np.floor(ties), np.ceil(ties))
    np.testing.assert_array_equal(x_q[1:], expected)
    assert x_q[list(ties).index(0.5) + 1] == 0 and x_q[list(ties).index(-2.5) + 1] == -2


@FAST
@given(st.integers(-127, 126), st.integers(-20, 20))
def test_activation_ties_round_to_even_at_any_scale(k, exponent):
    scale = 2.0 ** exponent                     # s_x = 2**-exponent exactly
    x = np.array([127 * scale, (k + 0.5) * scale], dtype=f32)
    x_q, _ = quantize_activations(x)
    assert x_q[1] == (k if k % 2 == 0 else k + 1)


def test_weight_ties_round_to_even():
    # mean|W| = 0.25 exactly, so W * (1 / gamma) = [0.5, -0.5, 1.5, -1.5, 0.25, 1.75] exactly.
    W = np.array([[0.125, -0.125, 0.375, -0.375, 0.0625, 0.4375]], dtype=f32)
    W = np.concatenate([W, np.full((1, 6), 0.25, dtype=f32)])
    W_t, gamma = quantize_weights(W)
    assert gamma == f32(0.25) and W_t.dtype == np.int8
    np.testing.assert_array_equal(W_t, [[0, 0, 1, -1, 0, 1], [1, 1, 1, 1, 1, 1]])


def test_weights_use_the_float32_reciprocal_like_the_references():
    # mean|W| = gamma; W[0] / gamma rounds to 0.50000006 but W[0] * float32(1 / gamma) to 0.5.
    # torch's `(w * (1 / w.abs().mean())).round()` gives 0 here, so the golden model must too.
    W = np.array([[float.fromhex("0x1.fd3be6p-2"), float.fromhex("0x1.7deceap+0")]], dtype=f32)
    W_t, gamma = quantize_weights(W)
    assert gamma == f32(float.fromhex("0x1.fd3be4p-1"))
    assert np.rint(W[0, 0] / gamma) == 1             # the form the contract does not use
    np.testing.assert_array_equal(W_t, [[0, 1]])


def test_zero_activation_rows_give_zero_outputs():
    W_t = np.array([[1, -1, 0], [1, 1, 1]], dtype=np.int8)
    x = np.array([[0, 0, 0], [2, -1, 0.5]], dtype=f32)
    x_q, s_x = quantize_activations(x)
    assert s_x[0, 0] == f32(127) / f32(1e-5)
    np.testing.assert_array_equal(x_q[0], 0)
    y = bitlinear(x, W_t, f32(0.5))
    np.testing.assert_array_equal(y[0], 0)
    np.testing.assert_array_equal(y[1], bitlinear(x[1:], W_t, f32(0.5))[0])
    assert np.isfinite(y).all()


def test_zero_weights_use_the_gamma_floor():
    W_t, gamma = quantize_weights(np.zeros((3, 4), dtype=f32))
    assert gamma == f32(1e-5) and gamma.dtype == np.float32
    np.testing.assert_array_equal(W_t, 0)
    y = bitlinear(np.ones((2, 4), dtype=f32), W_t, gamma)
    np.testing.assert_array_equal(y, 0)


def test_the_most_negative_activation_is_minus_127_even_with_overshoot():
    # float32(127 / a) * a rounds to 127.00001 for this absmax a: the product overshoots 127,
    # and rounding still gives -127. The [-128, 127] clamp never produces -128.
    a = f32(float.fromhex("0x1.99fa9ap+2"))
    assert a * (f32(127) / a) > 127
    x_q, _ = quantize_activations(np.array([-a, a / 3], dtype=f32))
    assert x_q[0] == -127


@FAST
@given(hnp.arrays(f32, st.tuples(st.integers(1, 3), st.integers(1, 64)),
                  elements=st.floats(allow_nan=False, allow_infinity=False, width=32)))
def test_activations_stay_in_the_symmetric_range(x):
    x_q, _ = quantize_activations(x)
    assert x_q.dtype == np.int8
    assert x_q.min() >= -127 and x_q.max() <= 127
    absmax = np.abs(x).max(axis=-1)
    assert (np.abs(x_q).max(axis=-1)[absmax >= 1e-5] == 127).all()


@FAST
@given(st.data())
def test_bitlinear_int_is_exact(data):
    shape = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 40)))
    n = data.draw(st.integers(1, 8))
    x_q = data.draw(hnp.arrays(np.int8, shape))
    W_t = data.draw(hnp.arrays(np.int8, (n, shape[-1]), elements=st.integers(-1, 1)))
    acc = bitlinear_int(x_q, W_t)
    assert acc.dtype == np.int32 and acc.shape == shape[:-1] + (n,)
    np.testing.assert_array_equal(acc, python_int_matmul(x_q, W_t))


def test_bitlinear_int_does_not_wrap_like_int8_or_int16():
    x_q = np.full((1, 300), -128, dtype=np.int8)
    W_t = np.full((2, 300), -1, dtype=np.int8)
    W_t[1, ::2] = 1
    assert (x_q @ W_t.T)[0, 0] != 38400              # NumPy's own int8 matmul wraps around
    np.testing.assert_array_equal(bitlinear_int(x_q, W_t), [[38400, 0]])


def test_bitlinear_int_is_exact_past_float32_integers():
    k = 140001                                       # 127 * k is odd and above 2**24
    x_q = np.full((1, k), 127, dtype=np.int8)
    W_t = np.ones((1, k), dtype=np.int8)
    assert bitlinear_int(x_q, W_t)[0, 0] == 127 * k
    rng = np.random.default_rng(3)
    x_q = rng.integers(-128, 128, (1, k), dtype=np.int8)
    W_t = rng.integers(-1, 2, (2, k), dtype=np.int8)
    np.testing.assert_array_equal(bitlinear_int(x_q, W_t), python_int_matmul(x_q, W_t))


def test_rescale_divides_by_s_x_then_multiplies_by_gamma_in_float32():
    # acc * (1 / s_x) * gamma and acc * (gamma / s_x) both give 2.2082663 here.
    s_x = np.array([[float.fromhex("0x1.b08968p+6")]], dtype=f32)
    gamma = f32(float.fromhex("0x1.cbf2c2p-5"))
    y = rescale(np.array([[4253]], dtype=np.int32), s_x, gamma)
    assert y.dtype == np.float32 and y[0, 0] == f32(2.208266)


def test_custom_core_does_the_integer_work():
    W_t = np.array([[1, 0], [-1, 1]], dtype=np.int8)
    x = np.array([[1.0, 0.5]], dtype=f32)
    seen = []

    def off_by_one(x_q, trits):
        seen.append((x_q.copy(), trits.copy()))
        return bitlinear_int(x_q, trits) + np.int32(1)

    y = bitlinear(x, W_t, f32(2), core=off_by_one)
    np.testing.assert_array_equal(seen[0][0], [[127, 64]])
    np.testing.assert_array_equal(seen[0][1], W_t)
    np.testing.assert_array_equal(y, (np.array([[127 + 1, -63 + 1]], dtype=f32) / f32(127)) * 2)


@pytest.mark.parametrize("call, message", [
    (lambda: bitlinear_int(np.zeros((2, 3), np.int8), np.zeros((4, 5), np.int8)),
     "x_q has 3 features on its last axis but W_t has 5 columns; "
     "expected x_q (..., K) and W_t (N, K)"),
    (lambda: bitlinear_int(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int8)),
     "x_q must be an int8 array, not dtype float32"),
    (lambda: bitlinear_int(np.zeros((1, 2), np.int8), np.zeros(2, np.int8)),
     "W_t must be a 2-D (N, K) matrix, not shape (2,)"),
    (lambda: bitlinear_int(np.broadcast_to(np.int8(0), (1, MAX_REDUCTION + 1)),
                           np.broadcast_to(np.int8(0), (1, MAX_REDUCTION + 1))),
     f"K = {MAX_REDUCTION + 1} can overflow the int32 accumulator; at most {MAX_REDUCTION}"),
    (lambda: quantize_weights(np.ones((2, 2), np.int32)),
     "W must be a floating-point array, not dtype int32"),
    (lambda: quantize_weights(np.ones(4, np.float32)),
     "W must be a non-empty 2-D (N, K) matrix, not shape (4,)"),
    (lambda: quantize_weights(np.array([[1.0, np.nan]])),
     "W holds a non-finite value (NaN or infinity)"),
    (lambda: quantize_activations(np.zeros((2, 0), np.float32)),
     "x must have a non-empty last axis, not shape (2, 0)"),
    (lambda: bitlinear(np.ones((1, 2), np.float32), np.ones((1, 2), np.int8), -1.0),
     "gamma must be a positive finite scalar, not -1.0"),
    (lambda: bitlinear(np.ones((1, 2), np.float32), np.ones((3, 2), np.int8), 1.0,
                       core=lambda x_q, W_t: np.zeros((1, 2), np.int32)),
     "core returned shape (1, 2), expected (1, 3)"),
    (lambda: rescale(np.zeros((1, 2), np.int64), np.ones((1, 1), np.float32), 1.0),
     "acc must be an int32 array, not dtype int64"),
])
def test_errors_say_what_is_wrong(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_non_ternary_weights_are_named():
    with pytest.raises(TritError, match=r"^W_t\[1, 0\] = 2 is not a trit"):
        bitlinear_int(np.zeros((1, 2), np.int8), np.array([[1, 0], [2, 0]], np.int8))
