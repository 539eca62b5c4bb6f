"""What every ``bittern`` command shares: the user-mistake error, the progress printer and the
configuration options."""

import sys
import time

__all__ = ["UserError", "progress", "config_from", "add_config_options"]


class UserError(Exception):
    """A mistake in what the user asked for; reported as one line, no traceback."""


def progress(message):
    """The command line's progress printer: one timestamped line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def config_from(args, default_preset="default"):
    """The configuration ``--preset`` and ``--set`` ask for."""
    from hw.config import apply_overrides, preset

    return apply_overrides(preset(args.preset or default_preset), args.set)


def add_config_options(parser, default="default"):
    """``--preset`` and ``--set``; ``default`` names the preset used without ``--preset``."""
    from hw.config import PRESETS

    parser.add_argument("--preset", metavar="NAME",
                        help=f"configuration preset ({', '.join(PRESETS)}); default: {default}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. rows=3 or pim.lanes=32 "
                             "(repeatable)")
