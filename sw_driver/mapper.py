"""Mapping a model's ternary matrices onto the device, and the integer core that uses them.

Placement (banks, for GEMV): matrix row ``n`` lives in bank ``n % banks`` at row slot
``n // banks``; a row is ``ceil(K / lanes)`` consecutive words (zero-padded), and a matrix takes
``ceil(N / banks) * words_per_row`` words at the same base address in every bank. One GEMV then
returns row ``n`` as result word ``n`` (``slot * banks + bank``). Matrices are placed once, one
after another, and stay resident.

Tiling (array, for GEMM): a matrix is cut into ``cols x rows`` tiles (``N`` by ``K``); each tile
is loaded and every token streamed through it; partial sums over ``K`` tiles add up on the host
in int32, exactly.

Choice per operation: one token (decode) goes to the banks, several (prefill) to the array.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["MappingError", "Placement", "place", "DeviceCore"]


class MappingError(ValueError):
    """A model does not fit the device; the message names the matrix and the capacity."""


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


def place(shapes, config):
    """Place every ``name: (N, K)`` of ``shapes`` in the banks of ``config``, in order."""
    banks, lanes, depth = config.pim.banks, config.pim.lanes, config.pim.depth
    placements, base = {}, 0
    for name, (n, k) in shapes.items():
        if k > config.max_k:
            raise MappingError(f"{name}: K = {k} exceeds the device's max_k = {config.max_k}")
        words_per_row = -(-k // lanes)
        placement = Placement(name, n, k, base, -(-n // banks), words_per_row)
        base += placement.words
        if base > depth:
            needed = sum(p.words for p in placements.values()) + placement.words
            raise MappingError(f"{name}: the model needs at least {needed} words per bank, the "
                               f"device has {depth} ({banks} banks x {lanes} lanes x {depth})")
        placements[name] = placement
    return placements


class DeviceCore:
    """golden's integer-core hook, computed on a device: ``core(name, x_q) -> int32``.

    The banks are written once, at construction. ``calls`` counts GEMV and GEMM commands.
    """

    def __init__(self, accelerator, linears, *, progress=None):
        self.device = accelerator
        self.config = accelerator.config
        self.linears = linears
        shapes = {name: weight.trits.shape for name, weight in linears.items()}
        self.placements = place(shapes, self.config)
        self.calls = {"gemv": 0, "gemm": 0}
        for count, (name, placement) in enumerate(self.placements.items()):
            if progress:
                progress(f"loading {name} into the banks ({count + 1}/{len(shapes)})")
            self._write(placement, linears[name].trits)

    def _write(self, placement, w_t):
        lanes, banks = self.config.pim.lanes, self.config.pim.banks
        padded = np.zeros((placement.rows * banks, placement.words_per_row * lanes), np.int8)
        padded[:placement.n, :placement.k] = w_t
        for bank in range(banks):
            rows = padded[bank::banks].reshape(-1, lanes)        # row slot by row slot
            self.device.write_weights(bank, placement.base, rows)

    def __call__(self, name, x_q):
        x_q = np.asarray(x_q, np.int8)
        if len(x_q) == 1:
            return self._gemv(name, x_q[0])[None]
        return self._gemm(name, x_q)

    def _gemv(self, name, x_q):
        placement = self.placements[name]
        self.device.load_activations(x_q)
        results = self.device.gemv(placement.base, placement.rows, placement.words_per_row)
        self.calls["gemv"] += 1
        return results.reshape(-1)[:placement.n].astype(np.int32)

    def _gemm(self, name, x_q):
        rows, cols = self.config.array.rows, self.config.array.cols
        w_t = self.linears[name].trits
        n, k = w_t.shape
        acc = np.zeros((len(x_q), n), np.int64)
        for n0 in range(0, n, cols):
            for k0 in range(0, k, rows):
                tile = np.zeros((cols, rows), np.int8)
                part = w_t[n0:n0 + cols, k0:k0 + rows]
                tile[:part.shape[0], :part.shape[1]] = part
                tokens = np.zeros((len(x_q), rows), np.int8)
                tokens[:, :part.shape[1]] = x_q[:, k0:k0 + rows]
                self.device.load_tile(tile)
                acc[:, n0:n0 + part.shape[0]] += self.device.gemm(tokens)[:, :part.shape[0]]
                self.calls["gemm"] += 1
        return acc.astype(np.int32)
