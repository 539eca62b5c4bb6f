"""The ``bittern`` command line: what a user sees, including their mistakes."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from hw.config import Config
from sw_driver.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "sw_driver.cli", *args], capture_output=True,
                          text=True, timeout=600)


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("config", "sim"):
        assert command in result.stdout


def test_config_json_applies_overrides():
    result = run("config", "--preset", "ulx3s-85f", "--set", "rows=3", "--json")
    assert result.returncode == 0, result.stderr
    config = Config.from_json(result.stdout)
    assert config.array.rows == 3 and config.pim.banks == 16


def test_config_shows_the_resident_shape_or_offload_only(capsys):
    assert main(["config", "--preset", "ulx3s-85f"]) == 0
    out = capsys.readouterr().out
    for line in ("resident.hidden    128", "resident.ffn       384", "resident.layers    2",
                 "resident.heads     4", "resident.kv_heads  2", "resident.vocab     256",
                 "resident.max_seq   256"):
        assert f"\n  {line}\n" in out
    assert "resident.head_dim=32" in out.splitlines()[-1]
    assert main(["config", "--preset", "icebreaker"]) == 0
    out = capsys.readouterr().out
    assert "\n  resident           none (offload only)\n" in out
    assert "resident." not in out
    assert main(["config", "--preset", "ulx3s-85f", "--set", "resident=none", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resident"] is None


@pytest.mark.parametrize("args, message", [
    (["--preset", "ulx3s-85f", "--set", "rows=-1"], "array.rows must be in [1, 256], not -1"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--set", "lanes"], "--set expects key=value, not 'lanes'"),
    (["--set", "banks=two"], "banks must be an integer, not 'two'"),
    (["--preset", "ulx3s-85f", "--set", "lanes=12"],
     "resident.hidden (128) must be a multiple of pim.lanes (12)"),
    (["--set", "resident.hidden=64"], "resident.hidden: this preset has no resident units "
                                      "(offload only)"),
])
def test_config_mistakes_give_one_line_and_status_2(capsys, args, message):
    assert main(["config", *args, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bittern: error: ") and message in lines[0]


def test_sim_json_last_line_reports_the_run():
    result = run("sim", "--unit", "array", "--preset", "tiny", "--set", "rows=2",
                 "--set", "cols=3", "--tiles", "5", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["passed"] is True
    assert report["tiles"] == 6 and report["macs"] > 0 and report["cycles"] > 0
    assert 0 < report["utilisation"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--x-seed", "0"], "--x-seed must be in [1, 2147483647]"),
    (["--fuzz-words", "-1"], "--fuzz-words must be >= 0"),
    (["--test", "no_such_test"], "the top testbench has no test named 'no_such_test'"),
])
def test_sim_mistakes_give_one_line_and_status_2(capsys, monkeypatch, args, message):
    """Each is caught before anything is built."""
    def no_build(*args, **kwargs):
        raise AssertionError("simulate called for a mistaken command")

    monkeypatch.setattr("sim.units.simulate", no_build)
    assert main(["sim", "--unit", "top", "--preset", "tiny", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("bittern: error: ") and message in lines[-1]


def test_sim_of_a_resident_unit_needs_resident_units(capsys):
    assert main(["sim", "--unit", "resident-core", "--preset", "default"]) == 2
    assert capsys.readouterr().err.strip() == (
        "bittern: error: resident-core needs resident units, which this preset has not (tiny "
        "and ulx3s-85f have them)")


def test_sim_coverage_prints_every_bin_and_the_total():
    result = run("sim", "--unit", "top", "--preset", "tiny", "--test", "regression",
                 "--tiles", "12", "--fuzz-words", "300", "--seed", "4", "--coverage", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    coverage = report["coverage"]
    assert f"coverage: {coverage['hit']} of {coverage['bins']} bins hit" in result.stdout
    for point, found in coverage["points"].items():
        assert f"  {point}: " in result.stdout
        for label, hits in found["bins"].items():
            assert re.search(rf"^    {re.escape(label)} +{hits}$", result.stdout, re.M)
    assert report["operations"] == 12 and report["fuzz_words"] == 300


def test_sim_waves_writes_a_vcd(tmp_path):
    result = run("sim", "--unit", "array", "--preset", "tiny", "--set", "rows=1",
                 "--set", "cols=2", "--tiles", "4", "--waves")
    assert result.returncode == 0, result.stdout + result.stderr
    path = result.stdout.split("waves: ")[1].split()[0]
    with open(path) as vcd:
        assert "$enddefinitions" in vcd.read(100_000)


def test_version_names_the_generator_and_its_commit():
    from sw_driver.interface import generator_version

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bittern {generator_version()['describe']}"


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """Interrupted in a long step (a big array's Verilog conversion), the command says so in
    one line: no traceback, and no warning about the components it leaves unused."""
    # As from a terminal: a child inherits an ignored SIGINT (a pytest-xdist worker may ignore
    # it), and Python then never raises KeyboardInterrupt.
    process = subprocess.Popen(
        [sys.executable, "-m", "sw_driver.cli", "generate", "--set", "rows=64", "--set",
         "cols=64", "-o", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = process.stderr.readline()                  # the step has started
    assert "converting the device (64 x 64 array" in first
    time.sleep(1)           # into the elaboration: components built, none of them used yet
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert err.strip().splitlines() == ["bittern: interrupted"], err
    assert out == ""
