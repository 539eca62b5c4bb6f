"""Byte-level tokenizer of the shipped tiny model: token ``i`` is the byte ``i`` (vocab 256)."""

__all__ = ["VOCAB", "encode", "decode"]

VOCAB = 256


def encode(text):
    """``text`` -> its UTF-8 bytes as a list of token ids in ``[0, 256)``."""
    return list(text.encode("utf-8"))


def decode(tokens):
    """Token ids -> text; bytes that are not valid UTF-8 become U+FFFD."""
    return bytes(tokens).decode("utf-8", errors="replace")
