"""BitNet b1.58 decoder of the 2B4T family in NumPy: the golden model (the numeric contract of
docs/design.md).

Graph (as HF ``BitNetForCausalLM``), every float step in float32::

    h = embedding[tokens]
    per layer i:
        a = input_layernorm(h);  q, k, v = q_proj(a), k_proj(a), v_proj(a)   # one x_q for all
        q, k = rope(q), rope(k);  o = causal grouped-query attention over the KV cache
        h = h + o_proj(attn_sub_norm(o))
        m = post_attention_layernorm(h);  g, u = gate_proj(m), up_proj(m)     # one x_q for both
        h = h + down_proj(ffn_sub_norm(relu(g)**2 * u))
    logits = norm(h) @ embedding.T                                           # tied, not ternary

Every BitLinear's integer work goes through one hook, ``core(name, x_q) -> acc``: ``name`` is
the matrix's HF name without the ``model.`` prefix (``"layers.3.mlp.up_proj"``), ``x_q`` is int8
``(T, K)`` and ``acc`` must be int32 ``(T, N)``. The default core runs :func:`bitlinear_int` on
the model's own trits; a driver passes a core that asks a device. Nothing else changes.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np

from golden.bitlinear import bitlinear_int, quantize_activations, quantize_weights, rescale
from golden.trits import check_trits

__all__ = [
    "ModelConfig", "BITNET_B158_2B4T", "TernaryWeight", "ModelWeights", "linear_shapes",
    "ATTENTION_INPUTS", "MLP_INPUTS", "input_groups", "norm_sizes", "random_float_tensors",
    "WeightsCore", "CoreCall", "RecordingCore", "Decoder", "Model",
    "rms_norm", "rope_inverse_frequencies", "rope_tables", "apply_rope", "attention",
]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of a BitNet b1.58 decoder. ``head_dim = hidden / heads``; JSON form: ``to_dict``."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    rope_theta: float = 500000.0
    max_seq: int
    eps: float = 1e-5

    def __post_init__(self):
        for field in ("hidden", "layers", "heads", "kv_heads", "ffn", "vocab", "max_seq"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{field} must be a positive integer, not {value!r}")
        for field in ("rope_theta", "eps"):
            value = getattr(self, field)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not 0 < value < math.inf):
                raise ValueError(f"ModelConfig.{field} must be a finite number > 0, "
                                 f"not {value!r}")
            object.__setattr__(self, field, float(value))
        if self.hidden % self.heads:
            raise ValueError(f"ModelConfig.hidden ({self.hidden}) must be a multiple of "
                             f"heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise ValueError(f"ModelConfig.heads ({self.heads}) must be a multiple of "
                             f"kv_heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig head_dim = hidden / heads = {self.head_dim} must be "
                             f"even for RoPE")

    @property
    def head_dim(self):
        return self.hidden // self.heads

    @property
    def kv_group(self):
        """Query heads per KV head."""
        return self.heads // self.kv_heads

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        fields = dataclasses.fields(cls)
        unknown = sorted(set(data) - {field.name for field in fields})
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        missing = [field.name for field in fields
                   if field.default is dataclasses.MISSING and field.name not in data]
        if missing:
            raise ValueError(f"ModelConfig is missing field(s): {', '.join(missing)}")
        return cls(**data)


BITNET_B158_2B4T = ModelConfig(hidden=2560, layers=30, heads=20, kv_heads=5, ffn=6912,
                               vocab=128256, max_seq=4096)


class TernaryWeight(NamedTuple):
    """One BitLinear matrix: int8 trits ``(N, K)`` and its float32 scale."""

    trits: np.ndarray
    gamma: np.float32


def linear_shapes(cfg):
    """``{name: (N, K)}`` of every BitLinear, in the order a forward pass calls them."""
    kv = cfg.kv_heads * cfg.head_dim
    attn = {"q_proj": (cfg.hidden, cfg.hidden), "k_proj": (kv, cfg.hidden),
            "v_proj": (kv, cfg.hidden), "o_proj": (cfg.hidden, cfg.hidden)}
    mlp = {"gate_proj": (cfg.ffn, cfg.hidden), "up_proj": (cfg.ffn, cfg.hidden),
           "down_proj": (cfg.hidden, cfg.ffn)}
    shapes = {}
    for i in range(cfg.layers):
        shapes.update({f"layers.{i}.self_attn.{name}": shape for name, shape in attn.items()})
        shapes.update({f"layers.{i}.mlp.{name}": shape for name, shape in mlp.items()})
    return shapes


# The BitLinears of a layer that share one activation quantisation (one x_q), in call order.
ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
MLP_INPUTS = ("gate_proj", "up_proj")


def input_groups(cfg):
    """Tuples of BitLinear names that the forward pass calls with one and the same ``x_q``,
    in call order (``linear_shapes`` order): per layer q|k|v, o, gate|up, down."""
    groups = []
    for i in range(cfg.layers):
        attn, mlp = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
        groups += [tuple(attn + name for name in ATTENTION_INPUTS), (attn + "o_proj",),
                   tuple(mlp + name for name in MLP_INPUTS), (mlp + "down_proj",)]
    return groups


def norm_sizes(cfg):
    """``{name: size}`` of every RMSNorm gain."""
    sizes = {}
    for i in range(cfg.layers):
        sizes[f"layers.{i}.input_layernorm"] = cfg.hidden
        sizes[f"layers.{i}.self_attn.attn_sub_norm"] = cfg.hidden
        sizes[f"layers.{i}.post_attention_layernorm"] = cfg.hidden
        sizes[f"layers.{i}.mlp.ffn_sub_norm"] = cfg.ffn
    sizes["norm"] = cfg.hidden
    return sizes


def _hf_key(name):
    return f"model.{name}.weight"


_EMBEDDING = "embed_tokens"
_TIED_HEAD_KEY = "lm_head.weight"


def _hf_shapes(cfg):
    shapes = {_hf_key(_EMBEDDING): (cfg.vocab, cfg.hidden)}
    shapes.update({_hf_key(name): (size,) for name, size in norm_sizes(cfg).items()})
    shapes.update({_hf_key(name): shape for name, shape in linear_shapes(cfg).items()})
    return shapes


def random_float_tensors(cfg, seed):
    """Random float32 master weights under their HF state-dict names (``model.*.weight``)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for key, shape in _hf_shapes(cfg).items():
        if len(shape) == 1:            # RMSNorm gain around 1
            tensor = 1 + 0.2 * rng.standard_normal(shape)
        else:                          # unit-variance outputs for unit-variance inputs
            tensor = rng.standard_normal(shape) / math.sqrt(shape[1])
        tensors[key] = tensor.astype(np.float32)
    return tensors


@dataclass(frozen=True, eq=False)
class ModelWeights:
    """Weights of a decoder, addressed by HF names without the ``model.`` prefix.

    ``embedding`` is float32 ``(vocab, hidden)`` and is also the lm_head. ``norms`` maps names
    like ``"layers.0.input_layernorm"`` and ``"norm"`` to float32 gains. ``linears`` maps names
    like ``"layers.0.self_attn.q_proj"`` to :class:`TernaryWeight`.
    """

    embedding: np.ndarray
    norms: Mapping[str, np.ndarray]
    linears: Mapping[str, TernaryWeight]

    @classmethod
    def from_float(cls, cfg, tensors):
        """Quantise float master weights named as in an HF state dict (``model.*.weight``).

        An ``lm_head.weight`` may be present only if it equals the embedding (tied).
        """
        shapes = _hf_shapes(cfg)
        _check_names(shapes, set(tensors) - {_TIED_HEAD_KEY}, "float tensors")
        for key, shape in shapes.items():
            if np.shape(tensors[key]) != shape:
                raise ValueError(f"{key} has shape {np.shape(tensors[key])}, expected {shape}")
        embedding = np.asarray(tensors[_hf_key(_EMBEDDING)], dtype=np.float32)
        if _TIED_HEAD_KEY in tensors and not np.array_equal(tensors[_TIED_HEAD_KEY], embedding):
            raise ValueError(f"{_TIED_HEAD_KEY} differs from {_hf_key(_EMBEDDING)}; "
                             f"the model ties them")
        weights = cls(
            embedding=embedding,
            norms={name: np.asarray(tensors[_hf_key(name)], dtype=np.float32)
                   for name in norm_sizes(cfg)},
            linears={name: TernaryWeight(*quantize_weights(tensors[_hf_key(name)]))
                     for name in linear_shapes(cfg)})
        weights.check(cfg)
        return weights

    @classmethod
    def random(cls, cfg, seed):
        """Quantised :func:`random_float_tensors`, for tests."""
        return cls.from_float(cfg, random_float_tensors(cfg, seed))

    def check(self, cfg):
        """Raise ValueError naming the first tensor that does not fit ``cfg``."""
        _check_float(_EMBEDDING, self.embedding, (cfg.vocab, cfg.hidden))
        sizes = norm_sizes(cfg)
        _check_names(sizes, set(self.norms), "norms")
        for name, size in sizes.items():
            _check_float(name, self.norms[name], (size,))
        shapes = linear_shapes(cfg)
        _check_names(shapes, set(self.linears), "linears")
        for name, shape in shapes.items():
            trits, gamma = self.linears[name]
            if np.shape(trits) != shape:
                raise ValueError(f"{name} trits have shape {np.shape(trits)}, expected {shape}")
            if np.asarray(trits).dtype != np.int8:
                raise ValueError(f"{name} trits must be int8, not {np.asarray(trits).dtype}")
            check_trits(trits, name=name)
            if not isinstance(gamma, np.float32) or not 0 < gamma < np.inf:
                raise ValueError(f"{name} gamma must be a positive finite np.float32, "
                                 f"not {gamma!r}")


def _check_names(expected, present, what):
    missing = [name for name in expected if name not in present]
    unexpected = sorted(present - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what} do not fit the config: missing {missing or 'none'}, "
                         f"unexpected {unexpected or 'none'}")


def _check_float(name, array, shape):
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.shape != shape:
        raise ValueError(f"{name} must be a float32 array of shape {shape}, not "
                         f"{getattr(array, 'dtype', type(array).__name__)} "
                         f"{np.shape(array)}")


class WeightsCore:
    """The default integer core: :func:`bitlinear_int` on the trits in ``weights``."""

    def __init__(self, weights):
        self.weights = weights

    def __call__(self, name, x_q):
        return bitlinear_int(x_q, self.weights.linears[name].trits)


class CoreCall(NamedTuple):
    """One recorded core call: the matrix name, its int8 input and its int32 result."""

    name: str
    x_q: np.ndarray
    acc: np.ndarray


class RecordingCore:
    """Wraps a core and keeps a copy of every call in ``calls``, so a checker can replay them."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def __call__(self, name, x_q):
        acc = self.inner(name, x_q)
        self.calls.append(CoreCall(name, np.array(x_q), np.array(acc)))
        return acc


def rms_norm(x, gain, eps):
    """``gain * (x / sqrt(mean(x^2) + eps))`` over the last axis, float32."""
    mean_square = np.mean(np.square(x), axis=-1, keepdims=True)
    return gain * (x * (np.float32(1) / np.sqrt(mean_square + np.float32(eps))))


def rope_inverse_frequencies(head_dim, theta):
    """``1 / theta ** (arange(0, head_dim, 2) / head_dim)``, float32 ``(head_dim / 2,)``."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return np.float32(1) / np.power(np.float32(theta), exponents)


def rope_tables(positions, inverse_frequencies):
    """``(cos, sin)``, each float32 ``(T, head_dim)``: the angles concatenated twice."""
    angles = np.asarray(positions, dtype=np.float32)[:, None] * inverse_frequencies[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate ``x (T, heads, head_dim)`` in the HF rotate-half layout (pairs i, i + d/2)."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def attention(q, keys, values, start_pos):
    """Causal grouped-query attention; float32 ``(T, heads * head_dim)``.

    ``q`` is ``(T, heads, head_dim)`` at positions ``start_pos ..``; ``keys`` and ``values``
    are ``(S, kv_heads, head_dim)`` for positions ``0 .. S - 1``. Query head ``h`` reads KV head
    ``h // (heads / kv_heads)``, as HF ``repeat_kv`` does.
    """
    steps, heads, head_dim = q.shape
    group = heads // keys.shape[1]
    k = np.repeat(keys, group, axis=1).transpose(1, 2, 0)      # (heads, head_dim, S)
    v = np.repeat(values, group, axis=1).transpose(1, 0, 2)    # (heads, S, head_dim)
    scores = (q.transpose(1, 0, 2) @ k) * np.float32(head_dim ** -0.5)
    query_pos = start_pos + np.arange(steps)
    visible = np.arange(keys.shape[0])[None, :] <= query_pos[:, None]
    scores = np.where(visible, scores, -np.inf)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    return (probs @ v).transpose(1, 0, 2).reshape(steps, heads * head_dim)


class Decoder:
    """What both decoders (:class:`Model`, :class:`golden.integer.IntegerModel`) share: a KV
    cache of ``cache_dtype`` per layer, and the checks of their arguments."""

    cache_dtype = None

    @property
    def position(self):
        """Number of positions held in the KV cache (the next ``start_pos``)."""
        return self._keys[0].shape[0]

    def reset(self):
        """Empty the KV cache."""
        empty = np.zeros((0, self.cfg.kv_heads, self.cfg.head_dim), dtype=self.cache_dtype)
        self._keys = [empty] * self.cfg.layers
        self._values = [empty] * self.cfg.layers

    def _check_generation(self, prompt_tokens, n_tokens):
        """The prompt as an array, once ``n_tokens`` after it fit ``max_seq``."""
        prompt = self._check_tokens(prompt_tokens, "prompt_tokens")
        if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 0:
            raise ValueError(f"n_tokens must be a non-negative integer, not {n_tokens!r}")
        needed = len(prompt) + n_tokens - 1    # the last new token is never fed back
        if needed > self.cfg.max_seq:
            raise ValueError(f"{len(prompt)} prompt tokens and {n_tokens} new tokens need "
                             f"{needed} positions, more than max_seq = {self.cfg.max_seq}")
        return prompt

    def _check_tokens(self, tokens, what):
        array = np.asarray(tokens)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"{what} must be a non-empty 1-D sequence, not shape {array.shape}")
        if array.dtype.kind not in "iu":
            raise ValueError(f"{what} must be integers, not dtype {array.dtype}")
        bad = np.flatnonzero((array < 0) | (array >= self.cfg.vocab))
        if bad.size:
            raise ValueError(f"{what}[{bad[0]}] = {array[bad[0]]} is outside the vocabulary "
                             f"[0, {self.cfg.vocab})")
        return array

    def _check_start(self, start_pos, steps):
        if not isinstance(start_pos, (int, np.integer)) or not 0 <= start_pos <= self.position:
            raise ValueError(f"start_pos must be an integer in [0, {self.position}] (the cached "
                             f"positions), not {start_pos!r}")
        if start_pos + steps > self.cfg.max_seq:
            raise ValueError(f"positions {start_pos} .. {start_pos + steps - 1} exceed "
                             f"max_seq = {self.cfg.max_seq}")


class Model(Decoder):
    """The golden decoder with a KV cache. ``core`` does all BitLinear integer work."""

    cache_dtype = np.float32

    def __init__(self, cfg, weights, core=None):
        weights.check(cfg)
        self.cfg = cfg
        self.weights = weights
        self.core = WeightsCore(weights) if core is None else core
        self._inverse_frequencies = rope_inverse_frequencies(cfg.head_dim, cfg.rope_theta)
        self.reset()

    def forward(self, tokens, start_pos):
        """Logits float32 ``(T, vocab)`` for ``tokens`` at positions ``start_pos ..``.

        The cache keeps positions ``0 .. start_pos - 1`` (``start_pos`` may rewind it) and then
        holds ``tokens`` too. Nothing changes if an error is raised.
        """
        tokens = self._check_tokens(tokens, "tokens")
        self._check_start(start_pos, len(tokens))
        cos, sin = rope_tables(np.arange(start_pos, start_pos + len(tokens)),
                               self._inverse_frequencies)
        keys = [k[:start_pos] for k in self._keys]
        values = [v[:start_pos] for v in self._values]
        h = self.weights.embedding[tokens]
        for i in range(self.cfg.layers):
            h = self._attention_block(i, h, start_pos, (cos, sin), keys, values)
            h = self._mlp_block(i, h)
        self._keys, self._values = keys, values
        return self._norm(h, "norm") @ self.weights.embedding.T

    def generate(self, prompt_tokens, n_tokens, temperature=0.0, seed=None):
        """Reset, prefill the prompt in one forward, then decode; the ``n_tokens`` new tokens.

        Greedy (first arg max) when ``temperature`` is 0, else sampled from
        ``softmax(logits / temperature)`` with ``np.random.default_rng(seed)``.
        """
        prompt = self._check_generation(prompt_tokens, n_tokens)
        if not 0 <= temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, not {temperature!r}")
        self.reset()
        if n_tokens == 0:
            return []
        rng = np.random.default_rng(seed)
        logits = self.forward(prompt, 0)[-1]
        new_tokens = []
        while True:
            new_tokens.append(_pick(logits, temperature, rng))
            if len(new_tokens) == n_tokens:
                return new_tokens
            logits = self.forward(new_tokens[-1:], self.position)[-1]

    def _norm(self, x, name):
        return rms_norm(x, self.weights.norms[name], self.cfg.eps)

    def _bitlinears(self, x, prefix, names):
        """One activation quantisation of ``x`` shared by the BitLinears ``names``."""
        x_q, s_x = quantize_activations(x)
        return [rescale(self._core(prefix + name, x_q), s_x,
                        self.weights.linears[prefix + name].gamma) for name in names]

    def _core(self, name, x_q):
        acc = np.asarray(self.core(name, x_q))
        expected = (x_q.shape[0], self.weights.linears[name].trits.shape[0])
        if acc.shape != expected or acc.dtype != np.int32:
            raise ValueError(f"core returned {acc.dtype} {acc.shape} for {name}, "
                             f"expected int32 {expected}")
        return acc

    def _attention_block(self, i, h, start_pos, rope, keys, values):
        cfg, prefix = self.cfg, f"layers.{i}.self_attn."
        steps = h.shape[0]
        a = self._norm(h, f"layers.{i}.input_layernorm")
        q, k, v = self._bitlinears(a, prefix, ATTENTION_INPUTS)
        q = apply_rope(q.reshape(steps, cfg.heads, cfg.head_dim), *rope)
        k = apply_rope(k.reshape(steps, cfg.kv_heads, cfg.head_dim), *rope)
        keys[i] = np.concatenate([keys[i], k])
        values[i] = np.concatenate([values[i], v.reshape(steps, cfg.kv_heads, cfg.head_dim)])
        o = attention(q, keys[i], values[i], start_pos)
        (out,) = self._bitlinears(self._norm(o, prefix + "attn_sub_norm"), prefix, ("o_proj",))
        return h + out

    def _mlp_block(self, i, h):
        prefix = f"layers.{i}.mlp."
        m = self._norm(h, f"layers.{i}.post_attention_layernorm")
        gate, up = self._bitlinears(m, prefix, MLP_INPUTS)
        inner = self._norm(np.square(np.maximum(gate, 0)) * up, prefix + "ffn_sub_norm")
        (out,) = self._bitlinears(inner, prefix, ("down_proj",))
        return h + out


def _pick(logits, temperature, rng):
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(p.size, p=p / p.sum()))
