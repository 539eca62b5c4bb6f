"""``bittern run``: a language model generating text through a device."""

import json

from hw.uart import DEFAULT_BAUD

from .common import UserError, add_config_options, config_from, progress

__all__ = ["add_commands"]

RUN_PRESET = "ulx3s-85f"        # the preset whose banks hold the shipped model


def cmd_run(args):
    from ..mapper import MappingError
    from ..run import load_model
    from ..tokenizer import encode

    config = config_from(args, RUN_PRESET)
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
    backends = {"behavioural": _run_behavioural, "rtl": _run_rtl, "serial": _run_serial}
    try:
        report = backends[args.backend](args, config, model_config, weights, prompt)
    except MappingError as error:
        raise UserError(f"{error}; try --preset {RUN_PRESET}") from None
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


def _load(source, load_model):
    from ..checkpoint import CheckpointError

    try:
        return load_model(source)
    except (CheckpointError, OSError) as error:
        raise UserError(f"cannot load model {source!r}: {error}") from None


def _run_behavioural(args, config, model_config, weights, prompt):
    from ..behavioural import BehaviouralTransport
    from ..run import run
    from ..tokenizer import decode

    result = run(BehaviouralTransport(config), config, model_config, weights, prompt,
                 args.tokens, check=args.check, decode=decode, progress=progress)
    return result.to_dict()


def _run_serial(args, config, model_config, weights, prompt):
    import serial

    from ..driver import DeviceError
    from ..run import run
    from ..serial_link import SerialTransport
    from ..tokenizer import decode

    try:
        transport = SerialTransport.open(args.port, baud=args.baud)
    except (serial.SerialException, ValueError) as error:
        raise UserError(f"cannot open {args.port} at {args.baud} baud: {error}") from None
    try:
        result = run(transport, config, model_config, weights, prompt, args.tokens,
                     check=args.check, decode=decode, progress=progress)
    except DeviceError as error:
        raise UserError(f"{error} (board on {args.port}, preset "
                        f"{args.preset or RUN_PRESET})") from None
    finally:
        transport.close()
    return result.to_dict()


def _run_rtl(args, config, model_config, weights, prompt):
    from hw.device import Device

    from .. import flow

    sim_build = flow.verilator_build(Device(config), unit="top", waves=args.waves,
                                     metadata={"config": config.to_dict()}, progress=progress)
    progress("running the model on the RTL (Verilator) ...")
    result = flow.verilator_run(sim_build, test_module="sim.run_tb", name="run", params={
        "config": config.to_dict(), "model": args.model, "prompt_tokens": prompt,
        "tokens": args.tokens, "check": args.check})
    if not result.report:
        raise UserError(f"the RTL run did not finish: {'; '.join(result.failures)}; "
                        f"see {result.log}")
    return result.report


def _backend(value):
    """``--backend``'s value: ``model``, the behavioural device's name before it was named for
    what it is, still selects it."""
    return "behavioural" if value == "model" else value


def add_commands(commands):
    """Register ``run`` on ``commands`` (from ``add_subparsers``)."""
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
                     help=f"serial backend: line rate the bitstream was built for "
                          f"(bittern synth --baud; default {DEFAULT_BAUD})")
    run.add_argument("--check", action="store_true",
                     help="compare every BitLinear result and token with golden/")
    run.add_argument("--waves", action="store_true", help="dump a VCD (rtl backend)")
    run.add_argument("--json", action="store_true", help="end the output with one JSON object")
    add_config_options(run, default=RUN_PRESET)
    run.set_defaults(handler=cmd_run)
