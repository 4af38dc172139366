"""``cpldask list`` and ``cpldask info``: what the recipes on the search path are.

Both read the recipe libraries on the client with python-cpl (through
:class:`cpldask.Recipe`); no cluster is started.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..recipe import Recipe
from ._inputs import bad_input

__all__ = ["list_recipes", "describe", "info"]


def list_recipes(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``cpldask list [--json]``: name, versions and synopsis of every recipe."""
    entries = []
    for name, versions in Recipe.list(path=args.recipe_path):
        try:
            synopsis = Recipe(name, path=args.recipe_path).description[0]
        except OSError as exc:  # a library that lists its recipe but fails to load
            synopsis = f"(cannot load: {exc})"
        entries.append({"name": name, "versions": versions, "synopsis": synopsis})
    path = Recipe.search_path(args.recipe_path)
    if args.json:
        out.print_json(json.dumps({"recipe_path": path, "recipes": entries}))
        return 0
    if not entries:
        err.print(f"cpldask: no recipes in {':'.join(path) or '(empty path)'}; set "
                  f"--recipe-path or DASK_CPLDASK__RECIPE_PATH", markup=False,
                  soft_wrap=True)
        return 0
    table = Table(title=Text(f"Recipes in {':'.join(path)}"), title_justify="left",
                  show_edge=False, header_style="bold")
    table.add_column("recipe", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("synopsis")
    for e in entries:
        table.add_row(e["name"], ", ".join(e["versions"]), Text(e["synopsis"]))
    out.print(table)
    return 0


def describe(recipe: Recipe) -> dict[str, Any]:
    """Everything ``info`` shows, as plain JSON-able data.

    Returns
    -------
    dict
        ``name``, ``version``, ``version_number``, ``file``, ``synopsis``,
        ``description``, ``author``, ``email``, ``parameters`` (name, fullname, type,
        default, range, enum, doc), ``raw_tags``, ``calib_tags`` (tag, min, max,
        required) and ``outputs`` (product tags by raw tag).
    """
    synopsis, description = recipe.description
    declared = recipe.tags is not None  # python-cpl knows the frame configuration
    return {
        "name": recipe.name,
        "version": recipe.version[1],
        "version_number": recipe.version[0],
        "file": recipe.__file__,
        "synopsis": synopsis,
        "description": description,
        "author": recipe.__author__,
        "email": recipe.__email__,
        "parameters": [_parameter(p) for p in recipe.param],
        "raw_tags": list(recipe.tags or []),
        "calib_tags": [{"tag": c.tag, "min": c.min, "max": c.max,
                        "required": bool(c.min)} for c in recipe.calib] if declared else [],
        "outputs": dict(recipe.output) if declared else {},
    }


def _parameter(par) -> dict[str, Any]:
    return {"name": par.name, "fullname": par.fullname, "type": par.type.__name__,
            "default": par.default,
            "range": list(par.range) if par.range else None,
            "enum": list(par.sequence) if par.sequence else None,
            "doc": _doc(par)}


def _doc(par) -> str:
    """The parameter's own description: python-cpl keeps it only inside a wrapped
    docstring ending in ``(type; default: value)``, which the table shows apart."""
    text = " ".join((par.__doc__ or "").split())
    tail = f" ({par.type.__name__}; default: {par.default!r})"
    return text[:-len(tail)] if text.endswith(tail) else text


def info(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``cpldask info RECIPE [--json]``: description, parameters, tags, outputs."""
    with bad_input():
        recipe = Recipe(args.recipe, path=args.recipe_path)
    data = describe(recipe)
    if args.json:
        out.print_json(json.dumps(data))
        return 0
    out.print(Text.assemble((data["name"], "bold"), f" {data['version']} — ",
                            data["synopsis"]), soft_wrap=True)
    out.print(Text(data["file"], "dim"), soft_wrap=True)
    out.print()
    for para in data["description"].split("\n"):
        out.print(Text(textwrap.fill(para, width=min(out.width, 100)) if para else ""))
    out.print()
    if data["raw_tags"]:
        tags = Table(show_edge=False, header_style="bold", box=None)
        tags.add_column("raw tag")
        tags.add_column("products")
        for tag in data["raw_tags"]:
            tags.add_row(tag, ", ".join(data["outputs"].get(tag, [])) or "-")
        out.print(tags)
        out.print()
    if data["calib_tags"]:
        calib = Table(show_edge=False, header_style="bold", box=None)
        calib.add_column("calibration tag")
        calib.add_column("frames")
        for c in data["calib_tags"]:
            calib.add_row(c["tag"], _count(c["min"], c["max"]))
        out.print(calib)
        out.print()
    # one block per parameter, as esorex's --man-page: descriptions run long
    out.print(Text("parameters", "bold"))
    width = min(out.width, 100) - 6
    for p in data["parameters"]:
        allowed = ("|".join(map(str, p["enum"])) if p["enum"] else
                   f"{p['range'][0]}..{p['range'][1]}" if p["range"] else "")
        details = f"{p['type']}, default {p['default']!r}" + (f", {allowed}" if allowed else "")
        out.print(Text.assemble("  ", (p["name"], "bold cyan"), f" ({details})"),
                  soft_wrap=True)
        out.print(Text(textwrap.indent(textwrap.fill(p["doc"], width), " " * 6)))
    return 0


def _count(minimum: int | None, maximum: int | None) -> str:
    """python-cpl's frame counts in words: ``1`` (required), ``0..1`` (optional)..."""
    low = minimum or 0
    high = "n" if maximum is None else str(maximum)
    span = str(low) if str(low) == high else f"{low}..{high}"
    return f"{span} ({'required' if low else 'optional'})"
