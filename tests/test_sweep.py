"""``bittern sweep``: every point evaluated on a local Dask cluster, the misfits kept with their
reason, the table, the plot and the Pareto front written; a rerun reuses the area runs."""

import csv
import json
import subprocess
import sys

import pytest

from golden import ModelConfig, ModelWeights
from hw.config import preset
from sw_driver.checkpoint import save_bittern
from sw_driver.sweep import grid, pareto_front

from .extras import require

NANO = ModelConfig(hidden=8, layers=1, heads=2, kv_heads=1, ffn=8, vocab=256, max_seq=32)


def test_grid_and_front():
    points = grid(preset("tiny"), {"rows": ["2", "3"], "lanes": ["4", "999"]})
    assert [settings for settings, _ in points] == [
        {"rows": "2", "lanes": "4"}, {"rows": "2", "lanes": "999"},
        {"rows": "3", "lanes": "4"}, {"rows": "3", "lanes": "999"}]
    assert points[1][1] == "pim.lanes must be in [1, 256], not 999"
    rows = [{"fits": True, "tokens_per_s": 10, "cost": 5}, {"fits": True, "tokens_per_s": 8,
                                                            "cost": 6},
            {"fits": True, "tokens_per_s": 12, "cost": 9}, {"fits": False, "tokens_per_s": 99,
                                                             "cost": 1}]
    assert pareto_front(rows, cost="cost") == [rows[0], rows[2]]


def test_sweep_on_dask(tmp_path):
    require("dask.distributed", extra="sweep")
    require("matplotlib", extra="sweep")
    model = tmp_path / "nano.safetensors"
    save_bittern(model, NANO, ModelWeights.random(NANO, seed=5))
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "sw_driver.cli", "sweep", "--preset", "tiny",
               "--set", "resident=none", "--vary", "depth=8,64", "--model", str(model), "--board", "icebreaker", "--out", str(out),
               "--workers", "2", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    small, big = report["points"]
    assert not small["fits"] and "the banks cannot hold the model" in small["reason"]
    assert big["fits"] and big["tokens_per_s"] > 0 and big["SB_LUT4"] > 0
    assert report["front"] == [big]
    with open(out / "sweep.csv") as file:
        assert [row["depth"] for row in csv.DictReader(file)] == ["8", "64"]
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert "4/4" not in result.stderr and "2/2 points" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--vary", "rows"], "--vary expects key=value,value..., not 'rows'"),
    ([], "give at least one --vary"),
    (["--vary", "rows=2", "--model", "/nope.gguf"], "cannot load model '/nope.gguf'"),
])
def test_sweep_mistakes_are_one_line(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "sw_driver.cli", "sweep", "--out",
                             str(tmp_path), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
