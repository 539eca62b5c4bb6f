"""cocotb testbench of :class:`hw.norm.NormQuantizer`, checked against golden.integer's
``norm_statistics``, ``quantize_factor`` and ``quantize``.

Each round loads a vector of random length (its last word zero-padded) and gains, asks for
the statistics and compares every field with golden's, then sends QUANTISE and, on its own
stream after a random delay (before the command or well after it), golden's factor for that
peak (as the sequencer will, from the scalar unit), and compares every x_q. Vectors span every
magnitude from all zeros to the input's extremes; x_q words are taken under random
back-pressure in every other round, and in the others the first x_q word must come
``QUANTISE_LATENCY`` cycles after the command or ``FACTOR_LATENCY`` after the factor was
taken, whichever is later, and the rest one a cycle.

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (rounds), ``options``
(``size``, optional ``lanes``, ``in_bits``).
"""

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles

from golden.fixedpoint import build_tables
from golden.integer import GAIN_BITS, norm_statistics, quantize, quantize_factor
from hw.config import Config
from hw.norm import NormOp, NormQuantizer
from hw.words import unpack_ints
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report


def _no_check(name, value):
    return value


def _vector(rng, length, in_bits):
    """Random elements of a random magnitude (zero, tiny, or up to the input's extremes)."""
    kind = rng.integers(0, 6)
    if kind == 0:
        return np.zeros(length, np.int64)
    bits = int(rng.integers(1, in_bits)) if kind < 5 else in_bits - 1
    x = rng.integers(-(1 << bits), 1 << bits, length)
    if kind == 5:
        x[rng.integers(0, length)] = -(1 << (in_bits - 1))
    return x


@cocotb.test()
async def norm_matches_golden(dut):
    p = params()
    config = Config.from_dict(p["config"])
    unit = NormQuantizer(config, **p["options"])
    cmd_layout, stats_layout = payload_layout(unit, "cmd"), payload_layout(unit, "stats")
    factor_layout = payload_layout(unit, "factor")
    x_layout, gain_layout = payload_layout(unit, "x_stream"), payload_layout(unit, "gain_stream")
    lanes, words = len(dut.o_stream__payload) // 8, unit.words
    in_bits = x_layout["data"].shape.elem_shape.width
    tb = TB(dut, seed=p["seed"])
    rng = np.random.default_rng(p["seed"])
    x_source = StreamSource(dut, "x_stream", rng=tb.rng)
    gain_source = StreamSource(dut, "gain_stream", rng=tb.rng)
    commands = StreamSource(dut, "cmd", rng=tb.rng)
    factors = StreamSource(dut, "factor", rng=tb.rng)
    stats_sink = StreamSink(dut, "stats", rng=tb.rng)
    out = StreamSink(dut, "o_stream", rng=tb.rng)
    tables = build_tables()
    await tb.reset()
    report = {"vectors": 0, "zero_vectors": 0, "x_q_words": 0, "timed": 0,
              "factor_bound": 0}
    for round_ in range(p["tiles"]):
        length = int(rng.integers(1, words * lanes + 1)) if round_ else words * lanes
        used = -(-length // lanes)
        x = np.zeros(used * lanes, np.int64)
        x[:length] = _vector(rng, length, in_bits)
        gain = np.zeros(used * lanes, np.int64)
        gain[:length] = rng.integers(-(1 << (GAIN_BITS - 1)), 1 << (GAIN_BITS - 1), length)
        for source, layout, values in ((x_source, x_layout, x), (gain_source, gain_layout, gain)):
            await source.send([layout.const({"index": n, "data": word.tolist()}).as_bits()
                               for n, word in enumerate(values.reshape(used, lanes))], tb.cycle)
        expected, u = norm_statistics(x[None, :length], gain[:length], _no_check)
        await commands.send([cmd_layout.const({"op": NormOp.STATISTICS, "words": used})
                             .as_bits()], tb.cycle)
        (beat,) = await stats_sink.receive(1, tb.cycle, timeout=used * 3 + 100)
        stats = stats_layout.from_bits(beat)
        got = {name: stats[name] for name in expected._fields}
        want = {name: int(getattr(expected, name)[0]) for name in expected._fields}
        assert got == want, f"round {round_} (length {length}): statistics {got}, golden {want}"

        factor = quantize_factor(expected.peak, tables)
        timed = round_ % 2 == 0
        out.backpressure = 0.0 if timed else 0.5

        async def send_factor(delay, beat=factor_layout.const({
                "mantissa": int(factor.mantissa[0]),
                "exponent": int(factor.exponent[0])}).as_bits()):
            await ClockCycles(dut.clk, delay)
            await factors.send([beat], tb.cycle)

        factor_task = cocotb.start_soon(send_factor(int(rng.integers(0, 16))))
        await commands.send([cmd_layout.const({"op": NormOp.QUANTISE, "words": used})
                             .as_bits()], tb.cycle)
        beats = await out.receive(used, tb.cycle, timeout=used * 3 + 100)
        await factor_task
        if timed:
            quantise, factor_taken = commands.accepted_cycles[-1], factors.accepted_cycles[-1]
            first = max(quantise + NormQuantizer.QUANTISE_LATENCY,
                        factor_taken + NormQuantizer.FACTOR_LATENCY)
            assert out.beat_cycles[-used:] == list(range(first, first + used)), (
                f"round {round_}: x_q words in cycles {out.beat_cycles[-used:]}, QUANTISE "
                f"taken in {quantise} and its factor in {factor_taken}: documented from "
                f"{first}, one a cycle")
            report["timed"] += 1
            report["factor_bound"] += int(factor_taken + NormQuantizer.FACTOR_LATENCY
                                          > quantise + NormQuantizer.QUANTISE_LATENCY)
        x_q = unpack_ints(beats, 8, lanes).reshape(-1)[:length]
        want_q = quantize(u, factor, _no_check)[0]
        bad = np.flatnonzero(x_q != want_q)
        assert not bad.size, (f"round {round_} (length {length}): x_q[{bad[0]}] = "
                              f"{x_q[bad[0]]}, golden {want_q[bad[0]]}; {bad.size} differ")
        report["vectors"] += 1
        report["zero_vectors"] += int(expected.peak[0] == 0)
        report["x_q_words"] += used
    write_report(report)
