# amaranth: UnusedElaboratable=no
"""The device's parts under Amaranth's own simulator: word assembly, result serialising and
the register file, each against a model of its contract under random flow control.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import random

import pytest
from amaranth import signed
from amaranth.sim import Simulator

from hw.commands import STATUS, STATUS_MAGIC, CommandFormat, ErrorCode
from hw.config import preset
from hw.registers import READ_GROUP_BITS, RegisterFile
from hw.streams import ResultSerialiser, WordAssembler


def _simulate(dut, *testbenches):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("words", [1, 2, 3])
def test_word_assembler_joins_words_least_significant_first(words):
    rng = random.Random(words)
    dut = WordAssembler(words=words)
    sent = [rng.getrandbits(32) for _ in range(words * 20)]
    expected = [sum(w << (32 * n) for n, w in enumerate(sent[i:i + words]))
                for i in range(0, len(sent), words)]
    got = []

    async def producer(ctx):
        for word in sent:
            while rng.random() < 0.3:
                ctx.set(dut.i_stream.valid, 0)
                await ctx.tick()
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload, word)
            await ctx.tick().until(dut.i_stream.ready)
        ctx.set(dut.i_stream.valid, 0)

    async def consumer(ctx):
        while len(got) < len(expected):
            ready = rng.random() < 0.6
            ctx.set(dut.o_stream.ready, ready)
            await ctx.delay(1e-7)          # the producer's word of this cycle is on the wire
            if ready and ctx.get(dut.o_stream.valid):
                got.append(ctx.get(dut.o_stream.payload))
            await ctx.tick()

    _simulate(dut, producer, consumer)
    assert got == expected


def test_word_assembler_takes_a_beat_per_words_words_without_a_bubble():
    dut = WordAssembler(words=3)
    beats_at = []

    async def testbench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.i_stream.valid, 1)
        for cycle in range(12):
            ctx.set(dut.i_stream.payload, cycle)
            await ctx.delay(1e-7)
            assert ctx.get(dut.i_stream.ready)
            if ctx.get(dut.o_stream.valid):
                beats_at.append(cycle)
            await ctx.tick()

    _simulate(dut, testbench)
    assert beats_at == [2, 5, 8, 11]


def _serialise(count, *, seed, beats=12, room_rate=0.7, enable_rate=0.8):
    """Run a serialiser of ``count`` 20-bit elements; returns (beats sent, words written,
    cycles blocked while room was low, started-beat stalls)."""
    rng = random.Random(seed)
    dut = ResultSerialiser(count=count, element_shape=signed(20))
    sent = [[rng.randrange(-(1 << 19), 1 << 19) for _ in range(count)] for _ in range(beats)]
    written, blocked, stalls = [], [], []

    async def producer(ctx):
        for beat in sent:
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload, beat)
            await ctx.tick().until(dut.i_stream.ready)
            ctx.set(dut.i_stream.valid, 0)
            while rng.random() < 0.3:
                await ctx.tick()

    async def fifo_side(ctx):
        partial, enable = 0, False
        while len(written) < beats * count:
            if not partial:                        # the contract: enable holds through a beat
                enable = rng.random() < enable_rate
            room = rng.random() < room_rate
            ctx.set(dut.enable, enable)
            ctx.set(dut.room, room)
            await ctx.delay(1e-7)
            if ctx.get(dut.o_stream.valid):
                assert enable and (room or partial), "a word written without enable or room"
                written.append((ctx.get(dut.o_stream.payload.word),
                                ctx.get(dut.o_stream.payload.ends_beat)))
                partial = 0 if written[-1][1] else partial + 1
            elif enable and partial:
                stalls.append(len(written))        # a started beat did not move while enabled
            if ctx.get(dut.blocked):
                assert enable and not room and not partial
                blocked.append(len(written))
            await ctx.tick()

    _simulate(dut, producer, fifo_side)
    return sent, written, blocked, stalls


@pytest.mark.parametrize("count", [1, 2, 5])
def test_serialiser_sends_every_element_sign_extended_in_order(count):
    sent, written, blocked, stalls = _serialise(count, seed=count)
    assert [word for word, _ in written] == [e & 0xFFFF_FFFF for beat in sent for e in beat]
    assert [last for _, last in written] == ([0] * (count - 1) + [1]) * len(sent)
    assert blocked, "room was low sometimes: some cycle must have been blocked"
    assert not stalls, "a started beat must move every enabled cycle: it has its room"


def test_serialiser_rejects_shapes_it_cannot_send():
    with pytest.raises(ValueError, match=r"^element_shape must be signed and at most 32 bits"):
        ResultSerialiser(count=2, element_shape=signed(40))
    with pytest.raises(ValueError, match=r"^count must be a positive integer, not 0$"):
        ResultSerialiser(count=0, element_shape=signed(8))


FORMAT = CommandFormat(preset("tiny"))


async def _read_registers(ctx, dut, first, count):
    """Read ``count`` registers from ``first`` as the controller does."""
    ctx.set(dut.restart, 1)
    ctx.set(dut.restart_at, first)
    await ctx.tick()
    ctx.set(dut.restart, 0)
    words = []
    for _ in range(count):
        ctx.set(dut.take, 1)
        await ctx.tick()
        ctx.set(dut.take, 0)
        words.append(ctx.get(dut.word))
    return words


def test_register_file_counts_cycles_macs_and_reads_and_records_errors():
    dut = RegisterFile(FORMAT, max_macs=40)
    rng = random.Random(4)
    kinds = [rng.choice(["busy", "idle", "stalled"]) for _ in range(50)]
    macs = [rng.choice([0, 8, 40]) for _ in kinds]
    reads = [rng.getrandbits(FORMAT.banks) for _ in kinds]
    fails = [ErrorCode.NONE.value] * 20 + [ErrorCode.BAD_BANK.value] + [0] * 9 \
        + [ErrorCode.NO_TILE.value] + [0] * 19

    async def testbench(ctx):
        for kind, mac, read, fail in zip(kinds, macs, reads, fails):
            for name in ("busy", "idle", "stalled"):
                ctx.set(getattr(dut.cycle, name), name == kind)
            ctx.set(dut.macs, mac)
            ctx.set(dut.words_read.as_value(), read)
            ctx.set(dut.fail, fail)
            ctx.set(dut.flags.tile_loaded, 1)
            await ctx.tick()
        ctx.set(dut.cycle.busy, 0)
        ctx.set(dut.cycle.idle, 0)
        ctx.set(dut.cycle.stalled, 0)
        ctx.set(dut.macs, 0)
        ctx.set(dut.words_read.as_value(), 0)
        ctx.set(dut.fail, 0)
        status = await _read_registers(ctx, dut, 0, len(STATUS))
        counters = await _read_registers(ctx, dut, len(STATUS), len(FORMAT.counter_names))
        assert dict(zip(STATUS, status)) == {
            "magic": STATUS_MAGIC, "error": ErrorCode.BAD_BANK.value, "errors": 2, "flags": 1}
        expected = [kinds.count("busy"), kinds.count("idle"), kinds.count("stalled"),
                    sum(macs)] + [sum(r >> b & 1 for r in reads) for b in range(FORMAT.banks)]
        assert counters == expected
        assert ctx.get(dut.error) == ErrorCode.BAD_BANK.value and ctx.get(dut.error_set)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert ctx.get(dut.error) == ErrorCode.NONE.value and not ctx.get(dut.error_set)
        status = await _read_registers(ctx, dut, 0, len(STATUS))
        assert status[1:3] == [ErrorCode.NONE.value, 0]

    _simulate(dut, testbench)


def test_register_file_read_sees_every_cycle_before_it():
    """A read taken in the cycle after a busy cycle already counts it (the increment still on
    its way in is added on the way out)."""
    dut = RegisterFile(FORMAT, max_macs=40)

    async def testbench(ctx):
        ctx.set(dut.cycle.busy, 1)
        ctx.set(dut.restart, 1)
        ctx.set(dut.restart_at, len(STATUS))         # cycles_busy
        await ctx.tick()
        ctx.set(dut.cycle.busy, 0)
        ctx.set(dut.restart, 0)
        ctx.set(dut.take, 1)
        await ctx.tick()
        assert ctx.get(dut.word) == 1

    _simulate(dut, testbench)


def test_register_file_reads_across_select_groups():
    """Enough banks for the registers to span several groups of the two-step select."""
    fmt = CommandFormat(preset("ulx3s-85f"))
    assert len(fmt.registers) > 2 << READ_GROUP_BITS
    dut = RegisterFile(fmt, max_macs=1024)

    async def testbench(ctx):
        for bank in range(fmt.banks):          # bank b reads b + 1 words
            ctx.set(dut.words_read.as_value(),
                    sum(1 << c for c in range(fmt.banks) if c >= bank))
            await ctx.tick()
        ctx.set(dut.words_read.as_value(), 0)
        words = await _read_registers(ctx, dut, len(STATUS), len(fmt.counter_names))
        assert words[4:] == [b + 1 for b in range(fmt.banks)]

    _simulate(dut, testbench)
