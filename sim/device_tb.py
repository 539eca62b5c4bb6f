"""cocotb testbench of :class:`hw.device.Device`: the command stream, end to end.

Every word the device sends is compared with the behavioural device fed the same command words
(:class:`sw_driver.behavioural.BehaviouralDevice`, whose arithmetic is golden's); GEMV and GEMM
results are also checked against golden directly from the unpacked matrices. Of the cycle
counters, ``cycles_idle`` depends on this testbench's gaps between commands and is not
compared; ``cycles_busy`` and ``cycles_stalled`` are, whenever the host has not paused or
refused a word since the last reset (``sim/timing_tb.py`` checks every counter under any host
against the cycle model).

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (random operations, of
``operations`` and of the ``regression``), ``fuzz_words`` (random words of
``fuzz_with_watchdog`` and, in all, of the regression's bursts; default 10,000), ``coverage``
(sample the functional coverage of :mod:`sim.coverage` and add it to the report).
"""

import itertools

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from golden import trits
from hw.commands import (RESIDENT_OPCODES, STATUS, STATUS_FLAGS, STATUS_MAGIC, CommandFormat,
                         ErrorCode, Opcode, pack_header, unpack_header)
from hw.config import Config
from hw.words import pack_ints
from sim import stimulus
from sim.coverage import CoverageMonitor, DeviceCoverage, token_corners
from sim.regression import Regression, answer_status, longest_reduction, reset_inside
from sim.stimulus import bad_commands, fuzz_words
from sim.tb import TB, StreamSource, params
from sim.tb import write_report as write_measurements
from sw_driver.behavioural import BehaviouralDevice

FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5)))
IDLE = 1                        # cycles_idle: the host's gaps between commands decide it
# cycles_busy, cycles_stalled: the behavioural device's are exact for a host that never waits
# (sim/timing_tb.py checks every counter under any host against the cycle model).
HOST_TIMED = {0, 2}
REPORT = {"tiles": 0, "gemvs": 0, "gemms": 0, "bad_commands": 0, "fuzz_words": 0, "macs": 0,
          "cycles": 0}
CLEAN_STATUS = {"magic": STATUS_MAGIC, "error": ErrorCode.NONE.value, "errors": 0, "flags": 0}


def write_report(report):
    """:func:`sim.tb.write_report`, with the functional coverage so far when it is sampled."""
    coverage = DeviceCoverage.current()
    write_measurements({**report, "coverage": coverage.report()} if coverage else report)


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

    async def check_gemv(self, case=None):
        """Run a GEMV (a :class:`~sim.stimulus.Gemv`; by default a random one of up to four
        words a row) and check its results against golden."""
        fmt = self.format
        case = case or stimulus.gemv(self.np_rng, fmt, words_per_row=int(
            self.np_rng.integers(1, min(fmt.act_words, 4) + 1)))
        await self._check(case, Opcode.GEMV, fmt.banks)
        REPORT["gemvs"] += 1

    async def check_gemm(self, case=None):
        """Load a tile and stream tokens (a :class:`~sim.stimulus.Gemm`; by default random
        weights and 1 to ``3 * rows + 1`` tokens) and check the results against golden."""
        fmt = self.format
        case = case or stimulus.gemm(self.np_rng, fmt, tokens=int(
            self.np_rng.integers(1, 3 * fmt.rows + 2)))
        await self._check(case, Opcode.GEMM, fmt.cols)
        REPORT["gemms"] += 1

    async def _check(self, case, opcode, width):
        start = len(self.responses())
        await self.send(case.words)
        await self.settle()
        (op, header, data), = self.responses()[start:]
        assert op is opcode
        got = np.array([CommandFormat.signed(w) for w in data]).reshape(-1, width)
        want = case.expected()
        bad = np.argwhere(got != want)
        assert not bad.size, (f"{op.name} result {tuple(bad[0])} is {got[tuple(bad[0])]}, "
                              f"golden says {want[tuple(bad[0])]} ({len(bad)} of {got.size} "
                              f"differ)")


async def start(dut):
    """A reset device whose memories hold zeros, as the fresh model's do (the tests share one
    simulation, and a reset does not clear memories). Words the host saw before the reset
    ended are not transfers."""
    p = params()
    tb = DeviceTB(dut, Config.from_dict(p["config"]), p.get("seed", 0))
    if p.get("coverage"):
        cocotb.start_soon(CoverageMonitor(dut, tb.format,
                                          DeviceCoverage.get(tb.format)).run())
    await tb.reset()
    tb.received, tb.received_cycles = [], []
    fmt = tb.format
    for bank in range(fmt.banks):
        await tb.send(fmt.write_weights(bank, 0, [0] * fmt.depth))
    await tb.send(fmt.load_acts(0, [0] * fmt.act_words))
    await tb.settle()
    return tb, p


@cocotb.test()
async def power_on_then_reset(dut):
    """Reset clears whatever the device powered up in (random in an X build: see
    :func:`sw_driver.flow.verilator_build`): the status port then reads idle with no error, and
    READ_STATUS reads no error and no tile. Reports the status port before the reset
    (``power_on_status``), when this is the simulation's first test."""
    REPORT["power_on_status"] = int(dut.status.value)
    tb, _ = await start(dut)
    assert int(dut.status.value) == 0, f"status port {int(dut.status.value):#x} after reset"
    status = await tb.status()
    assert status == CLEAN_STATUS, f"READ_STATUS after reset: {status}"
    write_report(REPORT)


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
async def resident_generation(dut):
    """Resident mode through the command stream. Without resident units, LOAD_TENSOR and
    GENERATE are unknown opcodes. With them: a random model of the resident shape loaded with
    WRITE_WEIGHTS and LOAD_TENSOR (every resident tensor in one command, in a random order)
    generates golden's tokens for random prompts, one of them filling max_seq, under idle and
    back-pressure on the tokens, and READ_LOGITS reads back golden's logits of the last
    position; a prompt token past the vocabulary, a prompt too long and logits past the
    vocabulary are refused (BAD_TOKEN, BAD_LENGTH, BAD_ADDRESS) and the next GENERATE still
    works; a reset while tokens flow leaves nothing loaded and no logits to read (NOT_LOADED,
    NO_LOGITS), and after a reload the tokens are golden's again. Every response
    word is also the behavioural device's, which decodes the image the device holds; the
    counters read after each GENERATE too (MACs and words read always, the busy cycles of the
    first, whose host never waits: the core's cycle model)."""
    tb, p = await start(dut)
    fmt = tb.format
    if not fmt.tensors:
        for op in RESIDENT_OPCODES:
            await tb.send([pack_header(op)])
            assert (await tb.status())["error"] == ErrorCode.UNKNOWN_OPCODE.value
            await tb.send(fmt.simple(Opcode.CLEAR_ERRORS))
        REPORT["resident"] = "no resident units"
        write_report(REPORT)
        return
    load, golden = stimulus.resident_model(tb.config, seed=p.get("seed", 0))
    cfg = golden.cfg
    await tb.send(load)
    assert (await tb.status())["error"] == ErrorCode.NONE.value
    rng, generated = tb.np_rng, 0

    async def generate(prompt, count, when=""):
        """Send a GENERATE and check its one response: golden's tokens, no error; then read
        back the logits of its last position from a random row (all of them half the time)
        and check them too."""
        first = len(tb.responses())
        await tb.send(fmt.generate(prompt, count))
        await tb.settle(timeout=50_000)
        (op, header_, data), = tb.responses()[first:]
        assert op is Opcode.GENERATE and header_["a"] == ErrorCode.NONE.value
        want, logits = golden.generate(prompt, count, logits=True)
        assert data == want, f"{when}prompt {prompt}: tokens {data}, golden {want}"
        row = int(rng.integers(0, cfg.vocab)) if rng.random() < 0.5 else 0
        first = len(tb.responses())
        await tb.send(fmt.read_logits(row, cfg.vocab - row))
        await tb.settle()
        (op, header_, data), = tb.responses()[first:]
        assert op is Opcode.READ_LOGITS and header_["a"] == ErrorCode.NONE.value
        got = fmt.logits(data)
        assert (got == logits[row:]).all(), (
            f"{when}prompt {prompt}: logits from row {row} {got.tolist()}, golden "
            f"{logits[row:].tolist()}")

    cases = [(int(rng.integers(1, 6)), int(rng.integers(1, 6))) for _ in range(2)]
    cases.insert(1, (cfg.max_seq - 2, 3))            # fills max_seq
    for number, (length, count) in enumerate(cases):
        tb.set_flow(0.3 * (number % 2), 0.6 * (number % 2))
        await generate(rng.integers(0, cfg.vocab, length).tolist(), count)
        generated += count
        await tb.send(fmt.simple(Opcode.READ_COUNTERS))     # the core's cycles and reads
        await tb.settle()
        if number == 0:
            for words, code in ((fmt.generate([cfg.vocab], 1), ErrorCode.BAD_TOKEN),
                                (fmt.generate([0] * cfg.max_seq, 2), ErrorCode.BAD_LENGTH),
                                (fmt.read_logits(cfg.vocab - 1, 2), ErrorCode.BAD_ADDRESS)):
                await tb.send(words)
                assert (await tb.status())["error"] == code.value
                await tb.send(fmt.simple(Opcode.CLEAR_ERRORS))
    # A reset while the tokens flow: the device comes back idle with nothing loaded (its
    # memories keep their contents, as a reset's do), refuses GENERATE until a reload, and
    # then generates golden's tokens again.
    prompt, count = rng.integers(0, cfg.vocab, 3).tolist(), 4
    tb.set_flow(0.0, 0.5)
    progress = await reset_inside(tb, fmt.generate(prompt, count), lambda p: p.received >= 2)
    assert progress.busy and progress.received < 1 + count, (
        f"reset in GENERATE did not catch it generating: {progress}")
    tb.set_flow(0.0, 0.0)
    assert await tb.status() == CLEAN_STATUS
    for words, code in ((fmt.generate(prompt, 1), ErrorCode.NOT_LOADED),
                        (fmt.read_logits(0, 1), ErrorCode.NO_LOGITS)):
        await tb.send(words)
        assert (await tb.status())["error"] == code.value
        await tb.send(fmt.simple(Opcode.CLEAR_ERRORS))
    await tb.send(load)
    await generate(prompt, count, "after the reset: ")
    REPORT["resident"] = {"sequences": len(cases), "generated": generated,
                          "reset_after_tokens": progress.received - 1}
    write_report(REPORT)


@cocotb.test()
async def reset_in_the_middle(dut):
    """A reset inside every kind of command, at a moment chosen to catch it working: a GEMV
    while its results flow, a GEMM while tokens go in and results come out, WRITE_WEIGHTS,
    LOAD_ACTS and LOAD_TILE halfway through their data, and a register read the host has not
    taken. The device must have been busy in the command when the reset came; after it the
    status reads no error and no tile, and a GEMV and a GEMM are bit-exact with golden."""
    tb, _ = await start(dut)
    fmt, rng = tb.format, tb.np_rng
    REPORT["reset_in_the_middle"] = {}
    gemv = stimulus.gemv(rng, fmt, words_per_row=1, rows=min(8, fmt.depth))
    gemm = stimulus.gemm(rng, fmt, tokens=3 * token_corners(fmt)["FIFO depth"])
    results = {Opcode.GEMV: 1 + len(gemv.expected().ravel()),
               Opcode.GEMM: 1 + len(gemm.expected().ravel())}
    loads = {op: stimulus.load(rng, fmt, op)
             for op in (Opcode.WRITE_WEIGHTS, Opcode.LOAD_ACTS, Opcode.LOAD_TILE)}
    cases = [
        # (opcode, setup, command, back-pressure, moment, what must hold at the moment)
        (Opcode.GEMV, gemv.setup, gemv.command, 0.5, lambda p: p.received >= 3,
         lambda p: 2 <= p.received < results[Opcode.GEMV]),
        (Opcode.GEMM, gemm.setup, gemm.command, 0.5,
         lambda p: p.taken > 2 * fmt.token_words and p.received >= 2,
         lambda p: 2 <= p.received < results[Opcode.GEMM] and p.taken < len(gemm.command)),
        *[(op, [], words, 0.0, lambda p, n=len(words): p.taken > n // 2,
           lambda p, n=len(words): p.taken < n) for op, words in loads.items()],
        (Opcode.READ_COUNTERS, [], fmt.simple(Opcode.READ_COUNTERS), 1.0,
         lambda p: p.cycles >= 2, lambda p: p.received == 0),
    ]
    for op, setup, command, backpressure, moment, working in cases:
        tb.set_flow(0.0, 0.5)
        await tb.send(setup)
        await tb.settle()
        tb.set_flow(0.0, backpressure)
        progress = await reset_inside(tb, command, moment)
        assert progress.busy and working(progress), (
            f"reset in {op.name} did not catch it working: {progress}")
        REPORT["reset_in_the_middle"][op.name] = {"taken": progress.taken,
                                                  "received": progress.received}
        tb.set_flow(0.0, 0.5)
        status = await tb.status()
        assert status == CLEAN_STATUS, f"READ_STATUS after a reset in {op.name}: {status}"
        await tb.check_gemv()
        await tb.check_gemm()
    write_report(REPORT)


@cocotb.test()
async def longest_reduction_at_the_extremes(dut):
    """K = max_k with every activation -128 and every weight +1, then -1: each GEMV result is
    exactly -128 * max_k, then +128 * max_k, sign-extended
    (:func:`sim.regression.longest_reduction`)."""
    tb, _ = await start(dut)
    REPORT["longest_reduction"] = await longest_reduction(tb)
    write_report(REPORT)


@cocotb.test()
async def regression(dut):
    """The random regression (:class:`sim.regression.Regression`): ``tiles`` operations of
    every kind and ``fuzz_words`` random words, resets inside every kind of command, random
    idle and back-pressure; every response word against the model, results against golden."""
    tb, p = await start(dut)
    await Regression(tb, seed=p.get("seed", 0), operations=p.get("tiles", 8),
                     fuzz_words=p.get("fuzz_words", 10_000), report=REPORT).run()
    await tb.check_gemv()
    await tb.check_gemm()
    write_report(REPORT)


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
        await answer_status(tb)
        REPORT["fuzz_words"] += min(batch, total - done)
    await tb.send(fmt.simple(Opcode.CLEAR_ERRORS))
    await tb.check_gemv()
    await tb.check_gemm()
    write_report(REPORT)
