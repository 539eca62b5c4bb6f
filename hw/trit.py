"""The trit as an Amaranth shape, derived from the single encoding in :mod:`golden.trits`."""

from amaranth.lib import enum

from golden import trits

__all__ = ["Trit"]


class Trit(enum.Enum, shape=trits.CODE_BITS):
    """A ternary weight. ``0b10`` is not a member: no valid value decodes to it."""
    ZERO = trits.CODE_ZERO
    POS = trits.CODE_POS
    NEG = trits.CODE_NEG
