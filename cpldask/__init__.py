"""cpldask: ESO CPL pipeline recipes on Dask, with python-cpl's interface.

>>> import cpldask as cpl
>>> muse_bias = cpl.Recipe('muse_bias', threaded=True)
>>> res = muse_bias(['bias1.fits', 'bias2.fits', 'bias3.fits'], param={'nifu': 1})
>>> res.MASTER_BIAS.writeto('master_bias.fits')   # waits for the worker
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _config  # noqa: F401  (loads the cpldask.* defaults into dask.config)

#: the one place the version is written (pyproject.toml reads it from here)
__version__ = "0.1.0"

# The public names are imported on first use (PEP 562), not by ``import cpldask``:
# recipe.py and errors.py import python-cpl, _cluster.py distributed, and code that
# needs neither must import without them — a worker unpickling cpldask._execute,
# cpldask.cluster.job_script(), the rules and the workflow, the tests of the fast tier
# (docs: tests in two tiers). ``from cpldask import Recipe`` works as before.
_LAZY = {
    "Recipe": ".recipe",
    "Result": ".result",
    "RunRecord": "._spec",
    "CplError": ".errors",
    "RecipeCrash": ".errors",
    "RecipeTimeout": ".errors",
    "NoProductsError": ".errors",
    "InputError": ".errors",
    "get_client": "._cluster",
    "dashboard_link": "._cluster",
    "close": "._cluster",
    "provenance": ".provenance",  # a module
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module = importlib.import_module(_LAZY[name], __name__)
    except KeyError:
        raise AttributeError(f"module 'cpldask' has no attribute {name!r}") from None
    value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
