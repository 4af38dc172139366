"""Provenance: how a product was made, and how to make it again.

* :func:`record` gives a call's provenance record (also ``Result.provenance`` and the
  ``*.provenance.json`` file beside products in an ``output_dir``).
* :func:`to_prov` exports the records of a whole graph as W3C PROV-JSON, and
  :func:`replay_script` writes a Python script that repeats the calls in order.
* :func:`from_product` reads the ``ESO PRO REC`` keywords any CPL recipe writes into
  its products (python-cpl's :class:`cpl.dfs.ProcessingInfo`) and re-creates the call.
* :func:`installed` lists the calls whose products are intact in an ``output_dir``,
  and :func:`same_call` says whether such a record is of a given call: what a
  reduction run again reuses (``cpldask reduce --dry-run`` shows it).
"""

from __future__ import annotations

import datetime
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Iterable

from . import _cache, _hashing

if TYPE_CHECKING:
    from .recipe import Recipe
    from .result import Result

__all__ = ["record", "to_prov", "replay_script", "from_product", "installed", "same_call"]


def record(result: Result) -> dict:
    """The provenance record of a finished call (waits for it).

    Keys: recipe, recipe_version, cpl_version, params (every parameter, defaults
    included), inputs (tag, path, and hash: the xxh3-128 of the file's bytes; for a
    product of another call, from: that call's key, product, and the DATAMD5 of each
    file), env, key (the content key, see docs/cache.md), hash (the algorithm),
    cache_hit, run (host, worker, start, end, wall/user/sys time, max_rss,
    return_code), products.

    Examples
    --------
    >>> res = muse_bias(bias_files, param={'nifu': 1})
    >>> prov = cpldask.provenance.record(res)
    >>> prov['params']['muse.muse_bias.combine'], prov['cache_hit']
    ('sigclip', False)
    """
    return result.provenance


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def to_prov(results: Iterable[Result]) -> dict:
    """W3C PROV-JSON of a set of calls: files are entities (identified by the xxh3-128
    hash of their bytes), recipe runs are activities, with ``used`` and
    ``wasGeneratedBy`` relations."""
    doc = {"prefix": {"cpldask": "urn:cpldask:", "file": "urn:xxh3-128:"},
           "entity": {}, "activity": {}, "used": {}, "wasGeneratedBy": {}}
    for res in results:
        prov = record(res)
        run = f"cpldask:{prov['key']}"
        doc["activity"][run] = {
            "prov:label": prov["recipe"], "prov:startTime": _iso(prov["run"]["start"]),
            "prov:endTime": _iso(prov["run"]["end"]),
            "cpldask:recipe_version": prov["recipe_version"],
            "cpldask:cpl_version": prov["cpl_version"],
            "cpldask:params": prov["params"], "cpldask:host": prov["run"]["host"],
            "cpldask:cache_hit": prov["cache_hit"]}
        for i, inp in enumerate(prov["inputs"]):
            paths = inp["path"] if isinstance(inp["path"], list) else [inp["path"]]
            for path, digest in zip(paths, _input_hashes(inp)):
                ent = f"file:{digest}"
                doc["entity"].setdefault(ent, {"prov:label": path, "cpldask:tag": inp["tag"]})
                doc["used"][f"cpldask:used-{prov['key']}-{i}-{digest}"] = {
                    "prov:activity": run, "prov:entity": ent, "prov:role": inp["tag"]}
        for tag, path in prov["products"]:
            digest = _hash_of(path)
            ent = f"file:{digest}"
            doc["entity"][ent] = {"prov:label": path, "cpldask:tag": tag}
            doc["wasGeneratedBy"][f"cpldask:gen-{prov['key']}-{digest}"] = {
                "prov:entity": ent, "prov:activity": run}
    return doc


def _hash_of(path: str) -> str:
    """The content hash of a file (it names the file as a PROV entity)."""
    # imported here: _call needs python-cpl, and a dry run (Reduction.reused, which
    # reads the records) must work without it
    from . import _call

    return _call._checksum(path)


def _input_hashes(inp: dict) -> list[str]:
    """The content hashes of an input's files: recorded by the worker for a file,
    read here for products of other calls (which the record names by their key)."""
    recorded = inp.get("hash")
    if recorded is not None:
        return recorded if isinstance(recorded, list) else [recorded]
    paths = inp["path"] if isinstance(inp["path"], list) else [inp["path"]]
    return [_hash_of(p) for p in paths]


def replay_script(results: Iterable[Result]) -> str:
    """A Python script that repeats the calls, in an order that respects their
    dependencies (a call that used another's product comes after it)."""
    records = [record(r) for r in results]
    made_by = {}  # content hash of a product -> index of the record that made it
    for i, prov in enumerate(records):
        for _, path in prov["products"]:
            made_by[_hash_of(path)] = i
    order, seen = [], set()

    def visit(i):
        if i in seen:
            return
        seen.add(i)
        for inp in records[i]["inputs"]:
            for digest in _input_hashes(inp):
                if digest in made_by:
                    visit(made_by[digest])
        order.append(i)

    for i in range(len(records)):
        visit(i)
    lines = ["# Replays a cpldask reduction, written by cpldask.provenance.replay_script",
             "import cpldask", ""]
    for n, i in enumerate(order):
        prov = records[i]
        frames: dict[str, list[str]] = {}
        for inp in prov["inputs"]:
            paths = inp["path"] if isinstance(inp["path"], list) else [inp["path"]]
            frames.setdefault(inp["tag"], []).extend(paths)
        from .recipe import Recipe

        recipe = Recipe(prov["recipe"])
        raw_tags = [t for t in frames if recipe.tags is None or t in recipe.tags]
        raw = {t: frames[t] for t in raw_tags}
        calib = {t: v for t, v in frames.items() if t not in raw_tags}
        params = {k.rsplit(".", 1)[-1]: v for k, v in prov["params"].items()
                  if recipe.param[k].default != v}
        out = os.path.dirname(prov["products"][0][1]) if prov["products"] else None
        lines += [f"# {prov['recipe']} {prov['recipe_version']} (CPL {prov['cpl_version']}),"
                  f" first run on {prov['run']['host']} at {_iso(prov['run']['start'])}",
                  f"res{n} = cpldask.Recipe({prov['recipe']!r})({raw!r},",
                  f"    param={params!r},", f"    calib={calib!r},",
                  f"    output_dir={out!r})", ""]
    return "\n".join(lines)


def from_product(path: str | os.PathLike, *, search: Iterable[str] = ()) -> tuple[Recipe, dict]:
    """Re-create the call that made a CPL product, from its ``ESO PRO REC`` header.

    Parameters
    ----------
    path : path
        A product of any CPL recipe.
    search : directories, optional
        Where to look for the input files (the header has their names only); the
        product's own directory is always searched first.

    Returns
    -------
    (Recipe, raw)
        The recipe with the product's parameters and calibration frames set, and the
        raw frames by tag: ``recipe(raw)`` runs the call again.

    Examples
    --------
    >>> recipe, raw = cpldask.provenance.from_product('MASTER_BIAS.fits', search=['raw'])
    >>> res = recipe(raw)
    """
    from cpl.dfs import ProcessingInfo

    info = ProcessingInfo(str(path))
    dirs = [pathlib.Path(path).parent, *map(pathlib.Path, search)]

    def find(name: str) -> str:
        for d in dirs:
            if (d / name).exists():
                return str(d / name)
        raise FileNotFoundError(f"{info.name} input {name!r} (named in the header of "
                                f"{path}) is in none of {[str(d) for d in dirs]}; pass "
                                f"search=[...] with its directory")

    def resolve(value):
        return [find(v) for v in value] if isinstance(value, list) else find(value)

    from .recipe import Recipe

    recipe = Recipe(info.name)
    for name, value in info.param.items():
        recipe.param[name] = value
    recipe.calib = {tag: resolve(v) for tag, v in info.calib.items()}
    recipe.tag = info.tag
    raw = resolve(info.raw if isinstance(info.raw, list) else [info.raw])
    return recipe, {info.tag: raw}


def installed(output_dir: str | os.PathLike) -> list[dict]:
    """The provenance records of the calls whose products are in ``output_dir`` and
    intact: every product there with the size and content hash its record gives
    (``products``: (tag, path) pairs in ``output_dir``). Records of products changed
    or removed since, or written before cpldask recorded sizes and hashes, are left
    out.

    Examples
    --------
    >>> [r["recipe"] for r in installed("reduced/muse_bias/ifu01")]   # doctest: +SKIP
    ['muse_bias']
    """
    return [{**rec, "products": pairs} for rec, pairs in _cache.installed(output_dir)]


def same_call(record: Mapping, recipe: str, *, param: Mapping[str, Any],
              inputs: Sequence[tuple[str, Any]], env: Mapping[str, str] | None = None) -> bool:
    """Whether ``record`` is of a call of ``recipe`` with the parameters ``param`` (by
    short name; those not given as the record has them), the environment ``env`` and
    the ``inputs``: (tag, path) for a file, the same path with the same bytes now, or
    (tag, {"key": k}) for a product of an upstream call of content key ``k``.

    What the client can see: the worker also compares the recipe library and every
    parameter's default (the content key) before it serves a call's products.

    Examples
    --------
    >>> rec = installed("reduced/muse_bias/ifu01")[0]                       # doctest: +SKIP
    >>> same_call(rec, "muse_bias", param={"nifu": 1},
    ...           inputs=[("BIAS", p) for p in bias_files])                 # doctest: +SKIP
    True
    """
    if record.get("recipe") != recipe or dict(record.get("env") or {}) != dict(env or {}):
        return False
    params = record.get("params") or {}
    for name, value in param.items():
        have = [v for k, v in params.items() if k == name or k.endswith("." + name)]
        if not have or have[0] != value:
            return False
    files = [str(i) for _, i in inputs if not isinstance(i, Mapping)]
    try:
        hashes = iter(_hashing.file_hashes(files))
    except OSError:
        return False
    want = []
    for tag, item in inputs:
        if isinstance(item, Mapping):
            want.append((tag, "from", str(item["key"])))
        else:
            want.append((tag, os.path.abspath(str(item)), next(hashes)))
    have = []
    for entry in record.get("inputs") or []:
        if "from" in entry:
            have.append((entry.get("tag"), "from", str(entry["from"])))
        else:
            have.append((entry.get("tag"), os.path.abspath(str(entry.get("path"))),
                         entry.get("hash")))
    return sorted(want, key=repr) == sorted(have, key=repr)
