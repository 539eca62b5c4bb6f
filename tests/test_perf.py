"""``bittern perf``: the driver's schedule costed without simulating equals what a run measures,
for prompt and token counts drawn at random (not chosen to pass)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from golden import ModelConfig, ModelWeights
from hw.config import preset
from hw.resident_core import layout_core
from sw_driver.behavioural import BehaviouralTransport
from sw_driver.perf import ENERGY_PJ, perf
from sw_driver.resident import model_config as resident_shape
from sw_driver.run import load_model, run, run_resident

NANO = ModelConfig(hidden=8, layers=1, heads=2, kv_heads=1, ffn=8, vocab=256, max_seq=32)


@pytest.mark.parametrize("prefill", ["auto", "array"])
def test_perf_is_what_a_run_measures(prefill):
    rng = np.random.default_rng()                 # any draw must agree: no seed to tune
    config, weights = preset("tiny"), ModelWeights.random(NANO, seed=3)
    for _ in range(3):
        prompt = [int(t) for t in rng.integers(0, 256, int(rng.integers(1, 20)))]
        tokens = int(rng.integers(1, NANO.max_seq - len(prompt) + 2))
        measured = run(BehaviouralTransport(config), config, NANO, weights, prompt, tokens,
                       prefill=prefill)
        predicted = perf(config, NANO, prompt_tokens=len(prompt), tokens=tokens,
                         prefill=prefill, baud=115200, weights=weights)
        assert (predicted.prefill_cycles, predicted.cycles_per_token) == (
            measured.prefill_cycles, measured.cycles_per_token), (prompt, tokens)
        if tokens > 1:
            assert predicted.link_words == measured.link_words_per_token


def test_resident_perf_is_what_a_run_measures():
    """Resident mode: the two GENERATEs' cycles and words, costed, equal a run's on the
    behavioural device (whose counters the RTL tests hold to the RTL's)."""
    rng = np.random.default_rng()                 # any draw must agree: no seed to tune
    config = preset("tiny")
    shape = resident_shape(config)
    weights = ModelWeights.random(shape, seed=4)
    core = layout_core(config)
    for _ in range(3):
        prompt = [int(t) for t in rng.integers(0, shape.vocab, int(rng.integers(1, 8)))]
        tokens = int(rng.integers(1, shape.max_seq - len(prompt) + 2))
        measured = run_resident(BehaviouralTransport(config), config, shape, weights, prompt,
                                tokens)
        predicted = perf(config, shape, prompt_tokens=len(prompt), tokens=tokens, baud=115200,
                         weights=weights, mode="resident")
        assert (predicted.prefill_cycles, predicted.cycles_per_token) == (
            measured.prefill_cycles, measured.cycles_per_token), (prompt, tokens)
        assert predicted.link_words == measured.link_words_per_token, (prompt, tokens)
        # Every stage but the embedding and the head belongs to a layer.
        prompt_stages = [core.stage_cycles(p, p + 1 == len(prompt)) for p in range(len(prompt))]
        assert sum(layer["prefill_cycles"] for layer in predicted.per_layer) == sum(
            sum(stages.values()) - stages["embed"] - stages["head"] for stages in prompt_stages)
        if tokens > 1:            # a decoded token: the core's stages and GENERATE's start
            stages = predicted.stages
            assert sum(stages.values()) + 1 == pytest.approx(predicted.cycles_per_token)
            assert sum(layer["decode_cycles"] for layer in predicted.per_layer) \
                == pytest.approx(sum(stages.values()) - stages["embed"] - stages["head"])


def test_shipped_model_figures():
    config = preset("ulx3s-85f")
    model_config, weights = load_model("tiny")
    result = perf(config, model_config, prompt_tokens=31, tokens=12, baud=115200,
                  weights=weights)
    assert result.bank_bound_cycles_per_token == 768
    assert 0 < result.bank_bound_fraction < 1
    assert result.bank_bound_fraction == pytest.approx(result.bank_utilisation)
    assert 0.3 < result.zero_fraction < 0.4
    assert sum(layer["decode_cycles"] for layer in result.per_layer) == result.cycles_per_token
    ops = result.energy["operations"]
    assert ops["bank_read"] == 768 * 16 and set(ops) == set(ENERGY_PJ)


def bittern(*args):
    return subprocess.run([sys.executable, "-m", "sw_driver.cli", "perf", *args],
                          capture_output=True, text=True, timeout=300)


def test_perf_json_and_mistakes():
    result = bittern("--prompt-tokens", "7", "--tokens", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["prefill_tokens"] == 7 and report["decode_tokens"] == 2
    assert "link-bound" in result.stdout and "bank bound" in result.stdout
    for args, message in ((["--tokens", "0"], "--prompt-tokens and --tokens must be at least 1"),
                          (["--prompt-tokens", "300"], "exceed the model's max_seq = 256"),
                          (["--model", "2b4t", "--mode", "offload"], "the model needs at least"),
                          (["--model", "2b4t", "--mode", "resident"],
                           "--mode resident: the resident units are built for hidden 128")):
        result = bittern(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr, result.stderr
