"""Where a model's ternary matrices live in the PIM banks, and whether a model fits the
resident units: the one placement that the driver (offload mode) and the resident core
(elaborated for ``config.resident``) both use.

Placement: matrix row ``n`` lives in bank ``n % banks`` at row slot ``n // banks``; a row is
``ceil(K / lanes)`` consecutive words (zero-padded), and a matrix takes
``ceil(N / banks) * words_per_row`` words at the same base address in every bank. One GEMV then
returns row ``n`` as result word ``n`` (``slot * banks + bank``). Matrices are placed once, one
after another, and stay resident.
"""

from dataclasses import dataclass

__all__ = ["MappingError", "Placement", "place", "bank_words", "RESIDENT_SHAPE", "resident_fit"]


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
    """Each matrix's placement, in order, one after another from word 0, however deep."""
    banks, lanes, base = config.pim.banks, config.pim.lanes, 0
    for name, (n, k) in shapes.items():
        if k > config.max_k:
            raise MappingError(f"{name}: K = {k} exceeds the device's max_k = {config.max_k}")
        placement = Placement(name, n, k, base, -(-n // banks), -(-k // lanes))
        yield placement
        base += placement.words


def place(shapes, config):
    """Place every ``name: (N, K)`` of ``shapes`` in the banks of ``config``, in order; the
    first matrix that does not fit raises :class:`MappingError`."""
    banks, lanes, depth = config.pim.banks, config.pim.lanes, config.pim.depth
    placements = {}
    for placement in _layout(shapes, config):
        needed = placement.base + placement.words
        if needed > depth:
            raise MappingError(f"{placement.name}: the model needs at least {needed} words per "
                               f"bank, the device has {depth} ({banks} banks x {lanes} lanes x "
                               f"{depth})")
        placements[placement.name] = placement
    return placements


# The fields of golden's ModelConfig the resident units are generated for, exactly.
RESIDENT_SHAPE = ("hidden", "ffn", "layers", "heads", "kv_heads", "vocab")


def resident_fit(config, model_cfg):
    """Check that the model of ``model_cfg`` (golden's ``ModelConfig``) runs on the resident
    units of ``config``; :class:`MappingError` says which memory or field does not, and by how
    much.

    The units are generated for exactly ``config.resident``'s :data:`RESIDENT_SHAPE`; the KV
    cache holds ``config.resident.max_seq`` positions, which a model's ``max_seq`` may not
    exceed (the banks hold every BitLinear of that shape: ``Config`` checks it).
    ``rope_theta`` and ``eps`` are no part of the shape: the host loads the tables and constants
    made from them.
    """
    resident = config.resident
    if resident is None:
        raise MappingError("this preset has no resident units (offload only)")
    mismatches = [f"{name} {getattr(resident, name)}, the model has {getattr(model_cfg, name)}"
                  for name in RESIDENT_SHAPE
                  if getattr(resident, name) != getattr(model_cfg, name)]
    if mismatches:
        raise MappingError("the resident units are built for " + "; for ".join(mismatches))
    if model_cfg.max_seq > resident.max_seq:
        raise MappingError(f"the KV cache holds max_seq {resident.max_seq} positions, the model "
                           f"asks {model_cfg.max_seq}")


def bank_words(shapes, config):
    """Words a bank that the matrices ``{name: (N, K)}`` take, placed as :func:`place` does
    (however deep the banks)."""
    *_, last = _layout(shapes, config)
    return last.base + last.words
