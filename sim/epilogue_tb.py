"""cocotb testbench of :class:`hw.epilogue.Epilogue`, checked against ``golden.integer.rescale``
and the residual add.

Tokens of random length, each with its own ``rho`` and matrix constant (their product, by
``golden.fixedpoint.dyadic_mul``, is the factor the unit takes), accumulators over the whole
range the configuration allows with its extremes, and a residual element each, in beats of the
unit's lanes (a token's last beat padded with zeros, as a GEMV's last results are); streamed
under random idle and back-pressure. The factor's exponent is drawn so that results use all of
``out_bits`` (the decoder's widths guarantee they fit, and so does this draw).

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (tokens per flow setting).
"""

import itertools

import cocotb
import numpy as np

from golden.fixedpoint import Dyadic, bit_length, dyadic, dyadic_mul
from golden.integer import LinearScale, rescale
from hw.config import Config
from hw.epilogue import Epilogue
from hw.words import unpack_ints
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5)))


def _no_check(name, value):
    return value


class EpilogueTB(TB):
    """Drives elements into the unit and collects its results."""

    def __init__(self, dut, p):
        super().__init__(dut, seed=p["seed"])
        self.config = Config.from_dict(p["config"])
        unit = Epilogue(self.config, **p["options"])
        self.layout = payload_layout(unit, "i_stream")
        self.lanes = unit.lanes
        self.out_bits = len(dut.o_stream__payload) // unit.lanes
        self.np_rng = np.random.default_rng(p["seed"])
        self.source = StreamSource(dut, "i_stream", rng=self.rng)
        self.sink = StreamSink(dut, "o_stream", rng=self.rng)

    def payload(self, acc, factor, residual):
        """One beat: ``lanes`` accumulators and residual elements, and their token's factor."""
        return self.layout.const({
            "acc": [int(a) for a in acc], "residual": [int(r) for r in residual],
            "factor": {"mantissa": int(factor.mantissa), "exponent": int(factor.exponent)},
        }).as_bits()

    def beats(self, acc, factor, residual):
        """A token's elements in beats; the last one padded with zeros."""
        padded = -len(acc) % self.lanes
        acc, residual = (np.concatenate([v, np.zeros(padded, np.int64)]) for v in (acc, residual))
        return [self.payload(acc[n:n + self.lanes], factor, residual[n:n + self.lanes])
                for n in range(0, len(acc), self.lanes)], acc, residual

    def results(self, beats):
        return [int(v) for v in unpack_ints(beats, self.out_bits, self.lanes).reshape(-1)]


def draw_token(rng, acc_bits, out_bits, length):
    """One token: accumulators, its factor (as rho and a constant), residual elements."""
    limit = 1 << (acc_bits - 1)
    acc = rng.integers(-limit, limit, length)
    acc[rng.random(length) < 0.1] = -limit
    acc[rng.random(length) < 0.1] = limit - 1
    acc[rng.random(length) < 0.05] = 0
    if rng.random() < 0.2:                  # a short vector of small values
        acc = rng.integers(-8, 8, length)
    rho, constant, factor = draw_factor(rng, acc, out_bits)
    room = 1 << (out_bits - 2)
    residual = rng.integers(-room, room, length)
    residual[rng.random(length) < 0.3] = 0
    return acc, rho, constant, factor, residual


def draw_factor(rng, acc, out_bits):
    """A factor for accumulators ``acc``, as ``rho``, a constant and their product, such that
    the largest ``|acc * factor|`` just fits half of ``out_bits``."""
    rho = dyadic(np.int64(rng.integers(1, 1 << 40)), np.int64(rng.integers(-60, 0)))
    constant = dyadic(np.int64(rng.integers(1, 1 << 40)), np.int64(rng.integers(-60, 0)))
    factor = dyadic_mul(rho, constant)
    # Rescale the constant so that the largest |acc * factor| just fits half of out_bits.
    peak = int(bit_length(np.abs(acc).max() * int(factor.mantissa)))
    exponent = out_bits - 2 - peak - int(rng.integers(0, 4))
    constant = Dyadic(constant.mantissa, constant.exponent + exponent - factor.exponent)
    return rho, constant, dyadic_mul(rho, constant)


@cocotb.test()
async def epilogue_matches_golden(dut):
    p = params()
    tb = EpilogueTB(dut, p)
    acc_bits, out_bits = tb.config.acc_bits, tb.out_bits
    await tb.reset()
    elements = cycles = 0
    for idle, backpressure in FLOW_KNOBS:
        tb.source.pause, tb.sink.backpressure = idle, backpressure
        payloads, expected = [], []
        for _ in range(p["tiles"]):
            length = int(tb.np_rng.integers(1, 40))
            acc, rho, constant, factor, residual = draw_token(tb.np_rng, acc_bits, out_bits,
                                                              length)
            token_beats, acc, residual = tb.beats(acc, factor, residual)
            scaled = rescale(acc[None, :], Dyadic(np.array([rho.mantissa]),
                                                  np.array([rho.exponent])),
                             LinearScale(constant, 0), _no_check, "out")[0]
            expected += list(scaled + residual)
            payloads += token_beats
        start = tb.cycle()
        sender = cocotb.start_soon(tb.source.send(payloads, tb.cycle))
        beats = await tb.sink.receive(len(payloads), tb.cycle, timeout=200)
        await sender
        cycles += tb.cycle() - start
        got = tb.results(beats)
        bad = [n for n, (g, e) in enumerate(zip(got, expected)) if g != e]
        assert not bad, (f"element {bad[0]} (idle {idle}, back-pressure {backpressure}): got "
                         f"{got[bad[0]]}, golden {expected[bad[0]]}; {len(bad)} differ")
        assert max(abs(e) for e in expected) >= 1 << (out_bits - 3), "results too small"
        elements += len(expected)
    write_report({"elements": elements, "cycles": cycles})


@cocotb.test()
async def one_beat_a_cycle(dut):
    """With no idle and no back-pressure, beats leave one a cycle, LATENCY after entry."""
    p = params()
    tb = EpilogueTB(dut, p)
    await tb.reset()
    count = 64
    elements = np.arange(count * tb.lanes)
    payloads, _, _ = tb.beats(elements, Dyadic(1 << 16, -16), np.zeros_like(elements))
    sender = cocotb.start_soon(tb.source.send(payloads, tb.cycle))
    beats = await tb.sink.receive(count, tb.cycle, timeout=20)
    await sender
    assert tb.results(beats) == [(n * (1 << 16) + (1 << 15)) >> 16 for n in elements]
    entered, left = tb.source.accepted_cycles, tb.sink.beat_cycles
    assert [b - a for a, b in zip(entered, left)] == [Epilogue.LATENCY] * count
    assert left == list(range(left[0], left[0] + count))
