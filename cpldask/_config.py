"""Configuration: the ``cpldask.*`` keys of :mod:`dask.config`.

The defaults ship in ``cpldask.yaml`` beside this file, as dask-jobqueue does. Users
override them in ``~/.config/dask/``, with :func:`dask.config.set`, or with environment
variables (``DASK_CPLDASK__RECIPE_PATH=...``). This module is imported on workers too,
so it depends on nothing but dask.
"""

from __future__ import annotations

import getpass
import logging
import os
import pathlib
import tempfile

import dask.config
import dask.utils
import yaml

_DEFAULTS = pathlib.Path(__file__).with_name("cpldask.yaml")

with _DEFAULTS.open() as _f:
    dask.config.update_defaults(yaml.safe_load(_f))
dask.config.ensure_file(source=str(_DEFAULTS), comment=True)


def get(key: str, override=None):
    """Return ``override`` if it is not None, else the configured ``cpldask.<key>``."""
    return override if override is not None else dask.config.get(f"cpldask.{key}")


def split_path(path) -> list[str]:
    """Normalise a search path given as a list or a ``:``-separated string."""
    if path is None:
        return []
    if isinstance(path, (str, os.PathLike)):
        path = str(path).split(":")
    return [os.path.abspath(os.path.expanduser(str(p))) for p in path if str(p)]


def recipe_path() -> list[str]:
    """The configured recipe search path (``cpldask.recipe-path``), as absolute paths."""
    return split_path(get("recipe-path"))


def work_dir() -> pathlib.Path:
    """Directory for products of calls without ``output_dir``."""
    configured = get("work-dir")
    if configured:
        return pathlib.Path(configured).expanduser().absolute()
    return pathlib.Path(tempfile.gettempdir()) / f"cpldask-{getpass.getuser()}"


def cache_dir() -> pathlib.Path:
    """The product cache directory (``cpldask.cache.dir``)."""
    configured = get("cache.dir")
    if configured:
        return pathlib.Path(configured).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return pathlib.Path(base) / "cpldask"


def seconds(value) -> float | None:
    """A duration from config or a call (``"2 hours"``, ``90``) in seconds, or None."""
    return None if value is None else float(dask.utils.parse_timedelta(value, default="s"))


def nbytes(value) -> int | None:
    """A size from config or a call (``"8 GiB"``, ``2**30``) in bytes, or None."""
    if value is None:
        return None
    return int(value) if isinstance(value, (int, float)) else dask.utils.parse_bytes(value)


def log_level(key: str) -> int | None:
    """A logging level from the ``cpldask.<key>`` config key: a name (``INFO``), a
    number, or None (off).

    Raises
    ------
    ValueError
        The value is no level logging knows; the message lists the names.
    """
    value = get(key)
    if value is None or isinstance(value, int):
        return value
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        raise ValueError(f"cpldask.{key}: {value!r} is not a logging level; use DEBUG, "
                         f"INFO, WARNING, ERROR, CRITICAL, a number or null")
    return level
