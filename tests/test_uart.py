# amaranth: UnusedElaboratable=no
"""The UART bridge: bit timing under Amaranth's simulator, and the board logic on Verilator.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import pytest
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.boards import LEDS, EchoDevice, LinkCore
from hw.config import preset
from hw.device import Device
from hw.uart import UARTBridge, UARTRx, UARTTx, baud_divisor
from sw_driver import flow
from sim.tb import CLOCK_NS

from .test_array_sim import SignFlipPE

CLK_HZ = 1e9 / CLOCK_NS
BAUD = round(CLK_HZ / 8)            # 8 cycles a bit: fast to simulate, exact in nanoseconds
TINY = preset("tiny")


@pytest.mark.parametrize("clk_hz, baud, divisor", [(100e6, 115200, 868), (24e6, 115200, 208),
                                                   (12e6, 3_000_000, 4)])
def test_baud_divisor(clk_hz, baud, divisor):
    assert baud_divisor(clk_hz, baud) == divisor


@pytest.mark.parametrize("clk_hz, baud, message", [
    (24e6, 5_000_000, "4.0% off"),
    (12e6, 6_000_000, "a bit must last at least 4 cycles"),
    (12e6, 0, "baud must be a positive integer"),
])
def test_baud_divisor_rejects(clk_hz, baud, message):
    with pytest.raises(ValueError, match=message):
        baud_divisor(clk_hz, baud)


def test_tx_then_rx_loop_back_bytes():
    """TX's line fed to RX: every byte arrives, in order, with the 8N1 frame timing."""
    divisor = 6
    tx, rx = UARTTx(divisor), UARTRx(divisor)
    sent = [0x00, 0xFF, 0xA5, 0x5A, 0x01, 0x80]
    received, line_log = [], []

    async def send(ctx):
        for byte in sent:
            ctx.set(tx.i_stream.payload, byte)
            ctx.set(tx.i_stream.valid, 1)
            await ctx.tick().until(tx.i_stream.ready)
        ctx.set(tx.i_stream.valid, 0)

    async def wire(ctx):
        async for _, _, level in ctx.tick().sample(tx.tx):
            ctx.set(rx.rx, level)
            line_log.append(level)

    async def receive(ctx):
        ctx.set(rx.o_stream.ready, 1)
        while len(received) < len(sent):
            await ctx.tick().until(rx.o_stream.valid)
            received.append(ctx.get(rx.o_stream.payload))
            assert not ctx.get(rx.overrun) and not ctx.get(rx.framing_error)

    m = Module()
    m.submodules.tx, m.submodules.rx = tx, rx
    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_process(wire)
    sim.add_testbench(receive)
    sim.run_until(len(sent) * 12 * divisor * 1e-6)
    assert received == sent
    start = line_log.index(0)                       # first start bit: 10 bits of `divisor`
    frame = line_log[start:start + 10 * divisor:divisor]
    assert frame == [0] + [0] * 8 + [1]             # byte 0x00: start, eight zeros, stop


def test_bridge_rejects_a_bad_fifo_depth():
    with pytest.raises(ValueError, match="rx_fifo_words must be a positive integer, not 0"):
        UARTBridge(clk_hz=CLK_HZ, rx_fifo_words=0)


@pytest.mark.parametrize("resync_bits", [19, 20.0, None])
def test_bridge_rejects_a_bad_resync_gap(resync_bits):
    with pytest.raises(ValueError) as error:
        UARTBridge(clk_hz=CLK_HZ, resync_bits=resync_bits)
    assert str(error.value) == (f"resync_bits must be an integer of at least 20 (two byte "
                                f"frames), not {resync_bits!r}")


def _bridge_words(script, *, divisor=4, resync_bits=20):
    """What a :class:`UARTBridge` makes of ``script``, ``(idle bit times, byte)`` pairs sent on
    its line: the words it assembles, and its ``resync`` flag at the end."""
    bridge = UARTBridge(clk_hz=divisor * 1e6, baud=1_000_000, resync_bits=resync_bits)
    words, flag = [], []

    async def line(ctx):
        for idle, byte in script:
            if idle:
                await ctx.tick().repeat(idle * divisor)
            for bit in [0, *(byte >> i & 1 for i in range(8)), 1]:
                ctx.set(bridge.rx, bit)
                await ctx.tick().repeat(divisor)
        await ctx.tick().repeat(5 * divisor)            # the last word leaves; no gap yet
        flag.append(ctx.get(bridge.resync))

    async def receive(ctx):
        ctx.set(bridge.o_stream.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(bridge.o_stream.valid,
                                                           bridge.o_stream.payload):
            if valid:
                words.append(payload)

    sim = Simulator(bridge)
    sim.add_clock(1e-6 / divisor)
    sim.add_testbench(line)
    sim.add_testbench(receive, background=True)
    sim.run()
    return words, flag[0]


@pytest.mark.parametrize("gap, words, resync", [
    (9, [0x44332211], 0),                    # bytes 11 and 22 arrive 19 bit times apart: kept
    (11, [0x55443322], 1),                   # 21 bit times: the part word (11) is dropped
])
def test_bridge_drops_a_part_word_after_the_resync_gap(gap, words, resync):
    """``resync_bits`` = 20: a part-assembled word waits up to 20 bit times (from one byte's
    arrival, its stop bit, to the next's) for its next byte, then is dropped; back-to-back
    bytes arrive every 10."""
    script = [(0, 0x11), (gap, 0x22), (0, 0x33), (0, 0x44), (0, 0x55), (0, 0x66)]
    assert _bridge_words(script) == (words, resync)


def test_bridge_never_drops_a_whole_word():
    """Gaps between words do not count, however long."""
    script = [(0, 0x11), (0, 0x22), (0, 0x33), (0, 0x44), (60, 0x55), (0, 0x66), (0, 0x77),
              (0, 0x88)]
    assert _bridge_words(script) == ([0x44332211, 0x88776655], 0)


def _run(device, testcase, **extra):
    core = LinkCore(device, clk_hz=CLK_HZ, baud=BAUD)
    build = flow.verilator_build(core, unit="uart", metadata={"baud": BAUD, "clk_hz": CLK_HZ})
    leds = {name: LEDS[name].offset for name in LEDS.members}
    name = "-".join(testcase).replace("/", "_")         # link_recovers/fault=lose: a file name
    return flow.verilator_run(build, test_module="sim.uart_tb", name=name, testcase=testcase,
                              seed=1, params={"baud": BAUD, "seed": 1, "leds": leds, **extra})


def test_words_echo_over_uart():
    result = _run(EchoDevice(), ["echo_words", "framing_error_lights_error_led"], words=48)
    assert result.passed, result.failures
    assert result.tests == 2 and result.report["bytes_received"] == 4 * 51


class PassThrough(wiring.Component):
    """A broken device: answers with the word itself, not the word plus one."""
    i_stream: In(stream.Signature(32))
    o_stream: Out(stream.Signature(32))

    def elaborate(self, platform):
        m = Module()
        wiring.connect(m, wiring.flipped(self.i_stream), wiring.flipped(self.o_stream))
        return m


def test_uart_tests_catch_a_broken_device():
    result = _run(PassThrough(), ["echo_words"], words=4)
    assert not result.passed
    assert any("expected" in failure for failure in result.failures), result.failures


def _run_accelerator(device, *, tokens=100, **extra):
    return _run(device, ["accelerator_over_uart"], config=TINY.to_dict(), gemvs=4,
                tokens=tokens, timeout_bytes=200, **extra)


def test_driver_over_uart_matches_golden():
    """The driver's SerialTransport through the UART bridge to the accelerator: every result
    equals golden's, a bad command is survived, a silent device times out, no byte is lost."""
    result = _run_accelerator(Device(TINY))
    assert result.passed, result.failures
    report = result.report
    assert report["gemvs"] == 5 and report["gemm_tokens"] == 100 and report["macs"] > 0
    assert report["bytes_received"] > 4 * 100 * TINY.array.cols


def test_driver_recovers_from_a_lost_added_or_corrupted_byte():
    """Each fault in the middle of a GEMV's commands on the line: the driver reports it (a
    DeviceError naming the resynchronisation or the device's error), the board keeps working
    (the next GEMV equals golden's), and a lost or added byte lights the error LED."""
    faults = ["lose", "add", "corrupt"]
    result = _run(Device(TINY), [f"link_recovers/fault={fault}" for fault in faults],
                  config=TINY.to_dict(), timeout_bytes=200)
    assert result.passed and result.tests == len(faults), result.failures


def test_driver_over_uart_catches_a_broken_device():
    result = _run_accelerator(Device(TINY, pe=SignFlipPE))
    assert not result.passed
    assert any("GEMM token" in failure for failure in result.failures), result.failures


def test_a_gemm_beyond_the_receive_buffer_would_lose_bytes():
    """Why SerialTransport limits its bursts: with no limit, a long GEMM's tokens pile up behind
    the results leaving at line rate, and the board's receive buffer overflows. (A token is 4
    bytes in and 16 out on the tiny preset: while 200 arrive, about 50 are taken; the 64-word
    buffer and the device's own few hold far fewer than the rest.)"""
    result = _run_accelerator(Device(TINY), tokens=200, burst_words=1 << 20)
    assert not result.passed
    assert any("GEMM" in failure or "lost a byte" in failure or "silent" in failure
               for failure in result.failures), result.failures
