"""cocotb testbench of :class:`hw.dyadic.ScalarUnit`, checked against golden.fixedpoint's
``dyadic``, ``dyadic_mul``, ``dyadic_add``, ``dyadic_rsqrt`` and ``dyadic_reciprocal``.

Commands of every operation in random order, back to back under random idle and
back-pressure: normalised operands with the mantissa's extremes, zeros (not for RSQRT and
RECIPROCAL, which are undefined there), sums of equal, adjacent and far-apart exponents, and
NORMALISE of values of every width up to ``value_bits``.

Parameters (``BITTERN_PARAMS``): ``config``, ``seed``, ``tiles`` (commands per operation),
``options`` (``value_bits``).
"""

import cocotb
import numpy as np

from golden.fixedpoint import (MANTISSA_BITS, Dyadic, build_tables, dyadic, dyadic_add,
                               dyadic_mul, dyadic_reciprocal, dyadic_rsqrt)
from hw.dyadic import ScalarOp, ScalarUnit
from sim.tb import TB, StreamSink, StreamSource, params, payload_layout, write_report

TABLES = build_tables()


def _operand(rng, *, zero_allowed=True):
    if zero_allowed and rng.random() < 0.1:
        return Dyadic(np.int64(0), np.int64(0))
    mantissa = rng.choice([1 << (MANTISSA_BITS - 1), (1 << MANTISSA_BITS) - 1,
                           int(rng.integers(1 << (MANTISSA_BITS - 1), 1 << MANTISSA_BITS))])
    return Dyadic(np.int64(mantissa), np.int64(rng.integers(-120, 120)))


def _command(rng, op, value_bits):
    table = op in (ScalarOp.RSQRT, ScalarOp.RECIPROCAL)
    a, b = _operand(rng, zero_allowed=not table), _operand(rng)
    if op is ScalarOp.ADD and b.mantissa:
        b = Dyadic(b.mantissa, a.exponent + rng.choice([0, 1, -1, 40, -40,
                                                       int(rng.integers(-20, 20))]))
    width = int(rng.integers(0, value_bits + 1))
    value = int(rng.integers(0, 1 << width)) if width else 0
    return op, a, b, value, int(rng.integers(-150, 150))


def _golden(op, a, b, value, exponent):
    return {ScalarOp.NORMALISE: lambda: dyadic(np.int64(value), np.int64(exponent)),
            ScalarOp.MULTIPLY: lambda: dyadic_mul(a, b),
            ScalarOp.ADD: lambda: dyadic_add(a, b),
            ScalarOp.RSQRT: lambda: dyadic_rsqrt(a, TABLES),
            ScalarOp.RECIPROCAL: lambda: dyadic_reciprocal(a, TABLES)}[op]()


@cocotb.test()
async def scalar_unit_matches_golden(dut):
    p = params()
    unit = ScalarUnit(**p["options"])
    in_layout, out_layout = payload_layout(unit, "i_stream"), payload_layout(unit, "o_stream")
    tb = TB(dut, seed=p["seed"])
    rng = np.random.default_rng(p["seed"])
    commands = [_command(rng, op, p["options"]["value_bits"])
                for op in ScalarOp for _ in range(p["tiles"])]
    rng.shuffle(commands)
    source = StreamSource(dut, "i_stream", rng=tb.rng, pause=0.3)
    sink = StreamSink(dut, "o_stream", rng=tb.rng, backpressure=0.4)
    await tb.reset()
    payloads = [in_layout.const({
        "op": op, "a": {"mantissa": int(a.mantissa), "exponent": int(a.exponent)},
        "b": {"mantissa": int(b.mantissa), "exponent": int(b.exponent)}, "value": value,
        "exponent": exponent}).as_bits() for op, a, b, value, exponent in commands]
    sender = cocotb.start_soon(source.send(payloads, tb.cycle))
    beats = await sink.receive(len(commands), tb.cycle, timeout=200)
    await sender
    for n, (command, beat) in enumerate(zip(commands, beats)):
        result = out_layout.from_bits(beat)
        got = (result.mantissa, result.exponent)
        want = _golden(*command)
        assert got == (int(want.mantissa), int(want.exponent)), (
            f"command {n}, {command[0].name} of a={command[1]}, b={command[2]}, "
            f"value={command[3]}, exponent={command[4]}: got {got}, golden "
            f"{(int(want.mantissa), int(want.exponent))}")
    write_report({"commands": len(commands)})
