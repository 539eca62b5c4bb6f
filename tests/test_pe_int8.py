# amaranth: UnusedElaboratable=no
"""The int8 PE, alone and in the systolic array, under Amaranth's own simulator.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import dataclasses
import itertools

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.array import SystolicArray
from hw.config import ArrayConfig, apply_overrides, preset
from hw.pe import PE_KINDS, Int8PE


def _simulate(dut, *testbenches):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    sim.run()


def test_int8_is_a_configurable_pe_kind():
    assert PE_KINDS["int8"] is Int8PE
    config = apply_overrides(preset("tiny"), ["pe=int8"])
    assert SystolicArray(config).w_stream.payload.shape().size == 8 * config.array.cols


def test_int8_pe_multiplies_and_accumulates():
    assert Int8PE.max_product(8) == 128 * 128
    pe = Int8PE(act_bits=8, psum_in_bits=17, psum_out_bits=18)
    extremes = [-128, -1, 0, 1, 127]
    cases = list(itertools.product(extremes, extremes, [-(1 << 16), 0, (1 << 16) - 1]))

    async def testbench(ctx):
        for weight, x, psum in cases:
            ctx.set(pe.w_in, weight)
            ctx.set(pe.w_load, 1)
            await ctx.tick()
            ctx.set(pe.w_load, 0)
            ctx.set(pe.x_in, x)
            ctx.set(pe.psum_in, psum)
            await ctx.tick()
            assert ctx.get(pe.psum_out) == psum + weight * x, (weight, x, psum)
            assert ctx.get(pe.x_out) == x and ctx.get(pe.w) == weight

    _simulate(pe, testbench)


def test_first_row_int8_pe_has_no_psum_in():
    pe = Int8PE(act_bits=8, psum_in_bits=0, psum_out_bits=16)
    assert "psum_in" not in pe.signature.members

    async def testbench(ctx):
        ctx.set(pe.w_in, -128)
        ctx.set(pe.w_load, 1)
        await ctx.tick()
        ctx.set(pe.w_load, 0)
        ctx.set(pe.w_in, 5)                         # not shifted in: the weight holds
        for x in (-128, 127):
            ctx.set(pe.x_in, x)
            await ctx.tick()
            assert ctx.get(pe.psum_out) == -128 * x

    _simulate(pe, testbench)


def test_too_narrow_int8_psum_is_rejected():
    with pytest.raises(ValueError, match="psum_out_bits must be at least 16 .* not 15"):
        Int8PE(act_bits=8, psum_in_bits=0, psum_out_bits=15)


def test_array_of_int8_pes_computes_x_times_w():
    config = dataclasses.replace(preset("tiny"), array=ArrayConfig(rows=3, cols=2, pe="int8"))
    array = SystolicArray(config)
    rows, cols = config.array.rows, config.array.cols
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (cols, rows))          # W[n, k]
    w[0] = -128
    x = rng.integers(-128, 128, (5, rows))
    x[0] = -128                                        # the largest product, in every column
    got = []

    async def producer(ctx):
        for k in range(rows):
            ctx.set(array.w_stream.payload, [int(w[n, k]) for n in range(cols)])
            ctx.set(array.w_stream.valid, 1)
            await ctx.tick().until(array.w_stream.ready)
        ctx.set(array.w_stream.valid, 0)
        for token in x:
            ctx.set(array.i_stream.payload, [int(v) for v in token])
            ctx.set(array.i_stream.valid, 1)
            await ctx.tick().until(array.i_stream.ready)
        ctx.set(array.i_stream.valid, 0)

    async def consumer(ctx):
        ctx.set(array.o_stream.ready, 1)
        while len(got) < len(x):
            *_, beat = await ctx.tick().sample(array.o_stream.payload).until(
                array.o_stream.valid)
            got.append([beat[n] for n in range(cols)])

    _simulate(array, producer, consumer)
    assert np.array_equal(np.array(got), x @ w.T)
