"""``bittern``: the command line of the generator, the simulator and the driver.

A user mistake (unknown preset, bad ``--set``, bad file) prints one ``bittern: error: ...``
line and exits with status 2; a failed check exits with status 1.
"""

import argparse
import json
import sys
import time
from pathlib import Path

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
    _check_numeric(args)
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
    if args.numeric == "integer":
        return _run_integer(args, model_config, weights, prompt)
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


def _check_numeric(args):
    """``--numeric integer`` generates on the host: it takes no device options."""
    if args.numeric != "integer":
        return
    if args.backend != "model":
        raise UserError(f"--numeric integer runs the integer decoder on the host, without a "
                        f"device; drop --backend {args.backend}")
    if args.check:
        raise UserError("--check compares a device with golden/; --numeric integer runs no "
                        "device (its accuracy: bittern eval)")


def _run_integer(args, model_config, weights, prompt):
    from golden import IntegerModel
    from sw_driver.tokenizer import decode

    _progress(f"integer decoder on the host: prefill {len(prompt)} tokens, then "
              f"{args.tokens - 1} more")
    start = time.perf_counter()
    tokens = IntegerModel(model_config, weights).generate(prompt, args.tokens)
    wall = time.perf_counter() - start
    report = {"numeric": "integer", "text": decode(tokens), "tokens": tokens,
              "tokens_per_s": len(tokens) / wall if wall else 0.0, "wall_s": wall}
    print(f"{args.prompt}{report['text']}")
    print(f"integer decoder on the host: {len(tokens)} tokens in {wall:.2f} s "
          f"({report['tokens_per_s']:.2f} tokens/s)")
    if args.json:
        print(json.dumps(report))
    return 0


def cmd_eval(args):
    from sw_driver.checkpoint import CheckpointError
    from sw_driver.evaluate import evaluate
    from sw_driver.run import load_model

    if args.windows < 1:
        raise UserError(f"--windows must be at least 1, not {args.windows}")
    try:
        model_config, weights = load_model(args.model)
    except (CheckpointError, OSError) as error:
        raise UserError(f"cannot load model {args.model!r}: {error}") from None
    window_bytes = model_config.max_seq if args.window_bytes is None else args.window_bytes
    if not 2 <= window_bytes <= model_config.max_seq + 1:
        raise UserError(f"--window-bytes must be in [2, {model_config.max_seq + 1}] (the "
                        f"model's max_seq + 1), not {window_bytes}")
    source, data = _eval_text(args.text, model_config.vocab)
    windows = min(args.windows, len(data) // window_bytes)
    if windows == 0:
        raise UserError(f"{source} has {len(data)} bytes, fewer than one window of "
                        f"{window_bytes}")
    if windows < args.windows:
        _progress(f"{source} holds {windows} windows of {window_bytes} bytes, not "
                  f"{args.windows}: using {windows}")
    start = time.perf_counter()
    result = evaluate(model_config, weights, data, windows=windows, window_bytes=window_bytes,
                      progress=_progress).to_dict()
    report = {"model": args.model, "text": source, **result,
              "wall_s": time.perf_counter() - start}
    print(f"{args.model}: {windows} windows of {window_bytes} bytes from {source} "
          f"({report['positions']} predicted bytes)")
    print(f"  float bits per byte    {report['float_bits_per_byte']:.4f}")
    print(f"  integer bits per byte  {report['integer_bits_per_byte']:.4f} "
          f"({report['integer_bits_per_byte'] - report['float_bits_per_byte']:+.4f})")
    print(f"  top-1 agreement        {report['top1_agreement']:.4f}")
    print(f"  wall time              {report['wall_s']:.1f} s")
    if args.json:
        print(json.dumps(report))
    return 0


def _eval_text(path, vocab):
    """``(source name, uint8 bytes)``: the file at ``path``, or the shipped held-out text."""
    import numpy as np

    if path is None:
        from sw_driver.models import corpus, split
        source, data = "the held-out text (pydoc_data.topics)", split(corpus())[1]
    else:
        try:
            raw = Path(path).read_bytes()
        except OSError as error:
            raise UserError(f"cannot read {path}: {error.strerror}") from None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"{path} is not UTF-8 text ({error.reason} at byte "
                            f"{error.start})") from None
        source, data = path, np.frombuffer(raw, dtype=np.uint8)
    beyond = np.flatnonzero(data >= vocab)
    if beyond.size:
        raise UserError(f"{source} has byte {data[beyond[0]]} at offset {beyond[0]}, beyond "
                        f"the model's vocabulary of {vocab} tokens")
    return source, data


def _add_eval_command(commands):
    evaluation = commands.add_parser(
        "eval", help="bits per byte of the float and the integer decoders, and their top-1 "
                     "agreement")
    evaluation.add_argument("--model", default="tiny", metavar="tiny|PATH",
                            help="the shipped tiny model, or a checkpoint (Bittern "
                                 ".safetensors, Hugging Face BitNet directory, GGUF)")
    evaluation.add_argument("--text", metavar="FILE",
                            help="UTF-8 text whose bytes are the tokens (default: the shipped "
                                 "held-out text)")
    evaluation.add_argument("--windows", type=int, default=64,
                            help="windows to evaluate, each from an empty cache (default 64)")
    evaluation.add_argument("--window-bytes", type=int, metavar="N",
                            help="bytes per window (default: the model's max_seq)")
    evaluation.add_argument("--json", action="store_true",
                            help="end the output with one JSON object")
    evaluation.set_defaults(handler=cmd_eval)


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
    run.add_argument("--numeric", choices=["float", "integer"], default="float",
                     help="float: the host's float steps around the device's BitLinears "
                          "(default); integer: golden's integer decoder on the host, no device")
    run.add_argument("--waves", action="store_true", help="dump a VCD (rtl backend)")
    run.add_argument("--json", action="store_true", help="end the output with one JSON object")
    _add_config_options(run, default="ulx3s-85f")
    run.set_defaults(handler=cmd_run)
    _add_eval_command(commands)
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
