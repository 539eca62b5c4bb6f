"""Area (Yosys) and bitstreams (Yosys, nextpnr): what is built, and what the reports say.

:func:`area` synthesises each unit of :data:`AREA_UNITS` on its own and reports its cells with
the metrics of ``docs/design.md`` (LUT4-eq and the rest). :func:`synth_board` builds a
:class:`hw.boards.BoardTop` through Amaranth's platform flow and reads Fmax and utilisation from
nextpnr's report. Running the tools, build directories and locks are :mod:`sw_driver.flow`'s.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hw.array import SystolicArray
from hw.attention import Attention
from hw.bitlinear_block import BitLinearBlock
from hw.boards import BoardTop, board_clock
from golden.integer import RESIDUAL_BITS
from golden.widths import signed_bits_for
from hw.config import PRESETS, Config, ConfigError
from hw.device import Device
from hw.epilogue import Epilogue
from hw.ffn import FfnInner
from hw.head import LmHead
from hw.linear_stage import LinearStage
from hw.norm_stage import NormStage
from hw.pe import PE_KINDS
from hw.pim import PimBank, PimBankGroup
from hw.resident_core import ResidentCore
from hw.rope import Rope
from hw.uart import DEFAULT_BAUD

from . import flow
from .flow import BuildStage, ToolError

__all__ = ["Target", "TARGETS", "AreaUnit", "AREA_UNITS", "register_area_unit", "area_units",
           "AreaResult", "DerivedArea", "controller_area", "area", "compare_int8", "SynthResult",
           "synth_board"]

YOSYS_TIMEOUT = 1800            # seconds; the biggest preset's array takes minutes, not hours
PNR_TIMEOUT = 3600
_FAMILY_TOOLS = {"ecp5": ("yosys", "nextpnr-ecp5", "ecppack"),
                 "ice40": ("yosys", "nextpnr-ice40", "icepack")}
_NEXTPNR_OPTS = {"ecp5": "--router router2 --tmg-ripup --placer-heap-timingweight 40",
                 "ice40": ""}


# Area.

def _ecp5_metrics(cells):
    # TRELLIS_DPR16X4 (16 x 4 bit distributed RAM in LUTs: small FIFOs, small banks) is not in
    # the LUT4-eq of docs/design.md; it is reported beside it so that no storage goes unseen.
    return {"LUT4-eq": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0),
            **{name: cells.get(name, 0) for name in ("LUT4", "CCU2C", "TRELLIS_FF", "DP16KD",
                                                     "TRELLIS_DPR16X4", "MULT18X18D")}}


def _ice40_metrics(cells):
    return {"SB_LUT4": cells.get("SB_LUT4", 0),
            "SB_DFF*": sum(n for name, n in cells.items() if name.startswith("SB_DFF")),
            **{name: cells.get(name, 0)
               for name in ("SB_RAM40_4K", "SB_SPRAM256KA", "SB_MAC16")}}


@dataclass(frozen=True)
class Target:
    """A Yosys synthesis target: its command, how DSPs are allowed or kept out, its metrics."""
    name: str
    command: str
    with_dsp: str               # options that let multipliers map to DSP blocks
    without_dsp: str            # options that keep them in logic
    metrics: Callable           # cells by type -> {metric: count}, the headline metric first
    keep: str = ""              # module patterns synthesised as modules of their own
    fallback: str = ""          # options for a unit the command fails on ("": none)
    # The place-and-route tool and its options for a unit's Fmax out of context: the unit's
    # ports left unplaced, so only its own register-to-register paths count ("": none).
    fmax_tool: str = ""
    fmax_options: str = ""

    @property
    def has_dsp(self):
        return self.with_dsp != self.without_dsp

    @property
    def after_read(self):
        """Yosys commands between reading the design and synthesising it (board builds too)."""
        return f"setattr -mod -set keep_hierarchy 1 {self.keep}" if self.keep else ""

    def script(self, *, dsp, extra=""):
        options = f"{self.with_dsp if dsp else self.without_dsp} {extra}".strip()
        return (f"read_verilog top.v\n{self.after_read}\n{self.command} {options} -top top\n"
                f"tee -q -o stat.json stat -json -top top\n"
                + ("write_json top.json\n" if self.fmax_tool else ""))

    def headline(self, metrics):
        """The metric that ratios and per-lane figures use (first in :attr:`metrics`)."""
        return next(iter(metrics))


TARGETS = {target.name: target for target in [
    Target("generic", "synth -flatten", "", "",
           lambda cells: {"cells": sum(cells.values())}),
    # ECP5: each PIM bank and relay (hw.pim.Relay) stays a module of its own. Flattened, Yosys
    # merges the banks' identical activation registers and shares terms of their adder trees
    # across banks: one register then feeds banks spread over the die, and one bank's tree
    # waits on another's. It costs logic, which the iCE40UP5K, with two banks close together,
    # cannot spare. Area runs keep them too, so that they report what a board builds.
    # Fallback: abc9 maps flip-flops too (``-dff``) where Yosys 0.70's abc9 asserts.
    # Fmax on the ECP5 the ulx3s-85f carries, with nextpnr's default placer and router: the
    # board build's --tmg-ripup kept router2 ripping up a small unit for minutes out of
    # context, where its default finishes in seconds.
    Target("ecp5", "synth_ecp5", "", "-nodsp", _ecp5_metrics, keep="*.bank* *.relay*",
           fallback="-dff", fmax_tool="nextpnr-ecp5",
           fmax_options="--85k --package CABGA381 --out-of-context"),
    Target("ice40", "synth_ice40", "-dsp", "", _ice40_metrics),
]}


@dataclass(frozen=True)
class AreaUnit:
    """A unit whose area is reported: ``build(config, device)`` makes its component.

    ``device`` is the device factory (see :mod:`hw.boards`); ``lanes(config)`` is the number of
    lanes the per-lane figure divides by, or ``None`` for a unit without lanes. A ``resident``
    unit is built for ``config.resident``: a config without it leaves the unit out of a run of
    every unit, and refuses it by name.
    """
    name: str
    description: str
    build: Callable
    lanes: Callable = lambda config: None
    resident: bool = False


def _widest_pe(config, device):
    """The array's bottom-row PE: the widest partial sums (as ``SystolicArray`` sizes them)."""
    pe = PE_KINDS[config.array.pe]
    rows, max_product = config.array.rows, pe.max_product(config.act_bits)
    return pe(act_bits=config.act_bits,
              psum_in_bits=signed_bits_for((rows - 1) * max_product) if rows > 1 else 0,
              psum_out_bits=signed_bits_for(rows * max_product))


AREA_UNITS = {}


def register_area_unit(unit):
    """Add ``unit`` to :data:`AREA_UNITS` (the order of registration is the report's)."""
    AREA_UNITS[unit.name] = unit
    return unit


register_area_unit(AreaUnit("pe", "one PE of the configured kind (bottom row, widest)",
                            _widest_pe))
register_area_unit(AreaUnit("array", "systolic tensor unit with its result FIFOs",
                            lambda config, device: SystolicArray(config),
                            lanes=lambda config: config.array.rows * config.array.cols))
register_area_unit(AreaUnit("pim-bank", "one PIM bank: block RAM, near-bank engine, result FIFO",
                            lambda config, device: PimBank(
                                config, fifo_depth=PimBankGroup.fifo_depth_for(config)),
                            lanes=lambda config: config.pim.lanes))
register_area_unit(AreaUnit("pim", "PIM bank group: banks, sequencer, activation buffer",
                            lambda config, device: PimBankGroup(config),
                            lanes=lambda config: config.pim.banks * config.pim.lanes))
register_area_unit(AreaUnit("epilogue", "resident decoder's BitLinear epilogue (int32 results, "
                                        "4 lanes)",
                            lambda config, device: Epilogue(config, out_bits=RESIDUAL_BITS,
                                                            lanes=4),
                            lanes=lambda config: 4))
register_area_unit(AreaUnit("ffn", "resident decoder's FFN inner product relu(gate)**2 x up "
                                   "(shipped model's ffn width, 4 lanes)",
                            lambda config, device: FfnInner(config, ffn=384, lanes=4),
                            lanes=lambda config: 4))
register_area_unit(AreaUnit("head", "resident decoder's LM head, arg max and embedding lookup "
                                    "(shipped model's shape, a bank's lanes, 4 lookup lanes)",
                            lambda config, device: LmHead(config, hidden=128, vocab=256,
                                                          embed_lanes=4),
                            lanes=lambda config: config.pim.lanes))
register_area_unit(AreaUnit("norm-stage", "resident decoder's norm stage: RMSNorm, x_q, rho and "
                                          "the factors (shipped model's shape, 32 lanes)",
                            lambda config, device: NormStage(config, hidden=128, ffn=384,
                                                             layers=2, lanes=32),
                            lanes=lambda config: 32))
register_area_unit(AreaUnit("rope", "resident decoder's RoPE (shipped model's shape, two pairs "
                                    "a beat)",
                            lambda config, device: Rope(config, head_dim=32, max_seq=256,
                                                        lanes=2)))
register_area_unit(AreaUnit("attention", "resident decoder's attention with its KV cache (shipped "
                                         "model's shape, head_dim lanes, both query heads of "
                                         "a KV head a pass)",
                            lambda config, device: Attention(config, heads=4, kv_heads=2,
                                                             head_dim=32, max_seq=256, layers=2,
                                                             heads_per_pass=2),
                            lanes=lambda config: 32))
register_area_unit(AreaUnit("linear-stage", "resident decoder's linear stage without the bank "
                                            "group (int32 results, 4 lanes)",
                            lambda config, device: LinearStage(config, out_bits=RESIDUAL_BITS,
                                                               lanes=4),
                            lanes=lambda config: 4))
register_area_unit(AreaUnit("bitlinear-block", "resident decoder's norm and the BitLinears that "
                                               "read it, without the bank group (shipped "
                                               "model's shape, its vectors within max_k; a "
                                               "bank's lanes, int32, 4 lanes of results)",
                            lambda config, device: BitLinearBlock(
                                config, hidden=min(128, config.max_k),
                                ffn=min(384, config.max_k), layers=2),
                            lanes=lambda config: config.pim.lanes))
register_area_unit(AreaUnit("resident-core", "resident decoder's core for config.resident: its "
                                             "BitLinear block, RoPE, attention with the KV "
                                             "cache, FFN, LM head, constants and registers, "
                                             "without the bank group",
                            lambda config, device: ResidentCore(config), resident=True))
register_area_unit(AreaUnit("device", "the device the boards host (--device)",
                            lambda config, device: device(config)))


@dataclass(frozen=True)
class AreaResult:
    """Cells of one unit on one target; ``per_lane`` is the headline metric over ``lanes``."""
    unit: str
    target: str
    dsp: bool
    cells: dict
    metrics: dict
    lanes: int | None
    seconds: float
    log: Path
    fallback: str = ""          # the target's fallback options, if the unit needed them
    fmax_mhz: float | None = None   # placed and routed out of context (``area(fmax=True)``)

    @property
    def headline(self):
        return next(iter(self.metrics.values()))

    @property
    def per_lane(self):
        return self.headline / self.lanes if self.lanes else None

    def to_dict(self):
        return {"unit": self.unit, "target": self.target, "dsp": self.dsp,
                "metrics": self.metrics, "lanes": self.lanes, "per_lane": self.per_lane,
                "cells": self.cells, "seconds": round(self.seconds, 2), "log": str(self.log),
                "fallback": self.fallback, "fmax_mhz": self.fmax_mhz}


@dataclass(frozen=True)
class DerivedArea:
    """A unit's area found by subtraction, not synthesised on its own (``formula`` says how).

    Yosys flattens and optimises across the boundaries of the units it subtracts, so a cell
    count may come out slightly off, even negative; the headline figure is still the best
    estimate of what the part costs inside the whole.
    """
    unit: str
    formula: str
    target: str
    dsp: bool
    cells: dict
    metrics: dict
    lanes = None
    per_lane = None

    @property
    def headline(self):
        return next(iter(self.metrics.values()))

    def to_dict(self):
        return {"unit": self.unit, "derived": self.formula, "target": self.target,
                "dsp": self.dsp, "metrics": self.metrics, "lanes": None, "per_lane": None,
                "cells": self.cells}


def controller_area(results):
    """The controller of a :class:`~hw.device.Device` (decoder, registers, counters, stream
    glue): ``device - array - pim`` of ``results`` (from :func:`area` on the accelerator).

    Returns a :class:`DerivedArea`, or ``None`` unless ``results`` hold all three units.
    """
    by_unit = {result.unit: result for result in results}
    if not {"device", "array", "pim"} <= set(by_unit):
        return None
    whole, parts = by_unit["device"], [by_unit["array"], by_unit["pim"]]
    names = set(whole.cells).union(*(part.cells for part in parts))
    cells = {name: whole.cells.get(name, 0) - sum(part.cells.get(name, 0) for part in parts)
             for name in sorted(names)}
    cells = {name: count for name, count in cells.items() if count}
    metrics = {name: whole.metrics[name] - sum(part.metrics[name] for part in parts)
               for name in whole.metrics}
    return DerivedArea(unit="controller", formula="device - array - pim", target=whole.target,
                       dsp=whole.dsp, cells=cells, metrics=metrics)


def _ports(component):
    """The component's ports for RTLIL, leaving out constant members (an ``always_ready``
    stream's ``ready``), which Amaranth cannot make ports of and which hold no logic."""
    from amaranth.hdl import Const, ValueCastable

    values = (value.as_value() if isinstance(value, ValueCastable) else value
              for _, _, value in component.signature.flatten(component))
    return [value for value in values if not isinstance(value, Const)]


def _yosys_area(component, *, unit, target, dsp, timeout, progress):
    """Synthesise ``component``; returns its cells, Yosys's seconds, its log and its mapping."""
    from amaranth.back import verilog

    # Verilog, not RTLIL: Yosys 0.70's abc9 re-integration asserts on the RTLIL of the
    # ulx3s-85f bank group ("GetSize(conn.first) == GetSize(conn.second)"), and on its flattened
    # Verilog once it had relays ("wire"); from Verilog with the banks kept as modules (the
    # target's ``keep``) it maps. Board builds read their RTLIL back as Verilog too. With the
    # result FIFOs in the banks it asserted on the group once more ("count_id(wire->name) ==
    # 0"), and not with the target's fallback options: a unit that fails is mapped again with
    # them, and its result says so.
    text = verilog.convert(component, name="top", ports=_ports(component), emit_src=False)
    attempts = [""] + ([target.fallback] if target.fallback else [])
    for extra in attempts:
        script = target.script(dsp=dsp, extra=extra)
        run_dir = flow.build_dir("area", f"{unit}-{target.name}", text, script)
        what = f"{unit} ({target.command} {'with' if dsp else 'without'} DSPs)"
        try:
            stat, seconds, log = flow.run_yosys(text, script, run_dir, what=what,
                                                timeout=timeout, progress=progress)
        except ToolError as error:
            if extra == attempts[-1]:
                raise
            if progress:
                progress(f"{error}; again with {attempts[-1]}")
            continue
        submodules = {name.lstrip("\\") for name in stat["modules"]}
        cells = {name: count for name, count in stat["design"]["num_cells_by_type"].items()
                 if name not in submodules and name != "$scopeinfo"}   # the whole hierarchy
        return cells, seconds, log, extra


def area_units(config):
    """The names in :data:`AREA_UNITS` built for ``config``: the ``resident`` ones only if it
    has resident units."""
    return [name for name, unit in AREA_UNITS.items()
            if config.resident is not None or not unit.resident]


def area(config, *, units=None, target="ecp5", dsp=True, device=None, timeout=YOSYS_TIMEOUT,
         fmax=False, progress=None):
    """Synthesise ``units`` (names in :data:`AREA_UNITS`; by default all, the ``resident``
    ones if ``config.resident`` is set) for ``config``.

    ``fmax`` also places and routes each unit out of context (the target's ``fmax_tool``) for
    ``config.clock_mhz`` and reports its Fmax: the unit's own paths, without the ports' (a
    board build's figure is the one that decides; this finds a unit's slow paths early).

    ``device`` is the device factory for the ``device`` unit (default: the board default).
    Returns a list of :class:`AreaResult` in unit order; when the device is the accelerator and
    ``device``, ``array`` and ``pim`` were all synthesised, a :class:`DerivedArea` for its
    controller follows (see :func:`controller_area`).
    """
    from hw.boards import DEFAULT_DEVICE, DEVICES

    target = TARGETS[target]
    if fmax and not target.fmax_tool:
        raise ValueError(f"Fmax needs a target with a place-and-route tool "
                         f"({', '.join(t.name for t in TARGETS.values() if t.fmax_tool)}), "
                         f"not {target.name}")
    units = area_units(config) if units is None else units
    for name in units:
        if AREA_UNITS[name].resident and config.resident is None:
            raise ConfigError(f"{name} is built for the config's resident units, and this one "
                              f"has none (presets with them: "
                              f"{', '.join(n for n, c in PRESETS.items() if c.resident)})")
    flow.find_tool("yosys")     # a missing toolchain is named before any work is done
    if fmax:
        flow.find_tool(target.fmax_tool)
    device = device or DEVICES[DEFAULT_DEVICE]
    results = []
    for name in units:
        unit = AREA_UNITS[name]
        cells, seconds, log, fallback = _yosys_area(unit.build(config, device), unit=name,
                                                    target=target, dsp=dsp, timeout=timeout,
                                                    progress=progress)
        fmax_mhz = None
        if fmax:
            fmax_mhz, _ = flow.run_nextpnr_fmax(target.fmax_tool, target.fmax_options,
                                                log.parent, clock_mhz=config.clock_mhz,
                                                what=name, timeout=timeout, progress=progress)
        results.append(AreaResult(unit=name, target=target.name, dsp=dsp, cells=cells,
                                  metrics=target.metrics(cells), lanes=unit.lanes(config),
                                  seconds=seconds, log=log, fallback=fallback,
                                  fmax_mhz=fmax_mhz))
    controller = controller_area(results) if device is Device else None
    return results + ([controller] if controller else [])


def compare_int8(config, *, target="ecp5", timeout=YOSYS_TIMEOUT, progress=None):
    """The array with ternary and with int8 PEs, on logic alone and (if any) with DSPs.

    Returns ``[{"dsp": bool, "ternary": AreaResult, "int8": AreaResult, "ratio": float}]``;
    ``ratio`` is int8 over ternary on the target's headline metric.
    """
    rows = []
    for dsp in ([False, True] if TARGETS[target].has_dsp else [False]):
        pair = {}
        for kind in ("ternary", "int8"):
            kind_config = dataclasses.replace(config, array=dataclasses.replace(config.array,
                                                                                pe=kind))
            pair[kind], = area(kind_config, units=["array"], target=target, dsp=dsp,
                               timeout=timeout, progress=progress)
        rows.append({"dsp": dsp, **pair,
                     "ratio": pair["int8"].headline / max(1, pair["ternary"].headline)})
    return rows


# Place and route.

@dataclass(frozen=True)
class SynthResult:
    """A board build: its directory, bitstream and the summary written as ``summary.json``."""
    build_dir: Path
    bitstream: Path
    summary: dict
    reused: bool


_SYNTHESIS = BuildStage("", "synthesis (yosys)", "top.rpt")
_STAGES = {                    # in build order
    "ecp5": [_SYNTHESIS, BuildStage("top.tim", "place and route (nextpnr-ecp5)", "top.tim"),
             BuildStage("top.config", "bitstream (ecppack)", "build.log")],
    "ice40": [_SYNTHESIS, BuildStage("top.tim", "place and route (nextpnr-ice40)", "top.tim"),
              BuildStage("top.asc", "bitstream (icepack)", "build.log")],
}
# Yosys 0.70's abc9 re-integration asserts on some RTLIL netlists ("GetSize(conn.first) ==
# GetSize(conn.second)": the ulx3s-85f device after a one-flag change); the same design read
# back from Verilog maps, so board builds take that path, as area runs do.
_FROM_VERILOG = "write_verilog -norename top_read.v\ndesign -reset\nread_verilog top_read.v"
# nextpnr options per family. ECP5: router2, the negotiated-congestion router, with
# timing-driven rip-up and the placer's timing weight at 40 (default 10): the device's failing
# paths are a few LUTs deep with most of their delay in detours around congestion.
# docs/timing.md has what each gained.

def _main_clock(report, constraint_mhz):
    """The ``fmax`` entry of nextpnr's report whose constraint is the main clock's."""
    clocks = report.get("fmax", {})
    if not clocks:
        raise ToolError("nextpnr's report has no clock; was the clock constraint lost?")
    name = min(clocks, key=lambda net: abs(clocks[net]["constraint"] - constraint_mhz))
    return name, clocks[name]


def synth_board(board, config, *, device, device_name, baud=DEFAULT_BAUD, timeout=PNR_TIMEOUT,
                rebuild=False, progress=None):
    """Build ``device`` for ``board`` into a bitstream; returns a :class:`SynthResult`.

    Timing is reported, not enforced: the summary says whether the main clock's constraint
    (the PLL frequency) was met, and the bitstream is written either way.
    """
    progress = progress or (lambda message: None)
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config, not {config!r}")
    board_clock(board, config, baud=baud)        # a mistake fails before any HDL exists
    top = BoardTop(board, config, device, baud=baud)
    env = flow.tool_env(_FAMILY_TOOLS[board.family])
    progress(f"elaborating {device_name} for {board.name} ...")
    plan = board.platform().prepare(top, name="top",
                                    nextpnr_opts="--report report.json --timing-allow-fail "
                                                 + _NEXTPNR_OPTS[board.family],
                                    script_after_read=f"{_FROM_VERILOG}\n"
                                                      f"{TARGETS[board.family].after_read}")
    build_dir = flow.BUILD_ROOT / "synth" / f"{board.name}-{plan.digest().hex()[:16]}"
    summary_path = build_dir / "summary.json"
    bitstream = build_dir / f"top.{board.bitstream}"
    with flow.locked(build_dir):
        if summary_path.exists() and not rebuild:
            progress(f"already built in {build_dir}")
            return SynthResult(build_dir, bitstream, json.loads(summary_path.read_text()), True)
        summary_path.unlink(missing_ok=True)
        plan.extract(build_dir)
        (build_dir / "report.json").unlink(missing_ok=True)
        progress(f"building in {build_dir}")
        seconds = flow.run_build_script(build_dir, env, stages=_STAGES[board.family],
                                        timeout=timeout, progress=progress)
        report = json.loads((build_dir / "report.json").read_text())
        pll_mhz = top.pll.fout_hz / 1e6
        clock, fmax = _main_clock(report, pll_mhz)
        summary = {
            "board": board.name, "device": device_name, "config": config.to_dict(),
            "clock": {"requested_mhz": config.clock_mhz, "pll_mhz": pll_mhz,
                      "oscillator_mhz": board.osc_hz / 1e6,
                      "pll": {k: v for k, v in dataclasses.asdict(top.pll).items()
                              if k != "fin_hz"}},
            "fmax_mhz": round(fmax["achieved"], 2), "constraint_mhz": round(fmax["constraint"], 3),
            "timing_met": fmax["achieved"] >= fmax["constraint"], "clock_net": clock,
            "utilisation": {bel: {**use, "percent": round(100 * use["used"] /
                                                           max(1, use["available"]), 1)}
                            for bel, use in report.get("utilization", {}).items()
                            if use["used"]},
            "bitstream": str(bitstream), "nextpnr_log": str(build_dir / "top.tim"),
            "nextpnr_report": str(build_dir / "report.json"), "seconds": round(seconds, 1),
        }
        summary_path.write_text(json.dumps(summary, indent=2))
    return SynthResult(build_dir, bitstream, summary, False)
