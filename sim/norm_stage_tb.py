"""cocotb testbench of :class:`hw.norm_stage.NormStage`, checked against
``golden.integer.norm_quantize`` (x_q and rho) and ``golden.fixedpoint.dyadic_mul`` (the factors
``rho * constant`` of ``golden.integer.rescale``), with the width checks of
``golden.integer.integer_formats`` for the options' model shape.

The gain memory is loaded with every norm of a random model's ``IntegerWeights`` for the first
half of the flow settings, and with random int16 gains (random fractions and ``eps_k``) for the
second. Each operation takes a random norm, a vector of its size (all zeros, tiny, any width up
to int32 with its extremes), an ``x_exponent`` as the decoder makes it for that norm or drawn
over its range (now and then the field's extremes), and the constants of the matrices the norm
feeds or 1 to 3 random dyadics. Every x_q word and every factor is compared; x_q and factors
are taken under back-pressure in half the settings, and without it every operation's cycles
from its command to its last output must equal :meth:`NormStage.cycles`, and the stage must
take its next command two cycles after that output. ``factor_due`` is watched every cycle:
each factor must be offered at most ``first_lead`` (an operation's first) or
``FACTOR_INTERVAL - 1`` (the others) cycles after it first rose for that factor, and it must be
low whenever no factor is to come (between operations).

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (operations per flow setting),
``options`` (``hidden``, ``ffn``, ``layers``, ``lanes``, optional ``first_lead``; ``hidden``
even: the test model has one or two heads of an even size).
"""

import itertools

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from golden import IntegerWeights, ModelConfig, ModelWeights, integer_formats
from golden.fixedpoint import Dyadic, dyadic, dyadic_mul
from golden.integer import GAIN_BITS, WEIGHT_FRACTION_BITS, NormGain, norm_quantize
from golden.model import input_groups, norm_sizes
from hw.config import Config
from hw.dyadic import EXPONENT_BITS
from hw.norm_stage import MATRICES, X_EXPONENT_BITS, NormStage
from hw.words import unpack_ints
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

# (idle before x, gain and command beats; back-pressure on x_q and factors), real gains in the
# first two settings, random ones in the last two.
FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5)))


def shape_model(hidden, ffn, layers):
    """A model of the stage's shape; heads, vocabulary and max_seq do not reach the norms."""
    return ModelConfig(hidden=hidden, layers=layers, heads=2 if hidden % 4 == 0 else 1,
                       kv_heads=1, ffn=ffn, vocab=32, max_seq=16)


def random_dyadic(rng, low, high):
    return dyadic(np.int64(rng.integers(1, 1 << 40)), np.int64(rng.integers(low, high)))


def random_gains(rng, sizes):
    gains = {}
    for name, size in sizes.items():
        limit = 1 << (GAIN_BITS - 1)
        gain = rng.integers(-limit, limit, size)
        gain[rng.random(size) < 0.05] = -limit
        gains[name] = NormGain(gain, int(rng.integers(-8, 40)), random_dyadic(rng, -60, 10))
    return gains


def draw_vector(rng, length):
    """All zeros, tiny, any width up to int32, or int32 with its extremes."""
    kind = rng.integers(0, 8)
    if kind == 0:
        return np.zeros(length, np.int64)
    bits = (int(rng.integers(1, 5)) if kind == 1 else
            int(rng.integers(1, 32)) if kind < 6 else 31)
    x = rng.integers(-(1 << bits), 1 << bits, length)
    if kind >= 6:
        x[rng.integers(0, length, 2)] = (-(1 << 31), (1 << 31) - 1)
    return x


class NormStageTB(TB):
    def __init__(self, dut, p):
        super().__init__(dut, seed=p["seed"])
        options = p["options"]
        self.unit = NormStage(Config.from_dict(p["config"]), **options)
        self.lanes = options["lanes"]
        self.layouts = {port: payload_layout(self.unit, port)
                        for port in ("cmd", "x_stream", "gain_stream", "factors")}
        self.np_rng = np.random.default_rng(p["seed"])
        self.x = StreamSource(dut, "x_stream", rng=self.rng)
        self.gains = StreamSource(dut, "gain_stream", rng=self.rng)
        self.commands = StreamSource(dut, "cmd", rng=self.rng)
        self.x_q = StreamSink(dut, "o_stream", rng=self.rng)
        self.factors = StreamSink(dut, "factors", rng=self.rng)
        self.due_since = None       # the first cycle factor_due is high for the next factor
        self.due_leads = []         # for each factor, the cycles from then to it offered
        cocotb.start_soon(self.watch_factor_due())

    async def watch_factor_due(self):
        dut, offered = self.dut, False
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if dut.factor_due.value and self.due_since is None:
                self.due_since = self.cycle()
            if dut.factors__valid.value and not offered:
                assert self.due_since is not None, (
                    f"a factor offered in cycle {self.cycle()} with factor_due low")
                self.due_leads.append(self.cycle() - self.due_since)
                offered = True
            if dut.factors__valid.value and dut.factors__ready.value:
                self.due_since, offered = None, False

    def beats(self, port, values, base=0):
        """``values`` padded with zeros to whole words, as ``port`` beats from word ``base``."""
        padded = np.concatenate([values, np.zeros(-len(values) % self.lanes, np.int64)])
        return [self.layouts[port].const({"index": base + n, "data": word.tolist()}).as_bits()
                for n, word in enumerate(padded.reshape(-1, self.lanes))]


def draw_x_exponent(rng, name, prepared):
    """The ``x_exponent`` of norm ``name`` as the decoder makes it (``prepared``: its
    ``IntegerWeights``) half the time, else one over the field (its extremes now and then)."""
    if rng.random() < 0.5:
        if name.endswith("attn_sub_norm"):
            v_proj = name.replace("attn_sub_norm", "v_proj")
            return -(WEIGHT_FRACTION_BITS + prepared.linears[v_proj].out_fraction)
        if name.endswith("ffn_sub_norm"):
            mlp = name.replace("ffn_sub_norm", "")
            return (int(rng.integers(0, 17)) - 2 * prepared.linears[mlp + "gate_proj"].out_fraction
                    - prepared.linears[mlp + "up_proj"].out_fraction)
        return -prepared.residual_fraction
    if rng.random() < 0.1:
        limit = 1 << (X_EXPONENT_BITS - 1)
        return int(rng.choice([-limit, limit - 1]))
    return int(rng.integers(-120, 17))


def dyadic_fields(value):
    return {"mantissa": int(value.mantissa), "exponent": int(value.exponent)}


@cocotb.test()
async def norm_stage_matches_golden(dut):
    p = params()
    tb = NormStageTB(dut, p)
    options, rng = p["options"], tb.np_rng
    model = shape_model(options["hidden"], options["ffn"], options["layers"])
    formats = integer_formats(model)
    prepared = IntegerWeights.from_weights(model, ModelWeights.random(model, seed=p["seed"]))
    sizes, bases = norm_sizes(model), tb.unit.bases
    # The matrices each norm feeds (norm_sizes and input_groups share their per-layer order),
    # and the head's scale after the final norm.
    constants = {name: [prepared.linears[m].constant for m in group]
                 for name, group in zip(list(sizes)[:-1], input_groups(model))}
    constants["norm"] = [prepared.head_scale]
    await tb.reset()
    report = {"operations": 0, "zero_vectors": 0, "x_q_words": 0, "factors": 0, "timed": []}
    first_leads, later_leads = set(), set()
    for setting, (idle, backpressure) in enumerate(FLOW_KNOBS):
        for source in (tb.x, tb.gains, tb.commands):
            source.pause = idle
        tb.x_q.backpressure = tb.factors.backpressure = backpressure
        real = setting < len(FLOW_KNOBS) // 2
        if setting in (0, len(FLOW_KNOBS) // 2):
            gains = dict(prepared.norms) if real else random_gains(rng, sizes)
            await tb.gains.send([beat for name in sizes for beat in
                                 tb.beats("gain_stream", gains[name].gain, bases[name])],
                                tb.cycle)
        for round_ in range(p["tiles"]):
            name = list(sizes)[int(rng.integers(0, len(sizes)))]
            norm, size = gains[name], sizes[name]
            x = np.zeros(size, np.int64) if round_ == 1 else draw_vector(rng, size)
            x_exponent = draw_x_exponent(rng, name, prepared)
            matrices = (constants[name] if real and rng.random() < 0.5 else
                        [random_dyadic(rng, -60, 20)
                         for _ in range(int(rng.integers(1, MATRICES + 1)))])
            count = len(matrices)
            words = -(-size // tb.lanes)

            check = formats.check
            x_q, rho = norm_quantize(x[None, :], x_exponent, norm, prepared.tables, check)
            factors = [dyadic_mul(rho, Dyadic(np.array([c.mantissa]), np.array([c.exponent])))
                       for c in matrices]
            assert all(abs(int(f.exponent[0])) < 1 << (EXPONENT_BITS - 1) for f in factors)

            await tb.x.send(tb.beats("x_stream", x), tb.cycle)
            x_q_task = cocotb.start_soon(tb.x_q.receive(words, tb.cycle, timeout=words * 4 + 300))
            factor_task = cocotb.start_soon(tb.factors.receive(count, tb.cycle,
                                                               timeout=words * 4 + 300))
            padded = matrices + [Dyadic(0, 0)] * (MATRICES - count)
            assert tb.due_since is None, (
                f"factor_due high from cycle {tb.due_since} between operations")
            await tb.commands.send([tb.layouts["cmd"].const({
                "words": words, "gain_base": bases[name], "x_exponent": x_exponent,
                "fraction": norm.fraction, "eps_k": dyadic_fields(norm.eps_k), "count": count,
                "constants": [dyadic_fields(c) for c in padded]}).as_bits()], tb.cycle)
            beats, factor_beats = await x_q_task, await factor_task
            where = f"setting {setting}, operation {round_} ({name}, x_exponent {x_exponent})"

            got = unpack_ints(beats, 8, tb.lanes).reshape(-1)[:size]
            bad = np.flatnonzero(got != x_q[0])
            assert not bad.size, (f"{where}: x_q[{bad[0]}] = {got[bad[0]]}, golden "
                                  f"{x_q[0][bad[0]]}; {bad.size} differ")
            for m, (beat, want) in enumerate(zip(factor_beats, factors)):
                result = tb.layouts["factors"].from_bits(beat)
                got_factor = (result.mantissa, result.exponent)
                want_factor = (int(want.mantissa[0]), int(want.exponent[0]))
                assert got_factor == want_factor, (
                    f"{where}: factor {m} {got_factor}, golden {want_factor} (rho "
                    f"{(int(rho.mantissa[0]), int(rho.exponent[0]))})")

            if not backpressure:
                taken = tb.commands.accepted_cycles[-1]
                last = max(tb.x_q.beat_cycles[-1], tb.factors.beat_cycles[-1])
                assert last - taken == NormStage.cycles(words, count, tb.lanes), (
                    f"{where}: {last - taken} cycles from command to last output, documented "
                    f"{NormStage.cycles(words, count, tb.lanes)}")
                # Ready for the next command two cycles after the last output.
                for cycle in (last + 1, last + 2):
                    while tb.cycle() < cycle:
                        await RisingEdge(dut.clk)
                    await ReadOnly()
                    assert bool(dut.cmd__ready.value) == (cycle == last + 2), (
                        f"{where}: cmd ready {dut.cmd__ready.value} {cycle - last} cycles after "
                        f"the last output")
                await RisingEdge(dut.clk)
                if [words, count, last - taken] not in report["timed"]:
                    report["timed"].append([words, count, last - taken])
            leads = tb.due_leads[-count:]
            most = [tb.unit.first_lead] + [NormStage.FACTOR_INTERVAL - 1] * (count - 1)
            assert len(tb.due_leads) == report["factors"] + count and all(
                lead <= bound for lead, bound in zip(leads, most)), (
                f"{where}: factors offered {leads} cycles after factor_due rose for them, at "
                f"most {most} documented")
            first_leads.add(leads[0])
            later_leads.update(leads[1:])
            report["operations"] += 1
            report["zero_vectors"] += int(rho.mantissa[0] == 0)
            report["x_q_words"] += words
            report["factors"] += count
    report["first_leads"], report["later_leads"] = sorted(first_leads), sorted(later_leads)
    write_report(report)
