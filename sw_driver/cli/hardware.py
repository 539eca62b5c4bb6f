"""``bittern config``, ``generate`` and ``sim``: configurations, generated RTL, simulation."""

import json

from .common import UserError, add_config_options, config_from, progress

__all__ = ["add_commands"]


def cmd_config(args):
    config = config_from(args)
    if args.json:
        print(config.to_json())
        return 0
    print(f"preset {args.preset or 'default'}"
          + (f" with {', '.join(args.set)}" if args.set else ""))
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                print(f"  {f'{key}.{sub}':<18} {sub_value}")
        elif key == "resident" and value is None:
            print(f"  {key:<18} none (offload only)")
        else:
            print(f"  {key:<18} {value}")
    print(f"  derived: acc_bits={config.acc_bits} word_bits={config.word_bits} "
          f"act_words={config.act_words} bank_trits={config.bank_trits}"
          + (f" resident.head_dim={config.resident.head_dim}" if config.resident else ""))
    return 0


def cmd_generate(args):
    from ..interface import generate

    config = config_from(args)
    try:
        paths = generate(config, args.output, progress=progress)
    except OSError as error:
        raise UserError(f"cannot write to {args.output}: {error.strerror}") from None
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_sim(args):
    from sim.units import UNITS, simulate

    config = config_from(args)
    if args.seed < 0 or args.tiles < 1:
        raise UserError("--seed must be >= 0 and --tiles >= 1")
    if args.fuzz_words is not None and args.fuzz_words < 0:
        raise UserError("--fuzz-words must be >= 0")
    if args.x_seed is not None and not 1 <= args.x_seed < 1 << 31:
        raise UserError(f"--x-seed must be in [1, {(1 << 31) - 1}] (0 would let Verilator "
                        f"pick a seed: not reproducible), not {args.x_seed}")
    if args.unit != "all" and UNITS[args.unit].resident and config.resident is None:
        raise UserError(f"{args.unit} needs resident units, which this preset has not (tiny and "
                        f"ulx3s-85f have them)")
    names = [name for name, unit in UNITS.items() if config.resident is not None
             or not unit.resident] if args.unit == "all" else [args.unit]
    # A test name is checked against every testbench before the first build (minutes for the
    # top).
    for name in names if args.test is not None else ():
        tests = UNITS[name].test_names()
        if args.test not in tests:
            raise UserError(f"the {name} testbench has no test named {args.test!r} (it has "
                            f"{', '.join(tests)})")
    extra = {"coverage": args.coverage}
    if args.fuzz_words is not None:
        extra["fuzz_words"] = args.fuzz_words
    summaries = []
    for name in names:
        result = simulate(name, config, seed=args.seed, tiles=args.tiles, waves=args.waves,
                          progress=progress, extra_params=extra, x_seed=args.x_seed,
                          testcase=args.test)
        summary = {"unit": name, "passed": result.passed, **result.report}
        summaries.append(summary)
        print(f"{name}: {'PASS' if result.passed else 'FAIL'}  "
              + "  ".join(f"{k}={_fmt(v)}" for k, v in result.report.items()
                          if k != "coverage"))
        for failure in result.failures:
            print(f"  {failure}")
        if not result.passed:
            print(f"  log: {result.log}")
        if result.waves:
            print(f"  waves: {result.waves}")
        if args.coverage and "coverage" in result.report:
            print(coverage_text(result.report["coverage"]))
    passed = all(s["passed"] for s in summaries)
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else
                         {"passed": passed, "units": summaries}))
    return 0 if passed else 1


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def coverage_text(coverage):
    """A testbench's coverage report (:meth:`sim.coverage.DeviceCoverage.report`) as text:
    every bin's hits, point by point, the bins left out with their reasons, and the total."""
    lines = [f"coverage: {coverage['hit']} of {coverage['bins']} bins hit "
             f"({coverage['percent']:.1f} %)"]
    for point, found in coverage["points"].items():
        hit = sum(1 for hits in found["bins"].values() if hits)
        lines.append(f"  {point}: {hit} of {len(found['bins'])}")
        lines += [f"    {label:<32} {hits}" for label, hits in found["bins"].items()]
        lines += [f"    {label:<32} excluded: {reason}"
                  for label, reason in found["excluded"].items()]
    return "\n".join(lines)


def add_commands(commands):
    """Register ``config``, ``generate`` and ``sim`` on ``commands`` (``add_subparsers``)."""
    from sim.units import UNITS

    config = commands.add_parser("config", help="print a resolved configuration")
    add_config_options(config)
    config.add_argument("--json", action="store_true", help="print JSON")
    config.set_defaults(handler=cmd_config)

    generate = commands.add_parser(
        "generate", help="write the device's Verilog, metadata JSON, C header and interface page")
    add_config_options(generate)
    generate.add_argument("-o", "--output", required=True, metavar="DIR",
                          help="output directory")
    generate.set_defaults(handler=cmd_generate)

    sim = commands.add_parser("sim", help="simulate a unit on Verilator against golden/")
    sim.add_argument("--unit", choices=[*UNITS, "all"], default="all",
                     help="unit to simulate (default: all)")
    add_config_options(sim)
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--tiles", type=int, default=16,
                     help="random tiles / operations to check (default 16)")
    sim.add_argument("--fuzz-words", type=int, metavar="N",
                     help="random command words the top's fuzz test and regression each send "
                          "(default 10,000)")
    sim.add_argument("--test", metavar="NAME",
                     help="run only this test of the unit's testbench (e.g. regression)")
    sim.add_argument("--coverage", action="store_true",
                     help="sample the top's functional coverage; print every bin's hits (also "
                          "in --json)")
    sim.add_argument("--x-seed", type=int, metavar="N",
                     help="build with Verilator's X randomisation, no power-on values, and "
                          "draw them from seed N (>= 1)")
    sim.add_argument("--waves", action="store_true",
                     help="dump a VCD waveform (also: WAVES=1) and print its path")
    sim.add_argument("--json", action="store_true",
                     help="end the output with one JSON object")
    sim.set_defaults(handler=cmd_sim)
