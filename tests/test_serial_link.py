"""SerialTransport without a board: byte order, timeouts, bursts, resynchronisation after lost,
added or corrupted bytes, and ``bittern run --backend serial`` through a real pseudo-terminal to a
behavioural "board"."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from golden.bitlinear import bitlinear_int
from hw.commands import STATUS_MAGIC, ErrorCode, Opcode, pack_header
from hw.config import preset
from hw.uart import RX_FIFO_WORDS
from sw_driver.behavioural import BehaviouralDevice
from sw_driver.driver import Accelerator, DeviceError
from sw_driver.serial_link import STRAY_BYTES, SerialTransport

TINY = preset("tiny")


class FakePort:
    """A pyserial-like port: records what is written, reads from a script of replies."""

    def __init__(self, replies=b""):
        self.written = bytearray()
        self.replies = bytearray(replies)
        self.flushes = 0

    def write(self, data):
        self.written += data
        return len(data)

    def flush(self):
        self.flushes += 1

    def read(self, n):
        chunk, self.replies = bytes(self.replies[:min(n, 3)]), self.replies[min(n, 3):]
        return chunk                    # at most 3 bytes a call: words arrive in pieces


def test_words_cross_as_little_endian_bytes():
    port = FakePort(bytes([0x04, 0x03, 0x02, 0x01, 0xFF, 0xFF, 0xFF, 0xFF]))
    words = SerialTransport(port).transact([0x0A0B0C0D, 1], 2)
    assert port.written == bytes([0x0D, 0x0C, 0x0B, 0x0A, 1, 0, 0, 0])
    assert words == [0x01020304, 0xFFFF_FFFF]
    assert port.flushes == 1


def test_a_device_that_never_answered_is_not_resynchronised():
    """Silence from the first command on is a board that is not programmed, or not with this
    configuration or baud rate: the transport says so at once and sends nothing more."""
    port = FakePort()
    with pytest.raises(DeviceError) as error:
        SerialTransport(port).transact([pack_header(Opcode.READ_STATUS)], 5)
    assert str(error.value) == (
        "serial link: the device went silent after 0 of 20 response bytes (5 words); is the "
        "board programmed with this configuration, at this baud rate (and reset, if an earlier "
        "session was cut short)?")
    assert port.written == pack_header(Opcode.READ_STATUS).to_bytes(4, "little")


def _bytes(*words):
    return b"".join(word.to_bytes(4, "little") for word in words)


def _status(error=ErrorCode.NONE, magic=STATUS_MAGIC):
    """A READ_STATUS response's bytes."""
    return _bytes(pack_header(Opcode.READ_STATUS, error.value, 4), magic, error.value, 1, 0)


READ_STATUS = _bytes(pack_header(Opcode.READ_STATUS))


class ScriptPort(FakePort):
    """Replies from a script: the next entry after each write."""

    def __init__(self, *script):
        super().__init__()
        self.script = list(script)
        self.writes = []

    def write(self, data):
        self.writes.append(bytes(data))
        self.replies += self.script.pop(0) if self.script else b""
        return super().write(data)


def test_a_device_that_goes_silent_is_resynchronised():
    """Silence part-way through a response: the transport waits, sends READ_STATUS, discards
    what comes before the status, and reports the device's sticky error."""
    port = ScriptPort(bytes(6), b"\xEE" * 7 + _status(ErrorCode.BAD_SHAPE))
    with pytest.raises(DeviceError) as error:
        SerialTransport(port).transact([pack_header(Opcode.GEMV, 0, 1), 0, 1], 3)
    assert str(error.value) == (
        "serial link: the device went silent after 6 of 12 response bytes (3 words), as after "
        "a command it refused, or bytes lost, added or corrupted on the way; resynchronised (7 "
        "stray bytes discarded, 1 READ_STATUS sent); device error BAD_SHAPE (sticky until "
        "clear_errors)")
    assert port.writes[1:] == [READ_STATUS]


def test_resynchronisation_ends_at_the_last_status():
    """A device inside a command takes the first READ_STATUS words as its data and answers the
    rest: bursts double until answers come, and every status up to the last is read."""
    port = ScriptPort(bytes(4), b"", b"", _status() * 2, b"")
    transport = SerialTransport(port)
    with pytest.raises(DeviceError, match=r"went silent after 4 of 8 .* resynchronised \(0 "
                                          r"stray bytes discarded, 7 READ_STATUS sent\); the "
                                          r"device reports no error$"):
        transport.transact([pack_header(Opcode.READ_COUNTERS)], 2)
    assert port.writes[1:] == [READ_STATUS, READ_STATUS * 2, READ_STATUS * 4]
    assert not port.replies
    port.replies += _bytes(pack_header(Opcode.READ_STATUS, 0, 4), STATUS_MAGIC, 0, 0, 0)
    assert transport.transact([pack_header(Opcode.READ_STATUS)], 5)[1] == STATUS_MAGIC


def test_a_wrong_response_header_is_resynchronised():
    """A header that is not the one owed (here a GEMV with the wrong row count) is garbage: the
    driver resynchronises through the transport and returns no data."""
    port = ScriptPort(_bytes(pack_header(Opcode.GEMV, 0, 3), *range(1, 9)),
                      _bytes(9) + _status())
    accelerator = Accelerator(SerialTransport(port), TINY)
    with pytest.raises(DeviceError) as error:
        accelerator.gemv(0, 4, 1)
    assert str(error.value) == (
        "expected a GEMV response, got header 0x00030003; bytes lost, added or corrupted on the "
        "serial link; resynchronised (4 stray bytes discarded, 1 READ_STATUS sent); the device "
        "reports no error")


def test_resynchronisation_gives_up_rather_than_hang():
    port = ScriptPort(bytes(6))
    with pytest.raises(DeviceError) as error:
        SerialTransport(port, resync_words=100).transact([pack_header(Opcode.READ_STATUS)], 5)
    assert str(error.value).endswith(
        "no STATUS response to 100 READ_STATUS words after bytes were lost, added or corrupted "
        "(0 stray bytes discarded): the device may be inside a long command; reset the board")
    assert [len(data) // 4 for data in port.writes[1:]] == [1, 2, 4, 8, 16, 32, 37]


def test_a_device_that_keeps_sending_is_given_up_on():
    class Babbling(FakePort):
        def read(self, n):
            return bytes([0xA5] * n)

    port = Babbling()
    with pytest.raises(DeviceError, match=f"^serial link: the device sent more than "
                                          f"{STRAY_BYTES} bytes that answer nothing"):
        Accelerator(SerialTransport(port), TINY).status()


def test_a_short_write_raises():
    class Stuck(FakePort):
        def write(self, data):
            return len(data) - 1

    with pytest.raises(DeviceError, match="wrote 7 of 8 bytes"):
        SerialTransport(Stuck()).transact([1, 2], 0)


@pytest.mark.parametrize("port, kwargs, message", [
    (object(), {}, "port must have write"),
    (FakePort(), {"burst_words": 1}, "burst_words must be an integer of at least 2, not 1"),
    (FakePort(), {"resync_words": 0}, "resync_words must be a positive integer, not 0"),
    (FakePort(), {"resync_words": True}, "resync_words must be a positive integer, not True"),
])
def test_bad_parameters_are_refused(port, kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        SerialTransport(port, **{"burst_words": RX_FIFO_WORDS, **kwargs})


def test_open_refuses_a_timeout_within_the_resynchronisation_gap():
    with pytest.raises(ValueError) as error:
        SerialTransport.open("/dev/null", baud=115200, timeout=0.005)
    assert str(error.value) == ("timeout must be longer than the board's resynchronisation gap "
                                "(1152 bit times, 10 ms at 115200 baud), not 0.005")


class ModelPort(FakePort):
    """A behavioural device behind a byte port, answering as the words arrive."""

    def __init__(self, config):
        super().__init__()
        self.device = BehaviouralDevice(config)
        self.commands = []

    def write(self, data):
        words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
        self.commands.append(words)
        self.replies += b"".join(w.to_bytes(4, "little") for w in self.device.feed(words))
        return len(data)


def test_gemm_commands_stay_within_the_burst():
    """A GEMM longer than the board's receive buffer goes out in several commands, each of at
    most ``burst_words`` words, and the results are unchanged."""
    port = ModelPort(TINY)
    accelerator = Accelerator(SerialTransport(port, burst_words=16), TINY)
    rng = np.random.default_rng(0)
    w_t = rng.integers(-1, 2, (TINY.array.cols, TINY.array.rows)).astype(np.int8)
    x_q = rng.integers(-128, 128, (50, TINY.array.rows)).astype(np.int8)
    accelerator.load_tile(w_t)
    port.commands.clear()
    got = accelerator.gemm(x_q)
    np.testing.assert_array_equal(got, bitlinear_int(x_q, w_t))
    assert [len(words) for words in port.commands] == [16, 16, 16, 6]      # 15+15+15+5 tokens


class LinkPort(ModelPort):
    """A board on a byte port that loses, adds or corrupts a byte when told to: the behavioural
    device behind the bridge's word assembly, which drops a part word when the host reads past
    its timeout (the host has then been silent for longer than the bridge's gap)."""

    def __init__(self, config):
        super().__init__(config)
        self.part = bytearray()
        self.fault = None       # ("lose" | "add" | "corrupt", index among the bytes still to come)
        self.dropped = 0        # part words dropped

    def write(self, data):
        line = bytearray(data)
        if self.fault:
            kind, at = self.fault
            self.fault = (kind, at - len(line)) if at >= len(line) else None
            if kind == "lose" and at < len(line):
                del line[at]
            elif kind == "add" and at < len(line):
                line.insert(at, 0x5A)
            elif at < len(line):
                line[at] ^= 0xFF
        self.part += line
        whole = len(self.part) // 4 * 4
        super().write(self.part[:whole])
        del self.part[:whole]
        return len(data)

    def read(self, n):
        chunk = super().read(n)
        if not chunk and self.part:
            self.part.clear()
            self.dropped += 1
        return chunk


def _gemv_equals_golden(accelerator, rng):
    """Write two rows per bank, load a vector, run the GEMV; the results must equal golden's."""
    fmt = accelerator.format
    w_t = rng.integers(-1, 2, (2 * fmt.banks, 2 * fmt.lanes)).astype(np.int8)
    x_q = rng.integers(-128, 128, 2 * fmt.lanes).astype(np.int8)
    for bank in range(fmt.banks):
        accelerator.write_weights(bank, 8, w_t[bank::fmt.banks].reshape(-1, fmt.lanes))
    accelerator.load_activations(x_q)
    np.testing.assert_array_equal(accelerator.gemv(8, 2, 2).reshape(-1),
                                  bitlinear_int(x_q[None], w_t)[0])


def _recovers(port, fault, match):
    """``fault`` in the next GEMV's commands makes it raise a DeviceError matching ``match`` (not
    return wrong results); after clear_errors the next GEMV equals golden again."""
    accelerator = Accelerator(SerialTransport(port), TINY)
    rng = np.random.default_rng(3)
    _gemv_equals_golden(accelerator, rng)
    port.fault = fault
    with pytest.raises(DeviceError, match=match):
        _gemv_equals_golden(accelerator, rng)
    accelerator.clear_errors()
    _gemv_equals_golden(accelerator, rng)
    accelerator.check()


@pytest.mark.parametrize("fault", ["lose", "add"])
def test_a_lost_or_added_byte_anywhere_is_resynchronised(fault):
    """Wherever in a GEMV's commands a byte is lost or added, the bridge drops the part word left
    over and the transport resynchronises."""
    clean = ModelPort(TINY)
    _gemv_equals_golden(Accelerator(SerialTransport(clean), TINY), np.random.default_rng(3))
    gemv_bytes = 4 * sum(map(len, clean.commands))          # the same shapes as every GEMV here
    assert gemv_bytes == 76                # 2 x WRITE_WEIGHTS of 6 words, LOAD_ACTS 4, GEMV 3
    for at in range(gemv_bytes):
        port = LinkPort(TINY)
        _recovers(port, (fault, at), "lost, added or corrupted .* resynchronised")
        assert port.dropped == 1, f"byte {at}"


@pytest.mark.parametrize("at, match", [
    pytest.param(0, "device error UNKNOWN_OPCODE", id="WRITE_WEIGHTS"),  # reported with the GEMV
    pytest.param(48, "device error UNKNOWN_OPCODE", id="LOAD_ACTS"),
    # The GEMV's arguments then read as commands: base 8 is CLEAR_ERRORS, words_per_row 2 a
    # LOAD_ACTS of no length; the device owes no response and the transport resynchronises.
    pytest.param(64, "went silent .* resynchronised .* device error BAD_LENGTH", id="GEMV"),
])
def test_a_corrupted_opcode_is_reported(at, match):
    """A corrupted header is caught (a corrupted data byte is not: the format has no checksum)."""
    port = LinkPort(TINY)
    _recovers(port, ("corrupt", at), match)
    assert port.dropped == 0


def _serve(master, config, stop):
    """A "board" on the master side of a pseudo-terminal: the behavioural device."""
    device, pending = BehaviouralDevice(config), bytearray()
    while not stop.is_set():
        try:
            pending += os.read(master, 4096)
        except OSError:                          # the terminal closed
            return
        whole = len(pending) // 4 * 4
        words = [int.from_bytes(pending[i:i + 4], "little") for i in range(0, whole, 4)]
        del pending[:whole]
        reply = b"".join(w.to_bytes(4, "little") for w in device.feed(words))
        if reply:
            os.write(master, reply)


@pytest.mark.parametrize("mode", ["offload", "resident"])
def test_bittern_run_on_a_serial_port(tmp_path, mode):
    """The command line's serial backend, through pyserial and a real (pseudo) terminal, in
    both modes: offload (a model of its own shape, the array's prefill) and resident (a model
    of the tiny preset's resident shape, the whole decoder behind the link)."""
    pytest.importorskip("serial")
    from golden import ModelConfig, ModelWeights
    from sw_driver.checkpoint import save_bittern
    from sw_driver.resident import model_config

    shape = (ModelConfig(hidden=8, layers=1, heads=2, kv_heads=1, ffn=8, vocab=256, max_seq=32)
             if mode == "offload" else
             model_config(TINY))
    model = tmp_path / f"{mode}.safetensors"
    save_bittern(model, shape, ModelWeights.random(shape, seed=5))
    master, slave = os.openpty()
    stop = threading.Event()
    board = threading.Thread(target=_serve, args=(master, TINY, stop), daemon=True)
    board.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sw_driver.cli", "run", "--backend", "serial", "--port",
             os.ttyname(slave), "--model", str(model), "--preset", "tiny", "--prompt", "Hi",
             "--tokens", "3", "--mode", mode, "--check", "--json",
             *(["--prefill", "array"] if mode == "offload" else [])],
            capture_output=True, text=True, timeout=300)
    finally:
        stop.set()
        os.close(slave)
        os.close(master)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "serial" and report["mode"] == mode
    assert report["checked"] is True and len(report["tokens"]) == 3
    if mode == "offload":
        assert report["calls"]["gemv"] > 0 and report["calls"]["gemm"] > 0
    else:
        assert report["calls"]["generate"] == 2      # the prefill's GENERATE and the decode's
        assert max(report["link_words_per_token"].values()) <= 4


def test_serial_backend_needs_a_port():
    result = subprocess.run([sys.executable, "-m", "sw_driver.cli", "run", "--backend",
                             "serial"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("bittern: error: --backend serial needs --port, the "
                                     "board's serial port (e.g. --port /dev/ttyUSB0)")
