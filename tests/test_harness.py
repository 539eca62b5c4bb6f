"""The compiled RTL harness (sim/harness.py): words in and out of the device in one call, the
cycles it counts, a hung device reported instead of waited on, waves on request, and
``bittern bench`` timing it against the behavioural device."""

import json
import subprocess
import sys

import pytest

from golden import ModelConfig, ModelWeights
from hw.commands import STATUS, STATUS_MAGIC, CommandFormat, Opcode, unpack_header
from hw.config import preset
from sim.harness import HarnessHang, HarnessTransport, build
from sw_driver.behavioural import BehaviouralTransport
from sw_driver.checkpoint import save_bittern
from sw_driver.resident import model_config as resident_shape

CONFIG = preset("tiny")


@pytest.fixture(scope="module")
def library():
    return build(CONFIG).path


def test_status_words_and_cycles_match_the_behavioural_device(library):
    command = CommandFormat.simple(Opcode.READ_STATUS)
    with HarnessTransport(library) as rtl:
        words = rtl.transact(command, 1 + len(STATUS))
        cycles = rtl.cycle()
    assert unpack_header(words[0])["opcode"] == Opcode.READ_STATUS.value
    assert dict(zip(STATUS, words[1:]))["magic"] == STATUS_MAGIC
    assert words == BehaviouralTransport(CONFIG).transact(command, 1 + len(STATUS))
    assert 0 < cycles < 20


def test_a_response_that_never_comes_is_reported_with_what_moved(library):
    command = CommandFormat.simple(Opcode.READ_STATUS)
    with HarnessTransport(library, patience=200) as rtl:
        with pytest.raises(HarnessHang, match=r"no word moved for 200 cycles.* took 1 of 1 "
                                              r"command words, the device sent 5 of 6"):
            rtl.transact(command, 2 + len(STATUS))
        # The device keeps working: the next command is answered.
        assert rtl.transact(command, 1 + len(STATUS))[1] == STATUS_MAGIC


def test_waves_only_when_built_for_them(library, tmp_path):
    with pytest.raises(ValueError, match="built without waves"):
        HarnessTransport(library, trace=tmp_path / "w.vcd")
    traced = build(CONFIG, waves=True).path
    with HarnessTransport(traced, trace=tmp_path / "w.vcd") as rtl:
        rtl.transact(CommandFormat.simple(Opcode.READ_STATUS), 1 + len(STATUS))
    assert "$enddefinitions" in (tmp_path / "w.vcd").read_text()


@pytest.mark.parametrize("mode", ["offload", "resident"])
def test_bench_agrees_and_reports_both_backends(tmp_path, mode):
    """Each mode's run times on both backends, which agree; offload's device has no resident
    units, resident's is the fixture's (a model of the tiny preset's resident shape)."""
    shape = (ModelConfig(hidden=8, layers=1, heads=2, kv_heads=1, ffn=8, vocab=256, max_seq=32)
             if mode == "offload" else resident_shape(CONFIG))
    model = tmp_path / "model.safetensors"
    save_bittern(model, shape, ModelWeights.random(shape, seed=5))
    result = subprocess.run([sys.executable, "-m", "sw_driver.cli", "bench", "--preset", "tiny",
                             "--model", str(model), "--prompt", "Hi", "--tokens", "3",
                             "--repeat", "1", "--mode", mode, "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["agree"] is True and report["prompt_tokens"] == 2 and report["mode"] == mode
    assert min(report["rtl_cycles_per_s"], report["rtl_simulating_cycles_per_s"],
               report["speedup"]) > 0
    assert f"{mode} mode" in result.stdout
    assert "rtl " in result.stdout and "behavioural " in result.stdout
