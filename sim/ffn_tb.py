"""cocotb testbench of :class:`hw.ffn.FfnInner`, checked against ``golden.integer.ffn_inner``.

Tokens of every length from ``lanes`` to ``ffn`` a multiple of the unit's ``lanes`` (the
first of each flow setting is ``ffn`` long, the second ``lanes``), sent back to back, each a
command then its gate and up beats. Gates span every
magnitude: all negative (``a`` all zero), small ones around the shift's threshold, the extremes
32767 and -32768, and vectors whose most negative element outweighs the largest positive one;
up elements include -32768 and 32767. Each token gets random gate and up fractions, and the
unit's shift must be golden's exponent plus ``2 gate_fraction + up_fraction``. Everything runs
under random idle and back-pressure; a last test checks one beat a cycle and the latency.

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (tokens per flow setting),
``options`` (``ffn``, ``lanes``).
"""

import itertools

import cocotb
import numpy as np
from amaranth import Shape

from golden.integer import PROJECTION_BITS, ffn_inner
from hw.config import Config
from hw.ffn import FfnInner
from hw.words import pack_ints, unpack_ints
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5)))
_LOW, _HIGH = -(1 << (PROJECTION_BITS - 1)), (1 << (PROJECTION_BITS - 1)) - 1


def _no_check(name, value):
    return value


class FfnTB(TB):
    """Sends tokens to the unit and collects its results."""

    def __init__(self, dut, p):
        super().__init__(dut, seed=p["seed"])
        self.unit = FfnInner(Config.from_dict(p["config"]), **p["options"])
        self.ffn, self.lanes = p["options"]["ffn"], self.unit.lanes
        self.cmd_layout = payload_layout(self.unit, "cmd")
        self.out_layout = payload_layout(self.unit, "o_stream")
        self.value_bits = Shape.cast(self.out_layout["value"].shape).width // self.lanes
        self.np_rng = np.random.default_rng(p["seed"])
        self.cmd = StreamSource(dut, "cmd", rng=self.rng)
        self.source = StreamSource(dut, "i_stream", rng=self.rng)
        self.sink = StreamSink(dut, "o_stream", rng=self.rng)

    async def send(self, tokens):
        """Each token's command, then its gate and up beats."""
        for gate, up in tokens:
            await self.cmd.send([self.cmd_layout.const({"length": len(gate)}).as_bits()],
                                self.cycle)
            await self.source.send(list(pack_ints(np.concatenate([gate, up])
                                                  .reshape(-1, self.lanes), PROJECTION_BITS)),
                                   self.cycle)

    async def run(self, tokens):
        """Send ``tokens`` while collecting their results: ``(value, shift)`` per element (a
        gate takes up to ``ffn`` cycles, longer under idle, before a result can leave)."""
        timeout = 4 * self.ffn + 100
        sender = cocotb.start_soon(self.send(tokens))
        beats = await self.sink.receive(sum(len(gate) for gate, _ in tokens) // self.lanes,
                                        self.cycle, timeout=timeout)
        await sender
        value = self.out_layout["value"]
        values = unpack_ints([(beat >> value.offset) & ((1 << value.width) - 1)
                              for beat in beats], self.value_bits, self.lanes)
        shifts = [int(self.out_layout.from_bits(beat).shift) for beat in beats]
        return [(int(v), shift) for row, shift in zip(values, shifts) for v in row]


def draw_gate(rng, length):
    """A gate vector of one of several kinds (see the module's docstring)."""
    kind = rng.integers(0, 7)
    if kind == 0:                               # all negative: a is zero everywhere
        return rng.integers(_LOW, 0, length)
    if kind == 1:                               # the full range with both extremes
        gate = rng.integers(_LOW, _HIGH + 1, length)
        gate[rng.random(length) < 0.2] = _HIGH
        gate[rng.random(length) < 0.2] = _LOW
        return gate
    if kind == 2:                               # the most negative outweighs the largest a
        bits = int(rng.integers(2, PROJECTION_BITS - 1))
        gate = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), length)
        gate[rng.integers(0, length)] = int(rng.integers(_LOW, -(1 << bits)))
        return gate
    if kind == 3:                               # max a**2 around 2**16: shift 0 or 1
        return rng.integers(-300, 300, length)
    if kind == 4:                               # zeros and ones
        return rng.integers(-1, 2, length)
    bits = int(rng.integers(1, PROJECTION_BITS))     # one magnitude
    return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), length)


def draw_up(rng, length):
    up = rng.integers(_LOW, _HIGH + 1, length)
    up[rng.random(length) < 0.1] = _LOW
    up[rng.random(length) < 0.1] = _HIGH
    return up


def expected(rng, gate, up):
    """Golden's ``(value, shift)`` per element, with random fractions (the unit's shift is
    golden's exponent without them)."""
    gate_fraction, up_fraction = (int(f) for f in rng.integers(0, 16, 2))
    values, exponent = ffn_inner(gate[None, :], up[None, :], gate_fraction, up_fraction,
                                 _no_check)
    shift = int(exponent[0]) + 2 * gate_fraction + up_fraction
    return [(int(v), shift) for v in values[0]]


@cocotb.test()
async def ffn_matches_golden(dut):
    p = params()
    tb = FfnTB(dut, p)
    rng = tb.np_rng
    await tb.reset()
    report = {"tokens": 0, "elements": 0, "all_negative": 0, "shifted": 0}
    for idle, backpressure in FLOW_KNOBS:
        tb.cmd.pause = tb.source.pause = idle
        tb.sink.backpressure = backpressure
        lanes = tb.lanes
        lengths = [tb.ffn, lanes] + [lanes * int(n) for n in
                                     rng.integers(1, tb.ffn // lanes + 1, p["tiles"] - 2)]
        tokens = []
        for length in lengths:
            gate = draw_gate(rng, length)
            tokens.append((gate, draw_up(rng, length)))
        want = [pair for gate, up in tokens for pair in expected(rng, gate, up)]
        got = await tb.run(tokens)
        bad = [n for n, (g, w) in enumerate(zip(got, want)) if g != w]
        assert not bad, (f"element {bad[0]} (idle {idle}, back-pressure {backpressure}): got "
                         f"{got[bad[0]]}, golden {want[bad[0]]}; {len(bad)} differ")
        report["tokens"] += len(tokens)
        report["elements"] += len(want)
        report["all_negative"] += sum(bool((gate < 0).all()) for gate, _ in tokens)
        report["shifted"] += sum(shift > 0 for _, shift in want)
    write_report(report)


@cocotb.test()
async def one_beat_a_cycle(dut):
    """With no idle and no back-pressure, a token takes ``2 length / lanes + 1`` cycles of input
    and each result beat leaves the unit's latency after its up beat is taken."""
    p = params()
    tb = FfnTB(dut, p)
    rng = tb.np_rng
    await tb.reset()
    lanes = tb.lanes
    lengths = [tb.ffn, lanes, 2 * lanes, tb.ffn]
    tokens = [(draw_gate(rng, n), draw_up(rng, n)) for n in lengths]
    got = await tb.run(tokens)
    assert [value for value, _ in got] == [value for gate, up in tokens
                                           for value, _ in expected(rng, gate, up)]
    taken, up_taken = tb.source.accepted_cycles, []
    for n in (length // lanes for length in lengths):
        up_taken += taken[n:2 * n]
        taken = taken[2 * n:]
    assert [b - a for a, b in zip(up_taken, tb.sink.beat_cycles)] == \
        [tb.unit.latency] * len(up_taken)
    commands = tb.cmd.accepted_cycles
    assert [b - a for a, b in itertools.pairwise(commands)] == \
        [2 * n // lanes + 1 for n in lengths[:-1]]
