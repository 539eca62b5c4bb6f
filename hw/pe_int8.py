"""An int8-weight processing element: the multiplier baseline that ternary PEs are measured against.

Registered as ``pe = "int8"`` in :data:`hw.pe.PE_KINDS`, so ``SystolicArray(config, pe=Int8PE)``
or ``--set pe=int8`` builds the same array with a signed 8-bit weight per PE.
"""

from amaranth import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .config import signed_bits_for

__all__ = ["Int8PE"]

WEIGHT_BITS = 8


class Int8PE(wiring.Component):
    """Weight-stationary multiply-accumulate with an int8 weight.

    Every cycle: ``psum_out <= psum_in + w * x_in`` and ``x_out <= x_in`` (both registered).
    When ``w_load`` is high, the held weight is replaced by ``w_in``.
    The product is a plain ``*``, so synthesis may map it to a DSP block or to LUTs.

    Members
    -------
    x_in : In(signed(act_bits))
        Activation from the left neighbour.
    x_out : Out(signed(act_bits))
        The same activation, one cycle later, to the right neighbour.
    psum_in : In(signed(psum_in_bits))
        Partial sum from the PE above (absent in the first row: ``psum_in_bits == 0``).
    psum_out : Out(signed(psum_out_bits))
        Partial sum to the PE below.
    w_load : In(1)
        Load ``w_in`` as the stationary weight.
    w_in : In(signed(8))
        Next weight, from the array's weight beat for this PE's row.
    w : Out(signed(8))
        The stationary weight.
    """
    weight_shape = signed(WEIGHT_BITS)

    @staticmethod
    def max_product(act_bits):
        """Largest ``|x * w|``: the most negative activation times the most negative weight."""
        return (1 << (act_bits - 1)) * (1 << (WEIGHT_BITS - 1))

    def __init__(self, *, act_bits, psum_in_bits, psum_out_bits):
        least = max(signed_bits_for(self.max_product(act_bits)), psum_in_bits)
        if psum_out_bits < least:
            raise ValueError(f"psum_out_bits must be at least {least} to hold psum_in plus a "
                             f"product, not {psum_out_bits}")
        members = {
            "x_in": In(signed(act_bits)), "x_out": Out(signed(act_bits)),
            "psum_out": Out(signed(psum_out_bits)),
            "w_load": In(1), "w_in": In(self.weight_shape), "w": Out(self.weight_shape),
        }
        if psum_in_bits:
            members["psum_in"] = In(signed(psum_in_bits))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        psum_in = self.psum_in if "psum_in" in self.signature.members else 0
        m.d.sync += [
            self.x_out.eq(self.x_in),
            self.psum_out.eq(psum_in + self.x_in * self.w),
        ]
        with m.If(self.w_load):
            m.d.sync += self.w.eq(self.w_in)
        return m
