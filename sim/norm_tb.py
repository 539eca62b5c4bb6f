"""cocotb testbench of :class:`hw.norm.NormQuantizer`, checked against golden.integer's
``norm_statistics``, ``quantize_factor`` and ``quantize``.

Each round loads a vector of random length (its last word zero-padded) and gains, asks for
the statistics and compares every field with golden's, then sends QUANTISE and, on its own
stream after a random delay (before the command or well after it), golden's factor for that
peak (as the sequencer will, from the scalar unit), and compares every x_q. Vectors span every
magnitude from all zeros to the input's extremes. The statistics and x_q words are taken
under random back-pressure in every other round; in the others x's and u's statistics must be
offered their documented latencies after STATISTICS, and the first x_q word
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
    cmd_layout = payload_layout(unit, "cmd")
    stats_layouts = {port: payload_layout(unit, port) for port in ("x_stats", "u_stats")}
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
    stats_sinks = {port: StreamSink(dut, port, rng=tb.rng) for port in stats_layouts}
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
        timed = round_ % 2 == 0
        for sink in (out, *stats_sinks.values()):
            sink.backpressure = 0.0 if timed else 0.5
        receiving = {port: cocotb.start_soon(sink.receive(1, tb.cycle, timeout=used * 3 + 100))
                     for port, sink in stats_sinks.items()}
        await commands.send([cmd_layout.const({"op": NormOp.STATISTICS, "words": used})
                             .as_bits()], tb.cycle)
        got = {}
        for port, task in receiving.items():
            (beat,) = await task
            view = stats_layouts[port].from_bits(beat)
            got.update({name: view[name] for name, _ in stats_layouts[port]})
        want = {name: int(getattr(expected, name)[0]) for name in expected._fields}
        assert got == want, f"round {round_} (length {length}): statistics {got}, golden {want}"
        if timed:
            taken = commands.accepted_cycles[-1]
            offered = {port: sink.beat_cycles[-1] - taken for port, sink in stats_sinks.items()}
            documented = {"x_stats": NormQuantizer.x_statistics_latency(used, lanes),
                          "u_stats": NormQuantizer.statistics_latency(used, lanes)}
            assert offered == documented, (
                f"round {round_}: statistics offered {offered} cycles after STATISTICS, "
                f"documented {documented}")

        factor = quantize_factor(expected.peak, tables)

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
