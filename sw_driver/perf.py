"""A run's performance without simulating it: the driver's schedule, costed by the timing.

For a device configuration, a model's shapes, ``prompt_tokens`` and ``tokens``, :func:`perf` walks
the forward passes ``bittern run`` makes (the prompt in one, then a token each), asks the driver's
:class:`~sw_driver.mapper.Schedule` which commands serve each BitLinear call, and adds up their
busy cycles (:class:`~sw_driver.timing.CommandTiming`, the RTL's) and their link words. In resident
mode the two GENERATEs ``bittern run`` sends are costed instead, over the resident core's cycle
model. The device's cycles do not depend on the values, so the figures are exactly what ``bittern
run`` measures for any prompt of that length, on any backend whose host never waits.

Energy is an estimate from the per-operation energies of :data:`ENERGY_PJ` (45 nm ASIC figures),
scaled by :data:`FPGA_FACTOR` for an FPGA; see the table's sources.
"""

from dataclasses import asdict, dataclass

from golden import input_groups, linear_shapes

from .mapper import Schedule
from .run import uart_link

__all__ = ["ENERGY_PJ", "FPGA_FACTOR", "ZERO_FRACTION", "Perf", "perf"]

# Energy per operation, picojoules, 45 nm. Horowitz, "Computing's energy problem (and what we
# can do about it)", ISSCC 2014 (the figures the BitNet papers quote for their energy models):
# an 8-bit add 0.03 pJ, a 32-bit add 0.1 pJ, an 8-bit multiply 0.2 pJ, a 64-bit read of an 8 KB
# SRAM 10 pJ.
ENERGY_PJ = {
    "trit_mac": 0.03,           # a non-zero trit: its activation added or subtracted (8-bit add)
    "row_accumulate": 0.1,      # a row result's accumulator step, per word read (32-bit add)
    "bank_read": 10.0,          # one bank word read (an 18 Kbit block RAM, as an 8 KB SRAM)
}
# An FPGA spends about 14 times an ASIC's dynamic power on the same logic (Kuon and Rose,
# "Measuring the gap between FPGAs and ASICs", IEEE TCAD 26(2), 2007).
FPGA_FACTOR = 14.0
# The share of zero trits assumed when the weights are not given (absmean-quantised ternary
# weights of a trained BitNet hold about a third zeros; the shipped tiny model: measured).
ZERO_FRACTION = 1 / 3


@dataclass
class Perf:
    """What :func:`perf` finds; cycles are busy cycles, as ``bittern run`` counts them.
    ``stages`` (resident mode) are a decoded token's cycles by the core's stage, averaged over
    the decoded tokens (``ResidentCore.stage_cycles``)."""
    mode: str
    prefill_tokens: int
    prefill_cycles: int
    decode_tokens: int
    cycles_per_token: int | None
    per_layer: list
    prefill_unit: dict
    bank_utilisation: float | None
    link_words: dict
    link: str
    device_tokens_per_s: float | None
    link_tokens_per_s: float | None
    bank_bound_cycles_per_token: float
    bank_bound_fraction: float | None
    zero_fraction: float
    energy_per_token_nj: float | None
    energy: dict
    stages: dict | None = None

    def to_dict(self):
        return asdict(self)


def perf(config, model_config, *, prompt_tokens, tokens, prefill="auto", baud, weights=None,
         mode="offload"):
    """The figures of generating ``tokens`` after a ``prompt_tokens``-token prompt, in
    ``mode`` (``"offload"`` or ``"resident"``, as ``bittern run --mode``).

    ``weights`` (optional) give the zero trits their real share; else :data:`ZERO_FRACTION`.
    """
    if prompt_tokens < 1 or tokens < 1:
        raise ValueError(f"prompt_tokens and tokens must be at least 1, not {prompt_tokens} "
                         f"and {tokens}")
    shapes = linear_shapes(model_config)
    schedule = Schedule(config, shapes, groups=input_groups(model_config), prefill=prefill)
    groups = list(dict.fromkeys(schedule.group(name) for name in shapes))
    zero_fraction = ZERO_FRACTION if weights is None else (
        sum(int((w.trits == 0).sum()) for w in weights.linears.values())
        / sum(w.trits.size for w in weights.linears.values()))
    bound = sum(n * k for n, k in shapes.values()) / (config.pim.banks * config.pim.lanes)
    if mode == "resident":
        return _resident(config, model_config, schedule, groups, prompt_tokens, tokens, baud,
                         zero_fraction, bound)

    per_layer = []
    for layer in range(model_config.layers):
        mine = [g for g in groups if g[0].startswith(f"layers.{layer}.")]
        per_layer.append({
            "layer": layer,
            "prefill_cycles": sum(schedule.cost(g, prompt_tokens) for g in mine),
            "decode_cycles": sum(schedule.cost(g, 1) for g in mine),
            "energy_nj": _energy(schedule, mine, zero_fraction)["total_nj"],
        })
    decode_tokens = tokens - 1
    cycles = sum(layer["decode_cycles"] for layer in per_layer)
    cycles_per_token = cycles if decode_tokens else None
    sent = received = 0
    for group in groups:
        to_device, from_device = schedule.words(group, 1)
        sent, received = sent + to_device, received + from_device
    bank_words = sum(slots * chunks for _, slots, chunks in map(schedule.span, groups))
    link_name, link_rate = uart_link(baud)
    energy = _energy(schedule, groups, zero_fraction)
    return Perf(
        mode="offload", prefill_tokens=prompt_tokens,
        prefill_cycles=sum(layer["prefill_cycles"] for layer in per_layer),
        decode_tokens=decode_tokens, cycles_per_token=cycles_per_token, per_layer=per_layer,
        prefill_unit={"+".join(n.rpartition(".")[2] for n in g): schedule.unit(g, prompt_tokens)
                      for g in groups[:len(groups) // model_config.layers]},
        bank_utilisation=bank_words / cycles if decode_tokens else None,
        link_words={"to_device": sent, "from_device": received}, link=link_name,
        device_tokens_per_s=config.clock_mhz * 1e6 / cycles if decode_tokens else None,
        link_tokens_per_s=link_rate / max(sent, received) if decode_tokens else None,
        bank_bound_cycles_per_token=bound,
        bank_bound_fraction=bound / cycles if decode_tokens else None,
        zero_fraction=zero_fraction,
        energy_per_token_nj=energy["total_nj"] if decode_tokens else None, energy=energy)


def _resident(config, model_config, schedule, groups, prompt_tokens, tokens, baud,
              zero_fraction, bound):
    """:func:`perf` in resident mode, as ``run.run_resident`` measures it: ``GENERATE(prompt,
    1)`` for the prefill, ``GENERATE(prompt, tokens)`` for the rest, each a closed form
    (:meth:`CommandTiming.generate`) over the core's cycle model."""
    from hw.resident_core import layout_core

    from .timing import CommandTiming

    timing, core = CommandTiming(config), layout_core(config)
    prefill_cycles = timing.generate(prompt_tokens, 1)
    decode_tokens = tokens - 1
    positions = range(prompt_tokens, prompt_tokens + decode_tokens)
    cycles = ((timing.generate(prompt_tokens, tokens) - prefill_cycles) / decode_tokens
              if decode_tokens else None)
    decoded = [core.stage_cycles(p, True) for p in positions]
    stages = ({stage: sum(token[stage] for token in decoded) / decode_tokens
               for stage in decoded[0]} if decode_tokens else None)
    # Each layer's stages (the embedding and the head belong to none).
    prompt_layers = [core.layer_cycles(p, p + 1 == prompt_tokens) for p in range(prompt_tokens)]
    decoded_layers = [core.layer_cycles(p, True) for p in positions]
    per_layer = [{
        "layer": layer,
        "prefill_cycles": sum(sum(token[layer].values()) for token in prompt_layers),
        "decode_cycles": (sum(sum(token[layer].values()) for token in decoded_layers)
                          / decode_tokens if decode_tokens else None),
        "energy_nj": _energy(schedule, [g for g in groups
                                        if g[0].startswith(f"layers.{layer}.")],
                             zero_fraction)["total_nj"],
    } for layer in range(model_config.layers)]
    # The second GENERATE's words: header, prompt length and prompt out; header and tokens back.
    words = ({"to_device": (2 + prompt_tokens) / decode_tokens,
              "from_device": (1 + tokens) / decode_tokens} if decode_tokens else None)
    bank_words = sum(placement.words for placement in core.placements.values())
    link_name, link_rate = uart_link(baud)
    energy = _energy(schedule, groups, zero_fraction)
    return Perf(
        mode="resident", prefill_tokens=prompt_tokens, prefill_cycles=prefill_cycles,
        decode_tokens=decode_tokens, cycles_per_token=cycles, per_layer=per_layer,
        prefill_unit={"every layer": "resident core"},
        bank_utilisation=bank_words / cycles if decode_tokens else None,
        link_words=words, link=link_name,
        device_tokens_per_s=config.clock_mhz * 1e6 / cycles if decode_tokens else None,
        link_tokens_per_s=(link_rate / max(words.values())) if decode_tokens else None,
        bank_bound_cycles_per_token=bound,
        bank_bound_fraction=bound / cycles if decode_tokens else None,
        zero_fraction=zero_fraction,
        energy_per_token_nj=energy["total_nj"] if decode_tokens else None, energy=energy,
        stages=stages)


def _energy(schedule, groups, zero_fraction):
    """A decode step's energy estimate over ``groups`` (nanojoules), by operation."""
    banks = schedule.config.pim.banks
    reads = sum(slots * chunks for _, slots, chunks in map(schedule.span, groups))    # a bank
    trits = sum(schedule.placements[name].n * schedule.placements[name].k
                for group in groups for name in group)
    counts = {"trit_mac": trits * (1 - zero_fraction), "row_accumulate": reads * banks,
              "bank_read": reads * banks}
    asic = {op: count * ENERGY_PJ[op] / 1000 for op, count in counts.items()}
    return {"operations": {op: round(count) for op, count in counts.items()},
            "asic_45nm_nj": {op: round(value, 3) for op, value in asic.items()},
            "fpga_factor": FPGA_FACTOR,
            "total_nj": round(sum(asic.values()) * FPGA_FACTOR, 3)}
