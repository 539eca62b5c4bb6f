"""cocotb testbench of :class:`hw.array.SystolicArray`, checked against golden's integer product.

Weights are random in the PE kind's range and sent in its codes (:class:`CommandFormat`), so
any registered kind runs here.

Parameters (``BITTERN_PARAMS``): ``config`` (the JSON config), ``seed``, ``tiles`` (random
tiles), ``stream_tokens`` (length of the utilisation run; at least ``16 * rows``).
"""

import itertools

import cocotb
import numpy as np

from golden.bitlinear import matmul_int
from hw.commands import CommandFormat
from hw.config import Config
from hw.words import pack_ints, unpack_ints
from sim.tb import TB, StreamSink, StreamSource, params, write_report

# (idle probability on the inputs, back-pressure probability on the output)
FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5)))
REPORT = {"tiles": 0, "macs": 0, "cycles": 0}


class ArrayTB(TB):
    """Drives weights and tokens into the array and collects its results."""

    def __init__(self, dut, config, seed):
        super().__init__(dut, seed=seed)
        self.config = config
        self.rows, self.cols = config.array.rows, config.array.cols
        self.format = CommandFormat(config)
        self.weight_range = self.format.pe.weight_range
        self.act_bits = len(dut.i_stream__payload) // self.rows     # widths from the DUT
        self.psum_bits = len(dut.o_stream__payload) // self.cols
        self.np_rng = np.random.default_rng(seed)
        self.weights = StreamSource(dut, "w_stream", rng=self.rng)
        self.tokens = StreamSource(dut, "i_stream", rng=self.rng)
        self.results = StreamSink(dut, "o_stream", rng=self.rng)

    def set_flow(self, idle, backpressure):
        self.weights.pause = self.tokens.pause = idle
        self.results.backpressure = backpressure

    async def run_tile(self, w_t, x_q, useful_macs_per_token=None):
        """Load ``w_t`` (cols x rows weights), stream ``x_q`` (M x rows); check; return cycles.

        ``useful_macs_per_token`` is ``K * N`` of a tile padded to the array (default: all).
        """
        await self.weights.send(self.format.tile_rows(w_t), self.cycle)
        first = len(self.tokens.accepted_cycles)
        sender = cocotb.start_soon(self.tokens.send(pack_ints(x_q, self.act_bits), self.cycle))
        beats = await self.results.receive(len(x_q), self.cycle,
                                           timeout=4 * (self.rows + self.cols) + 100)
        await sender
        got = unpack_ints(beats, self.psum_bits, self.cols)
        expected = matmul_int(x_q, w_t)
        bad = np.argwhere(got != expected)
        assert not bad.size, (f"token {bad[0][0]} column {bad[0][1]}: got "
                              f"{got[tuple(bad[0])]}, expected {expected[tuple(bad[0])]} "
                              f"({len(bad)} wrong of {got.size})")
        cycles = self.results.beat_cycles[-1] - self.tokens.accepted_cycles[first] + 1
        REPORT["tiles"] += 1
        REPORT["macs"] += len(x_q) * (useful_macs_per_token or w_t.size)
        REPORT["cycles"] += cycles
        return cycles

    def random_tile(self, kind):
        """A tile of shape K <= rows, N <= cols, zero-padded to the full array."""
        rng = self.np_rng
        low, high = self.weight_range
        k = self.rows if kind != "random" else int(rng.integers(1, self.rows + 1))
        n = self.cols if kind != "random" else int(rng.integers(1, self.cols + 1))
        m = int(rng.integers(1, 3 * self.rows + 2))
        w_t = np.zeros((self.cols, self.rows), np.int64)
        x_q = rng.integers(-128, 128, (m, self.rows)).astype(np.int8)
        if kind == "random":
            w_t[:n, :k] = rng.integers(low, high + 1, (n, k))
            x_q[rng.random(x_q.shape) < 0.1] = -128
            x_q[rng.random(x_q.shape) < 0.1] = 127
        elif kind == "zero-weights":
            pass
        elif kind == "all-plus":
            w_t[:] = 1
        elif kind == "all-minus":
            w_t[:] = -1
        elif kind == "extremes":          # longest reduction at both ends of the psum range
            w_t[:] = rng.choice([low, high], size=(self.cols, 1))
            x_q[:] = rng.choice([-128, 127], size=(m, 1))
        return w_t, x_q, k * n


@cocotb.test()
async def random_tiles(dut):
    """Random and corner-case tiles under every idle / back-pressure combination."""
    p = params()
    tb = ArrayTB(dut, Config.from_dict(p["config"]), p.get("seed", 0))
    await tb.reset()
    kinds = ["zero-weights", "all-plus", "all-minus", "extremes"]
    count = max(p.get("tiles", 8), len(kinds))
    for i in range(count):
        tb.set_flow(*FLOW_KNOBS[i % len(FLOW_KNOBS)])
        kind = kinds[i] if i < len(kinds) else "random"
        await tb.run_tile(*tb.random_tile(kind))
    write_report(REPORT)


@cocotb.test()
async def stream_utilisation(dut):
    """A long token stream through one full tile; utilisation as defined in docs/design.md."""
    p = params()
    tb = ArrayTB(dut, Config.from_dict(p["config"]), p.get("seed", 0) + 1)
    await tb.reset()
    tokens = max(p.get("stream_tokens", 0), 16 * tb.rows)
    w_t = tb.np_rng.integers(tb.weight_range[0], tb.weight_range[1] + 1, (tb.cols, tb.rows))
    x_q = tb.np_rng.integers(-128, 128, (tokens, tb.rows)).astype(np.int8)
    cycles = await tb.run_tile(w_t, x_q)
    utilisation = tokens * tb.rows * tb.cols / (tb.rows * tb.cols * cycles)
    bound = tokens / (tokens + tb.rows + tb.cols)
    REPORT.update(stream_tokens=tokens, stream_cycles=cycles, utilisation=utilisation,
                  utilisation_bound=bound)
    write_report(REPORT)
    assert utilisation >= bound - 0.02, f"utilisation {utilisation:.4f} < {bound:.4f} - 0.02"


@cocotb.test()
async def concurrent_streams(dut):
    """Weights, tokens and results all at once, each with random pauses: the next tiles' beats
    are offered while the current tile's tokens stream, and the array decides the order.

    The scoreboard follows the accepted cycles: a token taken in cycle ``t`` meets the last
    tile whose every beat was taken before ``t``; a token never meets a tile half loaded.
    """
    p = params()
    tb = ArrayTB(dut, Config.from_dict(p["config"]), p.get("seed", 0) + 2)
    await tb.reset()
    tb.set_flow(0.3, 0.3)
    tiles = [tb.random_tile("random") for _ in range(max(p.get("tiles", 8) // 2, 3))]
    beats = [beat for w_t, _, _ in tiles for beat in tb.format.tile_rows(w_t)]
    tokens = np.concatenate([x_q for _, x_q, _ in tiles])
    # The first tile loads alone (a token must meet a tile). Each later tile is offered
    # while the second half of the tokens before it streams and their results drain; its own
    # tokens follow once it is taken.
    await tb.weights.send(beats[:tb.rows], tb.cycle)
    collector = cocotb.start_soon(tb.results.receive(len(tokens), tb.cycle,
                                                     timeout=8 * (tb.rows + tb.cols) + 200))
    for n, (_, x_q, _) in enumerate(tiles):
        half = len(x_q) // 2
        await tb.tokens.send(pack_ints(x_q[:half], tb.act_bits), tb.cycle)
        rest = cocotb.start_soon(tb.tokens.send(pack_ints(x_q[half:], tb.act_bits), tb.cycle))
        if n + 1 < len(tiles):
            await tb.weights.send(beats[(n + 1) * tb.rows:(n + 2) * tb.rows], tb.cycle)
        await rest
    results = await collector
    # The tile each token met: the number of whole tiles loaded before its cycle.
    beat_cycles = tb.weights.accepted_cycles[-len(beats):]
    complete = beat_cycles[tb.rows - 1::tb.rows]
    token_cycles = tb.tokens.accepted_cycles[-len(tokens):]
    met = [sum(done < cycle for done in complete) - 1 for cycle in token_cycles]
    got = unpack_ints(results, tb.psum_bits, tb.cols)
    for m, (tile, x) in enumerate(zip(met, tokens)):
        expected = matmul_int(x[None, :], tiles[tile][0])[0]
        assert (got[m] == expected).all(), (
            f"token {m} (taken in cycle {token_cycles[m]}, after {tile + 1} whole tiles): got "
            f"{got[m].tolist()}, golden {expected.tolist()}")
    REPORT["concurrent_tiles"] = len(set(met))
    write_report(REPORT)
    assert len(set(met)) > 1, "every token met the same tile: the streams never overlapped"
