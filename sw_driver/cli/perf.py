"""``bittern perf``: a run's cycles, link words, bounds and energy, without simulating it."""

import json

from hw.uart import DEFAULT_BAUD

from .common import UserError, add_config_options, config_from

__all__ = ["add_commands"]

def cmd_perf(args):
    from golden import BITNET_B158_2B4T

    from ..mapper import MappingError
    from ..perf import perf
    from ..run import load_model
    from .inference import RUN_PRESET, _bigger, _load

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
    try:
        result = perf(config, model_config, prompt_tokens=args.prompt_tokens,
                      tokens=args.tokens, prefill=args.prefill, baud=args.baud,
                      weights=weights).to_dict()
    except MappingError as error:
        raise UserError(f"{error}{_bigger(args)}") from None
    for line in _report(result, config, args):
        print(line)
    if args.json:
        print(json.dumps(result))
    return 0


def _report(result, config, args):
    units = ", ".join(f"{group} on the {unit}" for group, unit in result["prefill_unit"].items())
    yield (f"{args.model} on preset {args.preset or 'ulx3s-85f'}, offload mode, "
           f"{result['prefill_tokens']} prompt tokens then {result['decode_tokens']} more")
    yield f"prefill  {result['prefill_cycles']:,} cycles ({units})"
    if result["cycles_per_token"] is None:
        return
    yield (f"decode   {result['cycles_per_token']:,} cycles a token: device-bound "
           f"{result['device_tokens_per_s']:,.0f} tokens/s at {config.clock_mhz:g} MHz, "
           f"link-bound {result['link_tokens_per_s']:,.2f} tokens/s ({result['link']})")
    words = result["link_words"]
    yield (f"         {words['to_device']:,} words to the device, {words['from_device']:,} back "
           f"a token ({4 * (words['to_device'] + words['from_device']):,} bytes); bank bound "
           f"{result['bank_bound_cycles_per_token']:,.0f} cycles, "
           f"{result['bank_bound_fraction']:.1%} reached")
    for layer in result["per_layer"]:
        yield (f"layer {layer['layer']:>3}  prefill {layer['prefill_cycles']:>9,}  decode "
               f"{layer['decode_cycles']:>7,} cycles  {layer['energy_nj']:>10,.1f} nJ a token")
    energy = result["energy"]
    parts = ", ".join(f"{op} {nj:,.1f}" for op, nj in energy["asic_45nm_nj"].items())
    yield (f"energy   {result['energy_per_token_nj']:,.1f} nJ a token: 45 nm figures ({parts} "
           f"nJ) x {energy['fpga_factor']:g} for an FPGA; zero trits "
           f"{result['zero_fraction']:.1%} (docs/design.md, Metrics)")


def add_commands(commands):
    """Register ``perf`` on ``commands`` (from ``add_subparsers``)."""
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
    parser.add_argument("--prefill", choices=Schedule.PREFILL, default="auto",
                        help="where the prompt's BitLinears run (as bittern run)")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help=f"the board link's line rate (default {DEFAULT_BAUD})")
    parser.add_argument("--json", action="store_true", help="end with one JSON object")
    add_config_options(parser, default="ulx3s-85f")
    parser.set_defaults(handler=cmd_perf)
