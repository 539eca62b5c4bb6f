"""``docs/extending.md`` done as it says: a new PE kind from outside ``hw/`` passes the array
testbench on the tiny preset and runs in the whole device, and a sign-flipped copy fails."""

import dataclasses

import numpy as np

from golden.bitlinear import matmul_int
from hw.commands import CommandFormat
from hw.config import ArrayConfig, preset
from sim.units import simulate
from sw_driver.behavioural import BehaviouralTransport
from sw_driver.driver import Accelerator

from .extension_pe import Int4PE, SignFlipInt4PE

INT4 = dataclasses.replace(preset("tiny"), array=ArrayConfig(rows=4, cols=4, pe="int4"))


def test_a_registered_kind_sets_the_tile_format():
    fmt = CommandFormat(INT4)
    assert fmt.pe is Int4PE and fmt.weight_bits == 4 and fmt.tile_row_words == 1
    w_t = np.arange(-8, 8).reshape(4, 4)
    rows = fmt.tile_rows(w_t)
    assert [fmt.tile_row_weights(row).tolist() for row in rows] == w_t.T.tolist()


def test_the_behavioural_device_computes_with_the_new_kind():
    accelerator = Accelerator(BehaviouralTransport(INT4), INT4)
    rng = np.random.default_rng(2)
    w_t = rng.integers(-8, 8, (4, 4))
    x_q = rng.integers(-128, 128, (5, 4)).astype(np.int8)
    accelerator.load_tile(w_t)
    np.testing.assert_array_equal(accelerator.gemm(x_q), matmul_int(x_q, w_t))


def test_the_new_kind_passes_the_array_testbench():
    result = simulate("array", INT4, seed=4, tiles=6, pe=Int4PE)
    assert result.passed, result.failures
    assert result.report["tiles"] == 7 and result.report["macs"] > 0


def test_a_sign_flipped_copy_fails_the_array_testbench():
    result = simulate("array", INT4, seed=4, tiles=4, pe=SignFlipInt4PE)
    assert not result.passed
    assert any("expected" in failure for failure in result.failures), result.failures
