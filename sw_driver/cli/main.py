"""The ``bittern`` parser and entry point: one place turns errors into exit statuses."""

import argparse
import sys

from .common import UserError

__all__ = ["build_parser", "main"]


def _user_mistakes():
    """The exceptions that report a user's mistake (status 2), wherever they are raised."""
    from hw.boards import BoardError
    from hw.config import ConfigError
    from hw.placement import MappingError

    from ..checkpoint import CheckpointError
    from ..flow import ToolMissing

    return (UserError, ConfigError, BoardError, ToolMissing, CheckpointError, MappingError)


class _Version(argparse.Action):
    """``--version``: the generator's version and commit (looked up only when asked)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from ..interface import generator_version

        print(f"bittern {generator_version()['describe']}")
        parser.exit()


def build_parser():
    from . import formal, hardware, inference, perf, synthesis

    parser = argparse.ArgumentParser(
        prog="bittern", description="Ternary (BitNet b1.58) accelerator generator.")
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (hardware, synthesis, formal, inference, perf):
        module.add_commands(commands)
    return parser


def _abandon_designs():
    """Keep quiet about the designs a stopped command leaves half elaborated: at exit Amaranth
    warns of every component built and never used (UnusedElaboratable), hundreds of lines for
    a big array, after the one line that says why the command stopped.

    A warnings filter is not enough: an interrupt that lands inside a component's constructor
    leaves an object whose finaliser fails before it reaches the warning. So this turns back
    on the class-wide silence Amaranth keeps until elaboration starts, which every finaliser
    checks first."""
    if "amaranth" in sys.modules:
        from amaranth.hdl import UnusedElaboratable

        UnusedElaboratable._MustUse__silence = True


def main(argv=None):
    """Run the command line; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except KeyboardInterrupt:
        _abandon_designs()
        print("bittern: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        from ..flow import ToolError

        _abandon_designs()

        if isinstance(error, _user_mistakes()):
            print(f"bittern: error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, ToolError):
            print(f"bittern: error: {error}", file=sys.stderr)
            return 1
        raise
