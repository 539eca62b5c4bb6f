"""Train the shipped tiny byte-level BitNet b1.58 model (needs the ``train`` extra: torch).

    python -m sw_driver.train_tiny --out sw_driver/models/tiny.safetensors

Quantisation-aware training on the English text of ``pydoc_data.topics`` (the last 10% held
out). Every BitLinear's forward is the golden numeric contract (absmean ternary weights with one
gamma per matrix, absmax int8 activations per token); the rounding passes gradients straight
through. The graph is golden.model's: RMSNorm, sub-norms, ReLU^2 FFN, RoPE (rotate-half), GQA,
tied embeddings. The trained master weights are quantised by the golden model itself
(:meth:`golden.ModelWeights.from_float`), saved in Bittern's format, and measured with the
NumPy golden model. A float model of the same shape, trained the same way, gives the baseline.
Writes ``<out>`` and its record beside it with the suffix ``.json`` (``tiny.json``).
"""

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

# Threads that spin while they wait make a busy 2-core machine ten times slower. Set before the
# torch import, which starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
import torch.nn.functional as F
from torch import nn

from golden import Model, ModelConfig, ModelWeights, linear_shapes
from sw_driver import models, tokenizer
from sw_driver.checkpoint import FORMAT_NAME, FORMAT_VERSION, save_bittern

PROMPT = 'The "while" statement\n'
SAMPLE_TOKENS = 200
CHECK_WINDOWS = 4
EVAL_EVERY = 250


class BitLinear(nn.Linear):
    """Bias-free linear layer; with ``ternary`` its forward is golden's W1.58 A8 BitLinear."""

    def __init__(self, n_in, n_out, ternary):
        super().__init__(n_in, n_out, bias=False)
        self.ternary = ternary

    def forward(self, x):
        w = self.weight
        if not self.ternary:
            return F.linear(x, w)
        gamma = w.abs().mean().clamp(min=1e-5)
        w_q = (w * (1 / gamma)).round().clamp(-1, 1) * gamma
        s_x = 127 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        x_q = (x * s_x).round().clamp(-128, 127) / s_x
        return F.linear(x + (x_q - x).detach(), w + (w_q - w).detach())


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps))


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg, ternary):
        super().__init__()
        self.cfg = cfg
        kv = cfg.kv_heads * cfg.head_dim
        self.q_proj = BitLinear(cfg.hidden, cfg.hidden, ternary)
        self.k_proj = BitLinear(cfg.hidden, kv, ternary)
        self.v_proj = BitLinear(cfg.hidden, kv, ternary)
        self.attn_sub_norm = RMSNorm(cfg.hidden, cfg.eps)
        self.o_proj = BitLinear(cfg.hidden, cfg.hidden, ternary)

    def forward(self, x, cos, sin):
        cfg, (batch, steps, _) = self.cfg, x.shape

        def heads(y, count):
            return y.view(batch, steps, count, cfg.head_dim).transpose(1, 2)

        q = rotate(heads(self.q_proj(x), cfg.heads), cos, sin)
        k = rotate(heads(self.k_proj(x), cfg.kv_heads), cos, sin)
        v = heads(self.v_proj(x), cfg.kv_heads)
        k, v = k.repeat_interleave(cfg.kv_group, 1), v.repeat_interleave(cfg.kv_group, 1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(self.attn_sub_norm(o.transpose(1, 2).reshape(batch, steps, -1)))


class MLP(nn.Module):
    def __init__(self, cfg, ternary):
        super().__init__()
        self.gate_proj = BitLinear(cfg.hidden, cfg.ffn, ternary)
        self.up_proj = BitLinear(cfg.hidden, cfg.ffn, ternary)
        self.ffn_sub_norm = RMSNorm(cfg.ffn, cfg.eps)
        self.down_proj = BitLinear(cfg.ffn, cfg.hidden, ternary)

    def forward(self, x):
        inner = torch.relu(self.gate_proj(x)).square() * self.up_proj(x)
        return self.down_proj(self.ffn_sub_norm(inner))


class Layer(nn.Module):
    def __init__(self, cfg, ternary):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.self_attn = Attention(cfg, ternary)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.mlp = MLP(cfg, ternary)

    def forward(self, h, cos, sin):
        h = h + self.self_attn(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class TinyLM(nn.Module):
    """golden.model's decoder in torch; ``state_dict`` names are HF's without ``model.``."""

    def __init__(self, cfg, ternary):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        self.layers = nn.ModuleList(Layer(cfg, ternary) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.eps)
        exponents = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim
        angles = torch.arange(cfg.max_seq, dtype=torch.float32)[:, None] / (
            cfg.rope_theta ** exponents)[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, tokens):
        steps = tokens.shape[1]
        h = self.embed_tokens(tokens)
        for layer in self.layers:
            h = layer(h, self.cos[:steps], self.sin[:steps])
        return self.norm(h) @ self.embed_tokens.weight.T


def train(cfg, ternary, data, held_out, args):
    """Train one model for ``args.steps`` AdamW steps on random windows of ``data``.

    Returns ``(model, seconds, curve)``: ``seconds`` leaves out the held-out scoring, and
    ``curve`` lists ``[step, train bits/byte of the last 100 steps, held-out bits/byte]`` every
    :data:`EVAL_EVERY` steps (torch scoring of the ``held_out`` windows).
    """
    torch.manual_seed(args.seed)
    model = TinyLM(cfg, ternary)
    matrices = [p for name, p in model.named_parameters() if name.endswith("_proj.weight")]
    others = [p for name, p in model.named_parameters() if not name.endswith("_proj.weight")]
    optimiser = torch.optim.AdamW([{"params": matrices, "weight_decay": args.weight_decay},
                                   {"params": others, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_factor(step):     # linear warm-up, then cosine decay to a tenth
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    generator = torch.Generator().manual_seed(args.seed)
    data = torch.from_numpy(data.astype(np.int64))
    span = torch.arange(cfg.max_seq + 1)
    seconds, losses, curve = 0.0, [], []
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        offsets = torch.randint(len(data) - cfg.max_seq - 1, (args.batch, 1), generator=generator)
        chunk = data[offsets + span]
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab), chunk[:, 1:].reshape(-1))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        seconds += time.perf_counter() - start
        losses = (losses + [loss.item() / math.log(2)])[-100:]
        if step % EVAL_EVERY == 0 or step == args.steps:
            curve.append([step, round(sum(losses) / len(losses), 4),
                          round(torch_bits_per_byte(model, held_out), 4)])
            print(f"[{'ternary' if ternary else 'float'}] step {step}/{args.steps} "
                  f"{seconds:.0f} s: train {curve[-1][1]:.3f}, held-out {curve[-1][2]:.3f} "
                  f"bits/byte", file=sys.stderr, flush=True)
    return model, seconds, curve


@torch.no_grad()
def torch_bits_per_byte(model, batch):
    """Held-out bits per byte of a torch model, scored as :func:`models.bits_per_byte` does."""
    batch = torch.from_numpy(batch)
    logits = model(batch[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    return loss.item() / math.log(2)


def export(model, cfg):
    """Golden ModelWeights from the torch master weights, quantised by the golden model."""
    tensors = {f"model.{name}": value.detach().numpy().astype(np.float32)
               for name, value in model.state_dict().items()}
    return ModelWeights.from_float(cfg, tensors)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m sw_driver.train_tiny",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Bittern .safetensors to write")
    # Defaults picked by golden held-out bits per byte after 600 steps (64 windows): layers x ffn
    # 2 x 384: 2.111, 3 x 320: 2.113, 3 x 256: 2.116 (lr 3e-3); 2 x 384 at lr 5e-3: 2.106.
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--ffn", type=int, default=384)
    parser.add_argument("--max-seq", type=int, default=256)
    parser.add_argument("--rope-theta", type=float, default=10000.0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-windows", type=int, default=64,
                        help="held-out windows of max-seq bytes to score")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the float baseline (for quick experiments)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(hidden=args.hidden, layers=args.layers, heads=args.heads,
                      kv_heads=args.kv_heads, ffn=args.ffn, vocab=tokenizer.VOCAB,
                      rope_theta=args.rope_theta, max_seq=args.max_seq)
    data = models.corpus()
    train_data, held_out = models.split(data)
    batch = models.windows(held_out, cfg.max_seq, args.eval_windows)

    model, seconds, curve = train(cfg, True, train_data, batch, args)
    weights = export(model, cfg)
    save_bittern(args.out, cfg, weights)
    prompt = tokenizer.encode(PROMPT)
    new_tokens = min(SAMPLE_TOKENS, cfg.max_seq + 1 - len(prompt))
    sample = Model(cfg, weights).generate(prompt, new_tokens)
    info = {
        "file": args.out.name,
        "format": f"{FORMAT_NAME} v{FORMAT_VERSION}",
        "file_bytes": args.out.stat().st_size,
        "config": cfg.to_dict(),
        "ternary_weights": sum(n * k for n, k in linear_shapes(cfg).values()),
        "corpus": {"source": "pydoc_data.topics", "python": platform.python_version(),
                   "bytes": len(data), "sha256": models.corpus_sha256(data),
                   "held_out_fraction": models.HELD_OUT_FRACTION,
                   "held_out_bytes": len(held_out)},
        "training": {"seed": args.seed, "steps": args.steps, "batch": args.batch,
                     "sequence": cfg.max_seq, "lr": args.lr, "weight_decay": args.weight_decay,
                     "threads": args.threads, "torch": torch.__version__,
                     "ternary_seconds": round(seconds, 1)},
        "held_out": {"windows": args.eval_windows, "window_bytes": cfg.max_seq,
                     "golden_bits_per_byte": round(models.bits_per_byte(cfg, weights, batch), 4),
                     "torch_ternary_bits_per_byte": curve[-1][2]},
        "check": {"windows": CHECK_WINDOWS, "golden_bits_per_byte":
                  round(models.bits_per_byte(cfg, weights, batch[:CHECK_WINDOWS]), 6)},
        "sample": {"prompt": PROMPT, "new_tokens": new_tokens, "greedy": True,
                   "text": tokenizer.decode(sample)},
        "curves": {"columns": ["step", "train bits/byte (mean of the last 100 steps)",
                               "held-out bits/byte (torch)"], "ternary": curve},
    }
    if not args.no_baseline:
        _, baseline_seconds, baseline_curve = train(cfg, False, train_data, batch, args)
        best = min(baseline_curve, key=lambda point: point[2])
        info["held_out"]["float_baseline_bits_per_byte"] = baseline_curve[-1][2]
        info["held_out"]["float_baseline_best"] = {"step": best[0], "bits_per_byte": best[2]}
        info["training"]["float_seconds"] = round(baseline_seconds, 1)
        info["curves"]["float"] = baseline_curve
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info["held_out"]), file=sys.stderr)


if __name__ == "__main__":
    main()
