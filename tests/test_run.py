"""``bittern run`` end to end: the behavioural and RTL backends agree with golden and each other."""

import json
import subprocess
import sys

import pytest

from golden import ModelConfig, ModelWeights
from sw_driver.checkpoint import save_bittern

# Fits the `tiny` preset's banks (2 x 1024 words of 4 lanes), so the top's CI build is reused;
# not its resident units' shape, so it runs in offload mode there.
NANO = ModelConfig(hidden=8, layers=1, heads=2, kv_heads=1, ffn=8, vocab=256, max_seq=32)
# The shape of the tiny preset's resident units.
RESIDENT = ModelConfig(hidden=16, layers=2, heads=2, kv_heads=1, ffn=32, vocab=256, max_seq=16)


@pytest.fixture(scope="module")
def nano_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "nano.safetensors"
    save_bittern(path, NANO, ModelWeights.random(NANO, seed=5))
    return path


@pytest.fixture(scope="module")
def resident_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "resident.safetensors"
    save_bittern(path, RESIDENT, ModelWeights.random(RESIDENT, seed=3))
    return path


def bittern_run(*args):
    result = subprocess.run([sys.executable, "-m", "sw_driver.cli", "run", *args],
                            capture_output=True, text=True, timeout=900)
    return result, (json.loads(result.stdout.strip().splitlines()[-1])
                    if result.returncode == 0 else None)


def _agree(common):
    behavioural, behavioural_report = bittern_run(*common, "--backend", "behavioural")
    assert behavioural.returncode == 0, behavioural.stdout + behavioural.stderr
    rtl, rtl_report = bittern_run(*common, "--backend", "rtl")
    assert rtl.returncode == 0, rtl.stdout + rtl.stderr
    for report in (behavioural_report, rtl_report):
        assert report["checked"] is True
    for key in ("text", "tokens", "prefill_cycles", "cycles_per_token", "calls",
                "link_words_per_token"):
        assert behavioural_report[key] == rtl_report[key], key
    assert rtl_report["calls"]["gemv"] > 0
    return rtl_report


def test_behavioural_and_rtl_backends_agree_bit_exactly(nano_model):
    _agree(["--model", str(nano_model), "--preset", "tiny", "--prompt", "Hi", "--tokens", "5",
            "--prefill", "array", "--check", "--json"])


def test_resident_mode_on_both_backends(resident_model):
    """The whole decoder on the device (tiny's resident units): the behavioural device and the
    RTL generate the integer decoder's tokens in the same cycles (the resident core's cycle
    model), which bittern perf predicts, and a decoded token costs a word or two of the link
    each way."""
    common = ["--model", str(resident_model), "--preset", "tiny", "--prompt", "Hi",
              "--tokens", "5", "--check", "--json"]
    reports = {}
    for backend in ("behavioural", "rtl"):
        result, reports[backend] = bittern_run(*common, "--backend", backend)
        assert result.returncode == 0, result.stdout + result.stderr
        assert reports[backend]["mode"] == "resident" and reports[backend]["checked"] is True
    for key in ("tokens", "prefill_cycles", "cycles_per_token", "link_words_per_token"):
        assert reports["behavioural"][key] == reports["rtl"][key], key
    rtl = reports["rtl"]
    predicted = bittern_perf("--model", str(resident_model), "--preset", "tiny",
                             "--prompt-tokens", "2", "--tokens", "5")       # "Hi": 2 bytes
    assert predicted["mode"] == "resident"
    assert (predicted["prefill_cycles"], predicted["cycles_per_token"],
            predicted["link_words"]) == (rtl["prefill_cycles"], rtl["cycles_per_token"],
                                         rtl["link_words_per_token"])
    assert rtl["prefill_cycles"] > 0 and rtl["cycles_per_token"] > 0
    assert max(rtl["link_words_per_token"].values()) <= 4


def test_model_is_the_behavioural_backend_by_its_old_name(nano_model):
    result, report = bittern_run("--model", str(nano_model), "--preset", "tiny", "--backend",
                                 "model", "--tokens", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert report["backend"] == "behavioural"


def test_shipped_model_on_the_ulx3s_device():
    """The shipped tiny model, resident in the ulx3s-85f banks, on the full-size device (a
    Verilator build of about 25 seconds, then about 2 seconds a token); bittern perf predicts
    its cycles."""
    rtl = _agree(["--model", "tiny", "--preset", "ulx3s-85f", "--prompt", "a = b",
                  "--tokens", "4", "--mode", "offload", "--check", "--json"])
    predicted = bittern_perf("--preset", "ulx3s-85f", "--prompt-tokens", "5", "--tokens", "4",
                             "--mode", "offload")
    assert (predicted["prefill_cycles"], predicted["cycles_per_token"]) == (
        rtl["prefill_cycles"], rtl["cycles_per_token"])


def bittern_perf(*args):
    perf = subprocess.run([sys.executable, "-m", "sw_driver.cli", "perf", *args, "--json"],
                          capture_output=True, text=True, timeout=300)
    assert perf.returncode == 0, perf.stderr
    return json.loads(perf.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent.safetensors"], "cannot load model '/nonexistent.safetensors'"),
    (["--prompt", ""], "--prompt must not be empty"),
    (["--tokens", "0"], "--tokens must be at least 1, not 0"),
    (["--prompt", "x" * 300], "exceed the model's max_seq"),
    (["--preset", "tiny", "--mode", "offload"], "needs at least"),
    (["--preset", "tiny", "--mode", "resident"],
     "--mode resident: the resident units are built for hidden 16, the model has 128"),
    (["--preset", "icebreaker", "--mode", "resident"],
     "--mode resident: this preset has no resident units (offload only)"),
])
def test_run_mistakes_are_one_line(args, message):
    result, _ = bittern_run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
