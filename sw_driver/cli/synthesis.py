"""``bittern area`` and ``bittern synth``: Yosys area per unit, and bitstreams for boards.

A build that misses its clock exits with status 1, as a failed tool run does.
"""

import json

from .common import UserError, add_config_options, config_from, progress

__all__ = ["add_commands"]


def _table(header, rows):
    """Right-aligned columns, the first left-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _number(value):
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def _check_timeout(args):
    if args.timeout < 1:
        raise UserError(f"--timeout must be at least 1 second, not {args.timeout}")


def cmd_area(args):
    from hw.boards import DEVICES

    from ..synth import TARGETS, DerivedArea, area, compare_int8

    _check_timeout(args)
    config = config_from(args)
    target = TARGETS[args.target]
    if args.compare_int8:
        rows = compare_int8(config, target=args.target, timeout=args.timeout,
                            progress=progress)
        if args.json:
            print(json.dumps({"config": config.to_dict(), "target": target.name,
                              "compare_int8": [{"dsp": row["dsp"], "ratio": row["ratio"],
                                                "ternary": row["ternary"].to_dict(),
                                                "int8": row["int8"].to_dict()}
                                               for row in rows]}))
            return 0
        metric = target.headline(rows[0]["ternary"].metrics)
        dsp_cell = {"ecp5": "MULT18X18D", "ice40": "SB_MAC16"}.get(target.name)
        print(f"array {config.array.rows}x{config.array.cols} with ternary vs int8 PEs on "
              f"{target.name} ({metric})")
        header = ["mode", "ternary", "int8", "int8/ternary"] + ([f"int8 {dsp_cell}"]
                                                               if dsp_cell else [])
        print(_table(header, [
            ["with DSPs" if row["dsp"] else "logic only", row["ternary"].headline,
             row["int8"].headline, f"{row['ratio']:.2f}x"]
            + ([row["int8"].metrics[dsp_cell]] if dsp_cell else []) for row in rows]))
        return 0

    units = None if args.unit == "all" else [args.unit]
    if args.fmax and not target.fmax_tool:
        raise UserError(f"--fmax needs --target "
                        f"{' or '.join(t.name for t in TARGETS.values() if t.fmax_tool)}, "
                        f"not {target.name}")
    results = area(config, units=units, target=args.target, dsp=not args.no_dsp,
                   device=DEVICES[args.device], timeout=args.timeout, fmax=args.fmax,
                   progress=progress)
    if args.json:
        print(json.dumps({"config": config.to_dict(), "target": target.name,
                          "dsp": not args.no_dsp, "units": [r.to_dict() for r in results]}))
        return 0
    names = list(results[0].metrics)
    print(f"area on {target.name} ({target.command}, "
          f"{'no DSPs' if args.no_dsp or not target.has_dsp else 'DSPs allowed'}), preset "
          f"{args.preset or 'default'}" + (f" with {', '.join(args.set)}" if args.set else ""))
    derived = [r for r in results if isinstance(r, DerivedArea)]
    fallen_back = [r for r in results if getattr(r, "fallback", "")]
    fmax = ["Fmax MHz"] if args.fmax else []
    print(_table(["unit", *names, "lanes", f"{names[0]}/lane", *fmax],
                 [[r.unit + ("*" if r in derived else "") + ("+" if r in fallen_back else ""),
                   *r.metrics.values(), _number(r.lanes), _number(r.per_lane)]
                  + ([_number(getattr(r, "fmax_mhz", None))] if fmax else [])
                  for r in results]))
    if args.fmax:
        print(f"Fmax: each unit placed and routed alone (its ports unplaced) against "
              f"{config.clock_mhz:g} MHz; a board build's figure decides")
    for r in derived:
        print(f"* {r.unit}: derived by subtraction, {r.formula} (not synthesised on its own)")
    for r in fallen_back:
        print(f"+ {r.unit}: {target.command} failed on it; mapped with {r.fallback} "
              f"(see {r.log})")
    return 0


def cmd_synth(args):
    from hw.boards import DEVICES, board

    from ..synth import synth_board

    _check_timeout(args)
    chosen = board(args.board)
    config = config_from(args, chosen.default_preset)
    if config.resident is not None and not args.resident:
        # At 32 bank lanes the resident core alone needs more multipliers than the ECP5-85F
        # has (docs/timing.md); a board is the offload device unless asked.
        progress("building the device without its resident units (--resident includes them)")
        config = config.offload_only()
    result = synth_board(chosen, config, device=DEVICES[args.device], device_name=args.device,
                         baud=args.baud, timeout=args.timeout, rebuild=args.rebuild,
                         progress=progress)
    summary = result.summary
    if args.json:
        print(json.dumps(summary))
    else:
        clock = summary["clock"]
        pll = ", ".join(f"{key}={value}" for key, value in clock["pll"].items())
        print(f"{chosen.name}: {args.device}, preset {args.preset or chosen.default_preset}"
              + (f" with {', '.join(args.set)}" if args.set else ""))
        print(f"  clock      {clock['requested_mhz']:g} MHz asked; PLL makes "
              f"{clock['pll_mhz']:.3f} MHz from {clock['oscillator_mhz']:g} MHz ({pll})")
        print(f"  Fmax       {summary['fmax_mhz']:.2f} MHz at a {summary['constraint_mhz']:.2f} "
              f"MHz constraint: {'met' if summary['timing_met'] else 'NOT MET'}")
        for bel, use in summary["utilisation"].items():
            print(f"  {bel:<13}{use['used']:>7} / {use['available']:<7} ({use['percent']}%)")
        print(f"  bitstream  {summary['bitstream']}")
        print(f"  nextpnr    {summary['nextpnr_log']}, {summary['nextpnr_report']}")
        print(f"  summary    {result.build_dir / 'summary.json'}"
              + (" (reused; --rebuild to build again)" if result.reused
                 else f" ({summary['seconds']:.0f} s)"))
    return 0 if summary["timing_met"] else 1


def add_commands(subparsers):
    """Register ``area`` and ``synth`` on ``subparsers`` (from ``add_subparsers``)."""
    from hw.boards import BOARDS, DEFAULT_DEVICE, DEVICES
    from hw.uart import DEFAULT_BAUD

    from ..synth import AREA_UNITS, PNR_TIMEOUT, TARGETS, YOSYS_TIMEOUT

    def config_options(parser, default):
        add_config_options(parser, default)
        parser.add_argument("--device", choices=DEVICES, default=DEFAULT_DEVICE,
                            help=f"device the board hosts (default: {DEFAULT_DEVICE})")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    area = subparsers.add_parser(
        "area", help="Yosys area of each unit, in the metrics of docs/design.md",
        description="Synthesise each unit with Yosys and report its cells.")
    config_options(area, "default")
    area.add_argument("--target", choices=TARGETS, default="ecp5",
                      help="yosys synthesis target (default: ecp5)")
    area.add_argument("--unit", choices=[*AREA_UNITS, "all"], default="all",
                      help="unit to synthesise (default: all)")
    area.add_argument("--no-dsp", action="store_true",
                      help="keep multipliers in logic (ecp5: -nodsp; ice40 omits -dsp)")
    area.add_argument("--compare-int8", action="store_true",
                      help="the array with ternary and with int8 PEs, logic only and with DSPs")
    area.add_argument("--fmax", action="store_true",
                      help="also place and route each unit out of context (ecp5: "
                           "nextpnr-ecp5, the ulx3s-85f's part) and report its Fmax at the "
                           "preset's clock")
    area.add_argument("--timeout", type=int, default=YOSYS_TIMEOUT, metavar="SECONDS",
                      help=f"limit on each yosys (and nextpnr) run (default {YOSYS_TIMEOUT})")
    area.set_defaults(handler=cmd_area)

    synth = subparsers.add_parser(
        "synth", help="build a board's bitstream and report Fmax and utilisation",
        description="Place and route the device inside a board wrapper (UART bridge, PLL, "
                    "LEDs) into build/synth/<board>-<hash>/.")
    synth.add_argument("--board", required=True, metavar="BOARD",
                       help="; ".join(f"{b.name}: {b.description}" for b in BOARDS.values()))
    config_options(synth, "the board's own preset")
    synth.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                       help=f"UART rate (default {DEFAULT_BAUD})")
    synth.add_argument("--rebuild", action="store_true",
                       help="build again even if this exact design was built before")
    synth.add_argument("--resident", action="store_true",
                       help="include the preset's resident units (they do not fit the "
                            "ulx3s-85f's FPGA yet: docs/timing.md)")
    synth.add_argument("--timeout", type=int, default=PNR_TIMEOUT, metavar="SECONDS",
                       help=f"limit on the whole build (default {PNR_TIMEOUT})")
    synth.set_defaults(handler=cmd_synth)
