# amaranth: UnusedElaboratable=no
"""The scalar unit's dyadic arithmetic, bit for bit against golden.fixedpoint, under Amaranth's
simulator: random and edge operands of every operation, and each one's latency.

(The linter line above: a constructor that rejects its parameters leaves an unused object.)
"""

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.fixedpoint import (Dyadic, build_tables, dyadic, dyadic_add, dyadic_mul,
                               dyadic_reciprocal, dyadic_rsqrt)
from hw.config import preset
from hw.dyadic import ScalarOp, ScalarUnit
from sim.units import simulate

VALUE_BITS = 48
TABLES = build_tables()


def _dyadics(rng, count, *, zeros_from=5):
    """Random normalised dyadics, zeros (from index ``zeros_from``, every 11th) and the
    mantissa's extremes among them."""
    mantissas = rng.integers(1 << 16, 1 << 17, count)
    mantissas[::7] = (1 << 17) - 1
    mantissas[3::7] = 1 << 16
    exponents = rng.integers(-120, 120, count)
    mantissas[zeros_from::11], exponents[zeros_from::11] = 0, 0
    return [Dyadic(np.int64(m), np.int64(e)) for m, e in zip(mantissas, exponents)]


def _values(rng, count):
    """Unsigned values of every width up to VALUE_BITS, with rounding carries among them."""
    widths = rng.integers(0, VALUE_BITS + 1, count)
    values = [int(rng.integers(0, 1 << int(w))) if w else 0 for w in widths]
    values += [(1 << 17) - 1, 1 << 17, ((1 << 18) - 1), ((1 << 17) - 1) << 20 | (1 << 19),
               (1 << VALUE_BITS) - 1, 1]
    return values


def _expected(op, a, b, value, exponent):
    if op is ScalarOp.NORMALISE:
        return dyadic(np.int64(value), np.int64(exponent))
    return {ScalarOp.MULTIPLY: lambda: dyadic_mul(a, b), ScalarOp.ADD: lambda: dyadic_add(a, b),
            ScalarOp.RSQRT: lambda: dyadic_rsqrt(a, TABLES),
            ScalarOp.RECIPROCAL: lambda: dyadic_reciprocal(a, TABLES)}[op]()


def _run(commands, **options):
    """Run ``commands`` (op, a, b, value, exponent) through a unit built with ``options``;
    returns (results, cycles from each command taken to its result offered)."""
    dut = ScalarUnit(value_bits=VALUE_BITS, **options)
    results, latencies = [], []

    async def testbench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        for op, a, b, value, exponent in commands:
            ctx.set(dut.i_stream.payload, {
                "op": op, "a": {"mantissa": int(a.mantissa), "exponent": int(a.exponent)},
                "b": {"mantissa": int(b.mantissa), "exponent": int(b.exponent)},
                "value": value, "exponent": exponent})
            ctx.set(dut.i_stream.valid, 1)
            await ctx.tick().until(dut.i_stream.ready)
            ctx.set(dut.i_stream.valid, 0)
            cycles = 0
            while not ctx.get(dut.o_stream.valid):
                await ctx.tick()
                cycles += 1
            payload = ctx.get(dut.o_stream.payload)
            results.append((int(payload.mantissa), int(payload.exponent)))
            latencies.append(cycles + 1)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    return results, latencies


@pytest.mark.parametrize("op", list(ScalarOp))
def test_every_operation_is_golden_bit_for_bit(op):
    rng = np.random.default_rng(int(op.value) + 10)
    count = 60
    a_list, b_list = _dyadics(rng, count), _dyadics(rng, count, zeros_from=8)
    values = _values(rng, count)[:count]
    exponents = rng.integers(-150, 150, count)
    if op in (ScalarOp.RSQRT, ScalarOp.RECIPROCAL):
        a_list = [a if a.mantissa else Dyadic(np.int64(1 << 16), np.int64(3)) for a in a_list]
    if op is ScalarOp.ADD:               # far apart, equal and adjacent exponents too
        b_list[1::4] = [Dyadic(b.mantissa, a.exponent) for a, b in zip(a_list[1::4],
                                                                      b_list[1::4])]
        b_list[2::4] = [Dyadic(b.mantissa, a.exponent - 40) for a, b in zip(a_list[2::4],
                                                                           b_list[2::4])]
    commands = [(op, a, b, v, int(e)) for a, b, v, e in zip(a_list, b_list, values, exponents)]
    results, latencies = _run(commands)
    for (op_, a, b, value, exponent), got in zip(commands, results):
        want = _expected(op_, a, b, value, exponent)
        assert got == (int(want.mantissa), int(want.exponent)), (op_, a, b, value, exponent)
    assert set(latencies) == {ScalarUnit.latency_of(op)}


@pytest.mark.parametrize("scale", [dyadic(np.int64(127)), Dyadic(np.int64((1 << 17) - 1),
                                                                   np.int64(-40))])
def test_a_scaled_reciprocal_is_golden_s_product_with_the_reciprocal(scale):
    """RECIPROCAL on a unit built with a scale (the norm's ``127 / peak``) is golden's
    ``dyadic_mul(scale, dyadic_reciprocal(a))``, one rounding of the table entry's product,
    for every table entry and odd and extreme exponents, at the table read's latency."""
    mantissas = (np.arange(1 << 10) << 6) + (1 << 16) + np.arange(1 << 10) % 64
    exponents = np.arange(1 << 10) % 301 - 150
    commands = [(ScalarOp.RECIPROCAL, Dyadic(np.int64(m), np.int64(e)), dyadic(0), 0, 0)
                for m, e in zip(mantissas, exponents)]
    results, latencies = _run(commands, reciprocal_scale=scale)
    for (_, a, *_), got in zip(commands, results):
        want = dyadic_mul(scale, dyadic_reciprocal(a, TABLES))
        assert got == (int(want.mantissa), int(want.exponent)), a
    assert set(latencies) == {ScalarUnit.latency_of(ScalarOp.RECIPROCAL)}


def test_value_bits_and_the_scale_are_checked():
    with pytest.raises(ValueError, match=r"^value_bits must be an integer in \[17, 62\], not 8$"):
        ScalarUnit(value_bits=8)
    with pytest.raises(ValueError, match=r"reciprocal_scale must be a non-zero dyadic"):
        ScalarUnit(value_bits=VALUE_BITS, reciprocal_scale=dyadic(0))


def test_scalar_unit_on_verilator_under_idle_and_back_pressure():
    """The cocotb testbench (sim/scalar_tb.py): 40 commands of every operation, shuffled, back
    to back under random idle and back-pressure, each against golden.fixedpoint."""
    result = simulate("scalar", preset("tiny"), seed=2, tiles=40)
    assert result.passed, "; ".join(result.failures) + f" (log: {result.log})"
    assert result.report["commands"] == 40 * len(ScalarOp)
