"""The behavioural device model: the command format, executed in Python."""

import numpy as np

from golden import trits
from golden.bitlinear import bitlinear_int
from hw.commands import STATUS_MAGIC, CommandFormat, ErrorCode, Opcode, pack_header, unpack_header
from hw.config import preset
from hw.words import pack_ints
from sw_driver.behavioural import BehaviouralDevice

CONFIG = preset("tiny")


def gemv_words(fmt, weights, x_q):
    """Rows of ``weights`` (banks, rows, lanes * wpr) placed at address 0 of every bank."""
    words = []
    for bank, rows in enumerate(weights):
        words += fmt.write_weights(bank, 0, [w[0] for w in
                                             trits.pack_words(rows.reshape(-1, fmt.lanes),
                                                              fmt.lanes)])
    words += fmt.load_acts(0, pack_ints(x_q.reshape(-1, fmt.lanes), 8))
    return words + fmt.gemv(0, weights.shape[1], weights.shape[2] // fmt.lanes)


def test_gemv_equals_golden():
    device = BehaviouralDevice(CONFIG)
    fmt = device.format
    rng = np.random.default_rng(0)
    weights = rng.integers(-1, 2, (fmt.banks, 5, 3 * fmt.lanes)).astype(np.int8)
    x_q = rng.integers(-128, 128, 3 * fmt.lanes).astype(np.int8)
    out = device.feed(gemv_words(fmt, weights, x_q))
    assert unpack_header(out[0]) == {"opcode": Opcode.GEMV.value, "a": 0, "b": 5}
    got = np.array([CommandFormat.signed(w) for w in out[1:]]).reshape(5, fmt.banks)
    for bank in range(fmt.banks):
        np.testing.assert_array_equal(got[:, bank], bitlinear_int(x_q, weights[bank]))


def test_bad_command_is_dropped_and_sticky():
    device = BehaviouralDevice(CONFIG)
    fmt = device.format
    assert device.feed([pack_header(0x7F), pack_header(Opcode.WRITE_WEIGHTS, 9, 1)]) == []
    status = device.feed(fmt.simple(Opcode.READ_STATUS))
    assert status[1:] == [STATUS_MAGIC, ErrorCode.UNKNOWN_OPCODE.value, 2, 0]
    device.feed(fmt.simple(Opcode.CLEAR_ERRORS))
    assert device.feed(fmt.simple(Opcode.READ_STATUS))[2:4] == [0, 0]


def test_gemm_before_a_tile_is_refused_then_works():
    device = BehaviouralDevice(CONFIG)
    fmt = device.format
    x_q = np.array([[1, -2, 3, -128]], np.int8)
    assert device.feed(fmt.gemm(pack_ints(x_q, 8))) == []   # its token word is then a command
    assert device.error == ErrorCode.NO_TILE.value
    w_t = np.array([[1, 0, -1, 1], [-1, -1, -1, -1], [0, 0, 0, 0], [1, 1, 1, 1]], np.int8)
    out = device.feed(fmt.load_tile(w_t)
                      + fmt.gemm(pack_ints(x_q, 8)))
    assert [CommandFormat.signed(w) for w in out[1:]] == bitlinear_int(x_q, w_t)[0].tolist()


def test_logits_are_read_back_only_after_a_generate():
    """READ_LOGITS: NO_LOGITS until a GENERATE has finished since reset (the memory has no
    power-on value), then golden's logits of the last generated token, from any row; a span
    past the vocabulary is BAD_ADDRESS."""
    from sim.stimulus import resident_model

    device = BehaviouralDevice(CONFIG)
    fmt = device.format
    load, golden = resident_model(CONFIG, seed=3)
    assert device.feed(load + fmt.read_logits(0, 1)) == []
    assert device.error == ErrorCode.NO_LOGITS.value
    device.feed(fmt.simple(Opcode.CLEAR_ERRORS))
    tokens, logits = golden.generate([5, 9], 3, logits=True)
    assert device.feed(fmt.generate([5, 9], 3))[1:] == tokens
    out = device.feed(fmt.read_logits(7, fmt.vocab - 7))
    assert unpack_header(out[0]) == {"opcode": Opcode.READ_LOGITS.value, "a": 0,
                                     "b": fmt.vocab - 7}
    np.testing.assert_array_equal(fmt.logits(out[1:]), logits[7:])
    assert len(out) == 1 + (fmt.vocab - 7) * fmt.logit_words
    assert device.feed(fmt.read_logits(fmt.vocab - 1, 2)) == []
    assert device.error == ErrorCode.BAD_ADDRESS.value
    device.reset()
    device.feed(fmt.read_logits(0, 1))
    assert device.error == ErrorCode.NO_LOGITS.value
