"""SerialTransport without a board: byte order, timeouts, bursts, and ``bittern run --backend
serial`` through a real pseudo-terminal to a behavioural "board"."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from golden.bitlinear import bitlinear_int
from hw.commands import Opcode, pack_header
from hw.config import preset
from hw.uart import RX_FIFO_WORDS
from sw_driver.behavioural import BehaviouralDevice
from sw_driver.driver import Accelerator, DeviceError
from sw_driver.serial_link import SerialTransport

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


def test_a_silent_device_raises_instead_of_hanging():
    port = FakePort(bytes(6))                   # a word and a half, then nothing
    with pytest.raises(DeviceError, match=r"went silent after 6 of 12 response bytes \(3 words"):
        SerialTransport(port).transact([pack_header(Opcode.READ_STATUS)], 3)


def test_a_short_write_raises():
    class Stuck(FakePort):
        def write(self, data):
            return len(data) - 1

    with pytest.raises(DeviceError, match="wrote 7 of 8 bytes"):
        SerialTransport(Stuck()).transact([1, 2], 0)


@pytest.mark.parametrize("port, burst, message", [
    (object(), RX_FIFO_WORDS, "port must have write"),
    (FakePort(), 1, "burst_words must be an integer of at least 2, not 1"),
])
def test_bad_parameters_are_refused(port, burst, message):
    with pytest.raises((TypeError, ValueError), match=message):
        SerialTransport(port, burst_words=burst)


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


def test_bittern_run_on_a_serial_port(tmp_path):
    """The command line's serial backend, through pyserial and a real (pseudo) terminal."""
    pytest.importorskip("serial")
    from golden import ModelConfig, ModelWeights
    from sw_driver.checkpoint import save_bittern

    nano = ModelConfig(hidden=8, layers=1, heads=2, kv_heads=1, ffn=8, vocab=256, max_seq=32)
    model = tmp_path / "nano.safetensors"
    save_bittern(model, nano, ModelWeights.random(nano, seed=5))
    master, slave = os.openpty()
    stop = threading.Event()
    board = threading.Thread(target=_serve, args=(master, TINY, stop), daemon=True)
    board.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sw_driver.cli", "run", "--backend", "serial", "--port",
             os.ttyname(slave), "--model", str(model), "--preset", "tiny", "--prompt", "Hi",
             "--tokens", "3", "--check", "--json"],
            capture_output=True, text=True, timeout=300)
    finally:
        stop.set()
        os.close(slave)
        os.close(master)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "serial" and report["checked"] is True
    assert report["calls"]["gemv"] > 0 and report["calls"]["gemm"] > 0


def test_serial_backend_needs_a_port():
    result = subprocess.run([sys.executable, "-m", "sw_driver.cli", "run", "--backend",
                             "serial"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("bittern: error: --backend serial needs --port, the "
                                     "board's serial port (e.g. --port /dev/ttyUSB0)")
