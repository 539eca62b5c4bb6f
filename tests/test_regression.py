"""The device's random regression on every preset (``regression`` in sim/device_tb.py): random
GEMV and GEMM shapes, bad commands, bursts of random words, resets inside every kind of
command and random idle and back-pressure, every response word against the behavioural device
and every result against golden, with functional coverage sampled (sim/coverage.py).

``make test`` runs each preset once (:data:`QUICK`); ``make test-slow`` runs :data:`SEEDS`
seeds per preset (:data:`SOAK`, 100,000 random words or more) on X builds (no power-on
values, Verilator's X randomisation, the X seed printed) and requires every coverage bin of
every preset hit. A failure names the preset, the seeds and the ``bittern sim`` line that
repeats the run.
"""

import pytest
from amaranth import ClockDomain, ClockSignal, DomainRenamer, Module

import hw.device
from hw.commands import ARGUMENT_WORDS, CommandFormat, Opcode, unpack_header
from golden.widths import signed_bits_for
from hw.config import PRESETS, Config, preset
from hw.pim import PimBankGroup
from sim.units import simulate
from sw_driver.behavioural import BehaviouralDevice

# Operations and fuzz words of one run, per preset: make test's (about 1.5 minutes of CPU in
# all, builds included) and make test-slow's per seed.
QUICK = {"tiny": (30, 2_000), "default": (16, 1_000), "ulx3s-85f": (10, 500),
         "icebreaker": (20, 1_000)}
SOAK = {"tiny": (80, 5_000), "default": (60, 5_000), "ulx3s-85f": (40, 5_000),
        "icebreaker": (80, 5_000)}
SEEDS = 20
RESET_KINDS = 7         # WRITE_WEIGHTS, LOAD_ACTS, LOAD_TILE, GEMV, GEMM, READ_STATUS, COUNTERS


def regression(name, seed, *, tiles, fuzz_words, x_seed=None, config=None):
    """One run of the regression test alone, coverage sampled."""
    return simulate("top", config or preset(name), seed=seed, tiles=tiles, x_seed=x_seed,
                    testcase="regression",
                    extra_params={"fuzz_words": fuzz_words, "coverage": True})


def reproduce(name, seed, tiles, fuzz_words, x_seed=None):
    """The command line that runs the same simulation."""
    return (f"bittern sim --unit top --preset {name} --seed {seed} --tiles {tiles} "
            f"--fuzz-words {fuzz_words} --test regression"
            + (f" --x-seed {x_seed}" if x_seed else "") + " --coverage")


def failure(name, seed, result, tiles, fuzz_words, x_seed=None):
    """What a failed run says: preset, seeds, what differed, the line that repeats it."""
    return (f"regression on {name}, seed {seed}" + (f", x-seed {x_seed}" if x_seed else "")
            + f": {'; '.join(result.failures)}\n  repeat: "
            + reproduce(name, seed, tiles, fuzz_words, x_seed) + f"\n  log: {result.log}")


@pytest.mark.parametrize("name", list(PRESETS))
def test_regression(name):
    tiles, fuzz_words = QUICK[name]
    result = regression(name, 1, tiles=tiles, fuzz_words=fuzz_words)
    assert result.passed, failure(name, 1, result, tiles, fuzz_words)
    report = result.report
    assert report["operations"] == tiles and report["fuzz_words"] == fuzz_words
    assert report["gemvs"] > 0 and report["gemms"] > 0 and report["bad_commands"] > 0
    assert sum(report["resets"].values()) > 0 and report["resets_inside"] > 0
    assert report["coverage"]["hit"] > report["coverage"]["bins"] // 2


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("half", [0, 1])
def test_regression_soak_with_x_randomised(name, half):
    """Half of SEEDS runs (two test items a preset, so that both cores work) on an X build,
    the X seed the run's seed + 1; together the half's runs hit every bin this preset can hit.
    """
    tiles, fuzz_words = SOAK[name]
    assert SEEDS * fuzz_words >= 100_000
    seeds = range(half * SEEDS // 2, (half + 1) * SEEDS // 2)
    failures, hits, totals = [], {}, {"operations": 0, "fuzz_words": 0}
    for seed in seeds:
        result = regression(name, seed, tiles=tiles, fuzz_words=fuzz_words, x_seed=seed + 1)
        if not result.passed:
            failures.append(failure(name, seed, result, tiles, fuzz_words, seed + 1))
            continue
        for key in totals:
            totals[key] += result.report[key]
        for point, found in result.report["coverage"]["points"].items():
            for label, count in found["bins"].items():
                hits[point, label] = hits.get((point, label), 0) + count
    assert not failures, "\n".join(failures)
    assert totals == {"operations": len(seeds) * tiles, "fuzz_words": len(seeds) * fuzz_words}
    missed = sorted(f"{point}: {label}" for (point, label), count in hits.items() if not count)
    assert not missed, (f"{name}: bins never hit in seeds {seeds.start} to {seeds.stop - 1}: "
                        f"{', '.join(missed)}")


def test_data_words_frame_every_command():
    """A valid command is its header, its arguments and ``data_words`` words: what the
    coverage monitor frames commands by. The behavioural device answers a status read sent
    right after each."""
    config = preset("tiny")
    fmt, device = CommandFormat(config), BehaviouralDevice(config)
    commands = [fmt.write_weights(1, 3, [5, 6]), fmt.load_acts(2, [7, 8, 9]),
                fmt.load_tile([[1] * fmt.rows] * fmt.cols), fmt.gemv(0, 2, 3),
                fmt.gemm([1, 2, 3]), fmt.simple(Opcode.NOP), fmt.simple(Opcode.READ_STATUS)]
    for words in commands:
        header = unpack_header(words[0])
        op = Opcode(header["opcode"])
        assert len(words) == 1 + ARGUMENT_WORDS.get(op, 0) + fmt.data_words(op, header["b"])
        out = device.feed(words + fmt.simple(Opcode.READ_STATUS))
        assert unpack_header(out[-5])["opcode"] == Opcode.READ_STATUS.value, op


def ignoring_reset(component):
    """A broken ``component`` class: its registers ignore the reset."""
    class Broken(component):
        def elaborate(self, platform):
            m = Module()
            m.domains.noreset = ClockDomain(reset_less=True, local=True)
            m.d.comb += ClockSignal("noreset").eq(ClockSignal("sync"))
            m.submodules.inner = DomainRenamer("noreset")(super().elaborate(platform))
            return m
    Broken.__name__ = f"{component.__name__}IgnoringReset"
    return Broken


def test_regression_fails_on_a_bank_group_without_reset(monkeypatch):
    """A reset inside a GEMV leaves such a bank group reading on; the regression sees it."""
    monkeypatch.setattr(hw.device, "PimBankGroup", ignoring_reset(PimBankGroup))
    result = regression("tiny", 1, tiles=30, fuzz_words=0)
    assert not result.passed
    assert any("seed 1, operation" in failure for failure in result.failures), result.failures



def test_longest_reduction_fails_on_an_accumulator_a_bit_short(monkeypatch):
    """One bit short, +128 * max_k wraps to -128 * max_k (random operations pass: they never
    come near it)."""
    def one_bit_short(config):
        return signed_bits_for(config.max_k * config.act_max_magnitude) - 1
    monkeypatch.setattr(Config, "acc_bits", property(one_bit_short))
    result = simulate("top", preset("tiny"), testcase="longest_reduction_at_the_extremes")
    assert not result.passed
    assert "got 0xffff8000, expected 0x00008000" in result.failures[0], result.failures
