# amaranth: UnusedElaboratable=no
"""The ternary PE under Amaranth's own simulator (fast, no Verilator)."""

import itertools

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import ArrayConfig, ConfigError
from hw.pe import PE_KINDS, ProcessingElement, TernaryPE, register_pe_kind
from hw.trit import Trit

TRITS = {Trit.NEG: -1, Trit.ZERO: 0, Trit.POS: 1}


def test_config_accepts_exactly_the_registered_kinds():
    for name in PE_KINDS:
        assert ArrayConfig(pe=name).pe == name
    with pytest.raises(ConfigError) as error:
        ArrayConfig(pe="bogus")
    assert str(error.value) == (f"array.pe must be one of {', '.join(map(repr, PE_KINDS))}, "
                                f"not 'bogus'")


def test_registering_a_kind_is_checked():
    with pytest.raises(TypeError, match="a PE kind must be a ProcessingElement subclass"):
        register_pe_kind("plain", object)
    with pytest.raises(ValueError, match="PE kind name must be a new identifier, not 'ternary'"):
        register_pe_kind("ternary", TernaryPE)
    assert all(issubclass(kind, ProcessingElement) for kind in PE_KINDS.values())


def test_ternary_codec_round_trips_and_reads_0b10_as_zero():
    values = np.array([-1, 0, 1, 1, -1])
    codes = TernaryPE.encode_weights(values)
    assert codes.tolist() == [0b11, 0b00, 0b01, 0b01, 0b11]
    assert TernaryPE.decode_weights(codes).tolist() == values.tolist()
    assert TernaryPE.decode_weights(np.array([0b10])).tolist() == [0]


def test_ternary_pe_adds_subtracts_or_skips():
    pe = TernaryPE(act_bits=8, psum_in_bits=10, psum_out_bits=11)
    cases = list(itertools.product(TRITS, [-128, -1, 0, 1, 127], [-512, 0, 511]))

    async def testbench(ctx):
        for weight, x, psum in cases:
            ctx.set(pe.w_in, weight)
            ctx.set(pe.w_load, 1)
            await ctx.tick()
            ctx.set(pe.w_load, 0)
            ctx.set(pe.x_in, x)
            ctx.set(pe.psum_in, psum)
            await ctx.tick()
            assert ctx.get(pe.psum_out) == psum + TRITS[weight] * x, (weight, x, psum)
            assert ctx.get(pe.x_out) == x

    sim = Simulator(pe)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


def test_weight_holds_until_shifted():
    pe = TernaryPE(act_bits=8, psum_in_bits=0, psum_out_bits=9)

    async def testbench(ctx):
        ctx.set(pe.w_in, Trit.NEG)
        ctx.set(pe.w_load, 1)
        await ctx.tick()
        ctx.set(pe.w_load, 0)
        ctx.set(pe.w_in, Trit.POS)
        for x in (5, -128):
            ctx.set(pe.x_in, x)
            await ctx.tick()
            assert ctx.get(pe.w) == Trit.NEG
            assert ctx.get(pe.psum_out) == -x

    sim = Simulator(pe)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


def test_too_narrow_psum_is_rejected():
    with pytest.raises(ValueError, match="psum_out_bits must be at least 10"):
        TernaryPE(act_bits=8, psum_in_bits=10, psum_out_bits=9)
