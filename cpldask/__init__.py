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
# needs neither must import without them — a worker unpickling cpldask.worker.task,
# cpldask.cluster.job_script(), the rules and the workflow, the tests of the fast tier
# (tests/conftest.py). ``from cpldask import Recipe`` works as before.
# ``cpldask.reduce`` is the function cpldask.workflow.reduce (the workflow layer is the
# package cpldask.workflow).
# name -> "module" (the name is that module) or "module:attribute"
_LAZY = {
    # python-cpl's names
    "Recipe": ".recipe:Recipe",
    "Parameter": "cpl.param:Parameter",
    "Result": ".result:Result",
    "esorex": ".esorex",
    "dfs": ".dfs",
    "logger": "cpl.logger",
    "cpl_versions": ".recipe:cpl_versions",
    "CplError": ".errors:CplError",
    "RecipeCrash": ".errors:RecipeCrash",
    # cpldask's own
    "RunRecord": "._spec:RunRecord",
    "RecipeTimeout": ".errors:RecipeTimeout",
    "NoProductsError": ".errors:NoProductsError",
    "InputError": ".errors:InputError",
    "get_client": "._cluster:get_client",
    "dashboard_link": "._cluster:dashboard_link",
    "close": "._cluster:close",
    "provenance": ".provenance",
    "progress": "._progress:progress",
    "reduce": ".workflow:reduce",
    "report": ".report",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module_name, _, attribute = _LAZY[name].partition(":")
    except KeyError:
        raise AttributeError(f"module 'cpldask' has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
