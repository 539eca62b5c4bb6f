"""``bittern``: the command line of the generator, the simulator, the tool flow and the driver.

This package is the one place that may import both :mod:`sim` (the testbenches) and the rest of
:mod:`sw_driver`; everything else keeps to the layering ``golden <- hw <- (sw_driver, sim)``.

What a user sees: a mistake (unknown preset, bad ``--set``, bad file, a missing tool) prints
one ``bittern: error: ...`` line and exits with status 2; a failed check, a failed tool run or
a missed clock exits with 1; Ctrl-C prints one line and exits with 130. Long steps report
progress on stderr, timestamped, and say they are still alive when they take long.
"""

from .main import main

__all__ = ["main"]
