"""Where a model's ternary matrices live in the PIM banks: the one placement that the driver
(offload mode) and the resident core both use.

Placement: matrix row ``n`` lives in bank ``n % banks`` at row slot ``n // banks``; a row is
``ceil(K / lanes)`` consecutive words (zero-padded), and a matrix takes
``ceil(N / banks) * words_per_row`` words at the same base address in every bank. One GEMV then
returns row ``n`` as result word ``n`` (``slot * banks + bank``). Matrices are placed once, one
after another, and stay resident.
"""

from dataclasses import dataclass

__all__ = ["MappingError", "Placement", "place"]


class MappingError(ValueError):
    """A model does not fit the device; the message names the memory or matrix and the
    capacity, in one line."""


@dataclass(frozen=True)
class Placement:
    """Where one matrix lives in the banks."""
    name: str
    n: int
    k: int
    base: int
    rows: int               # row slots per bank
    words_per_row: int

    @property
    def words(self):
        return self.rows * self.words_per_row


def _layout(shapes, config):
    """The placements of ``shapes``, one after another from word 0, however deep they go."""
    banks, lanes = config.pim.banks, config.pim.lanes
    placements, base = {}, 0
    for name, (n, k) in shapes.items():
        if k > config.max_k:
            raise MappingError(f"{name}: K = {k} exceeds the device's max_k = {config.max_k}")
        placements[name] = placement = Placement(name, n, k, base, -(-n // banks), -(-k // lanes))
        base += placement.words
    return placements


def place(shapes, config):
    """Place every ``name: (N, K)`` of ``shapes`` in the banks of ``config``, in order."""
    banks, lanes, depth = config.pim.banks, config.pim.lanes, config.pim.depth
    placements = _layout(shapes, config)
    for placement in placements.values():
        needed = placement.base + placement.words
        if needed > depth:
            raise MappingError(f"{placement.name}: the model needs at least {needed} words per "
                               f"bank, the device has {depth} ({banks} banks x {lanes} lanes x "
                               f"{depth})")
    return placements

