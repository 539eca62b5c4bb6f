"""Amaranth HDL of the Bittern ternary accelerator."""
