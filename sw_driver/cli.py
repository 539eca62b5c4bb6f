"""``bittern``: the command line of the generator, the simulator and the driver.

A user mistake (unknown preset, bad ``--set``, bad file) prints one ``bittern: error: ...``
line and exits with status 2; a failed check exits with status 1.
"""

import argparse
import json
import sys
import time

from hw.config import PRESETS, ConfigError, apply_overrides, preset

__all__ = ["main"]


class UserError(Exception):
    """A mistake in what the user asked for; reported as one line, no traceback."""


def _config_from(args):
    try:
        return apply_overrides(preset(args.preset), args.set)
    except ConfigError as error:
        raise UserError(str(error)) from None


def _add_config_options(parser, default="default"):
    parser.add_argument("--preset", default=default, metavar="NAME",
                        help=f"configuration preset ({', '.join(PRESETS)}); default: {default}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. rows=3 or pim.lanes=32 "
                             "(repeatable)")


def _progress(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cmd_config(args):
    config = _config_from(args)
    if args.json:
        print(config.to_json())
        return 0
    print(f"preset {args.preset}" + (f" with {', '.join(args.set)}" if args.set else ""))
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                print(f"  {key}.{sub:<10} {sub_value}")
        else:
            print(f"  {key:<16} {value}")
    print(f"  derived: acc_bits={config.acc_bits} word_bits={config.word_bits} "
          f"bank_trits={config.bank_trits}")
    return 0


def cmd_sim(args):
    from sim.units import UNITS, simulate
    from sim.verilator import BuildError

    config = _config_from(args)
    if args.seed < 0 or args.tiles < 1:
        raise UserError("--seed must be >= 0 and --tiles >= 1")
    names = list(UNITS) if args.unit == "all" else [args.unit]
    summaries = []
    for name in names:
        try:
            result = simulate(name, config, seed=args.seed, tiles=args.tiles,
                              waves=args.waves, progress=_progress)
        except BuildError as error:
            raise UserError(str(error)) from None
        summary = {"unit": name, "passed": result.passed, **result.report}
        summaries.append(summary)
        print(f"{name}: {'PASS' if result.passed else 'FAIL'}  "
              + "  ".join(f"{k}={_fmt(v)}" for k, v in result.report.items()))
        for failure in result.failures:
            print(f"  {failure}")
        if not result.passed:
            print(f"  log: {result.log}")
        if result.waves:
            print(f"  waves: {result.waves}")
    passed = all(s["passed"] for s in summaries)
    if args.json:
        print(json.dumps(summaries[0] if len(summaries) == 1 else
                         {"passed": passed, "units": summaries}))
    return 0 if passed else 1


def cmd_generate(args):
    from hw.generate import generate

    config = _config_from(args)
    try:
        verilog_path, json_path = generate(config, args.output)
    except OSError as error:
        raise UserError(f"cannot write to {args.output}: {error.strerror}") from None
    print(f"wrote {verilog_path}\nwrote {json_path}")
    return 0


def cmd_run(args):
    from sw_driver.checkpoint import CheckpointError
    from sw_driver.mapper import MappingError
    from sw_driver.run import load_model
    from sw_driver.tokenizer import encode

    config = _config_from(args)
    if args.tokens < 1:
        raise UserError(f"--tokens must be at least 1, not {args.tokens}")
    if args.backend == "serial" and not args.port:
        raise UserError("--backend serial needs --port, the board's serial port "
                        "(e.g. --port /dev/ttyUSB0)")
    prompt = encode(args.prompt)
    if not prompt:
        raise UserError("--prompt must not be empty")
    try:
        model_config, weights = load_model(args.model)
    except (CheckpointError, OSError) as error:
        raise UserError(f"cannot load model {args.model!r}: {error}") from None
    if max(prompt) >= model_config.vocab:
        raise UserError(f"the prompt has byte {max(prompt)}, beyond the model's vocabulary "
                        f"of {model_config.vocab}")
    if len(prompt) + args.tokens - 1 > model_config.max_seq:
        raise UserError(f"{len(prompt)} prompt bytes + {args.tokens} tokens exceed the "
                        f"model's max_seq = {model_config.max_seq}")
    backends = {"model": _run_model, "rtl": _run_rtl, "serial": _run_serial}
    try:
        report = backends[args.backend](args, config, model_config, weights, prompt)
    except MappingError as error:
        raise UserError(f"{error}; try --preset ulx3s-85f") from None
    print(f"{args.prompt}{report['text']}")
    print(f"device cycles per token {report['cycles_per_token']:.0f} (prefill "
          f"{report['prefill_cycles']}); {report['sim_cycles_per_s']:.0f} simulated cycles/s; "
          f"{report['tokens_per_s']:.2f} tokens/s wall; projected "
          f"{report['projected_tokens_per_s']:.0f} tokens/s at {config.clock_mhz:g} MHz")
    if args.check:
        print("check: " + ("every BitLinear and token equal golden" if report["checked"]
                           else f"MISMATCH: {report['first_mismatch']}"))
    if args.json:
        print(json.dumps({"backend": args.backend, **report}))
    return 0 if report.get("checked") is not False else 1


def _run_model(args, config, model_config, weights, prompt):
    from sw_driver.driver import ModelTransport
    from sw_driver.run import run
    from sw_driver.tokenizer import decode

    result = run(ModelTransport(config), config, model_config, weights, prompt, args.tokens,
                 check=args.check, decode=decode, progress=_progress)
    return result.to_dict()


def _run_serial(args, config, model_config, weights, prompt):
    import serial

    from sw_driver.driver import DeviceError
    from sw_driver.run import run
    from sw_driver.serial_link import SerialTransport
    from sw_driver.tokenizer import decode

    try:
        transport = SerialTransport.open(args.port, baud=args.baud)
    except (serial.SerialException, ValueError) as error:
        raise UserError(f"cannot open {args.port} at {args.baud} baud: {error}") from None
    try:
        result = run(transport, config, model_config, weights, prompt, args.tokens,
                     check=args.check, decode=decode, progress=_progress)
    except DeviceError as error:
        raise UserError(f"{error} (board on {args.port}, preset {args.preset})") from None
    finally:
        transport.close()
    return result.to_dict()


def _run_rtl(args, config, model_config, weights, prompt):
    from hw.device import Device
    from sim import verilator

    sim_build = verilator.build(Device(config), unit="top", waves=args.waves,
                                metadata={"config": config.to_dict()}, progress=_progress)
    _progress("running the model on the RTL (Verilator) ...")
    result = verilator.run(sim_build, test_module="sim.run_tb", name="run", params={
        "config": config.to_dict(), "model": args.model, "prompt_tokens": prompt,
        "tokens": args.tokens, "check": args.check})
    if not result.report:
        raise UserError(f"the RTL run did not finish: {'; '.join(result.failures)}; "
                        f"see {result.log}")
    return result.report


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def build_parser():
    from sim.units import UNITS

    parser = argparse.ArgumentParser(
        prog="bittern", description="Ternary (BitNet b1.58) accelerator generator.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="print a resolved configuration")
    _add_config_options(config)
    config.add_argument("--json", action="store_true", help="print JSON")
    config.set_defaults(handler=cmd_config)

    generate = commands.add_parser("generate",
                                   help="write the device's Verilog and metadata JSON")
    _add_config_options(generate)
    generate.add_argument("-o", "--output", required=True, metavar="DIR",
                          help="output directory")
    generate.set_defaults(handler=cmd_generate)

    sim = commands.add_parser("sim", help="simulate a unit on Verilator against golden/")
    sim.add_argument("--unit", choices=[*UNITS, "all"], default="all",
                     help="unit to simulate (default: all)")
    _add_config_options(sim)
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--tiles", type=int, default=16,
                     help="random tiles / operations to check (default 16)")
    sim.add_argument("--waves", action="store_true",
                     help="dump a VCD waveform (also: WAVES=1) and print its path")
    sim.add_argument("--json", action="store_true",
                     help="end the output with one JSON object")
    sim.set_defaults(handler=cmd_sim)

    from sw_driver.synth_cli import add_commands
    add_commands(commands)
    run = commands.add_parser("run", help="generate text with a model on the device")
    run.add_argument("--model", default="tiny", metavar="tiny|PATH",
                     help="the shipped tiny model, or a checkpoint (Bittern .safetensors, "
                          "Hugging Face BitNet directory, GGUF)")
    run.add_argument("--prompt", default="The ", help="prompt text")
    run.add_argument("--tokens", type=int, default=16, help="tokens to generate (default 16)")
    run.add_argument("--backend", choices=["model", "rtl", "serial"], default="model",
                     help="behavioural model (fast), the RTL on Verilator, or a board on a "
                          "serial port (bittern synth's bitstream)")
    run.add_argument("--port", metavar="DEVICE",
                     help="serial backend: the board's port, e.g. /dev/ttyUSB0")
    run.add_argument("--baud", type=int, default=115200,
                     help="serial backend: line rate the bitstream was built for "
                          "(bittern synth --baud; default 115200)")
    run.add_argument("--check", action="store_true",
                     help="compare every BitLinear result and token with golden/")
    run.add_argument("--waves", action="store_true", help="dump a VCD (rtl backend)")
    run.add_argument("--json", action="store_true", help="end the output with one JSON object")
    _add_config_options(run, default="ulx3s-85f")
    run.set_defaults(handler=cmd_run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"bittern: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
