# amaranth: UnusedElaboratable=no
"""The PIM bank engine, its adder tree and the group's sequencer under Amaranth's simulator."""

import itertools

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden import trits
from golden.bitlinear import bitlinear_int
from hw.config import Config, PimConfig
from hw.pim import AdderTree, PimBank, PimBankGroup

# One bank of 4 lanes; max_k = 12 makes acc_bits = 12, the width a 3-word row of -128 * -1 needs.
BANK = Config(max_k=12, pim=PimConfig(banks=1, lanes=4, depth=128))


def simulate(dut, *testbenches):
    sim = Simulator(dut)
    sim.add_clock(1e-6, if_exists=True)      # a one-term adder tree has no clock
    for testbench in testbenches:
        sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("count, levels_per_stage, levels_before, latency", [
    (1, 2, 0, 0), (1, 2, 1, 0), (2, 2, 0, 0), (2, 2, 1, 1), (3, 1, 0, 2), (5, 2, 1, 2),
    (8, 1, 0, 3), (16, 2, 1, 2), (17, 2, 0, 2), (32, 3, 2, 2),
])
def test_adder_tree_matches_numpy(count, levels_per_stage, levels_before, latency):
    tree = AdderTree(count=count, magnitude=128, levels_per_stage=levels_per_stage,
                     levels_before=levels_before)
    rng = np.random.default_rng(count)
    vectors = np.concatenate([np.full((1, count), -128), np.full((1, count), 128),
                              rng.integers(-128, 129, (20, count))])
    sums = vectors.sum(axis=1)
    assert tree.latency == latency

    async def testbench(ctx):
        for n in range(len(vectors) + tree.latency):
            if n < len(vectors):
                ctx.set(tree.i, vectors[n].tolist())
            if n >= tree.latency:
                assert ctx.get(tree.o) == sums[n - tree.latency], n
            await (ctx.tick() if tree.latency else ctx.delay(1e-6))

    simulate(tree, testbench)


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=0, magnitude=1), "count must be a positive integer, not 0"),
    (dict(count=4, magnitude=-3), "magnitude must be a positive integer, not -3"),
    (dict(count=4, magnitude=1, levels_per_stage=True),
     "levels_per_stage must be a positive integer, not True"),
    (dict(count=4, magnitude=1, levels_per_stage=2, levels_before=2),
     r"levels_before must be an integer in \[0, 1\], not 2"),
])
def test_adder_tree_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdderTree(**kwargs)


def run_bank(words, reads):
    """Write ``words`` into a fresh bank, then issue ``reads`` = ``(addr, first, last, chunk)``
    one per cycle. Returns the row results, for each the cycles from its last read to its
    appearance on ``o_stream`` (``latency``: written into the FIFO as it is added, out of it the
    cycle after), and ``latency``."""
    bank = PimBank(BANK, fifo_depth=2)
    results, seen, issued = [], [], []

    async def driver(ctx):
        for addr, word in enumerate(words):
            ctx.set(bank.w_stream.valid, 1)
            ctx.set(bank.w_stream.p, {"addr": addr, "data": word})
            await ctx.tick()
        ctx.set(bank.w_stream.valid, 0)
        for n in range(len(reads) + 1):
            ctx.set(bank.rd_stream.valid, n < len(reads))
            if n < len(reads):
                addr, first, last, _ = reads[n]
                ctx.set(bank.rd_stream.p, {"addr": addr, "first": first, "last": last})
                if last:
                    issued.append(n)
            if n:
                ctx.set(bank.x, list(reads[n - 1][3]))      # the chunk follows its read
            await ctx.tick()
        ctx.set(bank.rd_stream.valid, 0)

    async def monitor(ctx):
        cycle = -len(words)                                  # cycle 0 = the first read
        ctx.set(bank.o_stream.ready, 1)
        while len(results) < sum(read[2] for read in reads):
            if ctx.get(bank.o_stream.valid):
                results.append(ctx.get(bank.o_stream.payload))
                seen.append(cycle)
            await ctx.tick()
            cycle += 1

    simulate(bank, driver, monitor)
    return results, [s - i for s, i in zip(seen, issued)], bank.latency


def test_bank_dot_product_all_trit_combinations_and_int8_extremes():
    weights = np.array(list(itertools.product((-1, 0, 1), repeat=4)), np.int8)   # 81 words
    words = [row[0] for row in trits.pack_words(weights, 4)]
    chunks = np.array([[-128] * 4, [127] * 4, [-128, 127, -128, 127], [127, -128, 0, 1],
                       [-1, 2, -3, 4]], np.int8)
    reads = [(addr, 1, 1, chunk) for chunk in chunks for addr in range(len(words))]
    results, latencies, latency = run_bank(words, reads)
    expected = np.concatenate([bitlinear_int(chunk[None, :], weights)[0] for chunk in chunks])
    assert results == expected.tolist()
    assert set(latencies) == {latency}


def test_bank_accumulates_rows_of_words():
    rng = np.random.default_rng(7)
    words_per_row, rows = 3, 12
    weights = rng.integers(-1, 2, (rows, words_per_row * 4)).astype(np.int8)
    weights[0] = -1                                         # the accumulator's positive limit
    weights[1] = 1                                          # and its negative limit
    x = rng.integers(-128, 128, (rows, words_per_row * 4)).astype(np.int8)
    x[:2] = -128
    words = [w for row in trits.pack_words(weights, 4) for w in row]
    reads = [(r * words_per_row + i, i == 0, i == words_per_row - 1, x[r, 4 * i:4 * i + 4])
             for r in range(rows) for i in range(words_per_row)]
    results, latencies, latency = run_bank(words, reads)
    expected = [int(bitlinear_int(x[r][None, :], weights[r][None, :])[0, 0])
                for r in range(rows)]
    assert expected[:2] == [12 * 128, -12 * 128]
    assert results == expected
    assert set(latencies) == {latency}


def test_group_runs_empty_commands_and_zeroes_activations_past_max_k():
    # max_k = 6 with 4 lanes: the second chunk holds k = 4, 5 and two lanes that must read 0.
    config = Config(max_k=6, pim=PimConfig(banks=2, lanes=4, depth=8))
    group = PimBankGroup(config)
    weights = np.array([[[-1, 1, 0, -1, -1, -1, -1, -1]], [[1, 1, 1, 1, -1, 0, 1, -1]]],
                       np.int8)
    x = np.full(8, -128, np.int8)
    commands = [{"base": 3, "rows": 0, "words_per_row": 2},
                {"base": 3, "rows": 1, "words_per_row": 0},
                {"base": 3, "rows": 1, "words_per_row": 2}]
    beats = []

    async def driver(ctx):
        for b in range(2):
            for i, word in enumerate(trits.pack_words(weights[b], 4)[0]):
                ctx.set(group.w_stream.valid, 1)
                ctx.set(group.w_stream.p, {"bank": b, "addr": 3 + i, "data": word})
                await ctx.tick().until(group.w_stream.ready)
        ctx.set(group.w_stream.valid, 0)
        for i in range(2):
            ctx.set(group.x_stream.valid, 1)
            ctx.set(group.x_stream.p, {"addr": i, "data": x[4 * i:4 * i + 4].tolist()})
            await ctx.tick().until(group.x_stream.ready)
        ctx.set(group.x_stream.valid, 0)
        for command in commands:
            ctx.set(group.cmd_stream.valid, 1)
            ctx.set(group.cmd_stream.p, command)
            await ctx.tick().until(group.cmd_stream.ready)
        ctx.set(group.cmd_stream.valid, 0)

    async def sink(ctx):
        ctx.set(group.o_stream.ready, 1)
        for _ in range(60):
            _, _, valid, payload = await ctx.tick().sample(group.o_stream.valid,
                                                           group.o_stream.payload)
            if valid:
                beats.append([int(v) for v in payload])
        assert not ctx.get(group.busy)

    simulate(group, driver, sink)
    expected = bitlinear_int(x[None, :6], weights[:, 0, :6])[0]
    assert beats == [expected.tolist()]


def test_wrong_parameters_name_themselves():
    # (The first line of this file silences Amaranth's warning about the unbuilt components.)
    with pytest.raises(TypeError, match="config must be a Config, not 'tiny'"):
        PimBank("tiny", fifo_depth=2)
    with pytest.raises(ValueError, match="fifo_depth must be a positive integer, not 0"):
        PimBank(BANK, fifo_depth=0)
    with pytest.raises(TypeError, match="config must be a Config, not None"):
        PimBankGroup(None)
    with pytest.raises(TypeError, match="bank must be a PimBank subclass, not <class 'int'>"):
        PimBankGroup(BANK, bank=int)


def test_a_chunk_and_a_gemv_offered_together_compute_with_the_new_chunk():
    """A chunk write and a GEMV offered in the same cycle: the GEMV must see the chunk. (Both
    taken in one cycle, the GEMV read the buffer as the write landed, and got the old chunk:
    4 lanes of 10 x (+1) gave 4, not 40.)"""
    config = Config(max_k=8, pim=PimConfig(banks=1, lanes=4, depth=8))
    group = PimBankGroup(config)
    beats = []

    async def driver(ctx):
        ctx.set(group.w_stream.valid, 1)
        ctx.set(group.w_stream.p, {"bank": 0, "addr": 0,
                                   "data": trits.pack_words([1, 1, 1, 1], 4)[0]})
        await ctx.tick().until(group.w_stream.ready)
        ctx.set(group.w_stream.valid, 0)
        ctx.set(group.x_stream.valid, 1)
        ctx.set(group.x_stream.p, {"addr": 0, "data": [1, 1, 1, 1]})
        await ctx.tick().until(group.x_stream.ready)
        ctx.set(group.x_stream.p, {"addr": 0, "data": [10, 10, 10, 10]})
        ctx.set(group.cmd_stream.valid, 1)
        ctx.set(group.cmd_stream.p, {"base": 0, "rows": 1, "words_per_row": 1})
        x_taken = cmd_taken = False
        while not (x_taken and cmd_taken):
            await ctx.delay(1e-7)
            x_now = ctx.get(group.x_stream.valid) and ctx.get(group.x_stream.ready)
            cmd_now = ctx.get(group.cmd_stream.valid) and ctx.get(group.cmd_stream.ready)
            await ctx.tick()
            if x_now:
                x_taken = True
                ctx.set(group.x_stream.valid, 0)
            if cmd_now:
                assert x_taken, "the GEMV must not be taken before the chunk offered with it"
                cmd_taken = True
                ctx.set(group.cmd_stream.valid, 0)

    async def sink(ctx):
        ctx.set(group.o_stream.ready, 1)
        for _ in range(40):
            _, _, valid, payload = await ctx.tick().sample(group.o_stream.valid,
                                                           group.o_stream.payload)
            if valid:
                beats.append([int(v) for v in payload])

    simulate(group, driver, sink)
    assert beats == [[40]]
