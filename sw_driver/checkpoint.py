"""Checkpoint loaders: every format becomes a ``(golden.ModelConfig, golden.ModelWeights)`` pair.

Formats (byte layouts in ``reference/bitnet-formats.md``)
    Bittern's own: one safetensors file written by :func:`save_bittern` (layout in its docstring).
    Hugging Face BitNet packed (section 3): ``config.json`` and ``model.safetensors`` holding
    uint8 weights, 4 trits per byte in row blocks, and one ``weight_scale`` per matrix.
    GGUF (section 4): architecture ``bitnet`` (llama.cpp) or ``bitnet-b1.58`` / ``bitnet-25``
    (bitnet.cpp), BitLinear weights in TQ1_0, TQ2_0 or I2_S, other tensors in any float or
    block type gguf-py can dequantise.

Every loader returns the stored trits and one float32 gamma per matrix, unchanged. Any problem
with a file raises :class:`CheckpointError`, whose message names the file, the tensor and what
was expected. The external formats store a trit ``t`` as the offset-binary code ``t + 1``
(``0b11`` is invalid); that is their encoding, converted here to trits, and is not Bittern's.
"""

import json
import math
import struct
from pathlib import Path

import gguf
import numpy as np
import safetensors.numpy
from safetensors import SafetensorError, deserialize, safe_open

from golden.bitlinear import WEIGHT_SCALE_FLOOR
from golden.model import ModelConfig, ModelWeights, TernaryWeight, linear_shapes, norm_sizes
from golden.trits import TRITS_PER_BYTE, TritError, pack_base3, unpack_base3

__all__ = ["CheckpointError", "FORMAT_NAME", "FORMAT_VERSION", "GGUF_ARCHITECTURES", "I2_S",
           "save_bittern", "load_bittern", "load_hf", "load_gguf", "load_checkpoint"]

FORMAT_NAME = "bittern"
FORMAT_VERSION = 1
_EMBEDDING = "embed_tokens"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says where and what was expected."""


def load_checkpoint(path):
    """Load a ``.gguf`` file, a Bittern ``.safetensors`` file, or a Hugging Face BitNet model
    (its directory, or its ``model.safetensors`` with ``config.json`` beside it)."""
    path = Path(path)
    if path.is_dir():
        return load_hf(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory")
    with path.open("rb") as file:
        magic = file.read(4)
    if path.suffix == ".gguf" or magic == b"GGUF":
        return load_gguf(path)
    if path.suffix == ".safetensors":
        with _open_safetensors(path) as file:
            if (file.metadata() or {}).get("format") == FORMAT_NAME:
                return load_bittern(path)
        if (path.parent / "config.json").is_file():
            return load_hf(path)
        raise CheckpointError(f"{path}: a safetensors file with neither Bittern metadata "
                              f"(format = {FORMAT_NAME!r}) nor a config.json beside it")
    raise CheckpointError(f"{path}: unknown checkpoint type; expected a .gguf file, a "
                          f".safetensors file or a Hugging Face model directory")


# Shared checks ----------------------------------------------------------------------------------

class _Tensors:
    """Named tensors of one file, each handed out once; what is left over is an error."""

    def __init__(self, path, names, read):
        self.path = path
        self._left = set(names)
        self._read = read

    def pop(self, name, expected):
        """Tensor ``name`` as ``read`` returns it; if missing, the error says what was expected."""
        if name not in self._left:
            raise CheckpointError(f"{self.path}: tensor {name} is missing (expected {expected})")
        self._left.discard(name)
        return self._read(name)

    def take(self, name, dtype, shape):
        """Array ``name`` of ``dtype`` (``"float"``: any float) and ``shape`` (None: any)."""
        name_of_dtype = dtype if dtype == "float" else np.dtype(dtype).name
        expected = f"{name_of_dtype} {shape if shape is not None else ''}".rstrip()
        array = self.pop(name, expected)
        dtype_ok = array.dtype.kind == "f" if dtype == "float" else array.dtype == dtype
        if not dtype_ok or shape is not None and array.shape != shape:
            raise CheckpointError(f"{self.path}: tensor {name} is {array.dtype} {array.shape}, "
                                  f"expected {expected}")
        return array

    def has(self, name):
        return name in self._left

    def check_all_taken(self):
        if self._left:
            raise CheckpointError(f"{self.path}: unexpected tensor(s) "
                                  f"{', '.join(sorted(self._left))}; the config has no place "
                                  f"for them")


def _config(path, source, fields):
    try:
        return ModelConfig(**fields)
    except ValueError as error:
        raise CheckpointError(f"{path}: {source} does not describe a valid model: "
                              f"{error}") from None


def _model(path, cfg, embedding, norms, linears):
    weights = ModelWeights(embedding=embedding, norms=norms, linears=linears)
    try:
        weights.check(cfg)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return cfg, weights


def _check_tied(path, head_name, head, embedding_name, embedding):
    if not np.array_equal(np.asarray(head, dtype=np.float32), embedding):
        raise CheckpointError(f"{path}: tensor {head_name} differs from {embedding_name}; "
                              f"expected tied embeddings (the lm_head is the embedding)")


def _codes_to_trits(path, name, codes):
    """Offset-binary codes 0, 1, 2 -> trits -1, 0, +1; code 3 raises, naming its position."""
    bad = np.argwhere(codes > 2)
    if bad.size:
        where = ", ".join(str(i) for i in bad[0])
        raise CheckpointError(f"{path}: tensor {name}: code {int(codes[tuple(bad[0])]):#04b} "
                              f"at [{where}] is not a trit (expected 0b00, 0b01 or 0b10 for "
                              f"-1, 0, +1)")
    return codes.astype(np.int8) - 1


def _open_safetensors(path):
    try:
        return safe_open(path, framework="numpy")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except SafetensorError as error:
        raise CheckpointError(f"{path}: {_safetensors_problem(path, error)}") from None


def _safetensors_problem(path, error):
    """Why ``path`` does not open: the first tensor cut off, else the library's own words."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        header = file.read(min(header_len, size))
    try:
        entries = json.loads(header)
        ends = sorted((entry["data_offsets"][1], name) for name, entry in entries.items()
                      if name != "__metadata__")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"not a readable safetensors file ({error})"
    for end, name in ends:
        if 8 + header_len + end > size:
            return (f"tensor {name} ends at byte {8 + header_len + end} but the file has "
                    f"{size} bytes (truncated)")
    return f"not a readable safetensors file ({error})"


# Bittern's own format --------------------------------------------------------------------------

def save_bittern(path, cfg, weights):
    """Write ``weights`` (checked against ``cfg``) as a Bittern checkpoint.

    One safetensors file. Metadata: ``format = "bittern"``, ``format_version = "1"`` and
    ``config``, the :meth:`ModelConfig.to_dict` JSON. Tensors, named as in
    :class:`golden.ModelWeights`: ``embed_tokens.weight`` float32 ``(vocab, hidden)``,
    ``<norm>.weight`` float32 gains, and per BitLinear ``<name>.trits``, uint8: the row-major
    trits packed 5 per byte by :func:`golden.trits.pack_base3`, ``<name>.gamma`` float32 ``(1,)``
    and ``<name>.shape`` int64 ``(N, K)``. Float tensors stay float32 so that a model loads back
    bit-exact; the format is meant for small vocabularies, where they are a minor cost.
    """
    weights.check(cfg)
    tensors = {f"{_EMBEDDING}.weight": weights.embedding}
    tensors.update({f"{name}.weight": gain for name, gain in weights.norms.items()})
    for name, (trits, gamma) in weights.linears.items():
        tensors[f"{name}.trits"] = np.frombuffer(pack_base3(trits), dtype=np.uint8)
        tensors[f"{name}.gamma"] = np.array([gamma], dtype=np.float32)
        tensors[f"{name}.shape"] = np.array(trits.shape, dtype=np.int64)
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                "config": json.dumps(cfg.to_dict())}
    safetensors.numpy.save_file(tensors, str(path), metadata=metadata)


def load_bittern(path):
    """Read a checkpoint written by :func:`save_bittern`."""
    path = Path(path)
    with _open_safetensors(path) as file:
        metadata = file.metadata() or {}
        if metadata.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{path}: not a Bittern checkpoint (metadata format = "
                                  f"{metadata.get('format')!r}, expected {FORMAT_NAME!r})")
        if metadata.get("format_version") != str(FORMAT_VERSION):
            raise CheckpointError(f"{path}: format_version {metadata.get('format_version')!r} "
                                  f"is not supported (expected '{FORMAT_VERSION}')")
        try:
            cfg = ModelConfig.from_dict(json.loads(metadata.get("config", "null")))
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{path}: metadata config is not a ModelConfig JSON object: "
                                  f"{error}") from None
        tensors = _Tensors(path, file.keys(), file.get_tensor)
        embedding = tensors.take(f"{_EMBEDDING}.weight", np.float32, (cfg.vocab, cfg.hidden))
        norms = {name: tensors.take(f"{name}.weight", np.float32, (size,))
                 for name, size in norm_sizes(cfg).items()}
        linears = {}
        for name, (n, k) in linear_shapes(cfg).items():
            shape = tuple(tensors.take(f"{name}.shape", np.int64, (2,)).tolist())
            if shape != (n, k):
                raise CheckpointError(f"{path}: tensor {name}.shape is {shape}, expected "
                                      f"{(n, k)} for this config")
            packed = tensors.take(f"{name}.trits", np.uint8, (-(-n * k // TRITS_PER_BYTE),))
            gamma = tensors.take(f"{name}.gamma", np.float32, (1,))[0]
            try:
                trits = unpack_base3(packed.tobytes(), n * k).reshape(n, k)
            except TritError as error:
                raise CheckpointError(f"{path}: tensor {name}.trits: {error}") from None
            linears[name] = TernaryWeight(trits, gamma)
        tensors.check_all_taken()
    return _model(path, cfg, embedding, norms, linears)


# Hugging Face BitNet packed safetensors --------------------------------------------------------

_HF_NUMPY_DTYPES = {"U8": np.uint8, "I8": np.int8, "F16": np.float16, "F32": np.float32,
                    "F64": np.float64}
_HF_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None, None]


def load_hf(path):
    """Read a Hugging Face BitNet packed checkpoint (bitnet-formats.md section 3).

    ``path`` is a directory holding ``config.json`` and ``model.safetensors``, or that
    safetensors file with ``config.json`` beside it. Weight ``W`` of shape ``(N, K)`` is uint8
    ``(ceil(N / 4), K)``: bits ``2i .. 2i+1`` of ``packed[p, c]`` hold ``W[i * R + p, c] + 1``
    with ``R = ceil(N / 4)``. ``weight_scale`` is gamma when
    ``quantization_config.linear_class`` is ``"autobitlinear"``, and ``1 / gamma`` when it is
    ``"bitlinear"`` or absent (the transformers default). Missing optional config fields take
    transformers' ``BitNetConfig`` defaults.
    """
    path = Path(path)
    model_file = path / "model.safetensors" if path.is_dir() else path
    config_file = model_file.parent / "config.json"
    try:
        hf = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{config_file}: no such file (a Hugging Face checkpoint needs "
                              f"config.json beside model.safetensors)") from None
    except ValueError as error:
        raise CheckpointError(f"{config_file}: not valid JSON: {error}") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    cfg = _hf_config(config_file, hf)
    multiply = _hf_scale_multiplies(config_file, hf)
    try:
        entries = dict(deserialize(model_file.read_bytes()))
    except FileNotFoundError:
        raise CheckpointError(f"{model_file}: no such file") from None
    except SafetensorError as error:
        raise CheckpointError(f"{model_file}: {_safetensors_problem(model_file, error)}") from None
    tensors = _Tensors(model_file, entries, lambda name: _hf_array(model_file, name,
                                                                   entries[name]))

    def floats(name, shape):
        return tensors.take(f"model.{name}.weight", "float", shape).astype(np.float32)

    embedding = floats(_EMBEDDING, (cfg.vocab, cfg.hidden))
    norms = {name: floats(name, (size,)) for name, size in norm_sizes(cfg).items()}
    linears = {}
    for name, (n, k) in linear_shapes(cfg).items():
        key = f"model.{name}.weight"
        packed = tensors.take(key, np.uint8, (-(-n // 4), k))
        codes = (packed[None] >> _HF_SHIFTS) & 3
        trits = _codes_to_trits(model_file, key, codes.reshape(-1, k)[:n])
        scale = tensors.take(f"{key}_scale", "float", None)
        if scale.size != 1 or not 0 < scale.flat[0] < np.inf:
            raise CheckpointError(f"{model_file}: tensor {key}_scale is {scale.tolist()}, "
                                  f"expected one positive finite value")
        scale = np.float32(scale.flat[0])
        linears[name] = TernaryWeight(trits, scale if multiply else np.float32(1) / scale)
    if tensors.has("lm_head.weight"):
        head = tensors.take("lm_head.weight", "float", (cfg.vocab, cfg.hidden))
        _check_tied(model_file, "lm_head.weight", head, f"model.{_EMBEDDING}.weight", embedding)
    tensors.check_all_taken()
    return _model(model_file, cfg, embedding, norms, linears)


def _hf_array(path, name, entry):
    dtype, shape, data = entry["dtype"], tuple(entry["shape"]), entry["data"]
    if dtype == "BF16":     # NumPy has no bfloat16: widen the 16 bits into float32's top half
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(
            np.float32).reshape(shape)
    if dtype not in _HF_NUMPY_DTYPES:
        raise CheckpointError(f"{path}: tensor {name} has dtype {dtype}, expected U8 packed "
                              f"trits or a float ({', '.join(_HF_NUMPY_DTYPES)}, BF16)")
    return np.frombuffer(data, dtype=np.dtype(_HF_NUMPY_DTYPES[dtype]).newbyteorder("<")
                         ).reshape(shape)


def _hf_config(config_file, hf):
    def field(key, default=None):
        value = hf.get(key, default)
        if value is None:
            raise CheckpointError(f"{config_file}: {key} is missing")
        return value

    if hf.get("hidden_act", "relu2") != "relu2":
        raise CheckpointError(f"{config_file}: hidden_act is {hf['hidden_act']!r}, expected "
                              f"'relu2' (the BitNet b1.58 FFN the golden model implements)")
    if hf.get("rope_scaling"):
        raise CheckpointError(f"{config_file}: rope_scaling is set; the golden model "
                              f"implements plain RoPE only")
    rope_theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta"))
    heads = field("num_attention_heads")
    return _config(config_file, "config.json", dict(
        hidden=field("hidden_size"), layers=field("num_hidden_layers"), heads=heads,
        kv_heads=field("num_key_value_heads", heads), ffn=field("intermediate_size"),
        vocab=field("vocab_size"), rope_theta=500000.0 if rope_theta is None else rope_theta,
        max_seq=field("max_position_embeddings", 2048), eps=field("rms_norm_eps", 1e-5)))


def _hf_scale_multiplies(config_file, hf):
    quant = hf.get("quantization_config") or {}
    if quant.get("quant_method", "bitnet") != "bitnet":
        raise CheckpointError(f"{config_file}: quantization_config.quant_method is "
                              f"{quant['quant_method']!r}, expected 'bitnet'")
    linear_class = quant.get("linear_class", "bitlinear")
    if linear_class not in ("bitlinear", "autobitlinear"):
        raise CheckpointError(f"{config_file}: quantization_config.linear_class is "
                              f"{linear_class!r}, expected 'bitlinear' or 'autobitlinear'")
    return linear_class == "autobitlinear"


# GGUF ------------------------------------------------------------------------------------------

GGUF_ARCHITECTURES = ("bitnet", "bitnet-b1.58", "bitnet-25")
I2_S = 36     # bitnet.cpp's type id, unknown to gguf-py (bitnet-formats.md section 4.0)
_TERNARY_TYPES = (gguf.GGMLQuantizationType.TQ1_0, gguf.GGMLQuantizationType.TQ2_0, I2_S)
_T = gguf.MODEL_TENSOR
_GGUF_LAYER_TENSORS = {
    "input_layernorm": _T.ATTN_NORM, "self_attn.q_proj": _T.ATTN_Q, "self_attn.k_proj": _T.ATTN_K,
    "self_attn.v_proj": _T.ATTN_V, "self_attn.o_proj": _T.ATTN_OUT,
    "self_attn.attn_sub_norm": _T.ATTN_SUB_NORM, "post_attention_layernorm": _T.FFN_NORM,
    "mlp.gate_proj": _T.FFN_GATE, "mlp.up_proj": _T.FFN_UP, "mlp.down_proj": _T.FFN_DOWN,
    "mlp.ffn_sub_norm": _T.FFN_SUB_NORM,
}
_TQ1_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)[:, None]
_TQ2_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]


class _GGUFReader(gguf.GGUFReader):
    """gguf-py's reader for the metadata, with the tensor table left to :func:`load_gguf`.

    The stock ``_build_tensors`` cannot size I2_S tensors and would fail on bitnet.cpp files, so
    this keeps the raw tensor-info fields (name, dims, type id, offset) instead.
    """

    def _build_tensors(self, start_offs, fields):
        self.tensor_fields, self.tensor_data_start = fields, start_offs


def load_gguf(path):
    """Read a BitNet b1.58 GGUF file (bitnet-formats.md section 4).

    Dimensions are ``ne0`` first (``(K, N)`` for a weight ``(N, K)``). BitLinear weights may be
    TQ1_0 or TQ2_0 (fp16 ``d`` per 256-block; every block with a non-zero trit must share one
    ``d``, which is gamma) or I2_S (2-bit codes in 128-element blocks, then one float32 gamma).
    Embedding and norms may be of any type gguf-py dequantises. A missing
    ``rope.freq_base`` means 10000, llama.cpp's default.
    """
    path = Path(path)
    try:
        reader = _GGUFReader(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable GGUF file "
                              f"({type(error).__name__}: {error})") from None
    entries = _gguf_entries(path, reader)
    cfg = _gguf_config(path, reader, entries)
    tensors = _Tensors(path, entries, entries.get)

    def floats(name, shape):
        type_id, dims, raw = tensors.pop(name, f"a float tensor of dims {shape[::-1]}")
        _check_dims(path, name, dims, shape)
        if type_id in _TERNARY_TYPES:
            raise CheckpointError(f"{path}: tensor {name} is {_type_name(type_id)}, expected a "
                                  f"float or block-quantised type")
        qtype = gguf.GGMLQuantizationType(type_id)    # _gguf_entries refused unknown ids
        try:
            values = gguf.quants.dequantize(raw.reshape(math.prod(dims[1:]), -1), qtype)
        except NotImplementedError:
            raise CheckpointError(f"{path}: tensor {name} is {qtype.name}, which gguf-py "
                                  f"cannot dequantise") from None
        return values.reshape(shape).astype(np.float32)

    def ternary(name, shape):
        expected = f"TQ1_0, TQ2_0 or I2_S of dims {shape[::-1]}"
        return _gguf_ternary(path, name, *tensors.pop(name, expected), shape)

    embedding_name = gguf.TENSOR_NAMES[_T.TOKEN_EMBD] + ".weight"
    embedding = floats(embedding_name, (cfg.vocab, cfg.hidden))
    norms = {name: floats(_gguf_name(name), (size,)) for name, size in norm_sizes(cfg).items()}
    linears = {name: ternary(_gguf_name(name), shape)
               for name, shape in linear_shapes(cfg).items()}
    head_name = gguf.TENSOR_NAMES[_T.OUTPUT] + ".weight"
    if tensors.has(head_name):
        _check_tied(path, head_name, floats(head_name, (cfg.vocab, cfg.hidden)),
                    embedding_name, embedding)
    tensors.check_all_taken()
    return _model(path, cfg, embedding, norms, linears)


def _gguf_entries(path, reader):
    """``{name: (type id, dims, raw bytes)}`` of every tensor, each checked to lie in the file."""
    size = reader.data.size
    entries = {}
    for field in reader.tensor_fields:
        _, name, _, dims, type_id, offset = field.parts
        name = bytes(name).decode("utf-8", errors="replace")
        dims, type_id = tuple(int(d) for d in dims), int(type_id[0])
        start = reader.tensor_data_start + int(offset[0])
        end = start + _gguf_nbytes(path, name, type_id, dims)
        if end > size:
            raise CheckpointError(f"{path}: tensor {name} ends at byte {end} but the file has "
                                  f"{size} bytes (truncated)")
        entries[name] = (type_id, dims, np.asarray(reader.data[start:end]))
    return entries


def _gguf_nbytes(path, name, type_id, dims):
    count = math.prod(dims)
    if type_id == I2_S:
        if count % 128:
            raise CheckpointError(f"{path}: tensor {name} is I2_S with {count} elements, "
                                  f"expected a multiple of 128")
        return count // 4 + 32
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise CheckpointError(f"{path}: tensor {name} has unsupported ggml type id "
                              f"{type_id}") from None
    if dims[0] % block:
        raise CheckpointError(f"{path}: tensor {name} is {_type_name(type_id)} with rows of "
                              f"{dims[0]}, expected a multiple of its block size {block}")
    return count // block * type_size


def _type_name(type_id):
    """Name of a type id that :func:`_gguf_nbytes` accepted."""
    return "I2_S" if type_id == I2_S else gguf.GGMLQuantizationType(type_id).name


def _check_dims(path, name, dims, shape):
    expected = tuple(reversed(shape))
    if dims != expected:
        raise CheckpointError(f"{path}: tensor {name} has dims {dims}, expected {expected} "
                              f"(ne0 first)")


def _gguf_value(path, reader, key, default=None):
    field = reader.get_field(key)
    if field is None:
        if default is None:
            raise CheckpointError(f"{path}: metadata key {key} is missing")
        return default
    value = field.parts[field.data[0]]
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode("utf-8", errors="replace")
    if value.dtype == np.float32:   # the shortest decimal of the float32: 1e-5 reads as 1e-5
        return float(str(value[0]))
    return value[0].item()


def _gguf_config(path, reader, entries):
    arch = _gguf_value(path, reader, gguf.Keys.General.ARCHITECTURE)
    if arch not in GGUF_ARCHITECTURES:
        raise CheckpointError(f"{path}: general.architecture is {arch!r}, expected one of "
                              f"{', '.join(GGUF_ARCHITECTURES)}")

    def value(key, default=None):
        return _gguf_value(path, reader, key.format(arch=arch), default)

    embedding = entries.get(gguf.TENSOR_NAMES[_T.TOKEN_EMBD] + ".weight")
    heads = value(gguf.Keys.Attention.HEAD_COUNT)
    cfg = _config(path, "the GGUF metadata", dict(
        hidden=value(gguf.Keys.LLM.EMBEDDING_LENGTH), layers=value(gguf.Keys.LLM.BLOCK_COUNT),
        heads=heads, kv_heads=value(gguf.Keys.Attention.HEAD_COUNT_KV, heads),
        ffn=value(gguf.Keys.LLM.FEED_FORWARD_LENGTH),
        vocab=value(gguf.Keys.LLM.VOCAB_SIZE, embedding[1][1] if embedding else None),
        rope_theta=value(gguf.Keys.Rope.FREQ_BASE, 10000.0),
        max_seq=value(gguf.Keys.LLM.CONTEXT_LENGTH),
        eps=value(gguf.Keys.Attention.LAYERNORM_RMS_EPS)))
    rope_dims = value(gguf.Keys.Rope.DIMENSION_COUNT, cfg.head_dim)
    if rope_dims != cfg.head_dim:
        raise CheckpointError(f"{path}: {arch}.rope.dimension_count is {rope_dims}, expected "
                              f"head_dim = {cfg.head_dim} (the golden model rotates all of it)")
    return cfg


def _gguf_name(name):
    """Golden weight name -> GGUF tensor name (``layers.3.mlp.up_proj`` -> ``blk.3.ffn_up``)."""
    if name == "norm":
        return gguf.TENSOR_NAMES[_T.OUTPUT_NORM] + ".weight"
    _, layer, rest = name.split(".", 2)
    return gguf.TENSOR_NAMES[_GGUF_LAYER_TENSORS[rest]].format(bid=layer) + ".weight"


def _gguf_ternary(path, name, type_id, dims, raw, shape):
    """Decode one BitLinear weight of ``shape`` ``(N, K)`` -> :class:`TernaryWeight`."""
    _check_dims(path, name, dims, shape)
    if type_id not in _TERNARY_TYPES:
        raise CheckpointError(f"{path}: tensor {name} is {_type_name(type_id)}, expected "
                              f"TQ1_0, TQ2_0 or I2_S")
    kind, count = _type_name(type_id), math.prod(shape)
    if kind == "I2_S":     # byte j of block b: elements 128b + j, +32, +64, +96 from bit 7 down
        blocks = raw[:count // 4].reshape(-1, 32)
        codes = np.stack([blocks >> 6, blocks >> 4, blocks >> 2, blocks], axis=1) & 3
        trits = _codes_to_trits(path, name, codes.reshape(shape))
        return TernaryWeight(trits, raw[count // 4:count // 4 + 4].view(np.float32)[0])
    if kind == "TQ2_0":    # element h*128 + l*32 + m at bits 2l of qs[h*32 + m]
        blocks = raw.reshape(-1, 66)
        codes = (blocks[:, :64].reshape(-1, 2, 1, 32) >> _TQ2_SHIFTS) & 3
        d = blocks[:, 64:].view(np.float16)[:, 0]
    else:                  # TQ1_0: base-3 digits in fixed point; the first digit is the top one
        blocks = raw.reshape(-1, 54)
        codes = np.concatenate([_tq1_digits(blocks[:, :32], 5), _tq1_digits(blocks[:, 32:48], 5),
                                _tq1_digits(blocks[:, 48:52], 4)], axis=1)
        d = blocks[:, 52:].view(np.float16)[:, 0]
    trits = _codes_to_trits(path, name, codes.reshape(shape))
    return TernaryWeight(trits, _one_scale(path, name, kind, d, trits.reshape(len(d), -1)))


def _tq1_digits(qs, digits):
    """Digits ``n`` of every byte, element order ``n * width + m`` (uint8 products wrap)."""
    shifted = qs[:, None, :] * _TQ1_POW3[:digits]
    return ((shifted.astype(np.uint16) * 3) >> 8).reshape(len(qs), -1)


def _one_scale(path, name, kind, d, block_trits):
    used = np.flatnonzero(np.any(block_trits != 0, axis=1))
    if not used.size:      # an all-zero matrix: every gamma gives the same zeros
        return WEIGHT_SCALE_FLOOR
    scales = d[used].astype(np.float32)
    differ = np.flatnonzero(scales != scales[0])
    if differ.size:
        raise CheckpointError(f"{path}: tensor {name}: {kind} block {used[0]} has d = "
                              f"{scales[0]} but block {used[differ[0]]} has d = "
                              f"{scales[differ[0]]}; expected one d for the whole matrix (the "
                              f"hardware applies one gamma per matrix)")
    return scales[0]
