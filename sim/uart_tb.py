"""cocotb testbench of the board logic (:class:`hw.boards.LinkCore`) through a UART model.

The host side is ``cocotbext-uart``: a source on ``rx`` and a sink on ``tx``. The link tests
(``echo_words``, ``framing_error_lights_error_led``) send words as 4 bytes each, least significant
first, to :class:`hw.boards.EchoDevice`. ``accelerator_over_uart`` runs the real driver on the
accelerator: :class:`sw_driver.driver.Accelerator` over
:class:`sw_driver.serial_link.SerialTransport` over :class:`UartPort`, a byte port with
pyserial's interface backed by the UART models. The blocking driver runs in a thread
(``cocotb.task.bridge``); each call to the port runs in the simulation (``cocotb.task.resume``).
``link_recovers`` runs it over :class:`FaultyPort`, which loses, adds or corrupts a byte.

Parameters (``BITTERN_PARAMS``): ``baud``, ``seed``, ``leds`` (bit offset of each LED);
``words`` (echo test); ``config`` and ``timeout_bytes`` (accelerator and recovery tests);
``gemvs``, ``tokens`` and optionally ``burst_words`` (accelerator test).
"""

import logging

import cocotb
import numpy as np
from cocotb.task import bridge, resume
from cocotb.triggers import RisingEdge, Timer, with_timeout
from cocotb.utils import get_sim_time
from cocotbext.uart import UartSink, UartSource

from golden.bitlinear import bitlinear_int
from hw.commands import ErrorCode, Opcode, pack_header
from hw.config import Config
from hw.uart import RESYNC_BITS
from sim.tb import TB, params, write_report
from sw_driver.driver import Accelerator, DeviceError
from sw_driver.serial_link import SerialTransport

REPORT = {"bytes_sent": 0, "bytes_received": 0}


class LinkTB(TB):
    """Clock, reset, a UART source on ``rx`` and a UART sink on ``tx``."""

    def __init__(self, dut, p):
        super().__init__(dut, seed=p.get("seed", 0))
        self.baud = p["baud"]
        self.leds = p["leds"]
        self.source = UartSource(dut.rx, baud=self.baud)
        self.sink = UartSink(dut.tx, baud=self.baud)
        for model in (self.source, self.sink):           # one log line per byte is too many
            model.log.setLevel(logging.WARNING)

    @property
    def byte_ns(self):
        """One 8N1 frame: start, 8 data and stop bits."""
        return 10 * 1e9 / self.baud

    def led(self, name):
        return (int(self.dut.leds.value) >> self.leds[name]) & 1

    async def send(self, words):
        data = b"".join(word.to_bytes(4, "little") for word in words)
        await self.source.write(data)
        REPORT["bytes_sent"] += len(data)

    async def receive(self, count):
        """``count`` words; fails if the line stays quiet for 100 byte times."""
        data = bytearray()
        while len(data) < 4 * count:
            data += await with_timeout(self.sink.read(), 100 * self.byte_ns, "ns")
        assert len(data) == 4 * count, f"{len(data) - 4 * count} bytes more than expected"
        REPORT["bytes_received"] += len(data)
        return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]


class UartPort:
    """A byte port with pyserial's interface on the UART models, for a driver running in a
    :func:`cocotb.task.bridge` thread.

    As with pyserial: ``write`` queues bytes and returns; ``flush`` waits until they have left
    on the line; ``read(n)`` returns once ``n`` bytes have arrived, or with fewer when
    ``timeout_ns`` of simulated time pass first.
    """

    def __init__(self, tb, *, timeout_ns):
        # The transport resynchronises by staying silent for a timeout: longer than the gap
        # after which the board's bridge drops a part word.
        assert timeout_ns > RESYNC_BITS * 1e9 / tb.baud, "the port timeout is within the gap"
        self.tb, self.timeout_ns = tb, timeout_ns

    def write(self, data):
        resume(self.tb.source.write)(bytes(data))
        REPORT["bytes_sent"] += len(data)
        return len(data)

    def flush(self):
        resume(self.tb.source.wait)()

    def read(self, n):
        data = resume(self._read)(n)
        REPORT["bytes_received"] += len(data)
        return bytes(data)

    async def _read(self, n):
        sink, data = self.tb.sink, bytearray()
        deadline = get_sim_time(unit="ns") + self.timeout_ns
        while len(data) < n:
            if sink.count():
                data += sink.read_nowait(min(n - len(data), sink.count()))
                continue
            left = int(deadline - get_sim_time(unit="ns"))
            if left <= 0:
                break
            await sink.wait(timeout=left, timeout_unit="ns")
        return data


class FaultyPort(UartPort):
    """A :class:`UartPort` whose line loses, adds or corrupts one byte: ``fault = (kind, opcode,
    at)`` acts on byte ``at`` of the next command of ``opcode`` written (the driver writes a
    command at a time)."""

    fault = None

    def write(self, data):
        line = bytearray(data)
        if self.fault and line[0] == self.fault[1].value:
            (kind, _, at), self.fault = self.fault, None
            if kind == "lose":
                del line[at]
            elif kind == "add":
                line.insert(at, 0x5A)
            else:
                line[at] ^= 0xFF
        super().write(line)
        return len(data)


@cocotb.test()
async def echo_words(dut):
    """Random words (and the extremes) come back plus one, in order; the rx LED lights."""
    p = params()
    tb = LinkTB(dut, p)
    await tb.reset()
    assert tb.led("error") == 0
    words = [0, 0xFFFF_FFFF, 0x0102_0304] + [tb.rng.getrandbits(32)
                                             for _ in range(p.get("words", 32))]
    sender = cocotb.start_soon(tb.send(words))
    got = await tb.receive(len(words))
    await sender
    expected = [(word + 1) & 0xFFFF_FFFF for word in words]
    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    assert not bad, f"word {bad[0]}: got {got[bad[0]]:#010x}, expected {expected[bad[0]]:#010x}"
    assert tb.led("rx") == 1 and tb.led("tx") == 1 and tb.led("error") == 0
    write_report(REPORT)


@cocotb.test()
async def framing_error_lights_error_led(dut):
    """A byte whose stop bit is low is dropped and sets the sticky error LED."""
    p = params()
    tb = LinkTB(dut, p)
    await tb.reset()
    bit_ns = 1e9 / tb.baud
    for level in [0] + [1, 0] * 4 + [0]:           # start, 0x55, a low stop bit
        dut.rx.value = level
        await Timer(bit_ns, "ns")
    dut.rx.value = 1
    await Timer(2 * bit_ns, "ns")
    await RisingEdge(dut.clk)
    assert tb.led("error") == 1, "framing error did not light the error LED"
    await tb.send([41])                              # the link still works afterwards
    assert await tb.receive(1) == [42]


def _random_gemv(accelerator, rng):
    """Write a random matrix at a random base, load a random vector, run one GEMV and compare
    it with golden's integer core."""
    fmt = accelerator.format
    banks, lanes = fmt.banks, fmt.lanes
    slots = int(rng.integers(1, 4))                                  # row slots per bank
    words_per_row = int(rng.integers(1, min(fmt.act_words, fmt.depth // slots) + 1))
    base = int(rng.integers(0, fmt.depth - slots * words_per_row + 1))
    n = int(rng.integers((slots - 1) * banks + 1, slots * banks + 1))
    k = int(rng.integers((words_per_row - 1) * lanes + 1, words_per_row * lanes + 1))
    w_t = rng.integers(-1, 2, (n, k)).astype(np.int8)
    x_q = rng.integers(-128, 128, k).astype(np.int8)
    x_q[rng.integers(k)] = -128                                      # the extreme activation
    padded = np.zeros((slots * banks, words_per_row * lanes), np.int8)
    padded[:n, :k] = w_t
    for bank in range(banks):
        accelerator.write_weights(bank, base, padded[bank::banks].reshape(-1, lanes))
    accelerator.load_activations(x_q)
    got = accelerator.gemv(base, slots, words_per_row).reshape(-1)[:n]
    expected = bitlinear_int(x_q[None], w_t)[0]
    bad = np.flatnonzero(got != expected)
    assert not bad.size, (f"GEMV {n}x{k} at base {base}: row {bad[0]} got {got[bad[0]]}, "
                          f"expected {expected[bad[0]]}")


def _expect_error(call, text):
    try:
        call()
    except DeviceError as error:
        assert text in str(error), f"expected a DeviceError saying {text!r}, got {error}"
    else:
        raise AssertionError(f"expected a DeviceError saying {text!r}; there was none")


def _exercise(accelerator, p):
    """The driver's whole command set over the link, checked against golden (blocking: runs in
    the driver's thread)."""
    rng = np.random.default_rng(p["seed"])
    fmt = accelerator.format
    report = {"gemvs": 0, "gemm_tokens": 0}

    status = accelerator.status()                     # checks the magic word
    assert status["error"] == ErrorCode.NONE.value, status
    for _ in range(p["gemvs"]):
        _random_gemv(accelerator, rng)
        report["gemvs"] += 1

    # A bad command is dropped with a sticky error, and the next good one works.
    accelerator.transport.transact([pack_header(0xEE)], 0)
    _expect_error(accelerator.check, "UNKNOWN_OPCODE")
    # A refused GEMV sends no response: the transport times out instead of hanging.
    _expect_error(lambda: accelerator.gemv(0, 1, 0), "went silent")
    _expect_error(accelerator.check, "UNKNOWN_OPCODE")         # the first error is kept
    accelerator.clear_errors()
    _random_gemv(accelerator, rng)
    report["gemvs"] += 1

    # A GEMM tile, with more tokens than the board's receive buffer holds.
    w_t = rng.integers(-1, 2, (fmt.cols, fmt.rows)).astype(np.int8)
    x_q = rng.integers(-128, 128, (p["tokens"], fmt.rows)).astype(np.int8)
    x_q[0] = -128
    accelerator.load_tile(w_t)
    got = accelerator.gemm(x_q)
    expected = bitlinear_int(x_q, w_t)
    bad = np.argwhere(got != expected)
    assert not bad.size, (f"GEMM token {bad[0][0]} column {bad[0][1]}: got "
                          f"{got[tuple(bad[0])]}, expected {expected[tuple(bad[0])]}")
    report["gemm_tokens"] += len(x_q)
    accelerator.check()
    report["macs"] = accelerator.counters().macs
    return report


@cocotb.test()
async def accelerator_over_uart(dut):
    """The driver over SerialTransport over the UART: status, GEMVs, a bad command, a GEMM tile,
    every result equal to golden's; no byte lost (the error LED stays dark)."""
    p = params()
    tb = LinkTB(dut, p)
    await tb.reset()
    port = UartPort(tb, timeout_ns=p["timeout_bytes"] * tb.byte_ns)
    transport = SerialTransport(port, **({"burst_words": p["burst_words"]}
                                         if "burst_words" in p else {}))
    accelerator = Accelerator(transport, Config.from_dict(p["config"]))
    report = await bridge(_exercise)(accelerator, p)
    await RisingEdge(dut.clk)
    assert tb.led("error") == 0, "the link lost a byte (overrun) or saw a framing error"
    write_report({**REPORT, **report, "cycles": tb.cycle()})


# Where each fault lands in a GEMV's commands (WRITE_WEIGHTS for each bank, LOAD_ACTS, GEMV), and
# what the driver's error then says. Lost or added: byte 9, in bank 0's first weight word; every
# word after it is out of step until the bridge drops the part word left over. Corrupted: the
# LOAD_ACTS opcode, which the device refuses; the error is sticky (a corrupted data byte would go
# unseen: the command format has no checksum).
FAULTS = {"lose": (Opcode.WRITE_WEIGHTS, 9, "resynchronised"),
          "add": (Opcode.WRITE_WEIGHTS, 9, "resynchronised"),
          "corrupt": (Opcode.LOAD_ACTS, 0, "UNKNOWN_OPCODE")}


def _recover(accelerator, port, fault, p):
    """A GEMV, a GEMV whose commands meet ``fault``, then a GEMV after clear_errors (blocking:
    runs in the driver's thread)."""
    rng = np.random.default_rng(p["seed"])
    _random_gemv(accelerator, rng)
    opcode, at, says = FAULTS[fault]
    port.fault = (fault, opcode, at)
    _expect_error(lambda: _random_gemv(accelerator, rng), says)
    assert port.fault is None, "the fault fell beyond the GEMV's commands"
    accelerator.clear_errors()
    _random_gemv(accelerator, rng)
    accelerator.check()


@cocotb.test()
@cocotb.parametrize(fault=list(FAULTS))
async def link_recovers(dut, fault):
    """A byte lost, added or corrupted in the middle of a GEMV's commands: the GEMV raises a
    DeviceError saying what happened, never wrong results, and after clear_errors the next GEMV
    equals golden's. The bridge's resync flag keeps the error LED lit after a lost or added byte
    (the device's error, cleared, no longer does)."""
    p = params()
    tb = LinkTB(dut, p)
    await tb.reset()
    port = FaultyPort(tb, timeout_ns=p["timeout_bytes"] * tb.byte_ns)
    accelerator = Accelerator(SerialTransport(port), Config.from_dict(p["config"]))
    await bridge(_recover)(accelerator, port, fault, p)
    await RisingEdge(dut.clk)
    assert tb.led("error") == (fault != "corrupt"), f"error LED {tb.led('error')} after {fault}"
    write_report({**REPORT, "cycles": tb.cycle()})
