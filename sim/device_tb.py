"""cocotb testbench of :class:`hw.device.Device`: the command stream, end to end.

Every word the device sends is compared with the behavioural device fed the same command words
(:class:`sw_driver.behavioural.BehaviouralDevice`, whose arithmetic is golden's); GEMV and GEMM
results are also checked against golden directly from the unpacked matrices. Of the cycle
counters, ``cycles_idle`` depends on this testbench's gaps between commands and is not
compared; ``cycles_busy`` and ``cycles_stalled`` are, whenever the host has not paused or
refused a word since the last reset (``sim/timing_tb.py`` checks every counter under any host
against the cycle model).

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (random operations),
``fuzz_words`` (default 10,000).
"""

import itertools

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from golden import trits
from golden.bitlinear import bitlinear_int, matmul_int
from hw.commands import STATUS, STATUS_FLAGS, CommandFormat, ErrorCode, Opcode, unpack_header
from hw.commands import pack_header as header
from hw.config import Config
from hw.words import pack_ints
from sim.tb import TB, StreamSource, params, write_report
from sw_driver.behavioural import BehaviouralDevice

FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5)))
IDLE = 1                        # cycles_idle: the host's gaps between commands decide it
# cycles_busy, cycles_stalled: the behavioural device's are exact for a host that never waits
# (sim/timing_tb.py checks every counter under any host against the cycle model).
HOST_TIMED = {0, 2}
REPORT = {"tiles": 0, "gemvs": 0, "gemms": 0, "bad_commands": 0, "fuzz_words": 0, "macs": 0,
          "cycles": 0}


class DeviceTB(TB):
    """Sends command words, collects response words, and checks them against the behavioural
    device."""

    def __init__(self, dut, config, seed):
        super().__init__(dut, seed=seed)
        self.config = config
        self.format = CommandFormat(config)
        self.model = BehaviouralDevice(config)
        self.np_rng = np.random.default_rng(seed)
        self.source = StreamSource(dut, "i_stream", rng=self.rng)
        self.backpressure = 0.0
        self._ideal = True
        self.received, self.expected, self.received_cycles = [], [], []
        dut.o_stream__ready.value = 0
        cocotb.start_soon(self._collect())

    async def _collect(self):
        ready = self.dut.o_stream__ready
        while True:
            take = not (self.backpressure and self.rng.random() < self.backpressure)
            ready.value = int(take)
            await ReadOnly()
            if take and self.dut.o_stream__valid.value:
                self.received.append(int(self.dut.o_stream__payload.value))
                self.received_cycles.append(self.cycle())
            await RisingEdge(self.dut.clk)

    def set_flow(self, idle, backpressure):
        self.source.pause, self.backpressure = idle, backpressure
        self._ideal = self._ideal and not (idle or backpressure)

    @property
    def ideal_host(self):
        """Since the last reset, every word was sent back to back and taken at once."""
        return self._ideal

    async def send(self, words):
        """Send command words; the behavioural device predicts what the device must answer."""
        self.expected += self.model.feed(words)
        await self.source.send(words, self.cycle)

    async def settle(self, timeout=2000):
        """Wait for every predicted response word, then compare; fail if the device is silent."""
        idle = 0
        while len(self.received) < len(self.expected):
            before = len(self.received)
            await RisingEdge(self.dut.clk)
            idle = 0 if len(self.received) > before else idle + 1
            assert idle < timeout, (f"device silent for {timeout} cycles: "
                                    f"{len(self.received)}/{len(self.expected)} words")
        for _ in range(4):                          # nothing more may follow
            await RisingEdge(self.dut.clk)
        assert len(self.received) == len(self.expected), (
            f"device sent {len(self.received) - len(self.expected)} words too many")
        self._compare()

    def _compare(self):
        position = 0
        fmt = self.format
        while position < len(self.expected):
            header = unpack_header(self.expected[position])
            op = Opcode(header["opcode"])
            count = fmt.response_words(op, header["b"])
            skipped = set()
            if op is Opcode.READ_COUNTERS:
                skipped = {IDLE} | (set() if self.ideal_host else HOST_TIMED)
            for n in range(min(count + 1, len(self.expected) - position)):  # tail: partial
                if n - 1 in skipped:
                    continue
                got, want = self.received[position + n], self.expected[position + n]
                assert got == want, (f"{op.name} response word {n}: got {got:#010x}, "
                                     f"expected {want:#010x}")
            position += count + 1

    def responses(self):
        """Parsed responses received so far, as ``(opcode, header, data words)``."""
        out, position = [], 0
        while position < len(self.received):
            header = unpack_header(self.received[position])
            op = Opcode(header["opcode"])
            count = self.format.response_words(op, header["b"])
            out.append((op, header, self.received[position + 1:position + 1 + count]))
            position += count + 1
        return out

    async def status(self):
        await self.send(self.format.simple(Opcode.READ_STATUS))
        await self.settle()
        op, _, data = self.responses()[-1]
        assert op is Opcode.READ_STATUS
        return dict(zip(STATUS, data))

    # Operations checked against golden directly --------------------------------------------

    def random_gemv(self):
        """Random placement: returns (command words, (W_t, x_q) per bank, base, rows, wpr)."""
        fmt, rng = self.format, self.np_rng
        words_per_row = int(rng.integers(1, min(fmt.act_words, 4) + 1))
        k = int(rng.integers((words_per_row - 1) * fmt.lanes + 1, words_per_row * fmt.lanes + 1))
        rows = int(rng.integers(1, max(2, min(8, fmt.depth // words_per_row)) + 1))
        rows = min(rows, fmt.depth // words_per_row)
        base = int(rng.integers(0, fmt.depth - rows * words_per_row + 1))
        x_q = rng.integers(-128, 128, k).astype(np.int8)
        weights = rng.integers(-1, 2, (fmt.banks, rows, k)).astype(np.int8)
        padded = np.zeros((fmt.banks, rows, words_per_row * fmt.lanes), np.int8)
        padded[:, :, :k] = weights
        words = []
        for bank in range(fmt.banks):
            bank_words = trits.pack_words(padded[bank].reshape(-1, fmt.lanes), fmt.lanes)
            words += fmt.write_weights(bank, base, [w[0] for w in bank_words])
        x_padded = np.zeros(words_per_row * fmt.lanes, np.int8)
        x_padded[:k] = x_q
        words += fmt.load_acts(0, pack_ints(x_padded.reshape(-1, fmt.lanes),
                                            self.config.act_bits))
        words += fmt.gemv(base, rows, words_per_row)
        return words, weights, x_q

    async def check_gemv(self):
        words, weights, x_q = self.random_gemv()
        start = len(self.responses())
        await self.send(words)
        await self.settle()
        (op, header, data), = self.responses()[start:]
        assert op is Opcode.GEMV
        got = np.array([CommandFormat.signed(w) for w in data]).reshape(-1, self.format.banks)
        for bank in range(self.format.banks):
            np.testing.assert_array_equal(got[:, bank], bitlinear_int(x_q, weights[bank]))
        REPORT["gemvs"] += 1

    async def check_gemm(self):
        fmt, rng = self.format, self.np_rng
        low, high = fmt.pe.weight_range
        w_t = rng.integers(low, high + 1, (fmt.cols, fmt.rows))
        x_q = rng.integers(-128, 128, (int(rng.integers(1, 3 * fmt.rows + 2)), fmt.rows))
        words = fmt.load_tile(w_t)
        words += fmt.gemm(pack_ints(x_q, self.config.act_bits))
        start = len(self.responses())
        await self.send(words)
        await self.settle()
        (op, header, data), = self.responses()[start:]
        assert op is Opcode.GEMM
        got = np.array([CommandFormat.signed(w) for w in data]).reshape(-1, fmt.cols)
        np.testing.assert_array_equal(got, matmul_int(x_q, w_t))
        REPORT["gemms"] += 1


async def start(dut):
    """A reset device whose memories hold zeros, as the fresh model's do (the tests share one
    simulation, and a reset does not clear memories)."""
    p = params()
    tb = DeviceTB(dut, Config.from_dict(p["config"]), p.get("seed", 0))
    await tb.reset()
    fmt = tb.format
    for bank in range(fmt.banks):
        await tb.send(fmt.write_weights(bank, 0, [0] * fmt.depth))
    await tb.send(fmt.load_acts(0, [0] * fmt.act_words))
    await tb.settle()
    return tb, p


@cocotb.test()
async def operations(dut):
    """Random GEMVs and GEMM tiles under every idle / back-pressure combination; every status
    flag is seen both clear and set (a flag that never changes says nothing)."""
    tb, p = await start(dut)
    seen = {name: set() for name, _ in STATUS_FLAGS}

    def note_flags(status):
        for name, field in STATUS_FLAGS:
            seen[name].add((status["flags"] >> field.offset) & 1)

    note_flags(await tb.status())
    for n in range(max(p.get("tiles", 8), len(FLOW_KNOBS))):
        tb.set_flow(*FLOW_KNOBS[n % len(FLOW_KNOBS)])
        await (tb.check_gemv() if n % 2 == 0 else tb.check_gemm())
        note_flags(await tb.status())
        REPORT["tiles"] += 1
    assert all(values == {0, 1} for values in seen.values()), f"flags seen: {seen}"
    await tb.send(tb.format.simple(Opcode.READ_COUNTERS))
    await tb.settle()
    REPORT["macs"] = tb.model.macs
    REPORT["cycles"] = tb.cycle()
    write_report(REPORT)


@cocotb.test()
async def gemv_efficiency(dut):
    """One GEMV with >= 8 rows per bank and K >= 16 x lanes, host never stalling: PIM efficiency
    (docs/design.md, Metrics) from the GEMV header accepted to its last result word taken."""
    tb, _ = await start(dut)
    fmt = tb.format
    words_per_row = min(16, fmt.act_words)
    rows = min(8, fmt.depth // words_per_row)
    weights = tb.np_rng.integers(-1, 2, (fmt.banks, rows * words_per_row, fmt.lanes))
    for bank in range(fmt.banks):
        await tb.send(fmt.write_weights(bank, 0, [w[0] for w in trits.pack_words(
            weights[bank], fmt.lanes)]))
    await tb.send(fmt.load_acts(0, pack_ints(tb.np_rng.integers(-128, 128, (
        words_per_row, fmt.lanes)), tb.config.act_bits)))
    await tb.settle()
    tb.set_flow(0.0, 0.0)
    first_word = len(tb.received)
    command = fmt.gemv(0, rows, words_per_row)
    await tb.send(command)
    await tb.settle()
    start_cycle = tb.source.accepted_cycles[-len(command)]
    cycles = tb.received_cycles[-1] - start_cycle + 1
    assert len(tb.received) - first_word == 1 + rows * fmt.banks
    efficiency = rows * words_per_row * fmt.lanes * fmt.banks / (fmt.banks * fmt.lanes * cycles)
    REPORT.update(gemv_rows=rows, gemv_k=words_per_row * fmt.lanes, gemv_cycles=cycles,
                  efficiency=efficiency)
    write_report(REPORT)


@cocotb.test()
async def timing_matches_model(dut):
    """With an ideal host, the device's busy-cycle counter equals the timing model's, command
    by command: GEMVs of every row shape (fewer words per row than banks included), GEMMs,
    loads and status reads."""
    tb, p = await start(dut)
    fmt = tb.format
    counters = fmt.simple(Opcode.READ_COUNTERS)
    for n in range(max(p.get("tiles", 8), 4)):
        await (tb.check_gemv() if n % 2 == 0 else tb.check_gemm())
        await tb.send(counters)
        await tb.settle()
    for words_per_row in sorted({1, 2, max(1, fmt.banks - 1), fmt.banks + 1}):
        rows = min(8, fmt.depth // words_per_row)
        await tb.send(fmt.gemv(0, rows, min(words_per_row, fmt.act_words)) + counters)
        await tb.settle()
    assert tb.ideal_host
    op, _, data = tb.responses()[-1]
    REPORT["busy_cycles"] = data[0]
    write_report(REPORT)


def bad_commands(fmt):
    """One malformed command of every kind, with the error code each must set."""
    return [
        ([header(0x7F)], ErrorCode.UNKNOWN_OPCODE),
        ([header(Opcode.READ_STATUS, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.LOAD_TILE, 0, 3)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.GEMV, 2, 1)], ErrorCode.RESERVED_FIELD),
        ([header(Opcode.WRITE_WEIGHTS, fmt.banks, 1), 0, 0], ErrorCode.BAD_BANK),
        ([header(Opcode.WRITE_WEIGHTS, 0, 0)], ErrorCode.BAD_LENGTH),
        ([header(Opcode.GEMM, 0, 0)], ErrorCode.BAD_LENGTH),
        (fmt.write_weights(0, fmt.depth - 1, [0, 0]), ErrorCode.BAD_ADDRESS),
        ([header(Opcode.WRITE_WEIGHTS, 0, 1), 0xFFFF_FFFF], ErrorCode.BAD_ADDRESS),
        (fmt.load_acts(fmt.act_words, [0]), ErrorCode.BAD_ADDRESS),
        (fmt.gemv(0, 1, 0), ErrorCode.BAD_SHAPE),
        (fmt.gemv(0, 1, fmt.act_words + 1), ErrorCode.BAD_SHAPE),
        (fmt.gemv(fmt.depth - 1, 2, 1), ErrorCode.BAD_ADDRESS),
        (fmt.gemv(0, 0xFFFF, 0xFFFF_FFFF), ErrorCode.BAD_SHAPE),
        ([header(Opcode.GEMM, 0, 1)], ErrorCode.NO_TILE),
    ]


@cocotb.test()
async def every_bad_command_is_dropped(dut):
    """Each bad command sets its error code; the next valid command still works."""
    tb, _ = await start(dut)
    fmt = tb.format
    for words, code in bad_commands(fmt):
        await tb.send(words)
        status = await tb.status()
        assert status["error"] == code.value, (
            f"{words}: error {status['error']:#x}, expected {code.name}")
        assert status["errors"] == 1
        await tb.check_gemv()
        await tb.send(fmt.simple(Opcode.CLEAR_ERRORS))
        assert (await tb.status())["error"] == ErrorCode.NONE.value
        REPORT["bad_commands"] += 1
    write_report(REPORT)


@cocotb.test()
async def reset_in_the_middle(dut):
    """Reset during a GEMV and during a GEMM; the device then works from a clean state."""
    tb, _ = await start(dut)
    tb.set_flow(0.0, 0.9)                            # slow host: results pile up
    for operation in ("gemv", "gemm"):
        if operation == "gemv":
            words = tb.random_gemv()[0]
        else:
            w_t = tb.np_rng.integers(-1, 2, (tb.format.cols, tb.format.rows))
            words = tb.format.load_tile(w_t)
            words += tb.format.gemm(pack_ints(np.ones((40, tb.format.rows)), 8))
        sender = cocotb.start_soon(tb.source.send(words, tb.cycle))
        for _ in range(len(words) // 2 + 5):
            await RisingEdge(dut.clk)
        sender.cancel()
        dut.i_stream__valid.value = 0
        await tb.reset()
        tb.model.reset()
        tb.received, tb.expected = [], []
        assert (await tb.status())["error"] == ErrorCode.NONE.value
        await tb.check_gemv()
        await tb.check_gemm()
    write_report(REPORT)


def fuzz_words(rng, fmt, count):
    """Random words: half uniformly random, half headers of real opcodes with small fields."""
    words = []
    while len(words) < count:
        if rng.random() < 0.5:
            words.append(int(rng.integers(0, 1 << 32)))
        else:
            op = int(rng.choice([op.value for op in Opcode]))
            a = int(rng.choice([0, 0, 1, fmt.banks, 255]))
            b = int(rng.choice([0, 1, 2, 3, 255, 0xFFFF]))
            b = min(b, 255) if op == Opcode.GEMM.value else b     # keep the run short
            words.append(op | a << 8 | b << 16)
            words += [int(rng.integers(0, 64)) for _ in range(int(rng.integers(0, 4)))]
    return words[:count]


@cocotb.test()
async def fuzz_with_watchdog(dut):
    """At least 10,000 random command words; after every batch the device must still answer
    status reads (a watchdog fails the test otherwise), and must agree with the behavioural
    device."""
    tb, p = await start(dut)
    fmt = tb.format
    total = p.get("fuzz_words", 10_000)
    batch = 500
    tb.set_flow(0.1, 0.1)
    for done in range(0, total, batch):
        await tb.send(fuzz_words(tb.np_rng, fmt, min(batch, total - done)))
        await tb.settle(timeout=20_000)
        for attempt in range(fmt.max_command_words):        # a status read may be data
            answers = len(tb.responses())
            await tb.send(fmt.simple(Opcode.READ_STATUS))
            await tb.settle(timeout=20_000)
            if any(op is Opcode.READ_STATUS for op, *_ in tb.responses()[answers:]):
                break
        else:
            raise AssertionError("watchdog: the device stopped answering READ_STATUS")
        REPORT["fuzz_words"] += min(batch, total - done)
    await tb.send(fmt.simple(Opcode.CLEAR_ERRORS))
    await tb.check_gemv()
    await tb.check_gemm()
    write_report(REPORT)
