"""cocotb testbench of the board logic (:class:`hw.boards.LinkCore`) through a UART model.

The host side is ``cocotbext-uart``: words go in as 4 bytes each, least significant first, and
the replies are read back the same way. Parameters (``BITTERN_PARAMS``): ``baud``, ``seed``,
``words`` (echo test), ``leds`` (bit offset of each LED), and for the array stand-in ``config``,
``weight_words``, ``token_words``, ``result_words``, ``psum_bits``, ``tiles``.
"""

import logging

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge, Timer, with_timeout
from cocotbext.uart import UartSink, UartSource

from golden import trits
from golden.bitlinear import bitlinear_int
from hw.boards import StandInOp
from hw.config import Config
from hw.words import pack_ints, unpack_ints
from sim.tb import TB, params, write_report

REPORT = {"words_sent": 0, "words_received": 0}


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

    def led(self, name):
        return (int(self.dut.leds.value) >> self.leds[name]) & 1

    async def send(self, words):
        await self.source.write(b"".join(word.to_bytes(4, "little") for word in words))
        REPORT["words_sent"] += len(words)

    async def receive(self, count):
        """``count`` words; fails if the line stays quiet for 100 byte times."""
        data = bytearray()
        quiet_ns = 100 * 10 * 1e9 / self.baud
        while len(data) < 4 * count:
            data += await with_timeout(self.sink.read(), quiet_ns, "ns")
        assert len(data) == 4 * count, f"{len(data) - 4 * count} bytes more than expected"
        REPORT["words_received"] += count
        return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]


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


@cocotb.test()
async def array_tiles(dut):
    """Tiles through the array stand-in over the UART, checked against golden's integer core."""
    p = params()
    tb = LinkTB(dut, p)
    config = Config.from_dict(p["config"])
    rows, cols = config.array.rows, config.array.cols
    rng = np.random.default_rng(p.get("seed", 0))
    await tb.reset()

    def header(op):
        return op.value << 24

    def split(value, count):
        return [(value >> (32 * i)) & 0xFFFF_FFFF for i in range(count)]

    for tile in range(p.get("tiles", 2)):
        w_t = rng.integers(-1, 2, (cols, rows)).astype(np.int8)
        x_q = rng.integers(-128, 128, (int(rng.integers(1, 3 * rows)), rows)).astype(np.int8)
        x_q[0] = -128                                # the extreme activation, every tile
        words = [header(StandInOp.ECHO) | tile]
        for row in trits.pack_words(w_t.T, cols):
            words += [header(StandInOp.WEIGHTS), *split(row[0], p["weight_words"])]
        for token in pack_ints(x_q, config.act_bits):
            words += [header(StandInOp.TOKEN), *split(token, p["token_words"])]
        sender = cocotb.start_soon(tb.send(words))
        replies = await tb.receive(1 + len(x_q) * p["result_words"])
        await sender
        assert replies[0] == tile + 1, f"echo: got {replies[0]:#x}, expected {tile + 1:#x}"
        beats = [sum(word << (32 * i) for i, word in enumerate(replies[at:at + p["result_words"]]))
                 for at in range(1, len(replies), p["result_words"])]
        got = unpack_ints(beats, p["psum_bits"], cols)
        expected = bitlinear_int(x_q, w_t)
        bad = np.argwhere(got != expected)
        assert not bad.size, (f"tile {tile} token {bad[0][0]} column {bad[0][1]}: got "
                              f"{got[tuple(bad[0])]}, expected {expected[tuple(bad[0])]}")
    assert tb.led("error") == 0
    write_report(REPORT)
