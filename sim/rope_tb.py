"""cocotb testbench of :class:`hw.rope.Rope`, checked against ``golden.integer.rope_factors``
and ``apply_rope`` (with golden's width checks of a model of the unit's shape).

Each round loads phase steps (``golden.integer.rope_steps`` for a few ``rope_theta``, or random
32-bit steps), then streams tokens back to back: a position (0, 1, ``max_seq - 1`` and random
ones), then one to six heads of int16 pairs, ``lanes`` pairs a beat (the last head sometimes
cut short by whole beats: the next start restarts the pair index). Elements are drawn with the extremes -32768 and 32767 on purpose; a
pair whose rotation golden's ``projection`` check rejects (an extreme rotated off an axis
leaves int16: no model the decoder accepts produces it) is drawn again. Everything runs under
random idle and back-pressure.

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (tokens a round),
``options`` (``head_dim``, ``max_seq``, ``lanes``).
"""

import itertools

import cocotb
import numpy as np

from golden.fixedpoint import IntegerWidthError, build_tables
from golden.integer import PROJECTION_BITS, apply_rope, integer_formats, rope_factors, rope_steps
from golden.model import ModelConfig
from hw.config import Config
from hw.rope import Rope
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5)))
THETAS = (10000.0, 500000.0, 1.0e6)
MAX_HEADS = 6
_HIGH = (1 << (PROJECTION_BITS - 1)) - 1
_LOW = -(1 << (PROJECTION_BITS - 1))


class RopeTB(TB):
    """Loads steps, starts tokens, streams their pairs and collects the rotations."""

    def __init__(self, dut, p):
        super().__init__(dut, seed=p["seed"])
        config = Config.from_dict(p["config"])
        self.head_dim, self.max_seq = p["options"]["head_dim"], p["options"]["max_seq"]
        self.pairs = self.head_dim // 2
        unit = Rope(config, **p["options"])
        self.lanes = unit.lanes
        self.factor_cycles = unit.factor_cycles
        self.layouts = {port: payload_layout(unit, port)
                        for port in ("step_stream", "i_stream", "o_stream")}
        # Golden's widths for a model of this head_dim and max_seq (the rest does not matter).
        model = ModelConfig(hidden=self.head_dim, layers=1, heads=1, kv_heads=1,
                            ffn=self.head_dim, vocab=2, max_seq=self.max_seq)
        self.formats = integer_formats(model)
        self.tables = build_tables()
        self.np_rng = np.random.default_rng(p["seed"])
        self.steps = StreamSource(dut, "step_stream", rng=self.rng)
        self.start = StreamSource(dut, "start", rng=self.rng)
        self.source = StreamSource(dut, "i_stream", rng=self.rng)
        self.sink = StreamSink(dut, "o_stream", rng=self.rng)
        self.rejected = 0

    def check(self, name, value):
        return self.formats.check(name, value)

    async def load_steps(self, steps):
        await self.steps.send([self.layouts["step_stream"].const(
            {"addr": n, "data": int(step)}).as_bits() for n, step in enumerate(steps)],
            self.cycle)

    def factors(self, position, steps):
        return rope_factors(np.array([position]), steps, self.tables, self.check)

    def draw_heads(self, heads, cos, sin):
        """``(1, heads, head_dim)`` int16 with extremes, every pair's rotation in int16."""
        x = np.zeros((1, heads, self.head_dim), np.int64)
        for head, i in itertools.product(range(heads), range(self.pairs)):
            while True:
                pair = self._element(2)
                try:
                    apply_rope(pair[None, None, :], cos[:, i:i + 1], sin[:, i:i + 1],
                               self.check)
                    break
                except IntegerWidthError:
                    self.rejected += 1
            x[0, head, i], x[0, head, i + self.pairs] = pair
        return x

    def _element(self, count):
        rng = self.np_rng
        values = rng.integers(_LOW, _HIGH + 1, count)
        kind = rng.random(count)
        values[kind < 0.15] = _LOW
        values[(kind >= 0.15) & (kind < 0.3)] = _HIGH
        values[(kind >= 0.3) & (kind < 0.35)] = 0
        if rng.random() < 0.1:
            values = rng.integers(-4, 5, count)
        return values

    def pair_payloads(self, x):
        """The beats of ``x``'s heads, ``lanes`` pairs each."""
        return [self.layouts["i_stream"].const([
            {"first": int(x[0, h, i + j]), "second": int(x[0, h, i + j + self.pairs])}
            for j in range(self.lanes)]).as_bits()
            for h in range(x.shape[1]) for i in range(0, self.pairs, self.lanes)]

    def results(self, beats):
        """The pairs of the result beats, in order."""
        return [(int(r.first), int(r.second))
                for beat in map(self.layouts["o_stream"].from_bits, beats) for r in beat]

    def draw_positions(self, count):
        positions = [0, 1, self.max_seq - 1] + list(self.np_rng.integers(0, self.max_seq, count))
        positions = [int(v) for v in positions[:count]]
        self.np_rng.shuffle(positions)
        return positions


def expected_pairs(x, rotated, pairs):
    return [(int(rotated[0, h, i]), int(rotated[0, h, i + pairs]))
            for h in range(x.shape[1]) for i in range(pairs)]


async def _drive(tb, tokens):
    """Each token's start, then its pairs, back to back."""
    for position, payloads in tokens:
        await tb.start.send([position], tb.cycle)
        await tb.source.send(payloads, tb.cycle)


def _step_sets(tb):
    sets = [("theta", rope_steps(tb.head_dim, theta)) for theta in THETAS]
    return sets + [("random", tb.np_rng.integers(0, 1 << 32, tb.pairs))]


@cocotb.test()
async def rope_matches_golden(dut):
    """Every rotation against golden; with no idle and no back-pressure, also the timing: a
    token's first beat taken ``factor_cycles`` after its start, its beats one a cycle, each
    offered ``LATENCY`` cycles after it was taken."""
    p = params()
    tb = RopeTB(dut, p)
    await tb.reset()
    report = {"pairs": 0, "tokens": 0, "extremes": 0, "positions": set(), "step_sets": 0,
              "cut_heads": 0, "token_beats": [], "token_cycles": []}
    for (idle, backpressure), (kind, steps) in itertools.product(FLOW_KNOBS, _step_sets(tb)):
        for source in (tb.steps, tb.start, tb.source):
            source.pause = idle
        tb.sink.backpressure = backpressure
        await tb.load_steps(steps)
        for stream_ in (tb.start, tb.source):
            stream_.accepted_cycles.clear()
        tb.sink.beat_cycles.clear()
        tokens, expected = [], []
        for position in tb.draw_positions(p["tiles"]):
            cos, sin = tb.factors(position, steps)
            x = tb.draw_heads(int(tb.np_rng.integers(1, MAX_HEADS + 1)), cos, sin)
            rotated = expected_pairs(x, apply_rope(x, cos, sin, tb.check), tb.pairs)
            payloads = tb.pair_payloads(x)
            beats_a_head = tb.pairs // tb.lanes
            if beats_a_head > 1 and tb.np_rng.random() < 0.2:
                # The token ends within its last head: the next start restarts the pair index.
                count = len(payloads) - int(tb.np_rng.integers(1, beats_a_head))
                payloads, rotated = payloads[:count], rotated[:count * tb.lanes]
                report["cut_heads"] += 1
            expected += rotated
            tokens.append((position, payloads))
            report["extremes"] += int(np.sum((x == _LOW) | (x == _HIGH)))
            report["positions"].add(position)
        driver = cocotb.start_soon(_drive(tb, tokens))
        beats = await tb.sink.receive(len(expected) // tb.lanes, tb.cycle,
                                      timeout=200 + tb.factor_cycles)
        await driver
        got = tb.results(beats)
        bad = [n for n, (g, e) in enumerate(zip(got, expected)) if g != e]
        assert not bad, (f"pair {bad[0]} (steps {kind}, idle {idle}, back-pressure "
                         f"{backpressure}): got {got[bad[0]]}, golden {expected[bad[0]]}; "
                         f"{len(bad)} differ")
        if idle == backpressure == 0:
            _check_timing(tb, tokens, report)
        report["pairs"] += len(expected)
        report["tokens"] += len(tokens)
        report["step_sets"] += 1
    edges = {0, 1, tb.max_seq - 1}
    report["edge_positions"] = sorted(edges & report["positions"])
    report["positions"] = len(report["positions"])
    report["rejected"] = tb.rejected
    write_report(report)


def _check_timing(tb, tokens, report):
    """Beats taken one a cycle from ``factor_cycles`` after their start, offered ``LATENCY``
    later; each token's beats and cycles (start to the next start) go into ``report``."""
    taken, left = tb.source.accepted_cycles, tb.sink.beat_cycles
    starts = tb.start.accepted_cycles
    assert [b - a for a, b in zip(taken, left)] == [Rope.LATENCY] * len(taken)
    first = 0
    for n, (started, (_, payloads)) in enumerate(zip(starts, tokens)):
        count = len(payloads)
        assert taken[first] - started == tb.factor_cycles, (
            f"token {n}: first beat taken {taken[first] - started} cycles after its start, "
            f"not {tb.factor_cycles}")
        assert taken[first:first + count] == list(range(taken[first], taken[first] + count))
        first += count
        if n + 1 < len(starts):
            report["token_beats"].append(count)
            report["token_cycles"].append(starts[n + 1] - started)
