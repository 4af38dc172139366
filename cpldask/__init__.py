"""cpldask: ESO CPL pipeline recipes on Dask, with python-cpl's interface.

>>> import cpldask as cpl
>>> muse_bias = cpl.Recipe('muse_bias', threaded=True)
>>> res = muse_bias(['bias1.fits', 'bias2.fits', 'bias3.fits'], param={'nifu': 1})
>>> res.MASTER_BIAS.writeto('master_bias.fits')   # waits for the worker
"""

from . import _config  # noqa: F401  (loads the cpldask.* defaults into dask.config)
from . import provenance
from ._cluster import close, dashboard_link, get_client
from ._spec import RunRecord
from .errors import CplError, InputError, NoProductsError, RecipeCrash, RecipeTimeout
from .recipe import Recipe
from .result import Result

__version__ = "0.1.0"

__all__ = [
    "Recipe",
    "Result",
    "RunRecord",
    "CplError",
    "RecipeCrash",
    "RecipeTimeout",
    "NoProductsError",
    "InputError",
    "get_client",
    "dashboard_link",
    "close",
    "provenance",
]
