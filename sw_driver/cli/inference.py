"""``bittern run`` and ``bittern eval``: a language model generating text, through a device or
with golden's integer decoder on the host, and what the integer decoder costs in accuracy."""

import json
import time
from pathlib import Path

from hw.uart import DEFAULT_BAUD

from .common import UserError, add_config_options, config_from, progress

__all__ = ["add_commands"]

RUN_PRESET = "ulx3s-85f"        # the preset whose banks hold the shipped model


def cmd_run(args):
    from hw.placement import MappingError

    from ..run import load_model
    from ..tokenizer import encode

    config = config_from(args, RUN_PRESET)
    _check_numeric(args)
    if args.tokens < 1:
        raise UserError(f"--tokens must be at least 1, not {args.tokens}")
    if args.backend == "serial" and not args.port:
        raise UserError("--backend serial needs --port, the board's serial port "
                        "(e.g. --port /dev/ttyUSB0)")
    prompt = encode(args.prompt)
    if not prompt:
        raise UserError("--prompt must not be empty")
    model_config, weights = _load(args.model, load_model)
    if max(prompt) >= model_config.vocab:
        raise UserError(f"the prompt has byte {max(prompt)}, beyond the model's vocabulary "
                        f"of {model_config.vocab}")
    if len(prompt) + args.tokens - 1 > model_config.max_seq:
        raise UserError(f"{len(prompt)} prompt bytes + {args.tokens} tokens exceed the "
                        f"model's max_seq = {model_config.max_seq}")
    if args.numeric == "integer":
        return _run_integer(args, model_config, weights, prompt)
    args.mode = _mode(args, config, model_config)
    if args.mode == "offload":
        # Offload mode never starts the resident units: the device is built without them.
        config = config.offload_only()
    backends = {"behavioural": _run_behavioural, "rtl": _run_rtl, "serial": _run_serial}
    try:
        report = backends[args.backend](args, config, model_config, weights, prompt)
    except MappingError as error:
        raise UserError(f"{error}{_bigger(args)}") from None
    report["mode"] = args.mode
    print(f"{args.prompt}{report['text']}")
    for line in _figures(report, config):
        print(line)
    if args.check:
        agreed = ("every token, and the last position's logits read back, equal golden's "
                  "integer decoder" if args.mode == "resident"
                  else "every BitLinear and token equal golden")
        print("check: " + (agreed if report["checked"]
                           else f"MISMATCH: {report['first_mismatch']}"))
    if args.json:
        print(json.dumps({"backend": args.backend, **report}))
    return 0 if report.get("checked") is not False else 1


def _mode(args, config, model_config):
    """Resident where the preset has the resident units and the model fits them (asked for, a
    model that does not fit is refused in one line); offload otherwise."""
    from hw.placement import MappingError, resident_fit

    try:
        resident_fit(config, model_config)
    except MappingError as error:
        if args.mode == "resident":
            raise UserError(f"--mode resident: {error}") from None
        if args.mode is None and config.resident is not None:
            progress(f"offload mode: the model does not fit the resident units ({error})")
        return "offload"
    return args.mode or "resident"


def _bigger(args):
    """A hint at a preset whose banks are bigger, unless it is the one used."""
    return "" if (args.preset or RUN_PRESET) == RUN_PRESET else f"; try --preset {RUN_PRESET}"


def _figures(report, config):
    """The run's figures, prefill and decode apart, each projection with what it assumes."""
    yield (f"prefill  {report['prefill_tokens']} tokens: {report['prefill_cycles']:,} device "
           f"cycles, {report['prefill_wall_s']:.2f} s wall ({report['mode']} mode)")
    if report["cycles_per_token"] is None:
        yield "decode   none (one token: the prefill gives it)"
        return
    words = report["link_words_per_token"]
    yield (f"decode   {report['decode_tokens']} tokens: {report['cycles_per_token']:,.0f} "
           f"device cycles a token, {report['decode_tokens_per_s']:.2f} tokens/s wall "
           f"({report['sim_cycles_per_s']:,.0f} device cycles/s simulated)")
    yield (f"         device-bound {report['device_tokens_per_s']:,.0f} tokens/s at "
           f"{config.clock_mhz:g} MHz; link-bound {report['link_tokens_per_s']:,.2f} tokens/s "
           f"({words['to_device']:,.0f} words to the device and {words['from_device']:,.0f} "
           f"back a token; {report['link']})")
    yield (f"         bank bound {report['bank_bound_cycles_per_token']:,.0f} cycles a token: "
           f"{report['bank_bound_fraction']:.1%} of it reached")


def _load(source, load_model):
    from ..checkpoint import CheckpointError

    try:
        return load_model(source)
    except (CheckpointError, OSError) as error:
        raise UserError(f"cannot load model {source!r}: {error}") from None


def _generate(args, transport, config, model_config, weights, prompt, **measure):
    """``bittern run``'s generation through ``transport`` in ``args.mode``; ``measure`` goes
    to the run (``sim_cycles``)."""
    from ..run import run, run_resident
    from ..tokenizer import decode

    common = dict(check=args.check, decode=decode, progress=progress, baud=args.baud, **measure)
    if args.mode == "resident":
        return run_resident(transport, config, model_config, weights, prompt, args.tokens,
                            **common)
    return run(transport, config, model_config, weights, prompt, args.tokens,
               prefill=args.prefill, **common)


def _run_behavioural(args, config, model_config, weights, prompt):
    from ..behavioural import BehaviouralTransport

    return _generate(args, BehaviouralTransport(config), config, model_config, weights,
                     prompt).to_dict()


def _run_serial(args, config, model_config, weights, prompt):
    import serial

    from ..driver import DeviceError
    from ..serial_link import SerialTransport

    try:
        transport = SerialTransport.open(args.port, baud=args.baud)
    except (serial.SerialException, ValueError) as error:
        raise UserError(f"cannot open {args.port} at {args.baud} baud: {error}") from None
    try:
        result = _generate(args, transport, config, model_config, weights, prompt)
    except DeviceError as error:
        raise UserError(f"{error} (board on {args.port}, preset "
                        f"{args.preset or RUN_PRESET})") from None
    finally:
        transport.close()
    return result.to_dict()


def _run_rtl(args, config, model_config, weights, prompt):
    from sim.harness import HarnessTransport, build

    from ..driver import DeviceError

    library = build(config, waves=args.waves, progress=progress).path
    trace = library.parent / "waves.vcd" if args.waves else None
    progress("running the model on the RTL (Verilator) ...")
    with HarnessTransport(library, trace=trace) as transport:
        try:
            result = _generate(args, transport, config, model_config, weights, prompt,
                               sim_cycles=transport.cycle)
        except DeviceError as error:
            raise UserError(f"the RTL run failed: {error}") from None
    if trace:
        progress(f"waves: {trace}")
    return result.to_dict()


def _check_numeric(args):
    """``--numeric integer`` generates on the host: it takes no device options."""
    if args.numeric != "integer":
        return
    if args.backend != "behavioural":
        raise UserError(f"--numeric integer runs the integer decoder on the host, without a "
                        f"device; drop --backend {args.backend}")
    if args.check:
        raise UserError("--check compares a device with golden/; --numeric integer runs no "
                        "device (its accuracy: bittern eval)")


def _run_integer(args, model_config, weights, prompt):
    from golden import IntegerModel

    from ..tokenizer import decode

    progress(f"integer decoder on the host: prefill {len(prompt)} tokens, then "
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
    from ..evaluate import evaluate
    from ..run import load_model

    if args.windows < 1:
        raise UserError(f"--windows must be at least 1, not {args.windows}")
    model_config, weights = _load(args.model, load_model)
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
        progress(f"{source} holds {windows} windows of {window_bytes} bytes, not "
                 f"{args.windows}: using {windows}")
    start = time.perf_counter()
    result = evaluate(model_config, weights, data, windows=windows, window_bytes=window_bytes,
                      progress=progress).to_dict()
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
        from ..models import corpus, split
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


def _backend(value):
    """``--backend``'s value: ``model``, the behavioural device's name before it was named for
    what it is, still selects it."""
    return "behavioural" if value == "model" else value


def add_commands(commands):
    """Register ``run`` and ``eval`` on ``commands`` (from ``add_subparsers``)."""
    from ..mapper import Schedule

    run = commands.add_parser("run", help="generate text with a model on the device")
    run.add_argument("--model", default="tiny", metavar="tiny|PATH",
                     help="the shipped tiny model, or a checkpoint (Bittern .safetensors, "
                          "Hugging Face BitNet directory, GGUF)")
    run.add_argument("--prompt", default="The ", help="prompt text")
    run.add_argument("--tokens", type=int, default=16, help="tokens to generate (default 16)")
    run.add_argument("--backend", type=_backend, choices=["behavioural", "rtl", "serial"],
                     default="behavioural",
                     help="the behavioural device (fast, cycle-counted; 'model' is an alias), "
                          "the RTL on Verilator, or a board on a serial port (bittern synth's "
                          "bitstream)")
    run.add_argument("--port", metavar="DEVICE",
                     help="serial backend: the board's port, e.g. /dev/ttyUSB0")
    run.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                     help=f"the board link's line rate: the serial backend's, and the link-bound "
                          f"projection's (bittern synth --baud; default {DEFAULT_BAUD})")
    run.add_argument("--check", action="store_true",
                     help="compare every BitLinear result and token with golden/")
    run.add_argument("--mode", choices=["resident", "offload"], default=None,
                     help="resident: the whole decoder on the device (the model loaded once, "
                          "GENERATE); offload: the host runs all but the BitLinears (default: "
                          "resident where the preset has the units and the model fits them)")
    run.add_argument("--prefill", choices=Schedule.PREFILL, default="auto",
                     help="where the prompt's BitLinears run: the faster unit by the command "
                          "timing (default), the banks token by token, or the array")
    run.add_argument("--numeric", choices=["float", "integer"], default="float",
                     help="float: the host's float steps around the device's BitLinears "
                          "(default); integer: golden's integer decoder on the host, no device")
    run.add_argument("--waves", action="store_true", help="dump a VCD (rtl backend)")
    run.add_argument("--json", action="store_true", help="end the output with one JSON object")
    add_config_options(run, default=RUN_PRESET)
    run.set_defaults(handler=cmd_run)

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
