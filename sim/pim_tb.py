"""cocotb testbench of :class:`hw.pim.PimBankGroup`, checked against golden's integer core.

The testbench keeps a shadow of every bank and of the activation buffer; each row result must
equal :func:`golden.bitlinear.bitlinear_int` of the shadow words and chunks it read. The
``words_read`` and ``macs`` counters must add up to the words the commands read, and no write
may be accepted while ``busy``.

Parameters (``BITTERN_PARAMS``): ``config`` (the JSON config), ``seed``, ``tiles`` (random
GEMVs). Report: ``tiles`` (random GEMVs checked), ``gemvs`` (every GEMV command checked,
empty ones included), ``macs`` (non-zero trits read), ``cycles`` (first command accepted to last
result, summed over batches), ``efficiency`` (docs/design.md, Metrics) and the run it was
measured on.
"""

import itertools

import cocotb
import numpy as np
from amaranth import Shape
from cocotb.triggers import ReadOnly, RisingEdge

from golden import trits
from golden.bitlinear import bitlinear_int
from hw.config import Config
from hw.pim import PimBankGroup
from hw.words import pack_ints, unpack_ints
from sim.tb import TB, StreamSink, StreamSource, params, write_report

# (idle probability on the inputs, back-pressure probability on the output)
FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5, 0.9)))
REPORT = {"tiles": 0, "gemvs": 0, "macs": 0, "cycles": 0}


def _packer(layout):
    """``pack(**fields)``: a payload of ``layout`` from non-negative field values."""
    fields = {name: (field.offset, Shape.cast(field.shape).width) for name, field in layout}

    def pack(**values):
        assert values.keys() == fields.keys(), (sorted(values), sorted(fields))
        word = 0
        for name, value in values.items():
            offset, width = fields[name]
            assert 0 <= value < 1 << width, f"{name} = {value} does not fit {width} bits"
            word |= value << offset
        return word
    return pack


class PimTB(TB):
    """Writes weights and activations, runs GEMV commands, checks every row result."""

    def __init__(self, dut, config, seed):
        super().__init__(dut, seed=seed)
        self.banks, self.lanes, self.depth = config.pim.banks, config.pim.lanes, config.pim.depth
        self.max_k, self.act_bits = config.max_k, config.act_bits
        self.act_words = config.act_words
        self.latency = PimBankGroup.latency_for(config)
        layouts = PimBankGroup.layouts(config)
        for name, layout in layouts.items():                 # the DUT is what we think it is
            width = len(getattr(dut, f"{name}__payload"))
            assert width == layout.size, f"{name} payload is {width} bits, not {layout.size}"
        self.acc_bits = len(dut.o_stream__payload) // self.banks
        self.pack_w, self.pack_x, self.pack_cmd = (
            _packer(layouts[name]) for name in ("w_stream", "x_stream", "cmd_stream"))
        self.act_low = max(-128, -(1 << (self.act_bits - 1)))     # golden's x_q is int8
        self.act_high = min(127, (1 << (self.act_bits - 1)) - 1)

        self.np_rng = np.random.default_rng(seed)
        self.memory = np.zeros((self.banks, self.depth, self.lanes), np.int8)
        self.chunks = np.zeros((self.act_words, self.lanes), np.int8)
        self.weights = StreamSource(dut, "w_stream", rng=self.rng)
        self.activations = StreamSource(dut, "x_stream", rng=self.rng)
        self.commands = StreamSource(dut, "cmd_stream", rng=self.rng)
        self.results = StreamSink(dut, "o_stream", rng=self.rng)
        self.words_read = np.zeros(self.banks, np.int64)
        self.macs = 0
        self.writes_while_busy = 0
        cocotb.start_soon(self._count())

    async def _count(self):
        dut = self.dut
        while True:
            await ReadOnly()
            words = int(dut.words_read.value)
            self.words_read += [(words >> b) & 1 for b in range(self.banks)]
            self.macs += int(dut.macs.value)
            if dut.busy.value and (dut.w_stream__ready.value or dut.x_stream__ready.value):
                self.writes_while_busy += 1
            await RisingEdge(dut.clk)

    def set_flow(self, idle, backpressure):
        self.weights.pause = self.activations.pause = self.commands.pause = idle
        self.results.backpressure = backpressure

    async def write_rows(self, bank, base, w_t):
        """Write trits ``w_t`` (rows x K, K <= act_words * lanes) as rows of whole words."""
        words = trits.pack_words(w_t, self.lanes)
        beats = [(bank, base + r * len(row) + i, word)
                 for r, row in enumerate(words) for i, word in enumerate(row)]
        self.rng.shuffle(beats)
        await self.weights.send([self.pack_w(bank=b, addr=a, data=d) for b, a, d in beats],
                                self.cycle)
        for b, addr, word in beats:
            self.memory[b, addr] = trits.unpack_words(word, self.lanes)

    async def write_activations(self, x):
        """Write ``x`` (int8, K <= act_words * lanes) as chunks 0, 1, ..., zero-padded."""
        x = np.pad(x, (0, -len(x) % self.lanes)).reshape(-1, self.lanes)
        await self.activations.send([self.pack_x(addr=i, data=pack_ints(chunk, self.act_bits))
                                     for i, chunk in enumerate(x)], self.cycle)
        self.chunks[:len(x)] = x
        # The group stores activations past max_k as zero (its overflow guarantee).
        self.chunks.reshape(-1)[self.max_k:] = 0

    def expected(self, base, rows, words_per_row):
        """Golden row results (rows x banks) of a command, from the shadow state."""
        x_q = self.chunks[:words_per_row].reshape(1, -1)
        span = self.memory[:, base:base + rows * words_per_row]
        return np.stack([bitlinear_int(x_q, span[b].reshape(rows, -1))[0]
                         for b in range(self.banks)], axis=1)

    async def run(self, commands):
        """Send ``commands`` (base, rows, words_per_row) back to back; check every result.

        Returns the cycles from the first command accepted to the last result (0 if none)."""
        nonempty = [c for c in commands if c[1] and c[2]]
        expected = np.concatenate([self.expected(*c) for c in nonempty]) if nonempty \
            else np.zeros((0, self.banks), np.int32)
        words = sum(rows * words_per_row for _, rows, words_per_row in nonempty)
        macs = sum(int(np.count_nonzero(self.memory[:, base:base + rows * words_per_row]))
                   for base, rows, words_per_row in nonempty)
        words_before, macs_before = self.words_read.copy(), self.macs
        first = len(self.commands.accepted_cycles)
        sender = cocotb.start_soon(self.commands.send(
            [self.pack_cmd(base=b, rows=r, words_per_row=w) for b, r, w in commands],
            self.cycle))
        longest_row = max((w for _, _, w in commands), default=1)
        beats = await self.results.receive(len(expected), self.cycle,
                                           timeout=8 * (longest_row + self.latency) + 200)
        await sender
        for _ in range(self.latency + 4):                  # drain: nothing more may come out
            await RisingEdge(self.dut.clk)
        await ReadOnly()
        assert not self.dut.busy.value, "busy after every result was read"
        assert not self.dut.o_stream__valid.value, "a result beyond the commands' rows"
        await RisingEdge(self.dut.clk)

        got = unpack_ints(beats, self.acc_bits, self.banks).reshape(-1, self.banks)
        bad = np.argwhere(got != expected)
        if bad.size:
            raise AssertionError(f"row {bad[0][0]} bank {bad[0][1]}: got {got[tuple(bad[0])]}, "
                                 f"expected {expected[tuple(bad[0])]} ({len(bad)} wrong of "
                                 f"{got.size}; commands {commands})")
        assert (self.words_read - words_before == words).all(), \
            f"words_read counted {self.words_read - words_before}, expected {words} per bank"
        assert self.macs - macs_before == macs, \
            f"macs counted {self.macs - macs_before}, expected {macs} (the non-zero trits read)"
        assert not self.writes_while_busy, "a write was accepted while busy"
        cycles = self.results.beat_cycles[-1] - self.commands.accepted_cycles[first] + 1 \
            if len(expected) else 0
        REPORT["gemvs"] += len(commands)
        REPORT["macs"] += macs
        REPORT["cycles"] += cycles
        return cycles

    def random_x(self, k):
        x = self.np_rng.integers(self.act_low, self.act_high + 1, k).astype(np.int8)
        x[self.np_rng.random(k) < 0.1] = self.act_low
        x[self.np_rng.random(k) < 0.1] = self.act_high
        return x

    def random_trits(self, rows, k):
        sparsity = self.np_rng.random()
        w_t = self.np_rng.integers(-1, 2, (rows, k)).astype(np.int8)
        w_t[self.np_rng.random((rows, k)) < sparsity] = 0
        return w_t

    async def random_batch(self, gemvs):
        """``gemvs`` random GEMVs (one K, random placements), empty commands among them."""
        rng = self.np_rng
        longest = min(self.act_words, self.depth)
        words_per_row = int(rng.integers(1, longest + 1) if rng.random() < 0.5
                            else rng.integers(1, min(longest, 8) + 1))
        k = int(rng.integers((words_per_row - 1) * self.lanes + 1,
                             words_per_row * self.lanes + 1))
        if rng.random() < 0.9:                   # else reuse whatever the buffer holds
            await self.write_activations(self.random_x(min(k, self.max_k)))
        commands = []
        for _ in range(gemvs):
            rows = int(rng.integers(1, min(self.depth // words_per_row, 12) + 1))
            base = int(rng.integers(0, self.depth - rows * words_per_row + 1))
            for bank in range(self.banks):       # each bank a matrix of its own height
                bank_rows = int(rng.integers(0, rows + 1))
                if bank_rows and rng.random() < 0.9:
                    await self.write_rows(bank, base, self.random_trits(bank_rows, k))
            if rng.random() < 0.2:
                commands.append((base, 0, words_per_row) if rng.random() < 0.5
                                else (base, rows, 0))
            commands.append((base, rows, words_per_row))
        await self.run(commands)

    async def longest_reduction(self):
        """K = max_k (as far as a bank holds it) at the extremes: x = -128, w = -1 and +1.

        Every lane of every chunk is written -128, including those past ``max_k``, which the
        group must store as zero; rows of bank ``b`` alternate -1 and +1 from sign ``(-1)**b``."""
        words_per_row = min(self.act_words, self.depth)
        rows = min(2, self.depth // words_per_row)
        await self.write_activations(np.full(words_per_row * self.lanes, self.act_low, np.int8))
        for bank in range(self.banks):
            signs = np.array([1 - 2 * ((bank + r) % 2 == 0) for r in range(rows)], np.int8)
            await self.write_rows(bank, 0, np.repeat(signs[:, None],
                                                     words_per_row * self.lanes, axis=1))
        await self.run([(0, rows, words_per_row)])
        k = min(self.max_k, words_per_row * self.lanes)
        assert abs(self.expected(0, rows, words_per_row)).max() == -self.act_low * k


@cocotb.test()
async def random_gemvs(dut):
    """Corner cases, then ``tiles`` random GEMVs, under every idle / back-pressure knob."""
    p = params()
    tb = PimTB(dut, Config.from_dict(p["config"]), p.get("seed", 0))
    await tb.reset()
    knobs = itertools.cycle(FLOW_KNOBS)
    for corner in (tb.longest_reduction,
                   lambda: tb.run([(tb.depth - 1, 0, 1), (0, 1, 0)]),        # empty commands
                   lambda: tb.run([(0, min(tb.depth, 48), 1)])):            # one-word rows
        tb.set_flow(*next(knobs))
        await corner()
    remaining = p.get("tiles", 8)
    while remaining:
        gemvs = min(remaining, tb.rng.choice((1, 1, 2, 3)))
        tb.set_flow(*next(knobs))
        await tb.random_batch(gemvs)
        remaining -= gemvs
        REPORT["tiles"] += gemvs
    write_report(REPORT)


@cocotb.test()
async def gemv_efficiency(dut):
    """One GEMV of K = 16 * lanes and 8 rows (or what fits) with no pauses: it must take exactly
    ``N + latency + 1`` cycles, and reach an efficiency (docs/design.md, Metrics) of 0.90 when it
    has the full size. Then two commands back to back, one-word rows first: every cycle between the
    first command and the last read must read a word."""
    p = params()
    tb = PimTB(dut, Config.from_dict(p["config"]), p.get("seed", 0) + 1)
    await tb.reset()
    words_per_row = min(16, tb.act_words, tb.depth)
    rows = max(1, min(8, tb.depth // words_per_row))
    k = words_per_row * tb.lanes
    await tb.write_activations(tb.random_x(min(k, tb.max_k)))
    for bank in range(tb.banks):
        await tb.write_rows(bank, 0, tb.random_trits(rows, k))
    cycles = await tb.run([(0, rows, words_per_row)])
    words = rows * words_per_row
    efficiency = words * tb.banks * tb.lanes / (tb.banks * tb.lanes * cycles)
    REPORT.update(efficiency=efficiency, efficiency_rows=rows, efficiency_k=k,
                  efficiency_cycles=cycles, latency=tb.latency)

    first, second = (0, min(8, tb.depth), 1), (0, rows, words_per_row)
    chained = await tb.run([first, second])
    REPORT.update(chained_cycles=chained)
    write_report(REPORT)
    bound = words + tb.latency + 1
    assert cycles == bound, f"GEMV took {cycles} cycles, expected N + latency + 1 = {bound}"
    assert chained == first[1] + bound, \
        f"back-to-back GEMVs took {chained} cycles, expected {first[1] + bound}"
    if rows == 8 and words_per_row == 16:
        assert efficiency >= 0.90, f"efficiency {efficiency:.4f} < 0.90"


@cocotb.test()
async def concurrent_streams(dut):
    """Weights, chunks, commands and results all flowing at once, each with random pauses or
    back-pressure. A monitor applies every write in the cycle it is taken (a weight word taken
    with a command is seen by it; a chunk never is taken with one) and predicts each command's
    rows from the memory it saw; the results must arrive in that order, bit for bit."""
    p = params()
    tb = PimTB(dut, Config.from_dict(p["config"]), p.get("seed", 0) + 2)
    await tb.reset()
    # The memories keep what earlier tests wrote (a reset does not clear them): zero them, as
    # the shadow is.
    await tb.weights.send([tb.pack_w(bank=b, addr=a, data=0) for b in range(tb.banks)
                           for a in range(tb.depth)], tb.cycle)
    await tb.activations.send([tb.pack_x(addr=a, data=0) for a in range(tb.act_words)],
                              tb.cycle)
    rng, count = tb.np_rng, max(p.get("tiles", 8), 4)
    words_per_row = [int(rng.integers(1, min(tb.act_words, tb.depth, 6) + 1))
                     for _ in range(count)]
    commands = []
    for wpr in words_per_row:
        rows = int(rng.integers(0, min(tb.depth // wpr, 6) + 1))
        commands.append((int(rng.integers(0, tb.depth - rows * wpr + 1)), rows, wpr))
    weight_beats = [(int(rng.integers(tb.banks)), int(rng.integers(tb.depth)),
                     trits.pack_words(tb.random_trits(1, tb.lanes)[0], tb.lanes)[0])
                    for _ in range(8 * count)]
    chunk_beats = [(int(rng.integers(min(tb.act_words, 6))), tb.random_x(tb.lanes))
                   for _ in range(4 * count)]
    expected, taken = [], {"w": 0, "x": 0, "cmd": 0}
    dut_signals = {name: (getattr(dut, f"{name}__valid"), getattr(dut, f"{name}__ready"))
                   for name in ("w_stream", "x_stream", "cmd_stream")}

    def fired(name):
        valid, ready = dut_signals[name]
        return bool(valid.value) and bool(ready.value)

    async def monitor():
        while True:
            await ReadOnly()
            if fired("w_stream"):
                bank, addr, word = weight_beats[taken["w"]]
                tb.memory[bank, addr] = trits.unpack_words(word, tb.lanes)
                taken["w"] += 1
            if fired("x_stream"):
                assert not fired("cmd_stream"), "a chunk and a GEMV taken in the same cycle"
                addr, chunk = chunk_beats[taken["x"]]
                tb.chunks[addr] = chunk
                tb.chunks.reshape(-1)[tb.max_k:] = 0
                taken["x"] += 1
            if fired("cmd_stream"):
                command = commands[taken["cmd"]]
                if command[1]:
                    expected.extend(tb.expected(*command))
                taken["cmd"] += 1
            await RisingEdge(dut.clk)

    tb.set_flow(0.3, 0.4)
    watcher = cocotb.start_soon(monitor())
    senders = [cocotb.start_soon(source.send(payloads, tb.cycle)) for source, payloads in (
        (tb.weights, [tb.pack_w(bank=b, addr=a, data=d) for b, a, d in weight_beats]),
        (tb.activations, [tb.pack_x(addr=a, data=pack_ints(c, tb.act_bits))
                          for a, c in chunk_beats]),
        (tb.commands, [tb.pack_cmd(base=b, rows=r, words_per_row=w) for b, r, w in commands]))]
    rows = sum(r for _, r, _ in commands)
    beats = await tb.results.receive(rows, tb.cycle, timeout=20_000)
    for sender in senders:
        await sender
    watcher.cancel()
    got = unpack_ints(beats, tb.acc_bits, tb.banks).reshape(-1, tb.banks)
    want = np.array(expected).reshape(-1, tb.banks)
    bad = np.argwhere(got != want)
    assert not bad.size, (f"row {bad[0][0]} bank {bad[0][1]}: got {got[tuple(bad[0])]}, "
                          f"expected {want[tuple(bad[0])]} ({len(bad)} wrong of {got.size})")
    assert taken == {"w": len(weight_beats), "x": len(chunk_beats), "cmd": len(commands)}
    assert not tb.writes_while_busy, "a write was accepted while busy"
    REPORT["concurrent_rows"] = rows
    write_report(REPORT)
