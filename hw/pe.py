"""Processing elements of the systolic array, chosen by ``Config.array.pe``.

A PE kind is a :class:`wiring.Component` class with three class-level facts the array needs:
``weight_shape`` (what one stationary weight is), ``max_product(act_bits)`` (the largest
``|x * w|``, from which every partial-sum width is derived) and a constructor taking
``act_bits``, ``psum_in_bits`` and ``psum_out_bits``. Register a new kind in :data:`PE_KINDS`
and add its name to ``hw.config.PE_KINDS``.
"""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .pe_int8 import Int8PE
from .trit import Trit

__all__ = ["TernaryPE", "PE_KINDS"]


class TernaryPE(wiring.Component):
    """Weight-stationary ternary MAC: adds, subtracts or skips the activation. No multiplier.

    Every cycle: ``psum_out <= psum_in + w * x_in`` and ``x_out <= x_in`` (both registered).
    When ``w_load`` is high, the held weight is replaced by ``w_in``.

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
    w_in : In(Trit)
        Next weight, from the array's weight beat for this PE's row.
    w : Out(Trit)
        The stationary weight.
    """
    weight_shape = Trit

    @staticmethod
    def max_product(act_bits):
        """Largest ``|x * w|``: the most negative activation times -1."""
        return 1 << (act_bits - 1)

    def __init__(self, *, act_bits, psum_in_bits, psum_out_bits):
        if psum_out_bits < max(act_bits + 1, psum_in_bits):
            raise ValueError(f"psum_out_bits must be at least {max(act_bits + 1, psum_in_bits)} "
                             f"to hold psum_in plus a product, not {psum_out_bits}")
        self._act_bits = act_bits
        members = {
            "x_in": In(signed(act_bits)), "x_out": Out(signed(act_bits)),
            "psum_out": Out(signed(psum_out_bits)),
            "w_load": In(1), "w_in": In(Trit), "w": Out(Trit),
        }
        if psum_in_bits:
            members["psum_in"] = In(signed(psum_in_bits))
        super().__init__(members)

    def product(self):
        """The signed product ``w * x_in`` built without a multiplier or a negator.

        ``-x`` is ``~x + 1``: the activation is gated by "non-zero", inverted by "negate", and
        the ``+1`` becomes the carry-in of the accumulating adder, so a PE is one adder (about
        half the LUTs of negating first and adding after). A code that is not a trit adds 0.
        """
        nonzero = (self.w == Trit.POS) | (self.w == Trit.NEG)
        negate = self.w == Trit.NEG
        gated = Mux(nonzero, self.x_in, 0)
        return (gated ^ Mux(negate, -1, 0)) + negate

    def elaborate(self, platform):
        m = Module()
        psum_in = self.psum_in if "psum_in" in self.signature.members else 0
        m.d.sync += [
            self.x_out.eq(self.x_in),
            self.psum_out.eq(psum_in + self.product()),
        ]
        with m.If(self.w_load):
            m.d.sync += self.w.eq(self.w_in)
        return m


PE_KINDS = {"ternary": TernaryPE, "int8": Int8PE}
