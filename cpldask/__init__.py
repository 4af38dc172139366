"""cpldask: ESO CPL pipeline recipes on Dask, with python-cpl's interface.

>>> import cpldask as cpl
>>> muse_bias = cpl.Recipe('muse_bias', threaded=True)
>>> res = muse_bias(['bias1.fits', 'bias2.fits', 'bias3.fits'], param={'nifu': 1})
>>> res.MASTER_BIAS.writeto('master_bias.fits')   # waits for the worker
"""

from cpl import logger
from cpl.param import Parameter

from . import _config  # noqa: F401  (loads the cpldask.* defaults into dask.config)
from . import dfs, esorex, provenance
from ._cluster import close, dashboard_link, get_client
from ._spec import RunRecord
from .errors import CplError, InputError, NoProductsError, RecipeCrash, RecipeTimeout
from .recipe import Recipe, cpl_versions
from .result import Result

__version__ = "0.1.0"

__all__ = [
    # python-cpl's names
    "Recipe",
    "Parameter",
    "Result",
    "esorex",
    "dfs",
    "logger",
    "cpl_versions",
    "CplError",
    "RecipeCrash",
    # cpldask's own
    "RunRecord",
    "RecipeTimeout",
    "NoProductsError",
    "InputError",
    "get_client",
    "dashboard_link",
    "close",
    "provenance",
]
