"""The resident units' configuration: the shape they are built for, its checks against the rest
of the device, its serialisation and overrides, and whether a model fits them."""

import dataclasses
import json
from pathlib import Path

import pytest

from golden.model import ModelConfig, linear_shapes
from hw.config import (PRESETS, Config, ConfigError, PimConfig, ResidentConfig, apply_overrides,
                       preset)
from hw.placement import MappingError, place, resident_fit

SHIPPED = Path(__file__).resolve().parent.parent / "sw_driver" / "models" / "tiny.json"


def model_of(resident, **changes):
    """golden's ModelConfig of the shape ``resident`` is built for (``changes`` replaced)."""
    return dataclasses.replace(ModelConfig(**dataclasses.asdict(resident)), **changes)


def test_the_defaults_are_the_shipped_models_shape():
    shipped = ModelConfig.from_dict(json.loads(SHIPPED.read_text())["config"])
    assert model_of(ResidentConfig(), rope_theta=shipped.rope_theta, eps=shipped.eps) == shipped
    assert ResidentConfig().head_dim == shipped.head_dim == 32


def test_presets_with_and_without_resident_units():
    assert preset("ulx3s-85f").resident == ResidentConfig()
    assert preset("tiny").resident == ResidentConfig(hidden=16, ffn=32, layers=2, heads=2,
                                                     kv_heads=1, vocab=256, max_seq=16)
    assert preset("tiny").resident.head_dim == 8
    assert preset("default").resident is None and preset("icebreaker").resident is None


@pytest.mark.parametrize("name", [name for name, config in PRESETS.items() if config.resident])
def test_a_presets_banks_hold_its_resident_model(name):
    config = preset(name)
    # The core places the matrices of the shape it is built for (linear_shapes reads hidden,
    # ffn, layers, kv_heads and head_dim, which ResidentConfig has as ModelConfig has).
    shapes = linear_shapes(config.resident)
    assert shapes == linear_shapes(model_of(config.resident))
    placements = place(shapes, config)
    needed = max(p.base + p.words for p in placements.values())
    # tiny: 288 words a layer (q, o 32; k, v 16; gate, up, down 64); the shipped model: 384.
    assert needed == {"tiny": 576, "ulx3s-85f": 768}[name] <= config.pim.depth
    resident_fit(config, model_of(config.resident))


@pytest.mark.parametrize("make, message", [
    (lambda: ResidentConfig(hidden=0), "resident.hidden must be in [2, 65536], not 0"),
    (lambda: ResidentConfig(ffn=1 << 17), "resident.ffn must be in [1, 65536], not 131072"),
    (lambda: ResidentConfig(layers=0), "resident.layers must be in [1, 256], not 0"),
    (lambda: ResidentConfig(heads=300), "resident.heads must be in [1, 256], not 300"),
    (lambda: ResidentConfig(kv_heads=0), "resident.kv_heads must be in [1, 256], not 0"),
    (lambda: ResidentConfig(vocab=0), "resident.vocab must be in [1, 262144], not 0"),
    (lambda: ResidentConfig(max_seq=2.0),
     "resident.max_seq must be an integer in [1, 65536], not 2.0"),
    (lambda: ResidentConfig(hidden=20, heads=3, kv_heads=1),
     "resident.hidden (20) must be a multiple of resident.heads (3)"),
    (lambda: ResidentConfig(heads=4, kv_heads=3),
     "resident.heads (4) must be a multiple of resident.kv_heads (3)"),
    (lambda: ResidentConfig(hidden=12, heads=4, kv_heads=1),
     "resident head_dim = hidden / heads = 3 must be even for RoPE"),
    (lambda: Config(resident=ResidentConfig(hidden=20, ffn=32, heads=2, kv_heads=1),
                    pim=PimConfig(lanes=8)),
     "resident.hidden (20) must be a multiple of pim.lanes (8)"),
    (lambda: Config(resident=ResidentConfig(ffn=100), pim=PimConfig(lanes=8)),
     "resident.ffn (100) must be a multiple of pim.lanes (8)"),
    (lambda: Config(resident=ResidentConfig(hidden=192, heads=4, ffn=384),
                    pim=PimConfig(lanes=32)),
     "resident head_dim (48) must be a multiple of pim.lanes (32)"),
    (lambda: Config(resident=ResidentConfig(), max_k=256),
     "resident.ffn (384) must be at most max_k (256)"),
    (lambda: Config(resident={"hidden": 128}),
     "resident must be a ResidentConfig or None, not {'hidden': 128}"),
])
def test_every_resident_error_names_the_field_and_its_range(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value) == message


@pytest.mark.parametrize("name", list(PRESETS))
def test_resident_round_trips_through_json(name):
    config = preset(name)
    data = json.loads(config.to_json())
    assert data["resident"] == (dataclasses.asdict(config.resident) if config.resident else None)
    assert Config.from_dict(data) == config


@pytest.mark.parametrize("data, message", [
    ({"resident": {"foo": 1}}, "unknown config key 'resident.foo'; known keys: "
                               "resident.ffn, resident.heads, "),
    ({"resident": 3}, "resident must be an object, not 3"),
    ({"resident": {"hidden": 18}}, r"resident.hidden \(18\) must be a multiple of "
                                   r"resident.heads \(4\)"),
])
def test_bad_resident_json_is_a_config_error(data, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(data)


def test_overrides_set_the_resident_shape_or_remove_it():
    config = apply_overrides(preset("tiny"), ["resident.max_seq=32", "layers=3"])
    assert (config.resident.max_seq, config.resident.layers) == (32, 3)
    assert apply_overrides(preset("ulx3s-85f"), ["resident=none"]).resident is None
    # Without the resident units, the banks may take lanes the resident shape could not.
    assert apply_overrides(preset("ulx3s-85f"), ["resident=none", "lanes=12"]).pim.lanes == 12


@pytest.mark.parametrize("base, assignment, message", [
    ("ulx3s-85f", "lanes=12", "resident.hidden (128) must be a multiple of pim.lanes (12)"),
    ("ulx3s-85f", "resident=small",
     "resident can only be set to none (offload only), not 'small'; its fields one by one: "
     "resident.hidden=..."),
    ("icebreaker", "resident.hidden=64", "resident.hidden: this preset has no resident units "
                                         "(offload only)"),
    ("icebreaker", "vocab=64", "vocab: this preset has no resident units (offload only)"),
    ("tiny", "resident.heads=3",
     "resident.hidden (16) must be a multiple of resident.heads (3)"),
])
def test_resident_override_errors(base, assignment, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(preset(base), [assignment])
    assert str(info.value) == message


def test_a_model_within_the_built_shape_fits():
    config = preset("ulx3s-85f")
    resident_fit(config, model_of(config.resident, max_seq=31, rope_theta=1e4, eps=1e-6))


@pytest.mark.parametrize("config, changes, message", [
    (preset("icebreaker"), {}, "this preset has no resident units (offload only)"),
    (preset("ulx3s-85f"), {"hidden": 256},
     "the resident units are built for hidden 128, the model has 256"),
    (preset("ulx3s-85f"), {"hidden": 256, "layers": 4, "vocab": 512},
     "the resident units are built for hidden 128, the model has 256; for layers 2, the model "
     "has 4; for vocab 256, the model has 512"),
    (preset("ulx3s-85f"), {"ffn": 256, "kv_heads": 1},
     "the resident units are built for ffn 384, the model has 256; for kv_heads 2, the model "
     "has 1"),
    (preset("ulx3s-85f"), {"max_seq": 512},
     "the KV cache holds max_seq 256 positions, the model asks 512"),
])
def test_a_model_that_does_not_fit_is_named_in_one_line(config, changes, message):
    resident = config.resident or ResidentConfig()
    with pytest.raises(MappingError) as info:
        resident_fit(config, model_of(resident, **changes))
    assert str(info.value) == message


@pytest.mark.parametrize("name, depth, needed", [("ulx3s-85f", 512, 768), ("tiny", 500, 576)])
def test_banks_too_shallow_for_the_resident_model_are_refused(name, depth, needed):
    with pytest.raises(ConfigError, match=rf"^pim.depth \({depth}\) must be at least {needed}: "
                                          rf"the resident model's matrices take {needed} words"):
        apply_overrides(preset(name), [f"depth={depth}"])
    assert apply_overrides(preset(name), ["resident=none", f"depth={depth}"]).resident is None
