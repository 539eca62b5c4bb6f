"""The generator's configuration record: one frozen dataclass, shared by hw/, sim/ and sw_driver/.

Derived values (accumulator widths, word widths, buffer sizes) are properties, never stored, so
they cannot disagree with the fields they come from. The PE kinds a configuration may name are
those of the registry in :mod:`hw.pe`.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field

from golden.trits import CODE_BITS
from golden.widths import signed_bits_for

__all__ = ["ConfigError", "ArrayConfig", "PimConfig", "ResidentConfig", "Config", "PRESETS",
           "preset", "apply_overrides"]


class ConfigError(ValueError):
    """An invalid configuration; the message names the parameter and the allowed range."""


def _check_int(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], not {value}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                          f"not {value!r}")


DATAFLOWS = ("weight-stationary",)


@dataclass(frozen=True)
class ArrayConfig:
    """Systolic tensor unit: ``rows`` x ``cols`` PEs.

    The reduction (K) runs down the rows and the outputs (N) across the columns, so one tile is
    ``K <= rows`` by ``N <= cols``.
    """
    rows: int = 8
    cols: int = 8
    pe: str = "ternary"
    dataflow: str = "weight-stationary"

    def __post_init__(self):
        _check_int("array.rows", self.rows, 1, 256)
        _check_int("array.cols", self.cols, 1, 256)
        from hw.pe import PE_KINDS

        _check_choice("array.pe", self.pe, list(PE_KINDS))
        _check_choice("array.dataflow", self.dataflow, DATAFLOWS)


@dataclass(frozen=True)
class PimConfig:
    """Processing-in-memory bank group: ``banks`` banks of ``depth`` words of ``lanes`` trits."""
    banks: int = 4
    lanes: int = 16
    depth: int = 512

    def __post_init__(self):
        _check_int("pim.banks", self.banks, 1, 64)
        _check_int("pim.lanes", self.lanes, 1, 256)
        _check_int("pim.depth", self.depth, 2, 1 << 20)


@dataclass(frozen=True)
class ResidentConfig:
    """The model shape the resident decoder's units are generated for (golden's ``ModelConfig``
    without ``rope_theta`` and ``eps``: the host loads the tables and constants made from them).

    The units fit exactly ``hidden``, ``ffn``, ``layers``, ``heads``, ``kv_heads`` and ``vocab``;
    the KV cache holds ``max_seq`` positions. ``head_dim = hidden // heads``. The defaults are
    the shipped model's shape (``sw_driver/models/tiny.json``).
    """
    hidden: int = 128
    ffn: int = 384
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 256
    max_seq: int = 256

    def __post_init__(self):
        _check_int("resident.hidden", self.hidden, 2, 1 << 16)
        _check_int("resident.ffn", self.ffn, 1, 1 << 16)
        _check_int("resident.layers", self.layers, 1, 256)
        _check_int("resident.heads", self.heads, 1, 256)
        _check_int("resident.kv_heads", self.kv_heads, 1, 256)
        _check_int("resident.vocab", self.vocab, 1, 1 << 18)
        _check_int("resident.max_seq", self.max_seq, 1, 1 << 16)
        if self.hidden % self.heads:
            raise ConfigError(f"resident.hidden ({self.hidden}) must be a multiple of "
                              f"resident.heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ConfigError(f"resident.heads ({self.heads}) must be a multiple of "
                              f"resident.kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"resident head_dim = hidden / heads = {self.head_dim} must be "
                              f"even for RoPE")

    @property
    def head_dim(self):
        return self.hidden // self.heads


@dataclass(frozen=True)
class Config:
    """A whole device: numeric widths, the tensor unit, the PIM banks, the target clock and,
    if it has them, the resident decoder's units (``resident``; None: offload only)."""
    act_bits: int = 8
    max_k: int = 8192
    clock_mhz: float = 100.0
    array: ArrayConfig = field(default_factory=ArrayConfig)
    pim: PimConfig = field(default_factory=PimConfig)
    resident: ResidentConfig | None = None

    ACC_LIMIT_BITS = 32          # results leave the device as int32 (docs/design.md)

    # Activations are int8 end to end: golden's integer core (golden/bitlinear.py) takes int8
    # x_q, and the driver and the behavioural device pack and unpack int8. The generator takes
    # narrower widths (the formal proofs shrink their designs so), but a user's configuration
    # (apply_overrides) must be int8: another width builds a device nothing can check.
    ACT_BITS = 8

    def __post_init__(self):
        _check_int("act_bits", self.act_bits, 2, 16)
        _check_int("max_k", self.max_k, 1, 1 << 24)
        if isinstance(self.clock_mhz, bool) or not isinstance(self.clock_mhz, (int, float)) \
                or not 1.0 <= self.clock_mhz <= 1000.0:
            raise ConfigError(f"clock_mhz must be a number in [1, 1000], not {self.clock_mhz!r}")
        if not isinstance(self.array, ArrayConfig):
            raise ConfigError(f"array must be an ArrayConfig, not {self.array!r}")
        if not isinstance(self.pim, PimConfig):
            raise ConfigError(f"pim must be a PimConfig, not {self.pim!r}")
        if self.acc_bits > self.ACC_LIMIT_BITS:
            largest = ((1 << (self.ACC_LIMIT_BITS - 1)) - 1) >> (self.act_bits - 1)
            raise ConfigError(f"max_k must be in [1, {largest}] so that a {self.act_bits}-bit "
                              f"reduction fits int{self.ACC_LIMIT_BITS}, not {self.max_k}")
        if self.resident is not None:
            self._check_resident()

    def offload_only(self):
        """This device without its resident units (what an offload run builds: it never starts
        them)."""
        return dataclasses.replace(self, resident=None)

    def _check_resident(self):
        """What the resident units need of the rest of the device: vectors of whole bank words
        (a head's slice too), every BitLinear's K within ``max_k``, and room in the banks for
        every matrix."""
        resident = self.resident
        if not isinstance(resident, ResidentConfig):
            raise ConfigError(f"resident must be a ResidentConfig or None, not {resident!r}")
        for name, value in (("resident.hidden", resident.hidden), ("resident.ffn", resident.ffn),
                            ("resident head_dim", resident.head_dim)):
            if value % self.pim.lanes:
                raise ConfigError(f"{name} ({value}) must be a multiple of pim.lanes "
                                  f"({self.pim.lanes})")
        for name, value in (("resident.hidden", resident.hidden), ("resident.ffn", resident.ffn)):
            if value > self.max_k:
                raise ConfigError(f"{name} ({value}) must be at most max_k ({self.max_k})")
        # The banks hold every matrix of the model the resident units run.
        from golden.model import linear_shapes

        from .placement import bank_words
        needed = bank_words(linear_shapes(resident), self)
        if needed > self.pim.depth:
            raise ConfigError(f"pim.depth ({self.pim.depth}) must be at least {needed}: the "
                              f"resident model's matrices take {needed} words a bank "
                              f"(resident=none leaves the device offload only)")

    @property
    def act_max_magnitude(self):
        """Largest |x| of a signed activation (``2**(act_bits-1)``, from the most negative code)."""
        return 1 << (self.act_bits - 1)

    @property
    def acc_bits(self):
        """Accumulator width for a reduction of ``max_k`` terms: overflow is impossible."""
        return signed_bits_for(self.max_k * self.act_max_magnitude)

    @property
    def word_bits(self):
        """Width of one PIM bank word: ``lanes`` trits of 2 bits."""
        return CODE_BITS * self.pim.lanes

    @property
    def act_words(self):
        """Chunks of ``lanes`` activations in the activation buffer: ``ceil(max_k / lanes)``."""
        return -(-self.max_k // self.pim.lanes)

    @property
    def bank_trits(self):
        """Ternary weights one bank holds."""
        return self.pim.lanes * self.pim.depth

    # JSON form: the single serialisation shared by the generator metadata and the driver.

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, **kwargs):
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}; known keys: "
                              f"{', '.join(sorted(known))}")
        for name, sub in _NESTED.items():
            if name in data and not (name in _OPTIONAL and data[name] is None):
                data[name] = _sub_from_dict(name, sub, data[name])
        return cls(**data)

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config JSON is malformed: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object")
        return cls.from_dict(data)


# The nested records, by field; those in _OPTIONAL may be None (a device without them).
_NESTED = {"array": ArrayConfig, "pim": PimConfig, "resident": ResidentConfig}
_OPTIONAL = {"resident"}


def _sub_from_dict(prefix, cls, data):
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix} must be an object, not {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}.{unknown[0]}'; known keys: "
                          f"{', '.join(f'{prefix}.{k}' for k in sorted(known))}")
    return cls(**data)


def _override(base, **changes):
    """A preset is the default with some fields replaced (nested configs replaced by parts)."""
    nested = {name: dataclasses.replace(getattr(base, name), **changes.pop(name))
              for name in ("array", "pim") if name in changes}
    return dataclasses.replace(base, **changes, **nested)


_DEFAULT = Config()
PRESETS = {
    # Small enough that every Verilator build in CI takes seconds. The resident units are built
    # for a small model (head_dim 8) whose matrices take 576 words a bank (hw.placement); the
    # banks have 1024, room for a test's other shapes.
    "tiny": _override(_DEFAULT, max_k=256, array=dict(rows=4, cols=4),
                      pim=dict(banks=2, lanes=4, depth=1024),
                      resident=ResidentConfig(hidden=16, ffn=32, layers=2, heads=2, kv_heads=1,
                                              vocab=256, max_seq=16)),
    "default": _DEFAULT,
    # ECP5-85F: 208 EBR of 18 Kbit. 16 banks x 1024 words x 32 lanes = 512 Ki trits = 1 Mbit.
    # Resident units for the shipped model (ResidentConfig's defaults): its matrices take 768
    # words a bank.
    "ulx3s-85f": _override(_DEFAULT, clock_mhz=100.0, array=dict(rows=16, cols=16),
                           pim=dict(banks=16, lanes=32, depth=1024), resident=ResidentConfig()),
    # iCE40UP5K: 5,280 LUT4, 30 EBR of 4 Kbit; banks fit in EBR. Sized for the whole device
    # behind the UART to take under 90 % of the cells: a bank's engine and its result FIFO
    # (flip-flops: the iCE40 has no distributed RAM) cost ~600 cells, and near 98 % nextpnr's
    # placers stall or fail. docs/timing.md has the builds.
    "icebreaker": _override(_DEFAULT, clock_mhz=24.0, max_k=1024, array=dict(rows=4, cols=3),
                            pim=dict(banks=2, lanes=8, depth=256)),
}


def preset(name):
    """The named preset, or :class:`ConfigError` listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: "
                          f"{', '.join(PRESETS)}") from None


def _field_paths(config):
    """Map every settable key (``rows`` and ``array.rows`` alike) to its full dotted path."""
    paths = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                paths[f"{f.name}.{sub.name}"] = (f.name, sub.name)
                paths.setdefault(sub.name, (f.name, sub.name))
        if not dataclasses.is_dataclass(value) or f.name in _OPTIONAL:
            paths[f.name] = (f.name,)
    return paths


def _parse_value(key, text, current):
    if isinstance(current, bool):
        raise ConfigError(f"{key}: booleans are not settable")
    if isinstance(current, int):
        try:
            return int(text, 0)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, not {text!r}") from None
    if isinstance(current, float):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key} must be a number, not {text!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, not {text!r}")
        return value
    return text


_RESIDENT_KEYS = {f.name for f in dataclasses.fields(ResidentConfig)}


def apply_overrides(config, assignments):
    """Apply ``key=value`` strings (``rows=3`` or ``array.rows=3``) to ``config``;
    ``resident=none`` makes it offload only. The assignments are checked together, as one new
    config, so their order does not matter (``resident.hidden=12 resident.heads=3`` from
    hidden 16 and 2 heads passes through no invalid shape)."""
    paths = _field_paths(config)
    changes = {}            # a field of Config: its value, or {sub-field: value} of a record
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, not {assignment!r}")
        offload_only = config.resident is None or changes.get("resident", ()) is None
        if key not in paths or (offload_only and paths[key][0] == "resident"
                                and paths[key] != ("resident",)):
            if offload_only and (key.startswith("resident.") or key in _RESIDENT_KEYS):
                raise ConfigError(f"{key}: this preset has no resident units (offload only)")
            known = ", ".join(sorted(k for k in paths if len(paths[k]) == 1 or "." in k))
            raise ConfigError(f"unknown config key {key!r}; known keys: {known}")
        path = paths[key]
        if path == ("resident",):
            if text.strip().lower() != "none":
                raise ConfigError(f"resident can only be set to none (offload only), not "
                                  f"{text.strip()!r}; its fields one by one: resident.hidden=...")
            changes["resident"] = None
        elif len(path) == 1:
            changes[path[0]] = _parse_value(key, text.strip(), getattr(config, path[0]))
        else:
            current = getattr(getattr(config, path[0]), path[1])
            changes.setdefault(path[0], {})[path[1]] = _parse_value(key, text.strip(), current)
    config = dataclasses.replace(config, **{
        field: dataclasses.replace(getattr(config, field), **value)
        if isinstance(value, dict) else value for field, value in changes.items()})
    if config.act_bits != Config.ACT_BITS:
        raise ConfigError(f"act_bits must be {Config.ACT_BITS}, not {config.act_bits}: golden's "
                          f"BitLinear quantises activations to int8, and the driver packs them "
                          f"as int8")
    return config
