"""cocotb testbench of :class:`hw.head.LmHead`, checked against the integer decoder's head:
``values = (x_q @ embedding.T) * row_scales`` and ``IntegerLogits.argmax`` (golden.integer),
and its embedding lookup against ``golden.integer.embed_values``.

Each round loads a random embedding and row scales (int8 in [-127, 127], 17-bit scales, some
rows all -127 or all +127) and scans random activations; then the winning row is copied to a
random other row, so that two rows tie, and the lowest index must win. Loads and the result
run under random idle and back-pressure.

Then the lookups: rows with extreme scales too (0, 1, the largest) are loaded, and random
tokens, 0 and ``vocab - 1`` among them, are looked up with shifts from -8 (left, the most a
model can need) to 31 (every product rounded to 0), back to back under idle and back-pressure,
while a scan is offered at the same time: the two must take turns, and both match golden.

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (rounds), ``options``
(``hidden``, ``vocab``, optional ``lanes`` and ``embed_lanes``).
"""

import cocotb
import numpy as np

from golden.integer import ACT_MAX, RESIDUAL_BITS, IntegerLogits, embed_values, head_values
from hw.config import Config
from hw.head import EMBED_SHIFT, LmHead
from hw.words import unpack_ints
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

SCALE_BITS = 17


class HeadTB(TB):
    """Loads the head's memories and runs scans."""

    def __init__(self, dut, config, options, seed):
        super().__init__(dut, seed=seed)
        unit = LmHead(config, **options)
        self.layouts = {port: payload_layout(unit, port)
                        for port in ("x_stream", "emb_stream", "scale_stream", "o_stream")}
        self.hidden, self.vocab = options["hidden"], options["vocab"]
        self.lanes = self.layouts["x_stream"]["data"].shape.length
        self.words = unit.words
        self.embed_lanes = unit.embed_lanes
        self.np_rng = np.random.default_rng(seed)
        self.x = StreamSource(dut, "x_stream", rng=self.rng)
        self.emb = StreamSource(dut, "emb_stream", rng=self.rng)
        self.scale = StreamSource(dut, "scale_stream", rng=self.rng)
        self.start = StreamSource(dut, "start", rng=self.rng)
        self.result = StreamSink(dut, "o_stream", rng=self.rng)
        self.embed_layout = payload_layout(unit, "embed")
        self.embed = StreamSource(dut, "embed", rng=self.rng)
        self.residual = StreamSink(dut, "residual", rng=self.rng)

    def _words(self, vector):
        """``vector`` zero-padded to whole words: one list of ``lanes`` ints a word."""
        padded = np.zeros(self.words * self.lanes, np.int64)
        padded[:len(vector)] = vector
        return padded.reshape(self.words, self.lanes).tolist()

    def _payload(self, port, **fields):
        return self.layouts[port].const(fields).as_bits()

    async def load_rows(self, embedding, scales, rows):
        await self.emb.send([self._payload("emb_stream", addr=v * self.words + w, data=word)
                             for v in rows for w, word in enumerate(self._words(embedding[v]))],
                            self.cycle)
        await self.scale.send([self._payload("scale_stream", addr=int(v), data=int(scales[v]))
                               for v in rows], self.cycle)

    async def scan(self, x_q):
        """Load ``x_q``, run a scan; returns (token, logit, cycles from start to result)."""
        await self.x.send([self._payload("x_stream", index=n, data=word)
                           for n, word in enumerate(self._words(x_q))], self.cycle)
        await self.start.send([0], self.cycle)
        started = self.start.accepted_cycles[-1]
        (beat,) = await self.result.receive(1, self.cycle,
                                            timeout=self.vocab * self.words + 200)
        result = self.layouts["o_stream"].from_bits(beat)
        return result.token, result.logit, self.result.beat_cycles[-1] - started

    async def lookups(self, tokens, shifts):
        """Look ``tokens`` up with ``shifts``; returns every residual element, in order."""
        sender = cocotb.start_soon(self.embed.send(
            [self.embed_layout.const({"token": int(t), "shift": int(n)}).as_bits()
             for t, n in zip(tokens, shifts)], self.cycle))
        beats = await self.residual.receive(len(tokens) * self.hidden // self.embed_lanes,
                                            self.cycle, timeout=self.vocab * self.words + 200)
        await sender
        return [int(v) for v in unpack_ints(beats, RESIDUAL_BITS, self.embed_lanes).ravel()]


def _expected(x_q, embedding, scales):
    values = head_values(x_q[None, :], embedding, scales)
    logits = IntegerLogits(values, None)
    token = int(logits.argmax()[0])
    return token, int(values[0, token])


@cocotb.test()
async def head_matches_golden(dut):
    p = params()
    config = Config.from_dict(p["config"])
    tb = HeadTB(dut, config, p["options"], p["seed"])
    rng = tb.np_rng
    await tb.reset()
    embedding = rng.integers(-ACT_MAX, ACT_MAX + 1, (tb.vocab, tb.hidden))
    embedding[rng.integers(0, tb.vocab)] = ACT_MAX
    embedding[rng.integers(0, tb.vocab)] = -ACT_MAX
    scales = rng.integers(1 << (SCALE_BITS - 1), 1 << SCALE_BITS, tb.vocab)
    await tb.load_rows(embedding, scales, range(tb.vocab))
    report = {"scans": 0, "ties": 0, "cycles_per_scan": None}
    for round_ in range(p["tiles"]):
        idle = (0.0, 0.3)[round_ % 2]
        tb.x.pause = tb.emb.pause = tb.scale.pause = idle
        tb.result.backpressure = (0.0, 0.5)[(round_ // 2) % 2]
        x_q = rng.integers(-ACT_MAX, ACT_MAX + 1, tb.hidden)
        if round_ % 5 == 4:
            x_q[:] = rng.choice([-ACT_MAX, ACT_MAX])
        for tie in (False, True):
            if tie:                 # the winner's twin elsewhere: the lower index must win
                winner = _expected(x_q, embedding, scales)[0]
                twin = int(rng.integers(0, tb.vocab - 1))
                twin += twin >= winner
                embedding[twin], scales[twin] = embedding[winner], scales[winner]
                await tb.load_rows(embedding, scales, [twin])
            token, logit, cycles = await tb.scan(x_q)
            expected = _expected(x_q, embedding, scales)
            assert (token, logit) == expected, (
                f"round {round_}{' (tie)' if tie else ''}: got token {token} logit {logit}, "
                f"golden token {expected[0]} logit {expected[1]}")
            report["scans"] += 1
            report["ties"] += tie
            if tb.result.backpressure == 0:
                report["cycles_per_scan"] = cycles
    await lookup_rounds(tb, p["tiles"], report)
    write_report(report)


def _lookup_shifts(rng, tokens, embedding, scales):
    """A shift per token from -8 to 31; a left shift is made smaller until the row's residual
    fits int32, as the model's residual fraction guarantees."""
    shifts = []
    for token in tokens:
        shift = int(rng.integers(-8, 1 << (EMBED_SHIFT.width - 1)))
        if rng.random() < 0.5:
            shift = int(rng.integers(-8, 4))
        while np.abs(embed_values([token], embedding, scales, shift)).max() >= \
                1 << (RESIDUAL_BITS - 1):
            shift += 1
        shifts.append(shift)
    return shifts


async def lookup_rounds(tb, rounds, report):
    """``rounds`` rounds of lookups (see the module's docstring), counted into ``report``."""
    rng = tb.np_rng
    embedding = rng.integers(-ACT_MAX, ACT_MAX + 1, (tb.vocab, tb.hidden))
    scales = rng.integers(0, 1 << SCALE_BITS, tb.vocab)
    extremes = rng.permutation(tb.vocab)[:6]
    embedding[extremes[:3]] = ACT_MAX
    embedding[extremes[3:]] = -ACT_MAX
    scales[extremes[::2]] = (1 << SCALE_BITS) - 1
    scales[extremes[1]], scales[extremes[3]] = 0, 1
    await tb.load_rows(embedding, scales, range(tb.vocab))
    report.update({"embeds": 0, "left_shifts": 0, "right_shifts": 0, "cycles_per_embed": None,
                   "scans_offered_with_embeds": 0})
    for round_ in range(rounds):
        tb.embed.pause = tb.x.pause = tb.start.pause = (0.0, 0.3)[round_ % 2]
        tb.residual.backpressure = tb.result.backpressure = (0.0, 0.5)[(round_ // 2) % 2]
        tokens = [int(t) for t in rng.integers(0, tb.vocab, 6)]
        tokens += [0, tb.vocab - 1, int(rng.choice(extremes))]
        shifts = _lookup_shifts(rng, tokens, embedding, scales)
        x_q = rng.integers(-ACT_MAX, ACT_MAX + 1, tb.hidden)
        scan = cocotb.start_soon(tb.scan(x_q)) if round_ % 2 else None
        got = await tb.lookups(tokens, shifts)
        want = [int(v) for token, shift in zip(tokens, shifts)
                for v in embed_values([token], embedding, scales, shift)[0]]
        bad = [n for n, (g, w) in enumerate(zip(got, want)) if g != w]
        assert not bad, (f"round {round_}, token {tokens[bad[0] // tb.hidden]} shift "
                         f"{shifts[bad[0] // tb.hidden]} element {bad[0] % tb.hidden}: got "
                         f"{got[bad[0]]}, golden {want[bad[0]]}; {len(bad)} differ")
        if scan is not None:
            token, logit, _ = await scan
            assert (token, logit) == _expected(x_q, embedding, scales), \
                f"round {round_}: the scan offered with lookups is wrong"
            report["scans_offered_with_embeds"] += 1
        report["embeds"] += len(tokens)
        report["left_shifts"] += sum(n < 0 for n in shifts)
        report["right_shifts"] += sum(n > 0 for n in shifts)
        if round_ == 0:
            report["cycles_per_embed"] = (
                tb.residual.beat_cycles[tb.hidden // tb.embed_lanes - 1]
                - tb.embed.accepted_cycles[0])
