"""cocotb testbench of :class:`hw.resident_core.ResidentCore` on a :class:`hw.pim.PimBankGroup`:
a random model loaded once (trits into the banks, gains, embedding, row scales, RoPE steps and
the constants memory), then prompts prefilled (their starts offered back to back, as GENERATE
offers them, so that the core takes each ahead) and decoded greedily, every
generated token and its integer logit against ``golden.integer.IntegerModel`` (``forward`` at
each position: the token is the arg max of its logits, the logit its value).

Each sequence starts at position 0, so it overwrites the cache of the one before: the core
keeps no state between sequences but the cache, and attention reads only positions up to the
token's own. Flow: random idle on the token and load streams and back-pressure on the results
in the later sequences; the first runs without either, and its prompt and each decoded token
take the cycles of the core's model (``ResidentCore.prompt_cycles``, ``token_cycles``).

Parameters (``BITTERN_PARAMS``): ``config`` (with resident units: the model has
``config.resident``'s shape), ``seed``, ``tiles`` (sequences); optionally ``prompt`` and
``generate``, every sequence's prompt length and tokens to generate (a benchmark's fixed
shape). The report has the cycles of each timed prompt (from its first token's start to the
greedy token after it) and of each decoded token.
"""

import dataclasses

import cocotb
import numpy as np
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In

from golden import IntegerModel, ModelWeights
from golden.model import ModelConfig, norm_sizes
from hw.config import Config
from hw.pim import PimBankGroup
from hw.resident_core import ResidentCore
from sim.linear_stage_tb import weight_beats
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

# (idle on the token and load streams, back-pressure on the greedy tokens)
FLOW_KNOBS = [(0.0, 0.0), (0.3, 0.5), (0.6, 0.9)]
TIMEOUT = 20_000       # cycles a token may take


def shape_model(resident):
    """A model of the resident units' shape."""
    return ModelConfig(**dataclasses.asdict(resident), rope_theta=10000.0)


class ResidentCoreTop(wiring.Component):
    """A :class:`ResidentCore` on its own :class:`PimBankGroup`, the group's weight port
    exposed for loading."""

    def __init__(self, config):
        self._config = config
        self._core = ResidentCore(config)
        members = self._core.signature.members
        super().__init__({
            "w_stream": In(stream.Signature(PimBankGroup.layouts(config)["w_stream"])),
            **{name: members[name] for name in (
                "gain_stream", "emb_stream", "scale_stream", "step_stream", "const_stream",
                "start", "o_stream", "busy")},
        })

    @property
    def core(self):
        return self._core

    def elaborate(self, platform):
        m = Module()
        m.submodules.pim = pim = PimBankGroup(self._config)
        m.submodules.core = core = self._core
        wiring.connect(m, core.chunk_stream, pim.x_stream)
        wiring.connect(m, core.cmd_stream, pim.cmd_stream)
        wiring.connect(m, pim.o_stream, core.acc_stream)
        wiring.connect(m, wiring.flipped(self.w_stream), pim.w_stream)
        for port in ("gain_stream", "emb_stream", "scale_stream", "step_stream", "const_stream",
                     "start"):
            wiring.connect(m, wiring.flipped(getattr(self, port)), getattr(core, port))
        wiring.connect(m, core.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += self.busy.eq(core.busy)
        return m


class ResidentCoreTB(TB):
    def __init__(self, dut, p):
        super().__init__(dut, seed=p["seed"])
        self.config = config = Config.from_dict(p["config"])
        top = ResidentCoreTop(config)
        self.core = top.core
        self.lanes = config.pim.lanes
        self.layouts = {port: payload_layout(top, port) for port in (
            "w_stream", "gain_stream", "emb_stream", "scale_stream", "step_stream",
            "const_stream", "start", "o_stream")}
        self.sources = {port: StreamSource(dut, port, rng=self.rng) for port in (
            "w_stream", "gain_stream", "emb_stream", "scale_stream", "step_stream",
            "const_stream", "start")}
        self.sink = StreamSink(dut, "o_stream", rng=self.rng)

    def beat(self, port, **fields):
        return self.layouts[port].const(fields).as_bits()

    def words(self, values):
        """``values`` zero-padded to whole words of ``lanes`` ints."""
        padded = np.zeros(-(-len(values) // self.lanes) * self.lanes, np.int64)
        padded[:len(values)] = values
        return padded.reshape(-1, self.lanes).tolist()

    async def load(self, model, weights, prepared):
        """Every resident tensor, each port's beats in a random order."""
        banks = self.config.pim.banks
        beats = {port: [] for port in self.sources if port != "start"}
        for name, placement in self.core.placements.items():
            trits = np.zeros((placement.rows * banks, placement.k), np.int8)
            trits[:placement.n] = weights.linears[name].trits
            beats["w_stream"] += weight_beats(self.layouts["w_stream"], trits, placement.base,
                                              banks, self.lanes, self.rng)
        for name in norm_sizes(model):
            beats["gain_stream"] += [
                self.beat("gain_stream", index=self.core.bases[name] + i, data=word)
                for i, word in enumerate(self.words(prepared.norms[name].gain))]
        head_lanes = self.core.head_lanes
        words = model.hidden // head_lanes
        for v in range(model.vocab):
            beats["emb_stream"] += [
                self.beat("emb_stream", addr=v * words + i, data=word) for i, word in
                enumerate(prepared.embedding[v].reshape(words, head_lanes).tolist())]
            beats["scale_stream"].append(self.beat("scale_stream", addr=v,
                                                   data=int(prepared.row_scales[v])))
        beats["step_stream"] = [self.beat("step_stream", addr=i, data=int(step))
                                for i, step in enumerate(prepared.rope_steps)]
        layout = self.layouts["const_stream"]
        beats["const_stream"] = [self.beat("const_stream", addr=i)
                                 | record.as_bits() << layout["data"].offset
                                 for i, record in enumerate(self.core.constant_records(prepared))]
        for port, port_beats in beats.items():
            self.rng.shuffle(port_beats)
            await self.sources[port].send(port_beats, self.cycle)

    async def run(self, tokens, first=0):
        """Offer starts for ``tokens`` at positions ``first``, ``first + 1``, ... back to back,
        ``last`` on the final one, as GENERATE does (the core takes a prompt's tokens ahead,
        while the token before runs its last layer, or once idle): the cycles from the first
        start taken to the greedy token offered, that token and its logit."""
        start = self.sources["start"]
        taken = len(start.accepted_cycles)
        sending = cocotb.start_soon(start.send(
            [self.beat("start", token=int(token), position=first + n,
                       last=int(n + 1 == len(tokens)))
             for n, token in enumerate(tokens)], self.cycle))
        (word,) = await self.sink.receive(1, self.cycle, timeout=TIMEOUT)
        await sending
        result = self.layouts["o_stream"].from_bits(word)
        return (self.sink.beat_cycles[-1] - start.accepted_cycles[taken], int(result.token),
                int(result.logit))

    def check_prompt_cycles(self, cycles, length, timed):
        """Without idle or back-pressure, a prompt takes the cycles the core's model says
        (:meth:`ResidentCore.prompt_cycles`)."""
        if timed:
            want = self.core.prompt_cycles(length)
            assert cycles == want, (f"a prompt of {length} tokens took {cycles} cycles, the "
                                    f"model says {want}")

    def check_cycles(self, cycles, position, timed):
        """Without idle or back-pressure, a decoded token takes the cycles the core's model
        says (:meth:`ResidentCore.token_cycles`)."""
        if timed:
            want = self.core.token_cycles(position, True)
            assert cycles == want, (f"token at {position} took {cycles} cycles, the model "
                                    f"says {want}: {self.core.stage_cycles(position, True)}")


@cocotb.test()
async def resident_core_matches_golden(dut):
    p = params()
    tb = ResidentCoreTB(dut, p)
    model = shape_model(tb.config.resident)
    weights = ModelWeights.random(model, seed=p["seed"])
    golden = IntegerModel(model, weights)
    prepared = golden.prepared
    rng = np.random.default_rng(p["seed"])
    await tb.reset()
    await tb.load(model, weights, prepared)
    dut._log.info(f"loaded at cycle {tb.cycle()}")
    report = {"sequences": 0, "tokens": 0, "generated": 0, "decode_cycles": [],
              "prefill_cycles": [], "positions": []}
    for sequence in range(p["tiles"]):
        idle, backpressure = FLOW_KNOBS[min(sequence, len(FLOW_KNOBS) - 1)]
        for source in tb.sources.values():
            source.pause = idle
        tb.sink.backpressure = backpressure
        timed = not (idle or backpressure)
        if "prompt" in p:
            prompt_length, total = p["prompt"], p["prompt"] + p["generate"] - 1
        else:
            # The timed prompt has a token taken ahead (two or more), where max_seq allows.
            shortest = 2 if timed and model.max_seq > 3 else 1
            total = (model.max_seq if sequence == 1
                     else int(rng.integers(shortest + 1, model.max_seq)))
            prompt_length = int(rng.integers(shortest, total))
        prompt = rng.integers(0, model.vocab, prompt_length)
        golden.reset()
        logits = golden.forward(prompt, 0)
        cycles, got, logit = await tb.run(prompt)
        tb.check_prompt_cycles(cycles, len(prompt), timed)
        if timed:
            report["prefill_cycles"].append([len(prompt), cycles])
        tokens, position = list(prompt), len(prompt) - 1
        while True:
            expected = int(logits.argmax()[-1])
            assert (got, logit) == (expected, int(logits.values[-1, expected])), \
                f"sequence {sequence} position {position}: token {got} logit {logit}, " \
                f"golden token {expected} logit {int(logits.values[-1, expected])}"
            report["generated"] += 1
            dut._log.info(f"position {position}: token {got} after {cycles} cycles")
            position += 1
            tokens.append(got)
            if position == total:
                break
            logits = golden.forward([got], position)
            cycles, got, logit = await tb.run([got], position)
            tb.check_cycles(cycles, position, timed)
            if timed:
                report["decode_cycles"].append([position, cycles])
        report["sequences"] += 1
        report["tokens"] += position
        report["positions"].append(position)
    write_report(report)
