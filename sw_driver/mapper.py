"""Mapping a model's ternary matrices onto the device, and the integer core that uses them.

Placement (banks, for GEMV): matrix row ``n`` lives in bank ``n % banks`` at row slot
``n // banks``; a row is ``ceil(K / lanes)`` consecutive words (zero-padded), and a matrix takes
``ceil(N / banks) * words_per_row`` words at the same base address in every bank. One GEMV then
returns row ``n`` as result word ``n`` (``slot * banks + bank``). Matrices are placed once, one
after another, and stay resident.

Tiling (array, for GEMM): a matrix is cut into ``cols x rows`` tiles (``N`` by ``K``); each tile
is loaded and every token streamed through it; partial sums over ``K`` tiles add up on the host
in int32, exactly.

Scheduling: matrices the model calls with one activation vector (q|k|v, gate|up: a group, from
:func:`golden.input_groups`) sit one after another in the banks, so one LOAD_ACTS and one GEMV
serve the whole group; the vector is not loaded again while the buffer holds it. Several tokens
(prefill) go to whichever unit the command timing says takes fewer cycles: the banks token by
token, or the array tile by tile (its partial sums cross the link once per ``rows`` of K, so the
banks win unless K is short).
"""

from dataclasses import dataclass

import numpy as np

from hw.commands import Opcode

from .timing import CommandTiming

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

    The banks are written once, at construction. ``groups`` are tuples of names the model calls
    with one ``x_q`` (placed consecutively, they take one GEMV); a call for a later member of a
    group returns what the group's GEMV gave. ``prefill`` says where several tokens go:
    ``"auto"`` (the faster unit), ``"banks"`` or ``"array"``. ``calls`` counts GEMV, GEMM and
    LOAD_ACTS commands.
    """

    PREFILL = ("auto", "banks", "array")

    def __init__(self, accelerator, linears, *, groups=(), prefill="auto", progress=None):
        if prefill not in self.PREFILL:
            raise ValueError(f"prefill must be one of {', '.join(self.PREFILL)}, not {prefill!r}")
        self.prefill = prefill
        self.device = accelerator
        self.config = accelerator.config
        self.linears = linears
        shapes = {name: weight.trits.shape for name, weight in linears.items()}
        self.placements = place(shapes, self.config)
        self.groups = {}
        for group in groups:
            self._check_group(group)
            self.groups.update(dict.fromkeys(group, group))
        self.timing = CommandTiming(self.config)
        self.calls = {"gemv": 0, "gemm": 0, "load_acts": 0}
        self._loaded = None                 # the activation vector in the buffer
        self._ready = {}                    # name -> (x_q, results) a group's GEMV gave
        for count, (name, placement) in enumerate(self.placements.items()):
            if progress:
                progress(f"loading {name} into the banks ({count + 1}/{len(shapes)})")
            self._write(placement, linears[name].trits)

    def _check_group(self, group):
        members = [self.placements[name] for name in group]
        for before, after in zip(members, members[1:]):
            if after.base != before.base + before.words or after.k != before.k:
                raise MappingError(f"{after.name} does not follow {before.name} in the banks "
                                   f"with the same K: they cannot share a GEMV")

    def _write(self, placement, w_t):
        lanes, banks = self.config.pim.lanes, self.config.pim.banks
        padded = np.zeros((placement.rows * banks, placement.words_per_row * lanes), np.int8)
        padded[:placement.n, :placement.k] = w_t
        for bank in range(banks):
            rows = padded[bank::banks].reshape(-1, lanes)        # row slot by row slot
            self.device.write_weights(bank, placement.base, rows)

    def __call__(self, name, x_q):
        x_q = np.asarray(x_q, np.int8)
        ready = self._ready.pop(name, None)
        if ready is not None and np.array_equal(ready[0], x_q):
            return ready[1]
        group = self.groups.get(name, (name,))
        if len(x_q) > 1 and (self.prefill == "array" or self.prefill == "auto"
                             and self._array_is_faster(group, len(x_q))):
            return self._gemm(name, x_q)
        by_token = [self._gemv(group, token) for token in x_q]
        for index, member in enumerate(group):
            result = np.stack([token[index] for token in by_token])
            if member == name:
                answer = result
            else:
                self._ready[member] = (x_q, result)
        return answer

    def _array_is_faster(self, group, tokens):
        """Whether ``tokens`` through the array (tile by tile) take fewer cycles than through
        the banks (token by token), by the command timing of each."""
        first, last = self.placements[group[0]], self.placements[group[-1]]
        chunks = first.words_per_row
        slots = (last.base + last.words - first.base) // chunks
        banks = tokens * (self.timing.simple(Opcode.LOAD_ACTS, chunks)
                          + self.timing.gemv(slots, chunks))
        rows, cols = self.config.array.rows, self.config.array.cols
        tiles = sum(-(-self.placements[name].n // cols) * -(-self.placements[name].k // rows)
                    for name in group)
        array = tiles * (self.timing.simple(Opcode.LOAD_TILE) + self.timing.gemm(tokens))
        return array < banks

    def _gemv(self, group, x_q):
        """One token through the banks: each member's results (int32), in group order."""
        first, last = self.placements[group[0]], self.placements[group[-1]]
        if self._loaded is None or not np.array_equal(self._loaded, x_q):
            self.device.load_activations(x_q)
            self._loaded = x_q.copy()
            self.calls["load_acts"] += 1
        chunks = first.words_per_row
        results = self.device.gemv(first.base, (last.base + last.words - first.base) // chunks,
                                   chunks).reshape(-1).astype(np.int32)
        self.calls["gemv"] += 1
        banks = self.config.pim.banks
        out = []
        for name in group:
            placement = self.placements[name]
            start = (placement.base - first.base) // chunks * banks
            out.append(results[start:start + placement.n])
        return out

    def _gemm(self, name, x_q):
        """Tokens ``x_q`` through the array, tile by tile, the partial sums added here."""
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
