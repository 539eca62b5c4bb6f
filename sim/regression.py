"""The device's random regression and the pieces it shares with the directed tests.

:func:`reset_inside` resets the device inside a command at a chosen moment and keeps the model
in step; :class:`Regression` draws operations of every kind, each under its own idle and
back-pressure, on a :class:`sim.device_tb.DeviceTB` (passed in: this module does not import the
testbench). Every response word goes through the testbench's comparison with the behavioural
device; GEMV and GEMM results are also checked against golden.
"""

import itertools
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from golden import trits
from hw.commands import ErrorCode, Opcode, unpack_header
from hw.device import DEVICE_STATUS
from hw.words import pack_ints

from . import stimulus
from .coverage import token_corners, words_per_row_corners
from .stimulus import Bag

__all__ = ["Progress", "reset_inside", "answer_status", "longest_reduction", "Regression"]

_BUSY = DEVICE_STATUS["busy"].offset
_MASK = 0xFFFF_FFFF


@dataclass
class Progress:
    """How far a command has gone, counted from its first word: its words the device took,
    response words the host took, cycles since its header was taken and those of them in which
    the device said busy, whether it says busy now, and whether every word was taken."""
    taken: int = 0
    received: int = 0
    cycles: int = 0
    busy_cycles: int = 0
    busy: bool = False
    sent: bool = False


def _busy(dut):
    return bool((int(dut.status.value) >> _BUSY) & 1)


async def reset_inside(tb, words, moment, *, patience=100_000):
    """Send the command ``words`` and reset the device in the first cycle in which
    ``moment(progress)`` holds (a :class:`Progress`).

    The model is fed the words the device took; every response word the host took before the
    reset must agree with it; then device and model are reset (neither clears its memories).
    Words that cross the ports during the reset are not transfers. Returns the progress the
    reset met: ``busy`` is the status port in the cycle before the first reset edge.
    """
    dut, source = tb.dut, tb.source
    taken, received = len(source.accepted_cycles), len(tb.received)
    sender = cocotb.start_soon(source.send(words, tb.cycle))
    progress = Progress()
    while True:
        await ReadOnly()
        progress.taken = len(source.accepted_cycles) - taken
        progress.received = len(tb.received) - received
        progress.busy, progress.sent = _busy(dut), sender.done()
        if progress.taken:
            progress.cycles += 1
            progress.busy_cycles += progress.busy
        if moment(progress):
            break
        assert progress.cycles < patience, (
            f"the moment to reset never came in {patience} cycles ({progress}): the device "
            f"hangs")
        await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)               # the moment's transfers complete at this edge
    sender.cancel()
    dut.i_stream__valid.value = 0
    dut.rst.value = 1
    cut = len(tb.received)
    progress.taken = len(source.accepted_cycles) - taken
    progress.received = cut - received
    await ReadOnly()
    progress.busy = _busy(dut)
    await RisingEdge(dut.clk)
    await tb.reset()
    tb.received = tb.received[:cut]
    tb.expected += tb.model.feed(words[:progress.taken])
    assert len(tb.received) <= len(tb.expected), (
        f"before the reset the device sent {len(tb.received) - len(tb.expected)} words the "
        f"model does not")
    tb.expected = tb.expected[:len(tb.received)]
    tb._compare()
    tb.model.reset()
    tb.received, tb.expected, tb.received_cycles = [], [], []
    return progress


async def answer_status(tb):
    """Send READ_STATUS until the device answers one (a status read may be taken as data of a
    command the words before it began); fail if it never does."""
    fmt = tb.format
    for _ in range(fmt.max_command_words):
        answers = len(tb.responses())
        await tb.send(fmt.simple(Opcode.READ_STATUS))
        await tb.settle(timeout=20_000)
        if any(op is Opcode.READ_STATUS for op, *_ in tb.responses()[answers:]):
            return
    raise AssertionError("watchdog: the device stopped answering READ_STATUS")


async def longest_reduction(tb):
    """K = max_k through the command stream at the extremes: every activation -128 and every
    weight +1, then every weight -1, in every bank; each result must be exactly
    -+128 * max_k (the largest accumulator magnitude), sign-extended into its 32-bit word.
    The array gets a tile of each sign the same way (-+128 * rows). Returns the results seen."""
    fmt, config = tb.format, tb.format.config
    x_q = np.zeros(fmt.act_words * fmt.lanes, np.int8)
    x_q[:config.max_k] = -128               # lanes past max_k hold 0, as the host packs them
    await tb.send(fmt.load_acts(0, pack_ints(x_q.reshape(-1, fmt.lanes), config.act_bits)))
    seen = []
    for sign in (1, -1):
        row = trits.pack_words(np.full(fmt.act_words * fmt.lanes, sign, np.int8), fmt.lanes)
        for bank in range(fmt.banks):
            await tb.send(fmt.write_weights(bank, 0, row))
        await tb.send(fmt.gemv(0, 1, fmt.act_words))
        await tb.settle()
        op, _, data = tb.responses()[-1]
        assert op is Opcode.GEMV
        want = -128 * config.max_k * sign
        for bank, word in enumerate(data):
            assert word == want & _MASK, (
                f"K = max_k = {config.max_k}, x = -128, w = {sign:+d}: bank {bank} sent "
                f"{word:#010x}, expected {want} = {want & _MASK:#010x}")
        seen.append(want)
        w_t = np.full((fmt.cols, fmt.rows), sign)
        tokens = np.full((2, fmt.rows), -128)
        await tb.send(fmt.load_tile(w_t) + fmt.gemm(pack_ints(tokens, config.act_bits)))
        await tb.settle()
        op, _, data = tb.responses()[-1]
        want = -128 * fmt.rows * sign
        assert op is Opcode.GEMM and data == [want & _MASK] * (2 * fmt.cols), (
            f"GEMM of -128 by {sign:+d}: got {[hex(w) for w in data]}, expected "
            f"{want & _MASK:#010x} throughout")
    return seen


class Regression:
    """``operations`` random operations, then ``fuzz_words`` random words spread over its fuzz
    bursts, on the device ``tb`` drives.

    Operations (drawn from a :class:`~sim.stimulus.Bag`, so each comes up every round): GEMVs
    and GEMMs whose shapes, weights and activations come from the coverage corners (checked
    against golden as well), GEMVs over whatever the memories hold, two bad commands each
    checked for its error code, a burst of random words, and a reset at a random cycle inside a
    command of every kind in turn. Each runs under idle and back-pressure drawn from
    :data:`FLOWS`, and may be followed by a NOP, a status or counter read or CLEAR_ERRORS. A
    failure names the seed and the operation.
    """

    OPERATIONS = ("gemv", "gemv", "gemv", "gemm", "gemm", "reset", "reset", "bad", "fuzz",
                  "reuse")
    FLOWS = list(itertools.product((0.0, 0.2, 0.5), (0.0, 0.3, 0.7)))
    RESET_KINDS = (Opcode.WRITE_WEIGHTS, Opcode.LOAD_ACTS, Opcode.LOAD_TILE, Opcode.GEMV,
                   Opcode.GEMM, Opcode.READ_STATUS, Opcode.READ_COUNTERS)
    EXTRAS = (None, None, Opcode.NOP, Opcode.READ_STATUS, Opcode.READ_COUNTERS,
              Opcode.CLEAR_ERRORS)

    def __init__(self, tb, *, seed, operations, fuzz_words, report):
        self.tb, self.seed, self.report = tb, seed, report
        self.fmt, rng = tb.format, tb.np_rng
        self.rng = rng
        flows, kinds = Bag(rng, self.FLOWS), Bag(rng, self.OPERATIONS)
        self.plan = [(kinds.draw(), flows.draw()) for _ in range(operations)]
        bursts = sum(kind == "fuzz" for kind, _ in self.plan)
        if fuzz_words and not bursts:
            self.plan.append(("fuzz", flows.draw()))
            bursts = 1
        self.burst = -(-fuzz_words // bursts) if bursts else 0
        self.fuzz_left = fuzz_words
        self.shapes = Bag(rng, [*words_per_row_corners(self.fmt), "random", "random"])
        self.tokens = Bag(rng, [*token_corners(self.fmt), "random"])
        self.patterns = Bag(rng, stimulus.WEIGHTS)
        self.acts = Bag(rng, stimulus.ACTIVATIONS)
        self.bad_commands = Bag(rng, stimulus.bad_commands(self.fmt))
        self.reset_kinds = Bag(rng, self.RESET_KINDS)
        self.extras = Bag(rng, self.EXTRAS)
        report.update(operations=0, resets={}, resets_inside=0, reuse_gemvs=0)

    async def run(self):
        tb = self.tb
        for index, (kind, flow) in enumerate(self.plan):
            tb.set_flow(*flow)
            try:
                await getattr(self, kind)()
                extra = self.extras.draw()
                if extra is not None:
                    await tb.send(self.fmt.simple(extra))
                    await tb.settle()
            except AssertionError as error:
                raise AssertionError(
                    f"seed {self.seed}, operation {index} of {len(self.plan)} ({kind}, idle "
                    f"{flow[0]}, back-pressure {flow[1]}): {error}") from error
            self._forget()
            self.report["operations"] += 1
        await tb.send(self.fmt.simple(Opcode.READ_COUNTERS))
        await tb.settle()

    def _forget(self):
        """Drop the words compared so far, so that each comparison walks one operation's."""
        tb = self.tb
        assert len(tb.received) == len(tb.expected)
        tb.received, tb.expected, tb.received_cycles = [], [], []

    def _random_words_per_row(self):
        return int(self.rng.integers(1, min(self.fmt.act_words, 8) + 1))

    def _gemv(self, **choices):
        shape = self.shapes.draw()
        words_per_row = self._random_words_per_row() if shape == "random" else shape
        return stimulus.gemv(self.rng, self.fmt, words_per_row=words_per_row,
                             pattern=self.patterns.draw(), acts=self.acts.draw(), **choices)

    def _gemm(self):
        tokens = self.tokens.draw()
        if tokens == "random":
            tokens = int(self.rng.integers(1, 3 * self.fmt.rows + 2))
        return stimulus.gemm(self.rng, self.fmt, tokens=tokens, pattern=self.patterns.draw(),
                             acts=self.acts.draw())

    async def gemv(self):
        await self.tb.check_gemv(self._gemv(max_rows=8))

    async def gemm(self):
        await self.tb.check_gemm(self._gemm())

    async def reuse(self):
        """A GEMV over what the banks and the activation buffer hold now (the model knows)."""
        fmt, rng = self.fmt, self.rng
        words_per_row = self._random_words_per_row()
        rows = int(rng.integers(1, min(8, fmt.depth // words_per_row) + 1))
        base = int(rng.integers(0, fmt.depth - rows * words_per_row + 1))
        await self.tb.send(fmt.gemv(base, rows, words_per_row))
        await self.tb.settle()
        self.report["reuse_gemvs"] += 1

    async def bad(self):
        tb = self.tb
        for _ in range(2):
            words, code = self.bad_commands.draw(
                lambda case: case[1] is not ErrorCode.NO_TILE or not tb.model.tile_loaded)
            await tb.send(self.fmt.simple(Opcode.CLEAR_ERRORS) + words)
            status = await tb.status()
            assert status["error"] == code.value, (
                f"{[hex(w) for w in words]}: error {status['error']:#x}, expected {code.name}")
            self.report["bad_commands"] += 1

    async def fuzz(self):
        count = min(self.burst, self.fuzz_left)
        if count:
            await self.tb.send(stimulus.fuzz_words(self.rng, self.fmt, count))
            await self.tb.settle(timeout=20_000)
            await answer_status(self.tb)
            self.fuzz_left -= count
            self.report["fuzz_words"] += count

    async def reset(self):
        """A reset at a random cycle inside the next kind of command: within its words and
        responses' count of busy cycles. A load it cut is sent again whole (a reset may drop
        the words in flight); the status must then read no error."""
        tb, fmt, rng = self.tb, self.fmt, self.rng
        kind = self.reset_kinds.draw()
        setup, command = self._command(kind)
        if setup:
            await tb.send(setup)
            await tb.settle()
        b = unpack_header(command[0])["b"]
        span = len(command) - 1 + (fmt.response_words(kind, b) or 0)
        cycle = int(rng.integers(0, max(span, 1)))
        progress = await reset_inside(
            tb, command, lambda p: p.busy_cycles > cycle or (p.sent and not p.busy))
        self.report["resets"][kind.name] = self.report["resets"].get(kind.name, 0) + 1
        self.report["resets_inside"] += progress.busy
        if kind in (Opcode.WRITE_WEIGHTS, Opcode.LOAD_ACTS):
            await tb.send(command)
        status = await tb.status()
        assert (status["error"], status["errors"]) == (ErrorCode.NONE.value, 0), (
            f"after a reset in {kind.name}: status {status}")

    def _command(self, kind):
        """(setup, command words) of a command of ``kind`` to interrupt."""
        fmt, rng = self.fmt, self.rng
        if kind is Opcode.GEMV:
            case = self._gemv(max_rows=16)
            return case.setup, case.command
        if kind is Opcode.GEMM:
            case = self._gemm()
            return case.setup, case.command
        if kind in (Opcode.WRITE_WEIGHTS, Opcode.LOAD_ACTS, Opcode.LOAD_TILE):
            return [], stimulus.load(rng, fmt, kind, count=int(rng.integers(1, 33)),
                                     pattern=self.patterns.draw(), acts=self.acts.draw())
        return [], fmt.simple(kind)
