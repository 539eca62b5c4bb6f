"""cocotb testbench of :class:`hw.bitlinear_block.BitLinearBlock` with a
:class:`hw.pim.PimBankGroup`, checked against ``golden.integer.norm_quantize`` (x_q and rho),
``golden.bitlinear.bitlinear_int`` (each matrix's accumulators) and ``golden.integer.rescale``
with each matrix's constant, the residual added where the matrix says, under the width checks
of ``golden.integer.integer_formats`` for the options' model shape.

The gain memory holds a random model's ``IntegerWeights`` norms in the first half of the flow
settings and random int16 gains (random fractions and ``eps_k``) in the second. Each operation
takes a random norm, a vector of its size (K, not a multiple of the banks' lanes: all zeros,
tiny, any width up to int32 with its extremes; the norm stage's testbench draws them), the
decoder's ``x_exponent`` for that norm or one over the field, and 1 to 3 random ternary
matrices of K columns and random ``n`` (every remainder modulo the banks, now and then a whole
row slot past ``n``), loaded at consecutive bases with gaps (``golden.trits.pack_words``, as
``hw.placement`` places them; padding rows random). Each matrix's constant is a random
dyadic scaled so that its results fill from a few bits to their whole width (int16 without a
residual, as q, k, v, gate and up; int32 with one, as o and down); about half the matrices add
a residual (random, garbage past ``n``). The last operation of each flow setting is a
``norm_only`` one (the LM head's norm): 1 to 3 random constants, no matrix.

Flow: random idle on the vector, gain, command and residual streams, back-pressure on the
results, and a ``hold`` that keeps x_q chunks from the bank group (as the device's offload
commands would), so that x_q is complete after the first factor is due as well as before. With
none of them, the cycles from an operation's command to its last beat must equal
:meth:`BitLinearBlock.cycles` (when no matrix but the last reads a row slot past its ``n``),
and the block must be idle two cycles after its last beat (when none does).

Every operation's ``x_q`` must reach the group as chunks ``0 .. words - 1``, equal to golden's.
A ``norm_only`` operation must give no result and stay busy until its last chunk has left and
its factors are taken; without idle or hold, its last chunk leaves
:meth:`NormStage.x_q_cycles` after its command (what the core's head stage counts on) and the
block is idle two cycles after its last factor is taken, each factor taken once offered and
``x_q`` has left.

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (operations per flow setting),
``options`` (``hidden``, ``ffn``, ``layers``, ``out_bits``, ``lanes``; ``hidden`` even, as
the norm stage's testbench needs).
"""

import cocotb
import numpy as np
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from cocotb.triggers import ReadOnly, RisingEdge

from golden import IntegerWeights, ModelWeights, integer_formats
from golden.bitlinear import bitlinear_int
from golden.fixedpoint import Dyadic, bit_length, dyadic, dyadic_mul
from golden.integer import PROJECTION_BITS, LinearScale, norm_quantize, rescale
from golden.model import norm_sizes
from hw.bitlinear_block import BitLinearBlock
from hw.config import Config
from hw.dyadic import EXPONENT_BITS
from hw.norm_stage import MATRICES, NormStage
from hw.pim import PimBankGroup
from sim.linear_stage_tb import weight_beats
from sim.norm_stage_tb import (draw_vector, draw_x_exponent, dyadic_fields, random_gains,
                               shape_model)
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

# (idle on the inputs, back-pressure on the results, hold on the chunks); real gains in the
# first half, random ones in the second.
FLOW_KNOBS = [(0.0, 0.0, 0.0), (0.0, 0.0, 0.8), (0.3, 0.5, 0.0), (0.3, 0.9, 0.5)]


class BitLinearBlockTop(wiring.Component):
    """A :class:`BitLinearBlock` on a :class:`PimBankGroup`, as a parent will connect them, with
    the group's weight port exposed for loading, ``hold``, which keeps chunks from the group
    while high, and ``chunk``, the chunk the group takes when ``chunk_taken``."""

    def __init__(self, config, **options):
        self._config = config
        self._block = BitLinearBlock(config, **options)
        members = self._block.signature.members
        super().__init__({
            "w_stream": In(stream.Signature(PimBankGroup.layouts(config)["w_stream"])),
            "hold": In(1),
            "chunk_taken": Out(1),
            "chunk": Out(PimBankGroup.layouts(config)["x_stream"]),
            **{name: members[name] for name in ("x_stream", "gain_stream", "cmd", "r_stream",
                                                "o_stream", "busy")},
        })

    @property
    def block(self):
        return self._block

    def elaborate(self, platform):
        m = Module()
        m.submodules.pim = pim = PimBankGroup(self._config)
        m.submodules.block = block = self._block
        wiring.connect(m, block.cmd_stream, pim.cmd_stream)
        wiring.connect(m, pim.o_stream, block.acc_stream)
        m.d.comb += [
            pim.x_stream.payload.eq(block.chunk_stream.payload),
            pim.x_stream.valid.eq(block.chunk_stream.valid & ~self.hold),
            block.chunk_stream.ready.eq(pim.x_stream.ready & ~self.hold),
            self.chunk_taken.eq(pim.x_stream.valid & pim.x_stream.ready),
            self.chunk.eq(block.chunk_stream.payload),
        ]
        wiring.connect(m, wiring.flipped(self.w_stream), pim.w_stream)
        for port in ("x_stream", "gain_stream", "cmd", "r_stream"):
            wiring.connect(m, wiring.flipped(getattr(self, port)), getattr(block, port))
        wiring.connect(m, block.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += self.busy.eq(block.busy)
        return m


def draw_constant(rng, acc, rho, out_bits):
    """A random dyadic constant, scaled so that the largest ``|acc * rho * constant|`` takes
    from a few bits to all of ``out_bits`` less one (the residual's room) when ``acc`` and
    ``rho`` are not zero."""
    constant = dyadic(np.int64(rng.integers(1, 1 << 40)), np.int64(rng.integers(-60, 0)))
    factor = dyadic_mul(rho, Dyadic(np.array([constant.mantissa]),
                                    np.array([constant.exponent])))
    peak = int(bit_length(int(np.abs(acc).max()) * int(factor.mantissa[0])))
    if not peak:
        return constant
    slack = int(rng.integers(0, 4)) if rng.random() < 0.7 else int(rng.integers(4, out_bits))
    shift = out_bits - 2 - slack - peak - int(factor.exponent[0])
    return Dyadic(constant.mantissa, constant.exponent + shift)


class BitLinearBlockTB(TB):
    def __init__(self, dut, p):
        super().__init__(dut, seed=p["seed"])
        self.config = config = Config.from_dict(p["config"])
        options = p["options"]
        top = BitLinearBlockTop(config, **options)
        self.block = top.block
        self.banks, self.pim_lanes, self.depth = config.pim.banks, config.pim.lanes, \
            config.pim.depth
        self.lanes, self.out_bits = self.block.lanes, options["out_bits"]
        self.layouts = {port: payload_layout(top, port) for port in
                        ("w_stream", "x_stream", "gain_stream", "cmd", "r_stream", "o_stream")}
        self.np_rng = np.random.default_rng(p["seed"])
        self.weights = StreamSource(dut, "w_stream", rng=self.rng)
        self.x = StreamSource(dut, "x_stream", rng=self.rng)
        self.gains = StreamSource(dut, "gain_stream", rng=self.rng)
        self.commands = StreamSource(dut, "cmd", rng=self.rng)
        self.residuals = StreamSource(dut, "r_stream", rng=self.rng)
        self.sink = StreamSink(dut, "o_stream", rng=self.rng)
        self.hold = 0.0
        dut.hold.value = 0
        self.chunks = []                    # (cycle, addr, data) of every chunk the group took
        cocotb.start_soon(self.drive_hold())
        cocotb.start_soon(self.watch_chunks())

    async def drive_hold(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.dut.hold.value = int(self.hold > 0 and self.rng.random() < self.hold)

    async def watch_chunks(self):
        layout = PimBankGroup.layouts(self.config)["x_stream"]
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            if self.dut.chunk_taken.value:
                chunk = layout.from_bits(int(self.dut.chunk.value))
                self.chunks.append((self.cycle(), int(chunk.addr),
                                    [int(chunk.data[i]) for i in range(self.pim_lanes)]))

    async def until_idle(self, limit):
        """The first cycle the block is idle, within ``limit`` cycles; no result may leave
        meanwhile (a ``norm_only`` operation's)."""
        for _ in range(limit):
            await ReadOnly()
            assert not self.dut.o_stream__valid.value, "a result of a norm_only operation"
            idle, cycle = not self.dut.busy.value, self.cycle()
            await RisingEdge(self.dut.clk)
            if idle:
                return cycle
        raise AssertionError(f"busy {limit} cycles after a norm_only operation's command")

    def check_chunks(self, x_q, first, where):
        """The chunks since ``self.chunks[first]`` are ``x_q``'s words, in order."""
        padded = np.zeros(-(-x_q.shape[1] // self.pim_lanes) * self.pim_lanes, np.int64)
        padded[:x_q.shape[1]] = x_q[0]
        want = [(i, word.tolist()) for i, word in enumerate(padded.reshape(-1, self.pim_lanes))]
        got = [(addr, data) for _, addr, data in self.chunks[first:]]
        assert got == want, f"{where}: x_q chunks {got}, golden {want}"

    def check_norm_only(self, x_q, count, idle_from, first, report, *, timed, where):
        """A ``norm_only`` operation of ``count`` factors, idle from cycle ``idle_from``: its
        chunks, busy until they have left, and its documented cycles when ``timed``."""
        self.check_chunks(x_q, first, where)
        last_chunk = self.chunks[-1][0]
        assert idle_from > last_chunk, (
            f"{where}: idle from cycle {idle_from}, x_q's last chunk in {last_chunk}")
        if not timed:
            return
        taken, lanes = self.commands.accepted_cycles[-1], self.pim_lanes
        words = len(self.chunks) - first
        assert last_chunk - taken == NormStage.x_q_cycles(words, lanes), (
            f"{where}: x_q's last chunk {last_chunk - taken} cycles after the command, "
            f"documented {NormStage.x_q_cycles(words, lanes)}")
        offered = taken + NormStage.factor_cycles(words, 0, lanes)
        for _ in range(count):
            took = max(offered, last_chunk + 1)         # once offered and x_q has left
            offered = took + NormStage.FACTOR_INTERVAL
        assert idle_from == took + 2, (
            f"{where}: idle from cycle {idle_from - taken} after the command, its last factor "
            f"taken in {took - taken}")
        report["norm_only_timed"] += 1

    def words(self, port, values, base=0):
        """``values`` padded with zeros to whole words, as ``port`` beats from word ``base``."""
        padded = np.concatenate([values, np.zeros(-len(values) % self.pim_lanes, np.int64)])
        return [self.layouts[port].const({"index": base + n, "data": word.tolist()}).as_bits()
                for n, word in enumerate(padded.reshape(-1, self.pim_lanes))]

    async def load_matrix(self, w_t, base):
        await self.weights.send(weight_beats(self.layouts["w_stream"], w_t, base, self.banks,
                                             self.pim_lanes, self.rng), self.cycle)

    def draw_matrices(self, words):
        """(n, base, slots) of 1 to 3 matrices of ``words`` a row that fit the banks."""
        rng = self.np_rng
        capacity = self.depth // words                  # row slots a bank holds for this K
        matrices, slot = [], 0
        for _ in range(int(rng.integers(1, MATRICES + 1))):
            free = capacity - slot
            if free < 1:
                break
            most = max(1, min(free, 6) // 2) if rng.random() < 0.7 else free
            n = int(rng.integers(1, most * self.banks + 1))
            slots = -(-n // self.banks)
            if slots < free and rng.random() < 0.25:
                slots += 1                              # a whole row slot past n
            matrices.append((n, slot * words, slots))
            slot += slots + (int(rng.integers(0, 2)) if slots < free else 0)
        return matrices

    def random_trits(self, rows, k):
        w_t = self.np_rng.integers(-1, 2, (rows, k)).astype(np.int8)
        w_t[self.np_rng.random((rows, k)) < self.np_rng.random() * 0.7] = 0
        return w_t


@cocotb.test()
async def bitlinear_block_matches_golden(dut):
    p = params()
    tb = BitLinearBlockTB(dut, p)
    options, rng, lanes = p["options"], tb.np_rng, tb.lanes
    model = shape_model(options["hidden"], options["ffn"], options["layers"])
    formats = integer_formats(model)
    check = formats.check
    prepared = IntegerWeights.from_weights(model, ModelWeights.random(model, seed=p["seed"]))
    sizes, bases = norm_sizes(model), tb.block.bases
    await tb.reset()
    report = {"operations": 0, "matrices": [0] * MATRICES, "residual_matrices": 0,
              "zero_vectors": 0, "beats": 0, "padded_slots": 0, "timed": [], "idle_timed": 0,
              "norm_only": 0, "norm_only_timed": 0}
    for setting, (idle, backpressure, hold) in enumerate(FLOW_KNOBS):
        for source in (tb.x, tb.gains, tb.commands, tb.residuals):
            source.pause = idle
        tb.sink.backpressure, tb.hold = backpressure, hold
        timed = not (idle or backpressure or hold)
        if setting in (0, len(FLOW_KNOBS) // 2):
            real = setting == 0
            gains = dict(prepared.norms) if real else random_gains(rng, sizes)
            await tb.gains.send([beat for name in sizes for beat in
                                 tb.words("gain_stream", gains[name].gain, bases[name])],
                                tb.cycle)
        for round_ in range(p["tiles"]):
            name = list(sizes)[int(rng.integers(0, len(sizes)))]
            norm, k = gains[name], sizes[name]
            words = -(-k // tb.pim_lanes)
            x = np.zeros(k, np.int64) if round_ == 1 else draw_vector(rng, k)
            x_exponent = draw_x_exponent(rng, name, prepared)
            x_q, rho = norm_quantize(x[None, :], x_exponent, norm, prepared.tables, check)

            norm_only = round_ == p["tiles"] - 1
            matrices = [] if norm_only else tb.draw_matrices(words)
            constants, placements, residual_beats, expected = [], [], [], []
            for number, (n, base, slots) in enumerate(matrices):
                w_t = tb.random_trits(slots * tb.banks, k)
                await tb.load_matrix(w_t, base)
                acc = bitlinear_int(x_q, w_t[:n])
                add = bool(rng.random() < 0.5)
                out = "residual" if add else "projection"
                constant = draw_constant(rng, acc, rho, tb.out_bits - 1 if add else
                                         min(tb.out_bits, PROJECTION_BITS))
                factor = dyadic_mul(rho, Dyadic(np.array([constant.mantissa]),
                                                np.array([constant.exponent])))
                assert abs(int(factor.exponent[0])) < 1 << (EXPONENT_BITS - 1)
                scaled = rescale(acc, rho, LinearScale(constant, 0), check, out)[0]
                beats = -(-n // lanes)
                if add:
                    room = 1 << (tb.out_bits - 2)
                    residual = rng.integers(-room, room, beats * lanes)    # garbage past n
                    residual[:n][rng.random(n) < 0.2] = 0
                    residual_beats += [tb.layouts["r_stream"].const(
                        [int(v) for v in residual[j * lanes:(j + 1) * lanes]]).as_bits()
                        for j in range(beats)]
                    scaled = check("residual", scaled + residual[:n])
                padded = np.zeros(beats * lanes, np.int64)
                padded[:n] = scaled
                expected += [(number, j * lanes, padded[j * lanes:(j + 1) * lanes].tolist())
                             for j in range(beats)]
                constants.append(constant)
                placements.append({"base": base, "rows": slots, "n": n,
                                   "add_residual": int(add)})
                report["residual_matrices"] += add
                report["padded_slots"] += slots > -(-n // tb.banks)
            if norm_only:
                count = int(rng.integers(1, MATRICES + 1))
                constants = [dyadic(np.int64(rng.integers(1, 1 << 40)),
                                    np.int64(rng.integers(-60, 0))) for _ in range(count)]
                placements = [{"base": 0, "rows": 0, "n": 0, "add_residual": 0}] * count
                report["norm_only"] += 1
            else:
                count = len(matrices)
                report["matrices"][count - 1] += 1
            padding = MATRICES - count
            command = tb.layouts["cmd"].const({
                "norm": {"words": words, "gain_base": bases[name], "x_exponent": x_exponent,
                         "fraction": norm.fraction, "eps_k": dyadic_fields(norm.eps_k),
                         "count": count,
                         "constants": [dyadic_fields(c) for c in constants]
                         + [dyadic_fields(Dyadic(0, 0))] * padding},
                "matrices": placements + [{"base": 0, "rows": 0, "n": 0,
                                           "add_residual": 0}] * padding,
                "norm_only": int(norm_only)}).as_bits()

            first_chunk = len(tb.chunks)
            await tb.x.send(tb.words("x_stream", x), tb.cycle)
            if norm_only:
                await tb.commands.send([command], tb.cycle)
                idle_from = await tb.until_idle(4000)
                tb.check_norm_only(x_q, count, idle_from, first_chunk, report, timed=not hold,
                                   where=f"setting {setting}, norm_only operation ({name})")
                report["operations"] += 1
                continue
            residual_sender = cocotb.start_soon(tb.residuals.send(residual_beats, tb.cycle))
            command_sender = cocotb.start_soon(tb.commands.send([command], tb.cycle))
            got = await tb.sink.receive(len(expected), tb.cycle, timeout=4000)
            await command_sender
            await residual_sender
            # The last GEMV may still read a row slot past n; then nothing more may come out,
            # and the block is idle.
            drain = 2 * words + PimBankGroup.latency_for(tb.config) + 8
            idle_from = None                # the cycle from which the block is idle
            for _ in range(drain):
                await ReadOnly()
                assert not dut.o_stream__valid.value, "a beat past the operation's matrices"
                if dut.busy.value:
                    idle_from = None
                elif idle_from is None:
                    idle_from = tb.cycle()
                await RisingEdge(dut.clk)
            assert idle_from is not None, "busy after the last beat and the last GEMV's reads"

            where = (f"setting {setting}, operation {round_} ({name}, x_exponent {x_exponent}, "
                     f"matrices {matrices})")
            tb.check_chunks(x_q, first_chunk, where)
            layout = tb.layouts["o_stream"]
            for number, (beat, want) in enumerate(zip(got, expected)):
                view = layout.from_bits(beat)
                values = [int(view.data[i]) for i in range(lanes)]
                assert (int(view.matrix), int(view.index), values) == want, (
                    f"{where}: beat {number} is matrix {int(view.matrix)}, index "
                    f"{int(view.index)}, {values}; golden {want}")
            # A row slot past n before the last matrix's holds its successor's start.
            padded_before = any(slots > -(-n // tb.banks) for n, _, slots in matrices[:-1])
            if timed and words * lanes >= tb.banks and not padded_before:
                cycles = tb.sink.beat_cycles[-1] - tb.commands.accepted_cycles[-1] + 1
                ns = [n for n, _, _ in matrices]
                formula = tb.block.cycles(words, ns)
                assert cycles == formula, f"{where}: {cycles} cycles, documented {formula}"
                report["timed"].append([words, ns, cycles])
                n, _, slots = matrices[-1]
                if slots == -(-n // tb.banks):
                    assert idle_from == tb.sink.beat_cycles[-1] + 2, (
                        f"{where}: idle from cycle {idle_from}, the last beat in "
                        f"{tb.sink.beat_cycles[-1]}")
                    report["idle_timed"] += 1
            report["operations"] += 1
            report["zero_vectors"] += int(rho.mantissa[0] == 0)
            report["beats"] += len(expected)
    write_report(report)
