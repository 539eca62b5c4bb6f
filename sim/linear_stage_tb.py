"""cocotb testbench of :class:`hw.linear_stage.LinearStage` with a :class:`hw.pim.PimBankGroup`,
checked against golden's integer core (``golden.bitlinear.bitlinear_int``), then
``golden.integer.rescale`` and the residual add.

Each batch loads one ``x_q`` (int8 with its extremes) and two or three random ternary matrices
of that K at different bases (placed as ``hw.placement`` places them: row ``r`` in bank
``r % banks`` at slot ``r // banks``; the rows past ``n`` up to the last slot hold random trits
too, so that a padding result that is not dropped shows), then runs one start a matrix back to
back, each with its factor drawn so that the results fill ``out_bits`` (as the epilogue's
testbench draws them) and sent on ``factors`` beside the starts (under idle, often after its
start: the results wait for it), and half of them with a residual (random elements in range; the lanes
past ``n`` in a residual beat are garbage, which must be ignored). Shapes: ``n`` of every
remainder modulo ``banks`` and ``lanes``, K of any length up to ``max_k`` (one batch a flow
setting has K = max_k), and now and then a GEMV with a whole row slot past ``n``. Everything
runs under random idle (starts, factors and residuals) and back-pressure (results); with
neither, every
start that keeps up with the banks is timed against :meth:`LinearStage.cycles`.

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (batches per flow setting),
``options`` (``out_bits``, ``lanes``).
"""

import itertools

import cocotb
import numpy as np
from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In
from cocotb.triggers import ReadOnly, RisingEdge

from golden import trits
from golden.bitlinear import bitlinear_int
from golden.fixedpoint import Dyadic
from golden.integer import PROJECTION_BITS, LinearScale, rescale
from hw.config import Config
from hw.linear_stage import LinearStage
from hw.pim import PimBankGroup
from sim.epilogue_tb import draw_factor
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

FLOW_KNOBS = list(itertools.product((0.0, 0.3), (0.0, 0.5, 0.9)))



def weight_beats(layout, w_t, base, banks, lanes, rng):
    """Write beats (``layout``: the bank group's ``w_stream``) of trits ``w_t`` (slots x banks
    rows, K) at ``base``, shuffled: row ``r`` in bank ``r % banks``, slot ``r // banks``,
    ``ceil(K / lanes)`` words a row, by ``golden.trits.pack_words``."""
    beats = []
    for bank in range(banks):
        for slot, row in enumerate(trits.pack_words(w_t[bank::banks], lanes)):
            beats += [(bank, base + slot * len(row) + i, int(word)) for i, word in enumerate(row)]
    rng.shuffle(beats)
    return [layout.const({"bank": b, "addr": a, "data": d}).as_bits() for b, a, d in beats]


class LinearStageTop(wiring.Component):
    """A :class:`LinearStage` driving a :class:`PimBankGroup`, as a parent will connect them,
    with the group's weight and chunk ports exposed for loading."""

    def __init__(self, config, *, out_bits=PROJECTION_BITS, lanes=4):
        self._config = config
        self._stage = LinearStage(config, out_bits=out_bits, lanes=lanes)
        layouts = PimBankGroup.layouts(config)
        members = self._stage.signature.members
        super().__init__({
            "w_stream": In(stream.Signature(layouts["w_stream"])),
            "x_stream": In(stream.Signature(layouts["x_stream"])),
            **{name: members[name] for name in ("start", "factors", "r_stream", "o_stream",
                                                 "busy")},
        })

    @property
    def stage(self):
        return self._stage

    def elaborate(self, platform):
        m = Module()
        m.submodules.pim = pim = PimBankGroup(self._config)
        m.submodules.stage = stage = self._stage
        wiring.connect(m, stage.cmd_stream, pim.cmd_stream)
        wiring.connect(m, pim.o_stream, stage.acc_stream)
        wiring.connect(m, wiring.flipped(self.w_stream), pim.w_stream)
        wiring.connect(m, wiring.flipped(self.x_stream), pim.x_stream)
        wiring.connect(m, wiring.flipped(self.start), stage.start)
        wiring.connect(m, wiring.flipped(self.factors), stage.factors)
        wiring.connect(m, wiring.flipped(self.r_stream), stage.r_stream)
        wiring.connect(m, stage.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += self.busy.eq(stage.busy)
        return m


def _no_check(name, value):
    return value


class LinearStageTB(TB):
    """Loads matrices and x_q into the bank group, starts BitLinears, checks every beat."""

    def __init__(self, dut, p):
        super().__init__(dut, seed=p["seed"])
        self.config = config = Config.from_dict(p["config"])
        top = LinearStageTop(config, **p["options"])
        self.stage = top.stage
        self.banks, self.pim_lanes, self.depth = config.pim.banks, config.pim.lanes, \
            config.pim.depth
        self.lanes, self.out_bits = self.stage.lanes, p["options"]["out_bits"]
        self.layouts = {port: payload_layout(top, port)
                        for port in ("w_stream", "x_stream", "start", "factors", "r_stream",
                                     "o_stream")}
        self.np_rng = np.random.default_rng(p["seed"])
        self.weights = StreamSource(dut, "w_stream", rng=self.rng)
        self.chunks = StreamSource(dut, "x_stream", rng=self.rng)
        self.starts = StreamSource(dut, "start", rng=self.rng)
        self.factors = StreamSource(dut, "factors", rng=self.rng)
        self.residuals = StreamSource(dut, "r_stream", rng=self.rng)
        self.sink = StreamSink(dut, "o_stream", rng=self.rng)
        self.report = {"starts": 0, "residual_starts": 0, "beats": 0, "elements": 0,
                       "padded_slots": 0, "max_k_starts": 0, "timed": 0, "late_factors": 0,
                       "back_to_back": 0, "cycles": []}

    async def load_x(self, x_q):
        """Chunks 0, 1, ... of ``x_q``, the last zero-padded."""
        chunks = np.pad(x_q, (0, -len(x_q) % self.pim_lanes)).reshape(-1, self.pim_lanes)
        await self.chunks.send([self.layouts["x_stream"].const(
            {"addr": a, "data": [int(v) for v in chunk]}).as_bits()
            for a, chunk in enumerate(chunks)], self.cycle)

    async def load_matrix(self, w_t, base):
        await self.weights.send(weight_beats(self.layouts["w_stream"], w_t, base, self.banks,
                                             self.pim_lanes, self.rng), self.cycle)

    def random_x(self, k):
        x = self.np_rng.integers(-128, 128, k).astype(np.int8)
        x[self.np_rng.random(k) < 0.1] = -128
        x[self.np_rng.random(k) < 0.1] = 127
        return x

    def random_trits(self, rows, k):
        w_t = self.np_rng.integers(-1, 2, (rows, k)).astype(np.int8)
        w_t[self.np_rng.random((rows, k)) < self.np_rng.random() * 0.7] = 0
        return w_t

    def draw_batch(self, max_k):
        """K, and the (n, base, slots) of two or three matrices that fit the banks."""
        rng = self.np_rng
        longest = self.config.max_k if rng.random() < 0.3 else 8 * self.pim_lanes
        k = self.config.max_k if max_k else int(rng.integers(1, longest + 1))
        words_per_row = -(-k // self.pim_lanes)
        capacity = self.depth // words_per_row          # row slots a bank holds for this K
        matrices, base = [], 0
        for _ in range(int(rng.integers(2, 4))):
            free = capacity - base // words_per_row
            if free < 1:
                break
            most = min(free, 24 if rng.random() < 0.5 else 4)   # row slots: long runs, stalls
            n = int(rng.integers(1, most * self.banks + 1))
            slots = -(-n // self.banks)
            if slots < free and rng.random() < 0.25:
                slots += 1                              # a whole row slot past n
            matrices.append((n, base, slots))
            gap = int(rng.integers(0, 2)) if slots < free else 0
            base += (slots + gap) * words_per_row
        return k, words_per_row, matrices

    def start_payload(self, base, slots, words_per_row, n, add):
        return self.layouts["start"].const({
            "base": base, "rows": slots, "words_per_row": words_per_row, "n": n,
            "add_residual": int(add)}).as_bits()

    def factor_payload(self, factor):
        return self.layouts["factors"].const({"mantissa": int(factor.mantissa),
                                              "exponent": int(factor.exponent)}).as_bits()

    async def batch(self, max_k, timed):
        """Load one batch, run its starts back to back, check every beat (and the cycles)."""
        rng, lanes = self.np_rng, self.lanes
        k, words_per_row, matrices = self.draw_batch(max_k)
        x_q = self.random_x(k)
        await self.load_x(x_q)
        starts, factors, residual_beats, expected, beat_counts = [], [], [], [], []
        for n, base, slots in matrices:
            w_t = self.random_trits(slots * self.banks, k)
            await self.load_matrix(w_t, base)
            acc = bitlinear_int(x_q[None, :], w_t[:n])[0].astype(np.int64)
            rho, constant, factor = draw_factor(rng, acc, self.out_bits)
            scaled = rescale(acc[None, :], Dyadic(np.array([rho.mantissa]),
                                                  np.array([rho.exponent])),
                             LinearScale(constant, 0), _no_check, "out")[0]
            add = bool(rng.random() < 0.5)
            beats = -(-n // lanes)
            if add:
                room = 1 << (self.out_bits - 2)
                residual = rng.integers(-room, room, beats * lanes)    # garbage past n
                residual[:n][rng.random(n) < 0.2] = 0
                residual_beats += [self.layouts["r_stream"].const(
                    [int(v) for v in residual[j * lanes:(j + 1) * lanes]]).as_bits()
                    for j in range(beats)]
                scaled = scaled + residual[:n]
            padded = np.zeros(beats * lanes, np.int64)
            padded[:n] = scaled
            expected += [(j * lanes, int(j == beats - 1),
                          padded[j * lanes:(j + 1) * lanes].tolist()) for j in range(beats)]
            beat_counts.append(beats)
            starts.append(self.start_payload(base, slots, words_per_row, n, add))
            factors.append(self.factor_payload(factor))
            self.report["residual_starts"] += add
            self.report["padded_slots"] += slots > -(-n // self.banks)
            self.report["max_k_starts"] += k == self.config.max_k
            self.report["elements"] += n
        first_start = len(self.starts.accepted_cycles)
        first_factor = len(self.factors.accepted_cycles)
        first_beat = len(self.sink.beat_cycles)
        start_sender = cocotb.start_soon(self.starts.send(starts, self.cycle))
        factor_sender = cocotb.start_soon(self.factors.send(factors, self.cycle))
        residual_sender = cocotb.start_soon(self.residuals.send(residual_beats, self.cycle))
        got = await self.sink.receive(len(expected), self.cycle,
                                      timeout=40 * (words_per_row + 40))
        await start_sender
        await factor_sender
        await residual_sender
        # The last GEMV may still read a row slot past n; then nothing more may come out.
        drain = 2 * words_per_row + PimBankGroup.latency_for(self.config) + LinearStage.LATENCY
        for _ in range(drain + 4):
            await ReadOnly()
            assert not self.dut.o_stream__valid.value, "a beat past the starts' rows"
            idle = not self.dut.busy.value
            await RisingEdge(self.dut.clk)
        assert idle, "busy after every beat was taken and the last GEMV's reads"

        layout = self.layouts["o_stream"]
        for number, (beat, (index, last, data)) in enumerate(zip(got, expected)):
            view = layout.from_bits(beat)
            values = [int(view.data[i]) for i in range(lanes)]
            assert (int(view.index), int(view.last), values) == (index, last, data), (
                f"beat {number} (K {k}, matrices {matrices}): got index {int(view.index)} "
                f"last {int(view.last)} {values}, golden index {index} last {last} {data}")
            assert max(abs(v) for v in data) < 1 << (self.out_bits - 1)
        if timed and words_per_row * lanes >= self.banks:   # the stage keeps up with the banks
            ends = np.cumsum(beat_counts) - 1 + first_beat
            accepted = self.starts.accepted_cycles[first_start:]
            previous = None         # the last GEMV command's cycle and reads
            for op, ((n, _, slots), end) in enumerate(zip(matrices, ends)):
                command = LinearStage.command_cycle(accepted[op], previous)
                if previous is not None:
                    # Taken as soon as the GEMV before it is with the bank group.
                    assert accepted[op] == previous[0] + 1, \
                        f"start {op} taken in cycle {accepted[op]}, not the one after the " \
                        f"previous GEMV command ({previous[0]})"
                    self.report["back_to_back"] += 1
                previous = (command, slots * words_per_row)
                cycles = self.sink.beat_cycles[end] - command + 2
                formula = self.stage.cycles(words_per_row=words_per_row, n=n)
                assert cycles == formula, (f"start {op} (n {n}, words_per_row "
                                           f"{words_per_row}): {cycles} cycles from the one "
                                           f"before its GEMV command, not {formula}")
                self.report["timed"] += 1
                self.report["cycles"].append(cycles)
        # Factors taken after their GEMV's first results left the bank group.
        late = PimBankGroup.latency_for(self.config) + words_per_row
        self.report["late_factors"] += sum(
            factor > start + late for start, factor in zip(
                self.starts.accepted_cycles[first_start:],
                self.factors.accepted_cycles[first_factor:]))
        self.report["starts"] += len(matrices)
        self.report["beats"] += len(expected)


@cocotb.test()
async def linear_stage_matches_golden(dut):
    p = params()
    tb = LinearStageTB(dut, p)
    await tb.reset()
    for idle, backpressure in FLOW_KNOBS:
        tb.weights.pause = tb.chunks.pause = tb.starts.pause = tb.residuals.pause = idle
        tb.factors.pause = 0.9 if idle else 0.0     # often after their results
        tb.sink.backpressure = backpressure
        timed = not idle and not backpressure
        for number in range(p["tiles"]):
            await tb.batch(max_k=number == 0, timed=timed)
    assert tb.report["timed"] > 0 and tb.report["padded_slots"] > 0
    assert tb.report["late_factors"] > 0
    write_report(tb.report)
