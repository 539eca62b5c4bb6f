"""Mapping a model's ternary matrices onto the device, and the integer core that uses them.

Placement (banks, for GEMV) is :mod:`hw.placement`'s, the one the resident core uses too
(:func:`place`, :class:`Placement` and :class:`MappingError` are re-exported here): matrix row
``n`` in bank ``n % banks`` at row slot ``n // banks``, matrices one after another, resident.

Tiling (array, for GEMM): a matrix is cut into ``cols x rows`` tiles (``N`` by ``K``); each tile
is loaded and every token streamed through it; partial sums over ``K`` tiles add up on the host
in int32, exactly.

Scheduling: matrices the model calls with one activation vector (q|k|v, gate|up: a group, from
:func:`golden.input_groups`) sit one after another in the banks, so one LOAD_ACTS and one GEMV
serve the whole group. Several tokens (prefill) go to whichever unit the command timing says
takes fewer cycles: the banks token by token, or the array tile by tile (its partial sums cross
the link once per ``rows`` of K, so the banks win unless K is short). :class:`Schedule` decides
and costs all this from the shapes alone, so ``bittern perf`` needs no weights.
"""

import numpy as np

from hw.commands import CommandFormat, Opcode
from hw.placement import MappingError, Placement, place

from .driver import Accelerator
from .timing import CommandTiming

__all__ = ["MappingError", "Placement", "place", "write_matrix", "Schedule", "DeviceCore"]

MAX_ITEMS = Accelerator.MAX_ITEMS


def write_matrix(accelerator, placement, w_t):
    """Write the trits ``w_t`` ``(N, K)`` into ``accelerator``'s banks at ``placement``."""
    lanes, banks = accelerator.config.pim.lanes, accelerator.config.pim.banks
    padded = np.zeros((placement.rows * banks, placement.words_per_row * lanes), np.int8)
    padded[:placement.n, :placement.k] = w_t
    for bank in range(banks):
        rows = padded[bank::banks].reshape(-1, lanes)        # row slot by row slot
        accelerator.write_weights(bank, placement.base, rows)


class Schedule:
    """Which commands serve each call of the core, from the shapes alone (no weights, no
    values): where a group's tokens go, and what that costs in cycles and link words.

    ``shapes`` are ``{name: (N, K)}`` in placement order; ``groups`` tuples of names called with
    one ``x_q`` (placed consecutively, they take one GEMV); ``prefill`` is where several tokens
    go: ``"auto"`` (the unit that takes fewer cycles by the command timing), ``"banks"`` (token
    by token) or ``"array"`` (tile by tile).
    """

    PREFILL = ("auto", "banks", "array")

    def __init__(self, config, shapes, *, groups=(), prefill="auto"):
        if prefill not in self.PREFILL:
            raise ValueError(f"prefill must be one of {', '.join(self.PREFILL)}, not {prefill!r}")
        self.config, self.prefill = config, prefill
        self.format = CommandFormat(config)
        self.timing = CommandTiming(config)
        self.placements = place(shapes, config)
        self.groups = {}
        for group in groups:
            self._check_group(group)
            self.groups.update(dict.fromkeys(group, group))

    def _check_group(self, group):
        members = [self.placements[name] for name in group]
        for before, after in zip(members, members[1:]):
            if after.base != before.base + before.words or after.k != before.k:
                raise MappingError(f"{after.name} does not follow {before.name} in the banks "
                                   f"with the same K: they cannot share a GEMV")

    def group(self, name):
        """The names served with ``name`` (itself alone if it is in no group)."""
        return self.groups.get(name, (name,))

    def span(self, group):
        """``(base, row slots, words per row)`` of the group's one GEMV."""
        first, last = self.placements[group[0]], self.placements[group[-1]]
        return (first.base, (last.base + last.words - first.base) // first.words_per_row,
                first.words_per_row)

    def unit(self, group, tokens):
        """``"banks"`` or ``"array"``: where ``tokens`` tokens of ``group`` go."""
        if tokens == 1 or self.prefill == "banks":
            return "banks"
        if self.prefill == "array":
            return "array"
        return "array" if self.cost(group, tokens, "array") < self.cost(group, tokens,
                                                                         "banks") else "banks"

    def commands(self, group, tokens, unit=None):
        """The commands a call sends, as ``(opcode, count)`` pairs, in order (``count``: how
        many such commands, GEMMs split at the header's item limit)."""
        unit = unit or self.unit(group, tokens)
        if unit == "banks":
            _, slots, chunks = self.span(group)
            return [((Opcode.LOAD_ACTS, chunks), tokens), ((Opcode.GEMV, slots, chunks), tokens)]
        rows, cols = self.config.array.rows, self.config.array.cols
        tiles = sum(-(-self.placements[name].n // cols) * -(-self.placements[name].k // rows)
                    for name in group)
        whole, rest = divmod(tokens, MAX_ITEMS)
        gemms = [((Opcode.GEMM, MAX_ITEMS), tiles * whole)] if whole else []
        gemms += [((Opcode.GEMM, rest), tiles)] if rest else []
        return [((Opcode.LOAD_TILE,), tiles), *gemms]

    def cost(self, group, tokens, unit=None):
        """Busy cycles of a call (those of its commands)."""
        total = 0
        for command, count in self.commands(group, tokens, unit):
            opcode = command[0]
            cycles = (self.timing.gemv(*command[1:]) if opcode is Opcode.GEMV else
                      self.timing.gemm(command[1]) if opcode is Opcode.GEMM else
                      self.timing.simple(opcode, *command[1:2]))
            total += count * cycles
        return total

    def words(self, group, tokens, unit=None):
        """``(to the device, from it)``: the link words of a call."""
        fmt, sent, received = self.format, 0, 0
        for command, count in self.commands(group, tokens, unit):
            opcode = command[0]
            if opcode is Opcode.LOAD_ACTS:
                sent += count * (2 + command[1] * fmt.act_chunk_words)
            elif opcode is Opcode.GEMV:
                sent += count * 3
                received += count * (1 + command[1] * fmt.banks)
            elif opcode is Opcode.LOAD_TILE:
                sent += count * (1 + fmt.rows * fmt.tile_row_words)
            else:
                sent += count * (1 + command[1] * fmt.token_words)
                received += count * (1 + command[1] * fmt.cols)
        return sent, received


class DeviceCore:
    """golden's integer-core hook, computed on a device: ``core(name, x_q) -> int32``.

    The banks are written once, at construction; the :class:`Schedule` of ``groups`` and
    ``prefill`` says which commands serve each call. A call for a later member of a group
    returns what the group's GEMV gave. ``calls`` counts GEMV, GEMM and LOAD_ACTS commands.
    """

    def __init__(self, accelerator, linears, *, groups=(), prefill="auto", progress=None):
        self.device = accelerator
        self.config = accelerator.config
        self.linears = linears
        self.schedule = Schedule(self.config, {name: weight.trits.shape
                                               for name, weight in linears.items()},
                                 groups=groups, prefill=prefill)
        self.placements = self.schedule.placements
        self.calls = {"gemv": 0, "gemm": 0, "load_acts": 0}
        self._ready = {}                    # name -> (x_q, results) a group's GEMV gave
        for count, (name, placement) in enumerate(self.placements.items()):
            if progress:
                progress(f"loading {name} into the banks ({count + 1}/{len(linears)})")
            self._write(placement, linears[name].trits)

    def _write(self, placement, w_t):
        write_matrix(self.device, placement, w_t)

    def __call__(self, name, x_q):
        x_q = np.asarray(x_q, np.int8)
        ready = self._ready.pop(name, None)
        if ready is not None and np.array_equal(ready[0], x_q):
            return ready[1]
        group = self.schedule.group(name)
        if self.schedule.unit(group, len(x_q)) == "array":
            return self._gemm(name, x_q)
        by_token = [self._gemv(group, token) for token in x_q]
        for index, member in enumerate(group):
            result = np.stack([token[index] for token in by_token])
            if member == name:
                answer = result
            else:
                self._ready[member] = (x_q, result)
        return answer

    def _gemv(self, group, x_q):
        """One token through the banks: each member's results (int32), in group order."""
        base, slots, chunks = self.schedule.span(group)
        self.device.load_activations(x_q)
        results = self.device.gemv(base, slots, chunks).reshape(-1).astype(np.int32)
        self.calls["load_acts"] += 1
        self.calls["gemv"] += 1
        banks = self.config.pim.banks
        out = []
        for name in group:
            placement = self.placements[name]
            start = (placement.base - base) // chunks * banks
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
