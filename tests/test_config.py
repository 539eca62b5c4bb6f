import dataclasses

import pytest

from hw.config import (PRESETS, ArrayConfig, Config, ConfigError, PimConfig, apply_overrides,
                       preset)
from hw.pe import PE_KINDS


# Why act_bits is not a free parameter: golden has no integer core for another width.
ACT_BITS_WHY = ("golden's BitLinear quantises activations to int8, and the driver packs them "
                "as int8")


def kinds():
    """Every registered PE kind, in order, as the config's message lists them (read when a test
    runs: a test may have registered one)."""
    return ", ".join(map(repr, PE_KINDS))


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name):
    config = preset(name)
    assert Config.from_json(config.to_json()) == config


def test_presets_are_overrides_of_the_default():
    assert preset("default") == Config()
    assert preset("ulx3s-85f").act_bits == Config().act_bits


def test_accumulator_width_is_derived_and_exact():
    # 8192 terms of at most |-128 * -1| = 128 -> 2**20, needs 21 magnitude bits + sign.
    assert Config(max_k=8192).acc_bits == 22
    assert Config(max_k=1).acc_bits == 9          # +128 must fit: [-256, 255]


def test_accumulator_width_is_checked_against_int32():
    with pytest.raises(ConfigError, match=r"^max_k must be in \[1, 16777215\] so that a 8-bit "
                                          r"reduction fits int32, not 16777216$"):
        Config(max_k=1 << 24)


@pytest.mark.parametrize("make, message", [
    (lambda: ArrayConfig(rows=0), r"array.rows must be in [1, 256], not 0"),
    (lambda: ArrayConfig(cols=300), r"array.cols must be in [1, 256], not 300"),
    (lambda: ArrayConfig(rows=2.5), r"array.rows must be an integer in [1, 256], not 2.5"),
    (lambda: ArrayConfig(pe="bogus"), "array.pe must be one of {kinds}, not 'bogus'"),
    (lambda: ArrayConfig(dataflow="output-stationary"),
     r"array.dataflow must be one of 'weight-stationary', not 'output-stationary'"),
    (lambda: PimConfig(banks=0), r"pim.banks must be in [1, 64], not 0"),
    (lambda: PimConfig(lanes=512), r"pim.lanes must be in [1, 256], not 512"),
    (lambda: PimConfig(depth=1), r"pim.depth must be in [2, 1048576], not 1"),
    (lambda: Config(act_bits=1), r"act_bits must be in [2, 16], not 1"),
    (lambda: Config(act_bits=8.0), r"act_bits must be an integer in [2, 16], not 8.0"),
    (lambda: Config(max_k=0), r"max_k must be in [1, 16777216], not 0"),
    (lambda: Config(clock_mhz=0), r"clock_mhz must be a number in [1, 1000], not 0"),
    (lambda: Config(array=3), r"array must be an ArrayConfig, not 3"),
    (lambda: Config(pim="x"), r"pim must be a PimConfig, not 'x'"),
])
def test_every_field_error_names_parameter_and_range(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value) == message.replace("{kinds}", kinds()).replace(
        "{act_bits_why}", ACT_BITS_WHY)


def test_narrow_activations_are_for_the_generator_alone():
    """The formal proofs shrink act_bits; a user's configuration cannot (see test_override_errors)."""
    assert Config(act_bits=2).act_bits == 2
    with pytest.raises(ConfigError, match="act_bits must be 8, not 2"):
        apply_overrides(Config(act_bits=2), [])


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().act_bits = 4


def test_offload_only_drops_the_resident_units_and_nothing_else():
    full = preset("ulx3s-85f")
    offload = full.offload_only()
    assert full.resident is not None and offload.resident is None
    assert offload == apply_overrides(full, ["resident=none"])


def test_overrides_accept_short_and_dotted_keys():
    config = apply_overrides(preset("ulx3s-85f"), ["resident=none", "rows=3", "pim.lanes=8",
                                                   "clock_mhz=75.5"])
    assert (config.array.rows, config.pim.lanes, config.clock_mhz) == (3, 8, 75.5)
    assert config.array.cols == preset("ulx3s-85f").array.cols


def test_overrides_are_checked_together_in_any_order():
    """A shape valid as a whole passes through none that is not: hidden 12 with 3 heads, from
    tiny's hidden 16 and 2 heads, either way round; the units' need of the banks (pim.depth) is
    checked on the whole too."""
    shape = ["resident.hidden=12", "resident.heads=3", "pim.depth=2048", "resident.layers=6"]
    for assignments in (shape, shape[::-1]):
        resident = apply_overrides(preset("tiny"), assignments).resident
        assert (resident.hidden, resident.heads, resident.head_dim,
                resident.layers) == (12, 3, 4, 6)
    with pytest.raises(ConfigError, match="resident.hidden: this preset has no resident units"):
        apply_overrides(preset("tiny"), ["resident=none", "resident.hidden=8"])


@pytest.mark.parametrize("assignment, message", [
    ("rows=-1", "array.rows must be in [1, 256], not -1"),
    ("rows=x", "rows must be an integer, not 'x'"),
    ("clock_mhz=fast", "clock_mhz must be a number, not 'fast'"),
    ("clock_mhz=nan", "clock_mhz must be a finite number, not 'nan'"),
    ("rows", "--set expects key=value, not 'rows'"),
    ("pe=bogus", "array.pe must be one of {kinds}, not 'bogus'"),
    ("act_bits=4", "act_bits must be 8, not 4: {act_bits_why}"),
])
def test_override_errors(assignment, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), [assignment])
    assert str(info.value) == message.replace("{kinds}", kinds()).replace(
        "{act_bits_why}", ACT_BITS_WHY)


def test_unknown_key_lists_known_keys():
    with pytest.raises(ConfigError, match=r"^unknown config key 'foo'; known keys: act_bits, "
                                          r"array.cols, .*pim.lanes, resident$"):
        apply_overrides(Config(), ["foo=1"])


def test_unknown_preset_lists_known_presets():
    with pytest.raises(ConfigError, match=r"^unknown preset 'big'; known presets: tiny, "
                                          r"default, ulx3s-85f, icebreaker$"):
        preset("big")


@pytest.mark.parametrize("text, message", [
    ("{", "config JSON is malformed"),
    ("[]", "config JSON must be an object"),
    ('{"rows": 3}', "unknown config key 'rows'"),
    ('{"array": {"depth": 3}}', "unknown config key 'array.depth'"),
])
def test_bad_json_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_json(text)


def test_ecp5_preset_banks_fit_the_device():
    # ECP5-85F: 208 EBR of 18 Kbit; one bank word of 2*lanes bits spread over EBRs of 36-bit
    # width (512 x 36 mode), so a bank of depth <= 512 per 36 bits of word.
    config = preset("ulx3s-85f")
    ebr_per_bank = -(-config.word_bits // 36) * -(-config.pim.depth // 512)
    assert config.pim.banks * ebr_per_bank <= 208
