"""Integer widths. Every width in golden/ and hw/ is derived from a largest magnitude with this,
so that no value can overflow the register or the format that holds it."""

__all__ = ["signed_bits_for"]


def signed_bits_for(magnitude):
    """Width of a signed integer that holds every value in ``[-magnitude, +magnitude]``."""
    return int(magnitude).bit_length() + 1
