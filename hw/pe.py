"""Processing elements of the systolic array, and the registry of PE kinds (``Config.array.pe``).

The PE contract (what :class:`hw.array.SystolicArray` relies on) is :class:`ProcessingElement`:
its ports are a :class:`PESignature`, it has one cycle of latency (``psum_out`` and ``x_out``
are registered), and its class states what one stationary weight is (``weight_shape``, with the
NumPy codec the command format, the driver and the behavioural device use to move weights) and
the largest ``|x * w|`` (``max_product``), from which every partial-sum width is derived.

:data:`PE_KINDS` is the one registry of kinds: the configuration accepts exactly its names, and
tests and documentation read it. :func:`register_pe_kind` adds one (see ``docs/extending.md``).
"""

import numpy as np
from amaranth import Module, Mux, Shape, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from golden import trits
from golden.widths import signed_bits_for

from .trit import Trit

__all__ = ["PESignature", "ProcessingElement", "TernaryPE", "Int8PE", "PE_KINDS",
           "register_pe_kind"]


class PESignature(wiring.Signature):
    """The ports of a PE.

    Members
    -------
    x_in : In(signed(act_bits))
        Activation from the left neighbour.
    x_out : Out(signed(act_bits))
        The same activation, one cycle later, to the right neighbour.
    psum_in : In(signed(psum_in_bits))
        Partial sum from the PE above (absent in the first row: ``psum_in_bits == 0``).
    psum_out : Out(signed(psum_out_bits))
        Partial sum to the PE below: ``psum_in + w * x_in`` of one cycle earlier.
    w_load : In(1)
        Load ``w_in`` as the stationary weight.
    w_in : In(weight_shape)
        Next weight, from the array's weight beat for this PE's row.
    w : Out(weight_shape)
        The stationary weight.
    """

    def __init__(self, *, act_bits, psum_in_bits, psum_out_bits, weight_shape):
        members = {
            "x_in": In(signed(act_bits)), "x_out": Out(signed(act_bits)),
            "psum_out": Out(signed(psum_out_bits)),
            "w_load": In(1), "w_in": In(weight_shape), "w": Out(weight_shape),
        }
        if psum_in_bits:
            members["psum_in"] = In(signed(psum_in_bits))
        super().__init__(members)


class ProcessingElement(wiring.Component):
    """Base of every PE kind: a weight-stationary multiply-accumulate.

    Every cycle: ``psum_out <= psum_in + w * x_in`` and ``x_out <= x_in`` (both registered).
    When ``w_load`` is high, the held weight is replaced by ``w_in``. A subclass sets
    ``weight_shape`` and ``weight_range`` and implements :meth:`max_product` and
    :meth:`product`; a weight that is not a signed integer also needs its codec
    (:meth:`encode_weights`, :meth:`decode_weights`).

    Parameters
    ----------
    act_bits : int
        Width of a signed activation.
    psum_in_bits : int
        Width of the partial sum from above (0: first row, no ``psum_in``).
    psum_out_bits : int
        Width of the partial sum passed down; at least enough for ``psum_in`` plus a product.
    """
    weight_shape = None         # the shape of one stationary weight
    weight_range = None         # (lowest, highest) weight value

    @staticmethod
    def max_product(act_bits):
        """Largest ``|x * w|`` for a ``act_bits``-wide activation."""
        raise NotImplementedError

    @classmethod
    def encode_weights(cls, values):
        """Weight values (an integer array) -> their codes in ``weight_shape``, unsigned; by
        default two's complement, for a signed ``weight_shape``."""
        return np.asarray(values, np.int64) & ((1 << cls.weight_bits()) - 1)

    @classmethod
    def decode_weights(cls, codes):
        """Codes -> the weight values the hardware computes with (the inverse of
        :meth:`encode_weights`, and defined for every code); by default two's complement."""
        bits, codes = cls.weight_bits(), np.asarray(codes, np.int64)
        return np.where((codes >> (bits - 1)) & 1, codes - (1 << bits), codes)

    @classmethod
    def weight_is_nonzero(cls, code):
        """Amaranth: the weight ``code`` computes as non-zero (a multiply-accumulate, not a
        skip)."""
        return Value.cast(code) != 0

    @classmethod
    def weight_bits(cls):
        """Bits of one weight's code."""
        return Shape.cast(cls.weight_shape).width

    def __init__(self, *, act_bits, psum_in_bits, psum_out_bits):
        least = max(signed_bits_for(self.max_product(act_bits)), psum_in_bits)
        if psum_out_bits < least:
            raise ValueError(f"psum_out_bits must be at least {least} to hold psum_in plus a "
                             f"product, not {psum_out_bits}")
        self._act_bits = act_bits
        super().__init__(PESignature(act_bits=act_bits, psum_in_bits=psum_in_bits,
                                     psum_out_bits=psum_out_bits,
                                     weight_shape=self.weight_shape))

    def product(self):
        """The signed product ``w * x_in``, as an Amaranth value."""
        raise NotImplementedError

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


class TernaryPE(ProcessingElement):
    """Ternary MAC: adds, subtracts or skips the activation. No multiplier.

    The weight is a :class:`~hw.trit.Trit` in the code of :mod:`golden.trits`; a code that is
    not a trit (``0b10``) computes as zero.
    """
    weight_shape = Trit
    weight_range = (-1, 1)

    @staticmethod
    def max_product(act_bits):
        """The most negative activation times -1."""
        return 1 << (act_bits - 1)

    @classmethod
    def encode_weights(cls, values):
        return trits.encode(values)

    @classmethod
    def decode_weights(cls, codes):
        return trits.decode(codes, invalid_as_zero=True)

    @classmethod
    def weight_is_nonzero(cls, code):
        """Bit 0 of a trit's code: ``0b10``, not a trit, computes as zero too."""
        return Value.cast(code)[0]

    def product(self):
        """``w * x_in`` built without a multiplier or a negator.

        ``-x`` is ``~x + 1``: the activation is gated by "non-zero", inverted by "negate", and
        the ``+1`` becomes the carry-in of the accumulating adder, so a PE is one adder (about
        half the LUTs of negating first and adding after). A code that is not a trit adds 0.
        """
        nonzero = (self.w == Trit.POS) | (self.w == Trit.NEG)
        negate = self.w == Trit.NEG
        gated = Mux(nonzero, self.x_in, 0)
        return (gated ^ Mux(negate, -1, 0)) + negate


class Int8PE(ProcessingElement):
    """Multiply-accumulate with an int8 weight: the multiplier baseline that ternary PEs are
    measured against. The product is a plain ``*``, so synthesis may map it to a DSP block or to
    LUTs."""
    weight_shape = signed(8)
    weight_range = (-128, 127)

    @staticmethod
    def max_product(act_bits):
        """The most negative activation times the most negative weight."""
        return (1 << (act_bits - 1)) * 128

    def product(self):
        return self.x_in * self.w


PE_KINDS = {}
"""Every PE kind by name, in registration order."""


def register_pe_kind(name, pe_class):
    """Make ``pe_class`` selectable as ``array.pe = name``; returns ``pe_class``."""
    if not (isinstance(pe_class, type) and issubclass(pe_class, ProcessingElement)):
        raise TypeError(f"a PE kind must be a ProcessingElement subclass, not {pe_class!r}")
    if not isinstance(name, str) or not name.isidentifier() or name in PE_KINDS:
        raise ValueError(f"PE kind name must be a new identifier, not {name!r} (taken: "
                         f"{', '.join(PE_KINDS)})")
    PE_KINDS[name] = pe_class
    return pe_class


register_pe_kind("ternary", TernaryPE)
register_pe_kind("int8", Int8PE)
