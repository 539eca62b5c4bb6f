"""``bittern perf`` (a run's cycles, link words, bounds and energy, without simulating it),
``bittern sweep`` (perf and area over a design space) and ``bittern bench`` (how fast the
simulated backends run a model)."""

import json
from pathlib import Path

from hw.uart import DEFAULT_BAUD

from .common import UserError, add_config_options, config_from, progress

__all__ = ["add_commands"]

def cmd_perf(args):
    from golden import BITNET_B158_2B4T
    from hw.placement import MappingError

    from ..perf import perf
    from ..run import load_model
    from .inference import RUN_PRESET, _bigger, _load, _mode

    config = config_from(args, RUN_PRESET)
    if args.prompt_tokens < 1 or args.tokens < 1:
        raise UserError(f"--prompt-tokens and --tokens must be at least 1, not "
                        f"{args.prompt_tokens} and {args.tokens}")
    if args.model == "2b4t":
        model_config, weights = BITNET_B158_2B4T, None
    else:
        model_config, weights = _load(args.model, load_model)
    if args.prompt_tokens + args.tokens - 1 > model_config.max_seq:
        raise UserError(f"{args.prompt_tokens} prompt tokens + {args.tokens} tokens exceed the "
                        f"model's max_seq = {model_config.max_seq}")
    mode = _mode(args, config, model_config)
    try:
        result = perf(config, model_config, prompt_tokens=args.prompt_tokens,
                      tokens=args.tokens, prefill=args.prefill, baud=args.baud,
                      weights=weights, mode=mode).to_dict()
    except MappingError as error:
        raise UserError(f"{error}{_bigger(args)}") from None
    for line in _report(result, config, args):
        print(line)
    if args.json:
        print(json.dumps(result))
    return 0


def _report(result, config, args):
    units = ", ".join(f"{group} on the {unit}" for group, unit in result["prefill_unit"].items())
    yield (f"{args.model} on preset {args.preset or 'ulx3s-85f'}, {result['mode']} mode, "
           f"{result['prefill_tokens']} prompt tokens then {result['decode_tokens']} more")
    yield f"prefill  {result['prefill_cycles']:,} cycles ({units})"
    if result["cycles_per_token"] is None:
        return
    yield (f"decode   {result['cycles_per_token']:,.0f} cycles a token: device-bound "
           f"{result['device_tokens_per_s']:,.0f} tokens/s at {config.clock_mhz:g} MHz, "
           f"link-bound {result['link_tokens_per_s']:,.2f} tokens/s ({result['link']})")
    words = result["link_words"]
    yield (f"         {_words(words['to_device'])} words to the device, "
           f"{_words(words['from_device'])} back "
           f"a token ({4 * (words['to_device'] + words['from_device']):,.0f} bytes); bank bound "
           f"{result['bank_bound_cycles_per_token']:,.0f} cycles, "
           f"{result['bank_bound_fraction']:.1%} reached")
    if result["stages"]:
        yield "stages   " + ", ".join(f"{stage} {cycles:,.0f}"
                                      for stage, cycles in result["stages"].items())
    for layer in result["per_layer"]:
        yield (f"layer {layer['layer']:>3}  prefill {layer['prefill_cycles']:>9,}  decode "
               f"{layer['decode_cycles']:>7,.0f} cycles  {layer['energy_nj']:>10,.1f} nJ a token")
    energy = result["energy"]
    parts = ", ".join(f"{op} {nj:,.1f}" for op, nj in energy["asic_45nm_nj"].items())
    yield (f"energy   {result['energy_per_token_nj']:,.1f} nJ a token: 45 nm figures ({parts} "
           f"nJ) x {energy['fpga_factor']:g} for an FPGA; zero trits "
           f"{result['zero_fraction']:.1%} (docs/design.md, Metrics)")


def _words(count):
    """A word count, its decimals only where it has them (a resident run's are averages)."""
    return f"{count:,.2f}".removesuffix(".00")


def cmd_sweep(args):
    from hw.boards import board

    from ..run import load_model
    from ..sweep import grid, pareto_front, plot_pareto, run_sweep, write_csv
    from .inference import RUN_PRESET, _load

    chosen = board(args.board)
    _load(args.model, load_model)           # a bad model fails here, not in every point
    base = config_from(args, RUN_PRESET)
    varies = {}
    for vary in args.vary:
        key, sep, values = vary.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--vary expects key=value,value..., not {vary!r}")
        varies[key.strip()] = [value.strip() for value in values.split(",")]
    if not varies:
        raise UserError("give at least one --vary key=value,value...")
    points = grid(base, varies)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write to {out}: {error.strerror}") from None
    progress(f"{len(points)} points on "
             + (f"the Dask cluster at {args.scheduler}" if args.scheduler else
                "a local Dask cluster"))
    rows = run_sweep(points, scheduler=args.scheduler, workers=args.workers,
                     progress=progress, model=args.model, prompt_tokens=args.prompt_tokens,
                     tokens=args.tokens, board_name=chosen.name, fmax=args.fmax)
    cost = next(iter(chosen.resources))
    front = pareto_front(rows, cost=cost)
    write_csv(rows, out / "sweep.csv")
    plot_pareto(rows, front, out / "pareto.png", cost=cost,
                title=f"{args.model} on {chosen.name}: " + ", ".join(varies))
    print(f"wrote {out / 'sweep.csv'} ({len(rows)} points) and {out / 'pareto.png'}")
    for row in rows:
        if not row["fits"]:
            print(f"  {_point(row, varies)}: {row['reason']}")
    print(f"Pareto front (tokens/s against {cost}):")
    for row in sorted(front, key=lambda row: row[cost]):
        print(f"  {_point(row, varies)}: {row['tokens_per_s']:,.0f} tokens/s, "
              f"{row[cost]:,} {cost}")
    if args.json:
        print(json.dumps({"points": rows, "front": front}))
    return 0


BENCH_PROMPT = 'The "while" statement executes '      # 31 bytes of the shipped model's text


def cmd_bench(args):
    """The same run on the RTL (the compiled harness) and on the behavioural device, each
    ``--repeat`` times from a fresh device, the fastest kept: walls, simulated cycles/s, and
    the behavioural device's speed-up. The two must agree on every token and cycle count.
    ``--mode offload`` (the default) builds the device without its resident units, as
    ``bittern run --mode offload`` does; ``--mode resident`` runs ``run_resident``."""
    from sim.harness import HarnessTransport, build

    from ..behavioural import BehaviouralTransport
    from ..run import load_model, run, run_resident
    from ..tokenizer import decode, encode
    from .inference import RUN_PRESET, _load, _mode

    config = config_from(args, RUN_PRESET)
    if args.tokens < 1 or args.repeat < 1:
        raise UserError(f"--tokens and --repeat must be at least 1, not {args.tokens} and "
                        f"{args.repeat}")
    model_config, weights = _load(args.model, load_model)
    prompt = encode(args.prompt)
    if not prompt or len(prompt) + args.tokens - 1 > model_config.max_seq:
        raise UserError(f"the prompt needs 1 to {model_config.max_seq - args.tokens + 1} "
                        f"bytes for {args.tokens} tokens, not {len(prompt)}")
    if _mode(args, config, model_config) == "offload":
        # The device bittern run --mode offload builds, without the resident units it never
        # starts.
        config, generate = config.offload_only(), run
    else:
        generate = run_resident
    library = build(config, progress=progress).path

    def job(transport, **timing):
        return generate(transport, config, model_config, weights, prompt, args.tokens,
                        decode=decode, **timing).to_dict()

    def on_rtl():
        with HarnessTransport(library) as transport:
            report = job(transport, sim_cycles=transport.cycle)
            # The whole run's cycles (the weights' loading too) over the compiled loop's time.
            report["simulating_cycles_per_s"] = transport.cycle() / transport.simulating_s
            return report

    fastest = {}
    for backend, once in (("rtl", on_rtl), ("behavioural",
                                            lambda: job(BehaviouralTransport(config)))):
        for attempt in range(args.repeat):
            progress(f"{backend}: run {attempt + 1} of {args.repeat}")
            report = once()
            if backend not in fastest or report["wall_s"] < fastest[backend]["wall_s"]:
                fastest[backend] = report
    rtl, behavioural = fastest["rtl"], fastest["behavioural"]
    differ = [key for key in ("tokens", "prefill_cycles", "cycles_per_token")
              if rtl[key] != behavioural[key]]
    result = {
        "preset": args.preset or RUN_PRESET, "model": args.model, "mode": args.mode,
        "prompt_tokens": len(prompt),
        "tokens": args.tokens, "repeat": args.repeat, "prefill_cycles": rtl["prefill_cycles"],
        "cycles_per_token": rtl["cycles_per_token"], "rtl_wall_s": rtl["wall_s"],
        "rtl_cycles_per_s": rtl["sim_cycles_per_s"],
        "rtl_simulating_cycles_per_s": rtl["simulating_cycles_per_s"],
        "behavioural_wall_s": behavioural["wall_s"],
        "speedup": rtl["wall_s"] / behavioural["wall_s"], "agree": not differ}
    print(f"{args.model} on {result['preset']}, {args.mode} mode: {len(prompt)}-token prompt, "
          f"{args.tokens} tokens, the fastest of {args.repeat} runs each (build and model load "
          f"excluded)")
    print(f"rtl          {rtl['wall_s']:.3f} s wall, {rtl['sim_cycles_per_s']:,.0f} device "
          f"cycles/s simulated ({rtl['simulating_cycles_per_s']:,.0f} in the compiled loop "
          f"alone, without the driver's Python)")
    print(f"behavioural  {behavioural['wall_s']:.3f} s wall, {result['speedup']:.1f}x the RTL")
    if differ:
        print(f"MISMATCH: the backends differ in {', '.join(differ)}")
    if args.json:
        print(json.dumps(result))
    return 0 if not differ else 1


def _point(row, varies):
    return " ".join(f"{key}={row[key]}" for key in varies)


def add_commands(commands):
    """Register ``perf``, ``sweep`` and ``bench`` on ``commands`` (from ``add_subparsers``)."""
    from ..mapper import Schedule

    parser = commands.add_parser(
        "perf", help="cycles, link words, bounds and energy of a run, without simulating it")
    parser.add_argument("--model", default="tiny", metavar="tiny|2b4t|PATH",
                        help="the shipped tiny model, a checkpoint, or 2b4t (BitNet b1.58 2B4T's "
                             "shapes alone)")
    parser.add_argument("--prompt-tokens", type=int, default=31, metavar="N",
                        help="prompt tokens (default 31)")
    parser.add_argument("--tokens", type=int, default=12, metavar="T",
                        help="tokens generated (default 12)")
    parser.add_argument("--mode", choices=["resident", "offload"], default=None,
                        help="as bittern run (default: resident where the preset has the units "
                             "and the model fits them)")
    parser.add_argument("--prefill", choices=Schedule.PREFILL, default="auto",
                        help="where the prompt's BitLinears run (as bittern run)")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help=f"the board link's line rate (default {DEFAULT_BAUD})")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    add_config_options(parser, default="ulx3s-85f")
    parser.set_defaults(handler=cmd_perf)

    from hw.boards import BOARDS

    sweep = commands.add_parser(
        "sweep", help="perf and area of every combination of config fields, on Dask")
    sweep.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a config field and its values (repeatable; every combination)")
    sweep.add_argument("--model", default="tiny", metavar="tiny|PATH",
                       help="the model whose performance is measured")
    sweep.add_argument("--prompt-tokens", type=int, default=31, metavar="N")
    sweep.add_argument("--tokens", type=int, default=12, metavar="T")
    sweep.add_argument("--board", choices=BOARDS, default="ulx3s-85f",
                       help="whose FPGA a point must fit, and whose area metrics it reports")
    sweep.add_argument("--fmax", action="store_true",
                       help="place and route every point that fits (minutes each)")
    sweep.add_argument("--scheduler", metavar="ADDRESS",
                       help="an existing Dask scheduler (default: a local cluster)")
    sweep.add_argument("--workers", type=int, metavar="N",
                       help="local cluster's workers (default: one a core)")
    sweep.add_argument("--out", required=True, metavar="DIR",
                       help="where sweep.csv and pareto.png go")
    sweep.add_argument("--json", action="store_true", help="end with one JSON object")
    add_config_options(sweep, default="ulx3s-85f")
    sweep.set_defaults(handler=cmd_sweep)

    bench = commands.add_parser(
        "bench", help="the speed of the RTL and behavioural backends on one run")
    bench.add_argument("--model", default="tiny", metavar="tiny|PATH",
                       help="the shipped tiny model, or a checkpoint")
    bench.add_argument("--prompt", default=BENCH_PROMPT,
                       help=f"prompt text (default {BENCH_PROMPT!r}, 31 bytes)")
    bench.add_argument("--tokens", type=int, default=12, help="tokens generated (default 12)")
    bench.add_argument("--repeat", type=int, default=3,
                       help="runs per backend, the fastest kept (default 3)")
    bench.add_argument("--mode", choices=("offload", "resident"), default="offload",
                       help="the run timed (default offload: the device without its resident "
                            "units)")
    bench.add_argument("--json", action="store_true", help="end with one JSON object")
    add_config_options(bench, default="ulx3s-85f")
    bench.set_defaults(handler=cmd_bench)
