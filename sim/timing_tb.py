"""cocotb testbench: the device's timing against its cycle model, under a host of any timing.

A random command stream (weights, activations, GEMVs, tiles, GEMMs, bad commands, status and
counter reads; a resident model's load, GENERATEs and logit reads where the device has the units)
is sent by a host that pauses a random number of cycles before some words and refuses response
words at random.
The host's timing is drawn up front from the seed (:class:`sw_driver.cycles.Host`), so the cycle
model meets the same host: every response word must leave in the cycle the model says, with the
value it says, the counters (busy, idle, stalled, MACs, words read) included.

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``commands`` (default 24), ``pause``
(probability that a word is preceded by a pause, default 0.3), ``backpressure`` (probability of
refusing a response word in a cycle, default 0.3).
"""

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from golden import trits
from hw.commands import CommandFormat, Opcode, pack_header
from hw.config import Config
from hw.words import pack_ints
from sim import stimulus
from sim.tb import TB, params, write_report
from sw_driver.behavioural import BehaviouralDevice
from sw_driver.cycles import DeviceCycles, Host


def command_stream(fmt, rng, count):
    """``count`` random commands' words: loads and GEMVs, tiles and GEMMs, bad commands and
    register reads, ending with a counter read; on a device with resident units, a random
    model loaded and GENERATEs of short prompts, each followed by a read-back of a random span
    of its logits (the GEMVs after the load write over some of its matrices, which both sides
    then read)."""
    words, kinds, resident = [], ["gemv", "gemm", "bad", "status", "counters"], bool(fmt.tensors)
    if resident:
        load, golden = stimulus.resident_model(fmt.config, seed=int(rng.integers(1 << 16)))
        words += load
        kinds.append("generate")
    for _ in range(count):
        kind = rng.choice(kinds, p=[.3, .25, .15, .1, .1, .1] if resident else
                          [.35, .3, .15, .1, .1])
        if kind == "generate":
            prompt = rng.integers(0, golden.cfg.vocab, int(rng.integers(1, 4))).tolist()
            words += fmt.generate(prompt, int(rng.integers(1, 4)))
            row = int(rng.integers(0, fmt.vocab))       # and a read-back of its logits
            words += fmt.read_logits(row, int(rng.integers(1, fmt.vocab - row + 1)))
        elif kind == "gemv":
            words_per_row = int(rng.integers(1, min(fmt.act_words, 4) + 1))
            rows = int(rng.integers(1, min(6, fmt.depth // words_per_row) + 1))
            base = int(rng.integers(0, fmt.depth - rows * words_per_row + 1))
            for bank in range(fmt.banks):
                codes = trits.pack_words(rng.integers(-1, 2, (rows * words_per_row, fmt.lanes)),
                                         fmt.lanes)
                words += fmt.write_weights(bank, base, [row[0] for row in codes])
            words += fmt.load_acts(0, pack_ints(rng.integers(-128, 128, (words_per_row,
                                                                         fmt.lanes)), 8))
            words += fmt.gemv(base, rows, words_per_row)
        elif kind == "gemm":
            low, high = fmt.pe.weight_range
            words += fmt.load_tile(rng.integers(low, high + 1, (fmt.cols, fmt.rows)))
            tokens = rng.integers(-128, 128, (int(rng.integers(1, 3 * fmt.rows + 2)), fmt.rows))
            words += fmt.gemm(pack_ints(tokens, 8))
        elif kind == "bad":
            bad = [[pack_header(0x7F)], [pack_header(Opcode.GEMV, 1, 1)],
                   fmt.gemv(fmt.depth - 1, 2, 1), fmt.load_acts(fmt.act_words, [0]),
                   fmt.gemv(0, 1, fmt.act_words + 1)]
            words += bad[int(rng.integers(len(bad)))]
        else:
            words += fmt.simple(Opcode.READ_STATUS if kind == "status" else
                                Opcode.READ_COUNTERS)
    return words + fmt.simple(Opcode.READ_COUNTERS)


class TimingTB(TB):
    """Drives the device with a host of given timing and records each response word's cycle."""

    def __init__(self, dut, config, seed):
        super().__init__(dut, seed=seed)
        self.config, self.format = config, CommandFormat(config)
        dut.i_stream__valid.value = 0
        dut.o_stream__ready.value = 1

    async def offer(self, word, pause=0):
        """Idle ``pause`` cycles, then offer ``word`` until the device takes it."""
        dut = self.dut
        dut.i_stream__valid.value = 0
        for _ in range(pause):
            await RisingEdge(dut.clk)
        dut.i_stream__valid.value, dut.i_stream__payload.value = 1, word
        while True:
            await ReadOnly()
            accepted = bool(dut.i_stream__ready.value)
            await RisingEdge(dut.clk)
            if accepted:
                break
        dut.i_stream__valid.value = 0

    async def restart(self):
        """Reset; returns the device's first cycle out of reset (a model's cycle 0)."""
        self.dut.rst.value = 1
        for _ in range(3):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        return self.cycle()

    async def zero_memories(self):
        """Zero the banks and the activation buffer (a reset keeps them), as a fresh model's."""
        fmt = self.format
        await self.restart()
        for bank in range(fmt.banks):
            for word in fmt.write_weights(bank, 0, [0] * fmt.depth):
                await self.offer(word)
        for word in fmt.load_acts(0, [0] * fmt.act_words):
            await self.offer(word)
        for _ in range(8):
            await RisingEdge(self.dut.clk)

    async def exchange(self, words, host, responses):
        """From a reset, send ``words`` as ``host`` times them; returns the first
        ``responses`` response words as ``(word, cycle since the reset)``."""
        dut, received = self.dut, []
        start = await self.restart()

        async def sink():
            while len(received) < responses:
                take = host.ready(self.cycle() - start)
                dut.o_stream__ready.value = int(take)
                await ReadOnly()
                if take and dut.o_stream__valid.value:
                    received.append((int(dut.o_stream__payload.value), self.cycle() - start))
                await RisingEdge(dut.clk)
            dut.o_stream__ready.value = 0

        taking = cocotb.start_soon(sink())
        for n, word in enumerate(words):
            await self.offer(word, host.pause(n))
        for _ in range(20 * responses + 1000):
            if taking.done():
                break
            await RisingEdge(dut.clk)
        assert taking.done(), f"{len(received)} of {responses} response words arrived"
        return received


@cocotb.test()
async def host_timing_is_modelled(dut):
    """Under a host that pauses and refuses at random, every response word (its value and its
    cycle, the counters included) equals the cycle model's."""
    p = params()
    config = Config.from_dict(p["config"])
    tb = TimingTB(dut, config, p.get("seed", 0))
    rng = np.random.default_rng(p.get("seed", 0))
    await tb.zero_memories()
    words = command_stream(tb.format, rng, p.get("commands", 24))
    pause, refuse = p.get("pause", 0.3), p.get("backpressure", 0.3)
    pauses = [int(rng.geometric(0.4)) if rng.random() < pause else 0 for _ in words]
    ready = rng.random(4 * (len(words) + sum(pauses)) + 100_000) >= refuse
    host = Host(pauses=pauses, ready=lambda cycle: bool(ready[cycle]))
    model = DeviceCycles(config, host=host, device=BehaviouralDevice(config))
    model.feed(words)
    expected = model.run()
    received = await tb.exchange(words, host, len(expected))
    for n, (got, want) in enumerate(zip(received, expected)):
        assert got == want, (f"response word {n}: the device sent {got[0]:#010x} in cycle "
                             f"{got[1]}, the cycle model {want[0]:#010x} in cycle {want[1]}")
    write_report({"words": len(words), "responses": len(expected), "cycles": model.cycle,
                  **model.totals})


@cocotb.test()
async def a_host_that_never_waits_meets_the_behavioural_device(dut):
    """Words back to back, every response word taken at once: the behavioural device's own
    counters (busy from the cached timing, one idle cycle per header, none stalled) are the
    RTL's, word for word."""
    p = params()
    config = Config.from_dict(p["config"])
    tb = TimingTB(dut, config, p.get("seed", 0) + 1)
    await tb.zero_memories()
    words = command_stream(tb.format, np.random.default_rng(p.get("seed", 0) + 1),
                           p.get("commands", 24))
    expected = BehaviouralDevice(config).feed(words)
    received = await tb.exchange(words, Host(), len(expected))
    for n, ((got, cycle), want) in enumerate(zip(received, expected)):
        assert got == want, (f"response word {n} (cycle {cycle}): the device sent {got:#010x}, "
                             f"the behavioural device {want:#010x}")
