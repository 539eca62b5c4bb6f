"""golden.model: the decoder graph, the KV cache, the integer-core hook and generation."""

import json

import numpy as np
import pytest

from golden.bitlinear import bitlinear, bitlinear_int
from golden.model import (
    BITNET_B158_2B4T, Model, ModelConfig, ModelWeights, RecordingCore, apply_rope, attention,
    linear_shapes, random_float_tensors, rms_norm, rope_inverse_frequencies, rope_tables,
)

from .extras import require

f32 = np.float32
CFG = ModelConfig(hidden=32, layers=2, heads=4, kv_heads=2, ffn=48, vocab=61, max_seq=24)
TOKENS = [5, 17, 42, 3, 60, 0, 29, 11, 8, 33]


@pytest.fixture(scope="module")
def weights():
    return ModelWeights.random(CFG, seed=1)


def config_args(**overrides):
    return {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 48, "vocab": 61,
            "max_seq": 24, **overrides}


@pytest.mark.parametrize("overrides, message", [
    ({"hidden": 0}, "ModelConfig.hidden must be a positive integer, not 0"),
    ({"layers": 2.0}, "ModelConfig.layers must be a positive integer, not 2.0"),
    ({"hidden": 30}, "ModelConfig.hidden (30) must be a multiple of heads (4)"),
    ({"kv_heads": 3}, "ModelConfig.heads (4) must be a multiple of kv_heads (3)"),
    ({"hidden": 12}, "ModelConfig head_dim = hidden / heads = 3 must be even for RoPE"),
    ({"rope_theta": -1.0}, "ModelConfig.rope_theta must be a finite number > 0, not -1.0"),
    ({"eps": float("nan")}, "ModelConfig.eps must be a finite number > 0, not nan"),
])
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError) as error:
        ModelConfig(**config_args(**overrides))
    assert str(error.value) == message


def test_config_json_round_trip():
    data = json.loads(json.dumps(CFG.to_dict()))
    assert data == {**config_args(), "rope_theta": 500000.0, "eps": 1e-5}
    assert ModelConfig.from_dict(data) == CFG
    assert ModelConfig.from_dict({**data, "rope_theta": 10000}).rope_theta == 10000.0
    with pytest.raises(ValueError, match="^unknown ModelConfig field\\(s\\): dim$"):
        ModelConfig.from_dict({**data, "dim": 3})
    with pytest.raises(ValueError, match="^ModelConfig is missing field\\(s\\): vocab$"):
        ModelConfig.from_dict({k: v for k, v in data.items() if k != "vocab"})


def test_2b4t_preset():
    assert (BITNET_B158_2B4T.head_dim, BITNET_B158_2B4T.kv_group) == (128, 4)
    shapes = linear_shapes(BITNET_B158_2B4T)
    assert len(shapes) == 30 * 7
    assert shapes["layers.29.self_attn.k_proj"] == (640, 2560)
    assert shapes["layers.0.mlp.down_proj"] == (2560, 6912)


def test_from_float_quantises_each_matrix_on_its_own(weights):
    tensors = random_float_tensors(CFG, seed=1)
    for name in linear_shapes(CFG):
        trits, gamma = weights.linears[name]
        master = tensors[f"model.{name}.weight"]
        assert gamma == f32(np.abs(master).mean(dtype=np.float64))
        np.testing.assert_array_equal(trits, np.clip(np.rint(master * (1 / gamma)), -1, 1))
    np.testing.assert_array_equal(weights.embedding, tensors["model.embed_tokens.weight"])
    np.testing.assert_array_equal(weights.norms["layers.1.mlp.ffn_sub_norm"],
                                  tensors["model.layers.1.mlp.ffn_sub_norm.weight"])


def test_from_float_rejects_tensors_that_do_not_fit():
    tensors = random_float_tensors(CFG, seed=1)
    key = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(ValueError, match=f"^{key} has shape \\(32, 31\\), expected \\(32, 32\\)$"):
        ModelWeights.from_float(CFG, {**tensors, key: tensors[key][:, :31]})
    missing = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(ValueError, match=f"missing \\['{key}'\\], unexpected none$"):
        ModelWeights.from_float(CFG, missing)
    with pytest.raises(ValueError, match="^lm_head.weight differs from model.embed_tokens"):
        ModelWeights.from_float(CFG, {**tensors, "lm_head.weight": tensors[key]})


def test_one_layer_single_token_matches_the_formula():
    """T = 1: attention returns v, so the whole graph is a chain of documented steps."""
    cfg = ModelConfig(hidden=16, layers=1, heads=4, kv_heads=2, ffn=24, vocab=9, max_seq=4)
    w = ModelWeights.random(cfg, seed=5)

    def norm(x, name):
        return rms_norm(x, w.norms[name], cfg.eps)

    def linear(x, name):
        return bitlinear(x, *w.linears[name])

    h = w.embedding[[7]]
    v = linear(norm(h, "layers.0.input_layernorm"), "layers.0.self_attn.v_proj")
    o = np.repeat(v.reshape(1, cfg.kv_heads, -1), cfg.kv_group, axis=1).reshape(1, -1)
    h = h + linear(norm(o, "layers.0.self_attn.attn_sub_norm"), "layers.0.self_attn.o_proj")
    m = norm(h, "layers.0.post_attention_layernorm")
    inner = np.maximum(linear(m, "layers.0.mlp.gate_proj"), 0) ** 2
    inner = inner * linear(m, "layers.0.mlp.up_proj")
    h = h + linear(norm(inner, "layers.0.mlp.ffn_sub_norm"), "layers.0.mlp.down_proj")
    expected = norm(h, "norm") @ w.embedding.T
    np.testing.assert_allclose(Model(cfg, w).forward([7], 0), expected, rtol=1e-6, atol=1e-6)


def test_rope_uses_the_rotate_half_layout():
    inverse = rope_inverse_frequencies(4, 10000.0)
    np.testing.assert_allclose(inverse, [1.0, 0.01])
    cos, sin = rope_tables([0, 1], inverse)
    x = np.array([[[1, 0, 0, 0]]] * 2, dtype=f32)
    # Dimension i pairs with i + head_dim / 2, not with i + 1.
    np.testing.assert_allclose(apply_rope(x, cos, sin)[:, 0],
                               [[1, 0, 0, 0], [np.cos(1), 0, np.sin(1), 0]], rtol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 1, 1, 8)).astype(f32)
    inverse = rope_inverse_frequencies(8, CFG.rope_theta)

    def score(query_pos, key_pos):
        cos_q, sin_q = rope_tables([query_pos], inverse)
        cos_k, sin_k = rope_tables([key_pos], inverse)
        return float(apply_rope(q, cos_q, sin_q).ravel() @ apply_rope(k, cos_k, sin_k).ravel())

    assert score(7, 3) == pytest.approx(score(4, 0), rel=1e-5)
    assert score(7, 3) != pytest.approx(score(4, 1), rel=1e-3)


def test_rms_norm_known_values():
    gain = np.array([1, 2], dtype=f32)
    np.testing.assert_allclose(rms_norm(np.array([[3, 4]], f32), gain, 1e-5),
                               [[3 / np.sqrt(12.5 + 1e-5), 8 / np.sqrt(12.5 + 1e-5)]], rtol=1e-6)
    np.testing.assert_allclose(rms_norm(np.array([1, 1], f32), gain, 1.0),
                               [2 ** -0.5, 2 ** 0.5], rtol=1e-6)


def test_attention_groups_query_heads_and_masks_the_future():
    values = np.stack([np.full((2, 3), float(position), f32) for position in range(3)])
    values[:, 1] += 10                               # KV head 1 holds 10 more than KV head 0
    keys = np.zeros_like(values)
    keys[0, 1] = 100                                 # KV head 1 looks only at position 0
    q = np.ones((3, 4, 3), dtype=f32)
    out = attention(q, keys, values, start_pos=0).reshape(3, 4, 3)[..., 0]
    causal_mean = [0.0, 0.5, 1.0]                    # equal scores over positions 0 .. t
    np.testing.assert_allclose(out, np.transpose([causal_mean] * 2 + [[10] * 3] * 2), atol=1e-6)
    last = attention(q[:1], keys, values, start_pos=2).reshape(4, 3)[:, 0]
    np.testing.assert_allclose(last, [1, 1, 10, 10], atol=1e-6)


def test_attention_scores_are_scaled_by_one_over_sqrt_head_dim():
    head_dim = 16
    keys = np.zeros((2, 1, head_dim), dtype=f32)
    keys[1, 0, 0] = np.log(3) * np.sqrt(head_dim)    # scores 0 and ln 3: weights 1/4 and 3/4
    values = np.arange(2, dtype=f32).reshape(2, 1, 1).repeat(head_dim, axis=2)
    q = np.zeros((1, 1, head_dim), dtype=f32)
    q[0, 0, 0] = 1
    np.testing.assert_allclose(attention(q, keys, values, start_pos=1)[0], 0.75, rtol=1e-6)


def test_kv_cache_decoding_matches_a_full_forward(weights):
    model = Model(CFG, weights)
    full = model.forward(TOKENS, 0)
    model.reset()
    pieces = [model.forward(TOKENS[:4], 0)]
    pieces += [model.forward([token], 4 + i) for i, token in enumerate(TOKENS[4:])]
    assert model.position == len(TOKENS)
    np.testing.assert_allclose(np.concatenate(pieces), full, rtol=1e-5, atol=1e-5)
    assert full.dtype == np.float32 and full.shape == (len(TOKENS), CFG.vocab)


def test_start_pos_rewinds_the_cache(weights):
    model = Model(CFG, weights)
    first = model.forward(TOKENS, 0)
    model.forward([1, 2], 3)
    np.testing.assert_allclose(model.forward(TOKENS[3:], 3), first[3:], rtol=1e-5, atol=1e-5)


def test_earlier_logits_ignore_later_tokens(weights):
    model = Model(CFG, weights)
    changed = TOKENS[:6] + [(t + 1) % CFG.vocab for t in TOKENS[6:]]
    np.testing.assert_array_equal(model.forward(changed, 0)[:6], model.forward(TOKENS, 0)[:6])


def test_core_is_called_once_per_bitlinear_with_names_and_shapes(weights):
    core = RecordingCore(Model(CFG, weights).core)
    Model(CFG, weights, core=core).forward(TOKENS[:5], 0)
    shapes = linear_shapes(CFG)
    assert [call.name for call in core.calls] == list(shapes)
    for call in core.calls:
        n, k = shapes[call.name]
        assert call.x_q.dtype == np.int8 and call.x_q.shape == (5, k)
        assert call.acc.dtype == np.int32 and call.acc.shape == (5, n)
        np.testing.assert_array_equal(call.acc,
                                      bitlinear_int(call.x_q, weights.linears[call.name].trits))
    by_name = {call.name: call.x_q for call in core.calls}
    for layer in range(CFG.layers):
        q_input = by_name[f"layers.{layer}.self_attn.q_proj"]
        for shared in ("self_attn.k_proj", "self_attn.v_proj"):
            np.testing.assert_array_equal(by_name[f"layers.{layer}.{shared}"], q_input)
        np.testing.assert_array_equal(by_name[f"layers.{layer}.mlp.up_proj"],
                                      by_name[f"layers.{layer}.mlp.gate_proj"])


def test_any_exact_core_gives_identical_logits(weights):
    def int64_core(name, x_q):
        trits = weights.linears[name].trits.astype(np.int64)
        return np.einsum("tk,nk->tn", x_q.astype(np.int64), trits).astype(np.int32)

    np.testing.assert_array_equal(Model(CFG, weights, core=int64_core).forward(TOKENS, 0),
                                  Model(CFG, weights).forward(TOKENS, 0))


@pytest.mark.parametrize("broken", ["layers.0.self_attn.k_proj", "layers.1.mlp.down_proj"])
def test_a_core_with_one_wrong_accumulator_changes_the_logits(weights, broken):
    golden_model = Model(CFG, weights)

    def faulty_core(name, x_q):
        acc = golden_model.core(name, x_q)
        if name == broken:
            acc[-1, 0] += 1
        return acc

    logits = Model(CFG, weights, core=faulty_core).forward(TOKENS, 0)
    assert not np.allclose(logits[-1], golden_model.forward(TOKENS, 0)[-1], rtol=0, atol=1e-6)


def test_a_core_of_the_wrong_shape_or_dtype_is_named(weights):
    def float_core(name, x_q):
        return bitlinear_int(x_q, weights.linears[name].trits).astype(np.float32)

    with pytest.raises(ValueError, match=r"^core returned float32 \(3, 32\) for "
                                         r"layers.0.self_attn.q_proj, expected int32 \(3, 32\)$"):
        Model(CFG, weights, core=float_core).forward(TOKENS[:3], 0)


def test_greedy_generation_follows_the_argmax(weights):
    model = Model(CFG, weights)
    prompt = TOKENS[:4]
    new = model.generate(prompt, 6)
    assert len(new) == 6 and all(isinstance(token, int) for token in new)
    assert model.position == len(prompt) + 5
    logits = Model(CFG, weights).forward(prompt + new[:-1], 0)
    assert list(np.argmax(logits[len(prompt) - 1:], axis=-1)) == new


def test_sampling_is_deterministic_for_a_seed(weights):
    model = Model(CFG, weights)
    runs = {seed: model.generate(TOKENS[:3], 8, temperature=1.0, seed=seed) for seed in range(4)}
    assert model.generate(TOKENS[:3], 8, temperature=1.0, seed=2) == runs[2]
    assert len({tuple(run) for run in runs.values()}) > 1
    assert model.generate(TOKENS[:3], 0) == []


@pytest.mark.parametrize("call, message", [
    (lambda m: m.generate(TOKENS, 16),
     "10 prompt tokens and 16 new tokens need 25 positions, more than max_seq = 24"),
    (lambda m: m.forward(TOKENS * 3, 0), "positions 0 .. 29 exceed max_seq = 24"),
    (lambda m: m.forward([1], 2),
     "start_pos must be an integer in [0, 0] (the cached positions), not 2"),
    (lambda m: m.forward([3, 61], 0), "tokens[1] = 61 is outside the vocabulary [0, 61)"),
    (lambda m: m.forward([], 0), "tokens must be a non-empty 1-D sequence, not shape (0,)"),
    (lambda m: m.generate([1], 2, temperature=-1.0),
     "temperature must be a finite number >= 0, not -1.0"),
])
def test_model_errors_say_what_is_wrong(weights, call, message):
    with pytest.raises(ValueError) as error:
        call(Model(CFG, weights))
    assert str(error.value) == message


# torch's own, raised as torch.compile loads its inductor (transformers compiles the quantisers).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_matches_hugging_face_bitnet_online_quantisation():
    torch = require("torch", extra="hf")
    transformers = require("transformers", extra="hf")
    from transformers.integrations.bitnet import replace_with_bitnet_linear

    cfg = ModelConfig(hidden=64, layers=2, heads=4, kv_heads=2, ffn=96, vocab=97, max_seq=32)
    tensors = random_float_tensors(cfg, seed=7)
    hf_model = transformers.BitNetForCausalLM(transformers.BitNetConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.hidden, intermediate_size=cfg.ffn,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads, max_position_embeddings=cfg.max_seq,
        rms_norm_eps=cfg.eps, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attn_implementation="eager")).eval()
    # The "online" mode of the released bf16 checkpoint: float masters, WeightQuant and ActQuant
    # applied in every forward. lm_head stays a plain Linear tied to the embedding.
    replace_with_bitnet_linear(hf_model, modules_to_not_convert=["lm_head"],
                               quantization_config=transformers.BitNetQuantConfig(
                                   linear_class="autobitlinear", quantization_mode="online"))
    state = {key: torch.from_numpy(value) for key, value in tensors.items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf_model.load_state_dict(state, strict=True, assign=True)

    model = Model(cfg, ModelWeights.from_float(cfg, tensors))
    prompt = [3, 14, 15, 92, 65, 35]
    new = model.generate(prompt, 10)
    # WeightQuant/ActQuant are torch.compile'd; eager mode is the same maths, without a compiler.
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        hf_new = hf_model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)
        hf_logits = hf_model(torch.tensor([prompt + new])).logits[0].numpy()
    assert hf_new[0, len(prompt):].tolist() == new
    logits = Model(cfg, model.weights).forward(prompt + new, 0)
    np.testing.assert_allclose(logits, hf_logits, rtol=0, atol=1e-5 * np.abs(hf_logits).max())
