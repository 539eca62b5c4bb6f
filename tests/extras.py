"""Modules that tests import from an optional extra of ``pyproject.toml``.

Where the extra is not installed, such a test skips and names it. ``BITTERN_EXTRAS`` lists the
extras a run has installed (``make test`` sets it); there a module that does not import fails the
test instead, so that a broken install cannot pass as a skip.
"""

import importlib
import os

import pytest

__all__ = ["require"]


def require(module, *, extra):
    """``module`` imported; if it does not import, a skip, or a failure where ``extra`` is listed
    in ``BITTERN_EXTRAS``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        problem = error
    if extra in os.environ.get("BITTERN_EXTRAS", "").split():
        pytest.fail(f"{module} does not import although this run installs the {extra} extra: "
                    f"{problem}", pytrace=False)
    pytest.skip(f"{module} is not installed (pip install -e '.[{extra}]')")
