"""cocotb testbench of :class:`hw.attention.Attention`, checked against
``golden.integer.attention`` for one query position (T = 1) at ``start_pos = pos`` over the
cache's rows ``0 .. pos``, every output element of every head of a query compared.

The cache of every layer is filled with random int16 keys and values of every magnitude, some
words all at an extreme, and rows are rewritten while queries run (the unit must hold the
writes off until the query's reads are done). Queries come at position 0,
the last position and random ones, for random layers and passes (``heads_per_pass`` query
heads of a KV head each), with the softmax constants of
``golden.integer.softmax_scale`` for score fractions from -5 to 32 (so that small ones cut
most gaps off, p = 0, and large ones keep fine weights; the largest need their gap limit
saturated to the unit's field). Each head's vector is random, or equal to a visible key (a big
peak, each head its own key), or zero (every score equal: uniform weights). Golden runs with its width checks
(``integer_formats(...).check`` for this shape): queries are drawn in [-32767, 32767] and
cache words in the whole int16 range, which golden's ``score`` width holds. Queries and cache
writes run under random idle, outputs under random back-pressure; without back-pressure, the
cycles from a query taken to its output offered must be ``Attention.cycles(pos)``.

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (queries per flow setting),
``options`` (``heads``, ``kv_heads``, ``head_dim``, ``max_seq``, ``layers``,
``heads_per_pass``).
"""

import itertools

import cocotb
import numpy as np

from golden.fixedpoint import build_tables
from golden.integer import PROJECTION_BITS, attention, softmax_scale
from hw.attention import Attention, CacheKind
from hw.config import Config
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5)))
SCORE_FRACTIONS = list(range(-5, 33))
_HIGH = (1 << (PROJECTION_BITS - 1)) - 1


def _vector(rng, length, low):
    """int16 elements in ``[low, 32767]`` of a random magnitude, or at the extremes."""
    kind = int(rng.integers(0, 6))
    if kind == 0:
        return rng.integers(-1, 2, length)
    bits = int(rng.integers(1, PROJECTION_BITS)) if kind < 4 else PROJECTION_BITS - 1
    x = np.clip(rng.integers(-(1 << bits), 1 << bits, length), low, _HIGH)
    if kind == 4:
        x[rng.random(length) < 0.5] = rng.choice([low, _HIGH])
    if kind == 5:
        x[:] = rng.choice([low, _HIGH])
    return x


class AttentionTB(TB):
    """Writes the cache, sends queries and collects outputs; keeps golden's copy of the cache."""

    def __init__(self, dut, p):
        super().__init__(dut, seed=p["seed"])
        self.unit = Attention(Config.from_dict(p["config"]), **p["options"])
        self.layouts = {port: payload_layout(self.unit, port)
                        for port in ("kv_stream", "query", "o_stream")}
        o = p["options"]
        self.heads, self.kv_heads, self.head_dim = o["heads"], o["kv_heads"], o["head_dim"]
        self.per_pass = self.unit.heads_per_pass
        self.max_seq, self.layers = o["max_seq"], o["layers"]
        gap_field = self.layouts["query"]["softmax"].shape["gap_limit"].shape
        self.gap_limit_max = (1 << gap_field.width) - 1
        self.np_rng = np.random.default_rng(p["seed"])
        self.tables = build_tables()
        shape = (self.layers, self.max_seq, self.kv_heads, self.head_dim)
        self.cache = {kind: np.zeros(shape, np.int64) for kind in CacheKind}
        self.writes = StreamSource(dut, "kv_stream", rng=self.rng)
        self.queries = StreamSource(dut, "query", rng=self.rng)
        self.out = StreamSink(dut, "o_stream", rng=self.rng)

    async def write(self, rows):
        """Write random words at ``rows``, (layer, position, KV head, kind) each."""
        payloads = []
        for layer, position, head, kind in rows:
            word = _vector(self.np_rng, self.head_dim, -_HIGH - 1)
            self.cache[kind][layer, position, head] = word
            payloads.append(self.layouts["kv_stream"].const({
                "layer": layer, "position": position, "head": head, "kind": kind,
                "data": word.tolist()}).as_bits())
        await self.writes.send(payloads, self.cycle)

    def golden(self, layer, position, heads, q, softmax):
        """Golden's outputs for query heads ``heads`` (vectors ``q``, one a head) and what it
        computed on the way for them."""
        seen = {}
        formats = self.unit.formats

        def check(name, value):
            seen[name] = formats.check(name, value)
            return seen[name]

        queries = np.zeros((1, self.heads, self.head_dim), np.int64)
        queries[0, heads] = q
        rows = slice(0, position + 1)
        out = attention(queries, self.cache[CacheKind.KEY][layer, rows],
                        self.cache[CacheKind.VALUE][layer, rows], position, softmax,
                        self.tables, check)
        out = out[0].reshape(self.heads, self.head_dim)
        return (out[heads], seen["score_gap"][heads, 0], seen["probability"][heads, 0],
                seen["weight"][heads, 0])

    async def query(self, layer, position, pass_, q, softmax, rows=()):
        """Send pass ``pass_``'s query (its heads' vectors ``q``), then offer cache writes at
        ``rows`` while it runs (the unit holds them off until its reads are done); returns its
        outputs, a row a head, and the cycles from taken to offered."""
        await self.queries.send([self.layouts["query"].const({
            "layer": layer, "position": position, "head": pass_, "q": q.tolist(),
            "softmax": {"gap_limit": min(softmax.gap_limit, self.gap_limit_max),
                        "gap_shift": softmax.gap_shift,
                        "scale": {"mantissa": int(softmax.scale.mantissa),
                                  "exponent": int(softmax.scale.exponent)}}}).as_bits()],
            self.cycle)
        writer = cocotb.start_soon(self.write(rows))
        (beat,) = await self.out.receive(1, self.cycle, timeout=self.unit.cycles(position) + 50)
        await writer
        out = np.array([[int(v) for v in head]
                        for head in self.layouts["o_stream"].from_bits(beat)])
        return out, self.out.beat_cycles[-1] - self.queries.accepted_cycles[-1]


@cocotb.test()
async def attention_matches_golden(dut):
    p = params()
    tb = AttentionTB(dut, p)
    rng = tb.np_rng
    await tb.reset()
    await tb.write(itertools.product(range(tb.layers), range(tb.max_seq), range(tb.kv_heads),
                                     CacheKind))
    report = {"queries": 0, "clipped": 0, "cut_off": 0, "fine": 0, "uniform": 0, "peaks": 0,
              "saturated_limits": 0, "timed": 0, "cycles_at_last_position": None,
              "writes_during_queries": 0}
    kinds = ["random", "peak", "zero"]
    for knob, (idle, backpressure) in enumerate(FLOW_KNOBS):
        tb.writes.pause = tb.queries.pause = idle
        tb.out.backpressure = backpressure
        for n in range(p["tiles"]):
            layer = int(rng.integers(0, tb.layers))
            pass_ = int(rng.integers(0, tb.heads // tb.per_pass))
            heads = [pass_ * tb.per_pass + j for j in range(tb.per_pass)]
            position = [0, tb.max_seq - 1, int(rng.integers(0, tb.max_seq))][n % 3]
            kind = kinds[(n // 3 + knob) % 3]
            kv_head = heads[0] // (tb.heads // tb.kv_heads)
            if kind == "random":
                q = [_vector(rng, tb.head_dim, -_HIGH) for _ in heads]
            elif kind == "peak":
                q = [np.maximum(tb.cache[CacheKind.KEY][
                    layer, int(rng.integers(0, position + 1)), kv_head], -_HIGH) for _ in heads]
            else:
                q = [np.zeros(tb.head_dim, np.int64) for _ in heads]
            q = np.array(q)
            softmax = softmax_scale(tb.head_dim, int(rng.choice(SCORE_FRACTIONS)))
            want, gap, probability, weight = tb.golden(layer, position, heads, q, softmax)
            rows = []
            if n % 4 == 3:          # the sequencer writes new rows, offered during the query
                rows = [(int(rng.integers(0, tb.layers)), int(rng.integers(0, tb.max_seq)),
                         int(rng.integers(0, tb.kv_heads)), cache_kind)
                        for cache_kind in CacheKind for _ in range(2)]
            out, cycles = await tb.query(layer, position, pass_, q, softmax, rows)
            number = report["queries"]
            for j, head in enumerate(heads):
                bad = [d for d in range(tb.head_dim) if out[j, d] != want[j, d]]
                assert not bad, (
                    f"query {number} (layer {layer}, position {position}, head {head}, "
                    f"{kind}, {softmax}): out[{bad[0]}] = {out[j, bad[0]]}, golden "
                    f"{want[j, bad[0]]}; {len(bad)} differ; got {out[j].tolist()}, golden "
                    f"{want[j].tolist()}")
            report["queries"] += 1
            report["clipped"] += bool(np.any(gap > softmax.gap_limit))
            report["cut_off"] += bool(np.any(probability == 0))
            report["fine"] += any(len(set(w[w > 0].tolist())) >= 2 for w in weight)
            report["uniform"] += int(position > 0 and any(np.all(w == w[0]) for w in weight))
            report["peaks"] += kind == "peak"
            report["saturated_limits"] += softmax.gap_limit > tb.gap_limit_max
            if backpressure == 0:
                assert cycles == tb.unit.cycles(position), (
                    f"query {number} at position {position}: {cycles} cycles from "
                    f"taken to offered, not {tb.unit.cycles(position)}")
                report["timed"] += 1
                if position == tb.max_seq - 1:
                    report["cycles_at_last_position"] = cycles
            report["writes_during_queries"] += len(rows)
    write_report(report)
