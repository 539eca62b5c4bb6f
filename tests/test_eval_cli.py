"""``bittern eval`` and ``bittern run --numeric``: the integer decoder's accuracy on the shipped
model, on a random model of another shape and from every checkpoint format, and what a user sees
of their mistakes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from golden import IntegerModel, ModelConfig, ModelWeights
from sw_driver import models
from sw_driver.checkpoint import save_bittern
from sw_driver.cli import main
from sw_driver.evaluate import evaluate
from sw_driver.run import load_model
from tests.test_loaders import write_gguf, write_hf

# The floors of the integer decoder on the shipped model's held-out text.
BITS_PER_BYTE_MARGIN = 0.03
AGREEMENT_FLOOR = 0.97
OTHER_SHAPE = ModelConfig(hidden=96, layers=3, heads=6, kv_heads=3, ffn=160, vocab=256,
                          max_seq=64)
# I2_S packs rows in blocks of 128 trits; a vocabulary of 256 takes any byte.
FORMATS_CFG = ModelConfig(hidden=128, layers=2, heads=4, kv_heads=2, ffn=256, vocab=256,
                          max_seq=48, rope_theta=10000.0)
SMALL_VOCAB = ModelConfig(hidden=16, layers=1, heads=2, kv_heads=1, ffn=16, vocab=48, max_seq=16)


def bittern(*args):
    return subprocess.run([sys.executable, "-m", "sw_driver.cli", *args], capture_output=True,
                          text=True, timeout=900)


def report_of(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def held_out():
    return models.split(models.corpus())[1]


def test_float_figure_is_the_shipped_bits_per_byte():
    cfg, weights = models.load_tiny()
    result = evaluate(cfg, weights, held_out(), windows=3, window_bytes=64)
    batch = models.windows(held_out(), 64, 3)
    assert result.float_bits_per_byte == pytest.approx(
        models.bits_per_byte(cfg, weights, batch), rel=1e-12)
    assert result.positions == 3 * 63
    assert 0.9 <= result.top1_agreement <= 1


def assert_floors(result, windows):
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(result.stdout)
    assert (report["windows"], report["window_bytes"]) == (windows, 256)
    assert report["positions"] == windows * 255 and report["wall_s"] > 0
    assert report["float_bits_per_byte"] < 3
    assert report["integer_bits_per_byte"] <= (report["float_bits_per_byte"]
                                               + BITS_PER_BYTE_MARGIN)
    assert report["top1_agreement"] >= AGREEMENT_FLOOR
    assert f"window {windows}/{windows}" in result.stderr
    assert "integer bits per byte" in result.stdout and "top-1 agreement" in result.stdout


def test_tiny_meets_the_floors():
    """8 windows (2,040 predictions, about 8 s on one core), within 0.003 of the 64-window
    figures."""
    assert_floors(bittern("eval", "--model", "tiny", "--windows", "8", "--json"), 8)


@pytest.mark.slow
def test_tiny_meets_the_floors_on_the_recorded_held_out_windows():
    """The 64 windows of tiny.json's held_out figure (about a minute)."""
    assert_floors(bittern("eval", "--model", "tiny", "--json"), 64)


def test_a_random_model_of_another_shape(tmp_path):
    path = tmp_path / "other.safetensors"
    weights = ModelWeights.random(OTHER_SHAPE, seed=11)
    save_bittern(path, OTHER_SHAPE, weights)
    result = bittern("eval", "--model", str(path), "--windows", "3", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(result.stdout)
    assert (report["windows"], report["window_bytes"]) == (3, OTHER_SHAPE.max_seq)
    batch = models.windows(held_out(), OTHER_SHAPE.max_seq, 3)
    assert report["float_bits_per_byte"] == pytest.approx(
        models.bits_per_byte(OTHER_SHAPE, weights, batch), rel=1e-12)
    assert 0 < report["integer_bits_per_byte"] < 16 and 0 <= report["top1_agreement"] <= 1


def write_checkpoint(kind, directory, weights):
    if kind == "gguf":
        path = directory / "model.gguf"
        write_gguf(path, FORMATS_CFG, weights, "I2_S", arch="bitnet-b1.58")
        return path
    write_hf(directory / "hf", FORMATS_CFG, weights, "autobitlinear")
    return directory / "hf"


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_every_checkpoint_format(tmp_path, capsys, kind):
    path = write_checkpoint(kind, tmp_path, ModelWeights.random(FORMATS_CFG, seed=2))
    assert main(["eval", "--model", str(path), "--windows", "2", "--window-bytes", "33",
                 "--json"]) == 0
    report = report_of(capsys.readouterr().out)
    cfg, loaded = load_model(str(path))
    batch = models.windows(held_out(), 33, 2)
    assert report["positions"] == 64
    assert report["float_bits_per_byte"] == pytest.approx(
        models.bits_per_byte(cfg, loaded, batch), rel=1e-12)
    direct = evaluate(cfg, loaded, held_out(), windows=2, window_bytes=33)
    assert report["integer_bits_per_byte"] == direct.integer_bits_per_byte
    assert report["top1_agreement"] == direct.top1_agreement


def test_a_short_text_uses_the_windows_it_holds(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_bytes(bytes(held_out()[:3 * 32 + 10]))
    assert main(["eval", "--text", str(text), "--windows", "5", "--window-bytes", "32",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert report_of(captured.out)["windows"] == 3
    assert "holds 3 windows of 32 bytes, not 5: using 3" in captured.err


def text_file(tmp_path, data):
    path = tmp_path / "text.txt"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("args, message", [
    (lambda tmp: ["--windows", "0"], "--windows must be at least 1, not 0"),
    (lambda tmp: ["--window-bytes", "258"],
     "--window-bytes must be in [2, 257] (the model's max_seq + 1), not 258"),
    (lambda tmp: ["--model", str(tmp / "none.gguf")], "cannot load model"),
    (lambda tmp: ["--text", str(tmp / "none.txt")], "none.txt: No such file or directory"),
    (lambda tmp: ["--text", text_file(tmp, b"caf\xe9 au lait")],
     "text.txt is not UTF-8 text (invalid continuation byte at byte 3)"),
    (lambda tmp: ["--text", text_file(tmp, b"ten bytes.")],
     "text.txt has 10 bytes, fewer than one window of 256"),
])
def test_eval_mistakes_are_one_line(tmp_path, capsys, args, message):
    assert main(["eval", *args(tmp_path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bittern: error: ") and message in lines[0]
    assert captured.out == ""


def test_bytes_beyond_a_small_vocabulary_are_named(tmp_path, capsys):
    model = tmp_path / "small.safetensors"
    save_bittern(model, SMALL_VOCAB, ModelWeights.random(SMALL_VOCAB, seed=3))
    text = text_file(tmp_path, b"!#$%&()*+,-./ 0")
    assert main(["eval", "--model", str(model), "--text", text]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"bittern: error: {text} has byte 48 at offset 14, beyond the model's "
                     f"vocabulary of 48 tokens"]
    assert main(["eval", "--model", str(model)]) == 2        # the held-out text has letters
    assert "the held-out text (pydoc_data.topics) has byte" in capsys.readouterr().err


def test_run_numeric_integer_generates_with_the_integer_decoder(capsys):
    assert main(["run", "--numeric", "integer", "--prompt", "The ", "--tokens", "12",
                 "--json"]) == 0
    captured = capsys.readouterr()
    report = report_of(captured.out)
    cfg, weights = models.load_tiny()
    assert report["numeric"] == "integer"
    assert report["tokens"] == IntegerModel(cfg, weights).generate(list(b"The "), 12)
    assert captured.out.startswith("The " + report["text"])
    assert "integer decoder on the host" in captured.err


@pytest.mark.parametrize("args, message", [
    (["--backend", "rtl"], "--numeric integer runs the integer decoder on the host, without a "
                           "device; drop --backend rtl"),
    (["--check"], "--check compares a device with golden/; --numeric integer runs no device"),
    (["--tokens", "0"], "--tokens must be at least 1, not 0"),
])
def test_run_numeric_integer_mistakes_are_one_line(capsys, args, message):
    assert main(["run", "--numeric", "integer", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bittern: error: ") and message in lines[0]


def test_evaluate_errors_name_the_parameter():
    cfg, weights = models.load_tiny()
    data = held_out()
    with pytest.raises(ValueError, match=r"^window_bytes must be an integer in \[2, 257\], "
                                         r"not 300$"):
        evaluate(cfg, weights, data, windows=1, window_bytes=300)
    with pytest.raises(ValueError, match="^windows must be an integer >= 1, not 0$"):
        evaluate(cfg, weights, data, windows=0, window_bytes=16)
    with pytest.raises(ValueError, match="^data must be a 1-D integer array"):
        evaluate(cfg, weights, np.zeros(64), windows=1, window_bytes=16)
    with pytest.raises(ValueError, match="^200 windows of 256 bytes need 51200 bytes"):
        evaluate(cfg, weights, data, windows=200, window_bytes=256)
