"""Instruments as plug-ins: one package per ESO pipeline cpldask can reduce with.

``cpldask/instruments/<name>/`` holds

* ``rules.yaml`` — which file is what (classification), which calibration goes with
  which exposure (association), the unit axis, the workflow's settings and its final
  products (read by :mod:`cpldask.workflow.classify`);
* ``workflow.py`` — a function ``workflow(plan, association, *, flux=None)`` that lays
  out the recipe calls on a :class:`cpldask.workflow.Plan` (named by the rules'
  ``workflow.function``);
* ``synthetic.py`` — raw frames the real recipes accept, for tests and the demo;
* ``checks.py`` (optional) — ``check_raw(recipe, params, tag, path, hdus)``, run on
  the client for each raw file of a call of one of the instrument's recipes (ESO
  names them ``<instrument>_...``: ``muse_bias``, ``hawki_cal_dark``) before it is
  submitted.

Adding an instrument adds a package here and touches no engine or workflow file.
This module imports nothing of cpldask (an instrument's checks are imported when a
call of its recipes is first made).

>>> from cpldask import instruments
>>> instruments.names()
['hawki', 'muse']
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
from collections.abc import Callable
from importlib.resources.abc import Traversable

__all__ = ["names", "rules_file", "raw_frame_check"]


def names() -> list[str]:
    """The instruments shipped with cpldask (packages here with a ``rules.yaml``)."""
    root = importlib.resources.files(__name__)
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (p / "rules.yaml").is_file())


def rules_file(name: str) -> Traversable:
    """The rules file of instrument ``name`` (``'muse'``, ``'hawki'``; any case).

    Raises
    ------
    ValueError
        No instrument of that name is shipped; the message lists those that are.
    """
    path = importlib.resources.files(__name__) / str(name).lower() / "rules.yaml"
    if not path.is_file():
        raise ValueError(f"no instrument named {name!r}; shipped: {', '.join(names())}; "
                         f"or give the path of a rules YAML file")
    return path


@functools.lru_cache(maxsize=512)  # one entry per recipe name a session uses
def raw_frame_check(recipe: str) -> Callable | None:
    """The ``check_raw`` of the instrument whose recipes are named ``<name>_...``
    (``muse_bias``: MUSE's), or None when that instrument has no checks."""
    name = recipe.split("_", 1)[0].lower()
    if "_" not in recipe or name not in names():
        return None
    try:
        module = importlib.import_module(f"{__name__}.{name}.checks")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}.checks":
            raise
        return None
    return module.check_raw
