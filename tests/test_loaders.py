"""sw_driver.checkpoint: Bittern, Hugging Face BitNet packed and GGUF loaders, and their errors.

The HF and GGUF files are written here from the byte layouts of bitnet-formats.md (sections 3
and 4), independently of the loader; TQ1_0 / TQ2_0 come from gguf-py's own quantisers.
"""

import json
import struct

import gguf
import numpy as np
import pytest
import safetensors.numpy

from golden import ModelConfig, ModelWeights, TernaryWeight
from sw_driver.checkpoint import (
    I2_S, CheckpointError, load_bittern, load_checkpoint, load_gguf, load_hf, save_bittern,
)

# Rows of 256 and 512 suit TQ1_0 / TQ2_0; the odd config has row counts that are not multiples
# of 4, which HF packing pads.
CFG = ModelConfig(hidden=256, layers=2, heads=4, kv_heads=2, ffn=512, vocab=48, max_seq=64,
                  rope_theta=10000.0)
ODD = ModelConfig(hidden=36, layers=1, heads=2, kv_heads=1, ffn=50, vocab=20, max_seq=16)
Q_PROJ = "layers.0.self_attn.q_proj"
TQ = {"TQ1_0": gguf.GGMLQuantizationType.TQ1_0, "TQ2_0": gguf.GGMLQuantizationType.TQ2_0}


@pytest.fixture(scope="module")
def weights():
    return ModelWeights.random(CFG, seed=3)


@pytest.fixture(scope="module")
def odd_weights():
    return ModelWeights.random(ODD, seed=4)


def stored(gamma):
    return gamma


def assert_same(loaded, cfg, weights, gamma=stored):
    loaded_cfg, loaded_weights = loaded
    assert loaded_cfg == cfg
    np.testing.assert_array_equal(loaded_weights.embedding, weights.embedding)
    assert loaded_weights.norms.keys() == weights.norms.keys()
    for name, gain in weights.norms.items():
        np.testing.assert_array_equal(loaded_weights.norms[name], gain)
    assert loaded_weights.linears.keys() == weights.linears.keys()
    for name, (trits, g) in weights.linears.items():
        got = loaded_weights.linears[name]
        assert got.trits.dtype == np.int8
        np.testing.assert_array_equal(got.trits, trits)
        assert isinstance(got.gamma, np.float32) and got.gamma == gamma(g), name


def error_message(load, path):
    with pytest.raises(CheckpointError) as error:
        load(path)
    return str(error.value)


# Bittern's own format ------------------------------------------------------------------------

def test_bittern_round_trip(tmp_path, weights):
    path = tmp_path / "m.safetensors"
    save_bittern(path, CFG, weights)
    assert_same(load_bittern(path), CFG, weights)
    assert_same(load_checkpoint(path), CFG, weights)


def test_bittern_layout(tmp_path, weights):
    """Pins the documented layout: metadata, base-3 bytes (trit 5j least significant), shape."""
    path = tmp_path / "m.safetensors"
    save_bittern(path, CFG, weights)
    with safetensors.safe_open(path, "numpy") as file:
        metadata = file.metadata()
        packed = file.get_tensor(f"{Q_PROJ}.trits")
        shape = file.get_tensor(f"{Q_PROJ}.shape")
        gamma = file.get_tensor(f"{Q_PROJ}.gamma")
    assert metadata["format"] == "bittern" and metadata["format_version"] == "1"
    assert ModelConfig.from_dict(json.loads(metadata["config"])) == CFG
    trits = weights.linears[Q_PROJ].trits.ravel()
    digits = packed.astype(int)[:, None] // 3 ** np.arange(5) % 3 - 1
    np.testing.assert_array_equal(digits.ravel()[:trits.size], trits)
    assert not digits.ravel()[trits.size:].any()         # padded with zero trits
    assert shape.tolist() == [256, 256] and gamma.tolist() == [weights.linears[Q_PROJ].gamma]


def rewrite(path, edit):
    """Apply ``edit(tensors, metadata)`` to a safetensors file in place."""
    with safetensors.safe_open(path, "numpy") as file:
        metadata = file.metadata()
    tensors = safetensors.numpy.load_file(path)
    edit(tensors, metadata)
    safetensors.numpy.save_file(tensors, path, metadata=metadata)


@pytest.mark.parametrize("edit, message", [
    (lambda t, m: t.pop(f"{Q_PROJ}.gamma"),
     f"tensor {Q_PROJ}.gamma is missing (expected float32 (1,))"),
    (lambda t, m: t.update({f"{Q_PROJ}.shape": np.array([256, 128])}),
     f"tensor {Q_PROJ}.shape is (256, 128), expected (256, 256) for this config"),
    (lambda t, m: t.update({"norm.weight": np.ones(255, np.float32)}),
     "tensor norm.weight is float32 (255,), expected float32 (256,)"),
    (lambda t, m: t[f"{Q_PROJ}.trits"].__setitem__(17, 243),
     f"tensor {Q_PROJ}.trits: base-3 byte 17 = 243 is above 242"),
    (lambda t, m: t.update({"extra": np.zeros(1, np.float32)}),
     "unexpected tensor(s) extra; the config has no place for them"),
    (lambda t, m: t.update({f"{Q_PROJ}.gamma": np.array([-1.0], np.float32)}),
     f"{Q_PROJ} gamma must be a positive finite np.float32"),
    (lambda t, m: m.update({"format_version": "2"}),
     "format_version '2' is not supported (expected '1')"),
    (lambda t, m: m.update({"config": '{"hidden": 256}'}),
     "metadata config is not a ModelConfig JSON object: ModelConfig is missing field(s)"),
])
def test_bittern_bad_files(tmp_path, weights, edit, message):
    path = tmp_path / "m.safetensors"
    save_bittern(path, CFG, weights)
    rewrite(path, edit)
    assert message in error_message(load_bittern, path)


def test_bittern_truncated_names_the_tensor(tmp_path, weights):
    path = tmp_path / "m.safetensors"
    save_bittern(path, CFG, weights)
    with safetensors.safe_open(path, "numpy") as file:
        last = max(file.keys(), key=lambda key: file.get_slice(key).get_shape())
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    message = error_message(load_bittern, path)
    assert f"{path}: tensor " in message and f"but the file has {len(data) - 10} bytes " \
        "(truncated)" in message
    assert error_message(load_bittern, tmp_path / "none.safetensors").endswith("no such file")
    assert last   # the file had tensors to cut


def test_bittern_rejects_other_safetensors(tmp_path):
    path = tmp_path / "m.safetensors"
    safetensors.numpy.save_file({"x": np.zeros(2, np.float32)}, path)
    assert "not a Bittern checkpoint (metadata format = None, expected 'bittern')" in \
        error_message(load_bittern, path)


# Hugging Face BitNet packed ------------------------------------------------------------------

def write_safetensors(path, entries):
    """A safetensors file from ``{name: (dtype string, shape, bytes)}``, written by hand so that
    BF16 tensors can be made without torch."""
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, data) in entries.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def bf16(array):
    """float32 -> (BF16 bytes, the float32 values they hold), by truncation."""
    bits = (np.asarray(array, np.float32).view(np.uint32) >> 16).astype("<u2")
    return bits.tobytes(), (bits.astype(np.uint32) << 16).view(np.float32)


def hf_pack(trits):
    """transformers ``pack_weights``: rows in 4 blocks of R = ceil(N/4), code = trit + 1."""
    rows = -(-trits.shape[0] // 4)
    codes = np.zeros((4 * rows, trits.shape[1]), np.uint8)
    codes[:trits.shape[0]] = trits + 1
    return sum(codes[i * rows:(i + 1) * rows] << (2 * i) for i in range(4)).astype(np.uint8)


def hf_config(cfg, linear_class):
    config = {"architectures": ["BitNetForCausalLM"], "model_type": "bitnet",
              "hidden_size": cfg.hidden, "num_hidden_layers": cfg.layers,
              "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
              "intermediate_size": cfg.ffn, "vocab_size": cfg.vocab,
              "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_seq,
              "rms_norm_eps": cfg.eps, "hidden_act": "relu2", "tie_word_embeddings": True}
    if linear_class is not None:
        config["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                         "quantization_mode": "offline"}
    return config


def write_hf(directory, cfg, weights, linear_class, edit=lambda entries, config: None):
    """An HF BitNet packed checkpoint; returns the model with its BF16-rounded float tensors."""
    directory.mkdir(exist_ok=True)
    entries = {}
    embedding, embedding_f32 = bf16(weights.embedding)
    entries["model.embed_tokens.weight"] = ("BF16", weights.embedding.shape, embedding)
    norms = {}
    for name, gain in weights.norms.items():
        data, norms[name] = bf16(gain)
        entries[f"model.{name}.weight"] = ("BF16", gain.shape, data)
    for name, (trits, gamma) in weights.linears.items():
        packed = hf_pack(trits)
        entries[f"model.{name}.weight"] = ("U8", packed.shape, packed.tobytes())
        scale = gamma if linear_class == "autobitlinear" else np.float32(1) / gamma
        entries[f"model.{name}.weight_scale"] = ("F32", (1,), np.float32(scale).tobytes())
    config = hf_config(cfg, linear_class)
    edit(entries, config)
    write_safetensors(directory / "model.safetensors", entries)
    (directory / "config.json").write_text(json.dumps(config))
    return ModelWeights(embedding=embedding_f32, norms=norms, linears=weights.linears)


def test_hf_pack_matches_the_spec():
    trits = np.array([[1], [0], [-1], [1], [-1], [0], [1]], np.int8)   # N = 7: R = 2
    # packed[p] bits 2i.. hold W[i*R + p] + 1: p=0 -> rows 0, 2, 4, 6; p=1 -> rows 1, 3, 5, pad
    assert hf_pack(trits)[:, 0].tolist() == [2 | 0 << 2 | 0 << 4 | 2 << 6, 1 | 2 << 2 | 1 << 4]


def reciprocal_of_stored(gamma):
    """gamma read back from ``weight_scale = 1 / gamma`` (float32, may be one ulp off)."""
    return np.float32(1) / (np.float32(1) / gamma)


def fp16_block_scale(gamma):
    return np.float32(np.float16(gamma))


@pytest.mark.parametrize("linear_class, gamma", [("autobitlinear", stored),
                                                 ("bitlinear", reciprocal_of_stored),
                                                 (None, reciprocal_of_stored)])
@pytest.mark.parametrize("which", ["CFG", "ODD"])
def test_hf_round_trip(tmp_path, weights, odd_weights, linear_class, gamma, which):
    cfg, model = (CFG, weights) if which == "CFG" else (ODD, odd_weights)
    expected = write_hf(tmp_path / "hf", cfg, model, linear_class)
    for path in (tmp_path / "hf", tmp_path / "hf" / "model.safetensors"):
        assert_same(load_hf(path), cfg, expected, gamma)
        assert_same(load_checkpoint(path), cfg, expected, gamma)


def test_hf_scale_convention_matters(tmp_path, weights):
    """The same file read under the two conventions gives reciprocal gammas."""
    write_hf(tmp_path / "a", CFG, weights, "autobitlinear")
    (tmp_path / "a" / "config.json").write_text(json.dumps(hf_config(CFG, "bitlinear")))
    _, loaded = load_hf(tmp_path / "a")
    gamma = weights.linears[Q_PROJ].gamma
    assert loaded.linears[Q_PROJ].gamma == np.float32(1) / gamma != gamma


def test_hf_lm_head_must_be_tied(tmp_path, weights):
    def edit(entries, config):
        dtype, shape, data = entries["model.embed_tokens.weight"]
        entries["lm_head.weight"] = (dtype, shape, data[:-2] + b"\x00\x01")
    write_hf(tmp_path / "hf", CFG, weights, "autobitlinear", edit)
    assert "lm_head.weight differs from model.embed_tokens.weight; expected tied" in \
        error_message(load_hf, tmp_path / "hf")


def _set_code_3(entries, config):
    dtype, shape, data = entries[f"model.{Q_PROJ}.weight"]
    data = bytearray(data)
    data[shape[1] + 5] |= 0b11 << 4          # packed[1, 5], block i = 2 -> row 2R + 1 = 129
    entries[f"model.{Q_PROJ}.weight"] = (dtype, shape, bytes(data))


@pytest.mark.parametrize("edit, message", [
    (_set_code_3, f"tensor model.{Q_PROJ}.weight: code 0b11 at [129, 5] is not a trit"),
    (lambda e, c: e.pop("model.layers.1.mlp.down_proj.weight_scale"),
     "tensor model.layers.1.mlp.down_proj.weight_scale is missing (expected float)"),
    (lambda e, c: e.update({f"model.{Q_PROJ}.weight": ("U8", (256, 64), bytes(256 * 64))}),
     f"tensor model.{Q_PROJ}.weight is uint8 (256, 64), expected uint8 (64, 256)"),
    (lambda e, c: e.update({f"model.{Q_PROJ}.weight": ("BF16", (256, 256), bytes(2 * 65536))}),
     f"tensor model.{Q_PROJ}.weight is float32 (256, 256), expected uint8 (64, 256)"),
    (lambda e, c: e.update({"model.norm.weight": ("I32", (256,), bytes(1024))}),
     "tensor model.norm.weight has dtype I32, expected U8 packed trits or a float"),
    (lambda e, c: e.update({f"model.{Q_PROJ}.weight_scale": ("F32", (1,), bytes(4))}),
     f"tensor model.{Q_PROJ}.weight_scale is [0.0], expected one positive finite value"),
    (lambda e, c: c.pop("hidden_size"), "config.json: hidden_size is missing"),
    (lambda e, c: c.update(hidden_act="silu"), "hidden_act is 'silu', expected 'relu2'"),
    (lambda e, c: c["quantization_config"].update(linear_class="foo"),
     "linear_class is 'foo', expected 'bitlinear' or 'autobitlinear'"),
])
def test_hf_bad_files(tmp_path, weights, edit, message):
    write_hf(tmp_path / "hf", CFG, weights, "autobitlinear", edit)
    assert message in error_message(load_hf, tmp_path / "hf")


def test_hf_truncated_and_missing_files(tmp_path, weights):
    write_hf(tmp_path / "hf", CFG, weights, "autobitlinear")
    model = tmp_path / "hf" / "model.safetensors"
    data = model.read_bytes()
    model.write_bytes(data[:-100])
    message = error_message(load_hf, tmp_path / "hf")
    assert "tensor model." in message and "(truncated)" in message
    (tmp_path / "hf" / "config.json").unlink()
    assert "config.json: no such file" in error_message(load_hf, tmp_path / "hf")


# GGUF ----------------------------------------------------------------------------------------

def i2s_bytes(trits, gamma):
    """bitnet.cpp I2_S: per 128 elements, byte j holds elements j, j+32, j+64, j+96 from bit 7
    down (code = trit + 1); then the float32 scale, padded to 32 bytes."""
    q = (trits.astype(np.int16) + 1).astype(np.uint8).reshape(-1, 4, 32)
    packed = q[:, 0] << 6 | q[:, 1] << 4 | q[:, 2] << 2 | q[:, 3]
    tail = np.frombuffer(np.float32(gamma).tobytes() + bytes(28), np.uint8)
    return np.concatenate([packed.ravel(), tail])


def test_i2s_writer_matches_the_spec():
    trits = np.zeros(128, np.int8)
    trits[[0, 32, 64, 96]] = [1, -1, 0, 1]
    assert i2s_bytes(trits, 1.0)[0] == 0b10_00_01_10
    assert i2s_bytes(trits, 1.0)[1] == 0b01_01_01_01


GGUF_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "self_attn.attn_sub_norm": "attn_sub_norm",
              "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
              "mlp.ffn_sub_norm": "ffn_sub_norm"}


def gguf_name(name):
    if name == "norm":
        return "output_norm.weight"
    _, layer, rest = name.split(".", 2)
    return f"blk.{layer}.{GGUF_NAMES[rest]}.weight"


def write_gguf(path, cfg, weights, kind, arch="bitnet", edit=lambda tensors, writer: None):
    """A llama.cpp / bitnet.cpp style GGUF; ``edit`` may change ``{name: (array, raw type)}``."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_vocab_size(cfg.vocab)
    writer.add_context_length(cfg.max_seq)
    writer.add_embedding_length(cfg.hidden)
    writer.add_block_count(cfg.layers)
    writer.add_feed_forward_length(cfg.ffn)
    writer.add_head_count(cfg.heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.eps)
    tensors = {"token_embd.weight": (weights.embedding.astype(np.float16), None)}
    tensors.update({gguf_name(name): (gain, None) for name, gain in weights.norms.items()})
    for name, (trits, gamma) in weights.linears.items():
        if kind == "I2_S":
            tensors[gguf_name(name)] = (i2s_bytes(trits, gamma), I2_S, trits.shape)
        else:
            quantized = gguf.quants.quantize(trits * gamma, TQ[kind])
            tensors[gguf_name(name)] = (quantized, TQ[kind])
    edit(tensors, writer)
    for name, (array, raw_dtype, *shape) in tensors.items():
        if shape:   # gguf-py cannot size I2_S (or TL1): pass bytes, not uint8, and the shape
            writer.add_tensor(name, array.view(np.int8), raw_shape=shape[0], raw_dtype=raw_dtype)
        else:
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def f16_embedding(weights):
    return ModelWeights(embedding=weights.embedding.astype(np.float16).astype(np.float32),
                        norms=weights.norms, linears=weights.linears)


@pytest.mark.parametrize("kind, arch", [("TQ1_0", "bitnet"), ("TQ2_0", "bitnet"),
                                        ("I2_S", "bitnet-b1.58"), ("I2_S", "bitnet-25")])
def test_gguf_round_trip(tmp_path, weights, kind, arch):
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, weights, kind, arch)
    # TQ1_0 / TQ2_0 keep gamma as the fp16 block scale d; I2_S keeps it as float32
    gamma = stored if kind == "I2_S" else fp16_block_scale
    assert_same(load_gguf(path), CFG, f16_embedding(weights), gamma)
    assert_same(load_checkpoint(path), CFG, f16_embedding(weights), gamma)


@pytest.mark.parametrize("kind", ["TQ1_0", "TQ2_0"])
def test_gguf_tq_decoding_agrees_with_gguf_py(tmp_path, weights, kind):
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, weights, kind)
    _, loaded = load_gguf(path)
    trits, gamma = loaded.linears["layers.1.mlp.down_proj"]
    raw = gguf.quants.quantize(weights.linears["layers.1.mlp.down_proj"].trits
                               * weights.linears["layers.1.mlp.down_proj"].gamma, TQ[kind])
    np.testing.assert_array_equal(gguf.quants.dequantize(raw, TQ[kind]), trits * gamma)


def test_gguf_zero_blocks_take_any_scale(tmp_path, weights):
    """A block of zero trits (written with d = 0) does not break the one-gamma rule."""
    trits = weights.linears[Q_PROJ].trits.copy()
    trits[0, :256] = 0
    linears = {**weights.linears, Q_PROJ: TernaryWeight(trits, weights.linears[Q_PROJ].gamma)}
    model = ModelWeights(embedding=weights.embedding, norms=weights.norms, linears=linears)
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, model, "TQ2_0")
    assert_same(load_gguf(path), CFG, f16_embedding(model), fp16_block_scale)


def _two_scales(tensors, writer):
    raw, qtype = tensors["blk.0.attn_q.weight"]
    raw = raw.copy()
    raw[3, 64:66] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)   # row 3, block 0: d
    tensors["blk.0.attn_q.weight"] = (raw, qtype)


def _code_3(kind):
    def edit(tensors, writer):
        raw, *rest = tensors["blk.1.ffn_up.weight"]
        raw = raw.copy()
        raw.reshape(-1)[0] |= 0b11 << (6 if kind == "I2_S" else 4)   # element 0 / element 64
        tensors["blk.1.ffn_up.weight"] = (raw, *rest)
    return edit


@pytest.mark.parametrize("kind, edit, message", [
    ("TQ2_0", _two_scales, "tensor blk.0.attn_q.weight: TQ2_0 block 0 has d = "),
    ("TQ2_0", _code_3("TQ2_0"), "tensor blk.1.ffn_up.weight: code 0b11 at [0, 64] is not a trit"),
    ("I2_S", _code_3("I2_S"), "tensor blk.1.ffn_up.weight: code 0b11 at [0, 0] is not a trit"),
    ("TQ1_0", lambda t, w: t.pop("blk.1.ffn_norm.weight"),
     "tensor blk.1.ffn_norm.weight is missing (expected a float tensor of dims (256,))"),
    ("TQ1_0", lambda t, w: t.update({"blk.0.attn_k.weight": (np.zeros((128, 256),
                                                                       np.float32), None)}),
     "tensor blk.0.attn_k.weight is F32, expected TQ1_0, TQ2_0 or I2_S"),
    ("TQ1_0", lambda t, w: t.update({"blk.0.attn_k.weight": (np.zeros(8192, np.uint8), 38,
                                                                      (128, 256))}),
     "tensor blk.0.attn_k.weight has unsupported ggml type id 38"),
    ("TQ2_0", lambda t, w: t.update({"blk.0.attn_k.weight": t["blk.0.attn_q.weight"]}),
     "tensor blk.0.attn_k.weight has dims (256, 256), expected (256, 128) (ne0 first)"),
    ("TQ2_0", lambda t, w: t.update({"output.weight": (np.ones((48, 256), np.float32), None)}),
     "tensor output.weight differs from token_embd.weight"),
    ("TQ2_0", lambda t, w: t.update({"rope_freqs.weight": (np.ones(32, np.float32), None)}),
     "unexpected tensor(s) rope_freqs.weight"),
    ("TQ2_0", lambda t, w: w.add_rope_dimension_count(8),
     "bitnet.rope.dimension_count is 8, expected head_dim = 64"),
])
def test_gguf_bad_files(tmp_path, weights, kind, edit, message):
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, weights, kind, edit=edit)
    assert message in error_message(load_gguf, path)


def test_gguf_metadata_errors(tmp_path, weights):
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, weights, "I2_S", arch="llama")
    assert "general.architecture is 'llama', expected one of bitnet, bitnet-b1.58, " \
        "bitnet-25" in error_message(load_gguf, path)
    write_gguf(path, CFG, weights, "I2_S", edit=lambda t, w: w.kv_data[0].pop(
        "bitnet.block_count"))
    assert error_message(load_gguf, path).endswith("metadata key bitnet.block_count is missing")


def test_gguf_truncated_and_not_gguf(tmp_path, weights):
    path = tmp_path / "m.gguf"
    write_gguf(path, CFG, weights, "I2_S")
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    assert error_message(load_gguf, path).endswith(
        f"tensor blk.1.ffn_down.weight ends at byte {len(data)} but the file has "
        f"{len(data) - 100} bytes (truncated)")
    path.write_bytes(data[:200])
    assert "not a readable GGUF file" in error_message(load_gguf, path)
    path.write_bytes(b"GGML" + data[4:])
    assert "not a readable GGUF file (ValueError: GGUF magic invalid)" in \
        error_message(load_gguf, path)


# Dispatch ------------------------------------------------------------------------------------

def test_load_checkpoint_rejects_unknown_files(tmp_path):
    odd = tmp_path / "m.bin"
    odd.write_bytes(b"\0" * 16)
    assert "unknown checkpoint type; expected a .gguf file, a .safetensors file or a " \
        "Hugging Face model directory" in error_message(load_checkpoint, odd)
    plain = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"x": np.zeros(2, np.float32)}, plain)
    assert "neither Bittern metadata (format = 'bittern') nor a config.json beside it" in \
        error_message(load_checkpoint, plain)
    assert error_message(load_checkpoint, tmp_path / "nothing").endswith(
        "no such file or directory")
    assert "config.json: no such file" in error_message(load_checkpoint, tmp_path)
