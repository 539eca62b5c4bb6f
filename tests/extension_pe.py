"""A PE kind defined outside ``hw/``, exactly as ``docs/extending.md`` says to write one.

Importing this module registers it as ``array.pe = "int4"`` (``tests/test_extending.py`` runs it
through the array testbench; the testbench process imports this module too).
"""

from amaranth import Mux, signed

from hw.pe import ProcessingElement, register_pe_kind


class Int4PE(ProcessingElement):
    """Multiply-accumulate with a signed 4-bit weight."""
    weight_shape = signed(4)
    weight_range = (-8, 7)

    @staticmethod
    def max_product(act_bits):
        return (1 << (act_bits - 1)) * 8           # -128 * -8

    def product(self):
        return self.x_in * self.w


class SignFlipInt4PE(Int4PE):
    """A broken copy: a negative weight adds ``|w| * x`` instead of subtracting it."""

    def product(self):
        return Mux(self.w < 0, self.x_in * -self.w, self.x_in * self.w)


register_pe_kind("int4", Int4PE)
