"""Worker side: a call's directories, and its products moved into ``output_dir``.

* :func:`hold` locks a call directory for the life of the call; :func:`prune` removes
  those left by interrupted runs and, in the work directory, old finished ones.
* :func:`collect` lists what the recipe wrote; :func:`install_products` moves it into
  ``output_dir`` only once the recipe has succeeded, without ever overwriting a
  product of a call that ran at the same time, with the provenance beside it.

Imports nothing from the client side (see :mod:`cpldask.worker`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import shutil
import threading
import time

from .. import _cache, _fitsheader, _hashing, errors
from .._spec import CallSpec, Product


#: call directories in .cpldask-tmp younger than this are never taken for stale
STALE_AFTER = 60.0


TMP = ".cpldask-tmp"


#: in-memory input frames written by this worker, in the work directory
INPUTS = "inputs"


LOCK = ".cpldask.lock"


def datamd5(path: str) -> str | None:
    return _fitsheader.summary(path)[0].get("DATAMD5")


def product_of(tag: str, path: pathlib.Path) -> Product:
    """A product file as the RunRecord describes it: path, size, header values, HDUs."""
    return Product(tag, str(path), path.stat().st_size, *_fitsheader.summary(str(path)))


def disk_full(path: pathlib.Path) -> bool:
    """Whether the filesystem of ``path`` is (nearly) full: a recipe that failed there
    most likely failed for that reason, which its own error rarely says."""
    usage = shutil.disk_usage(path)
    return usage.free < min(64 * 2**20, 0.01 * usage.total)


def collect(spec: CallSpec, report: dict, call_dir: pathlib.Path) -> list[Product]:
    products = []
    for tag, name in report["products"]:
        path = call_dir / name
        if not path.exists():
            continue
        products.append(product_of(tag, path))
    if spec.expect and not products:
        raise errors.NoProductsError(spec.recipe, spec.expect, errors.loglist(report["log"]))
    return products


def _same_bytes(dest: pathlib.Path, info: dict) -> bool:
    """Whether ``dest`` holds exactly the product described by ``info`` (size, hash).

    A lost result recomputed from the cache (its worker was killed) installs the very
    bytes it installed before: the result then points at that file again instead of
    a numbered copy of it (the report and python-cpl users see one product). A
    product of another call, or a re-run of the recipe (other DATE keywords), differs.
    """
    try:
        return (dest.stat().st_size == info["size"]
                and _hashing.file_hash(str(dest)) == info["hash"])
    except OSError:
        return False


def install_products(products: list[Product], output_dir: pathlib.Path, since: float, *,
             provenance: dict) -> list[Product]:
    """Move finished products into ``output_dir``.

    A product replaces a file of the same name only if that file was installed before
    this call was made (``since``; python-cpl's documented overwrite by a later call).
    A file installed after that belongs to a concurrent call: this product then gets a
    numbered name instead, so every result keeps pointing at its own bytes, unless
    that file holds these very bytes already (:func:`_same_bytes`). The
    directory lock makes the check and the rename one step for all writers.
    """
    # each product's size and hash go into the record, so that a run of the same call
    # finds them intact (or not) before it runs the recipe (_cache.installed); hashed
    # here, outside the directory lock (a rename keeps the bytes)
    info = _cache.describe_files([p.path for p in products])
    installed = []
    with open(output_dir / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for p in products:
            src = pathlib.Path(p.path)
            dest = output_dir / src.name
            n, same = 0, False
            while dest.exists() and dest.stat().st_mtime >= since:
                same = _same_bytes(dest, info[src.name])
                if same:  # this very product already (see _same_bytes): no copy
                    break
                n += 1
                dest = output_dir / f"{src.stem}-{n}{src.suffix}"
            if same:
                src.unlink()
            else:
                os.replace(src, dest)
                now = time.time()
                os.utime(dest, (now, now))  # the install time tells later calls who came first
            installed.append(dataclasses.replace(p, path=str(dest)))
        if installed:  # the provenance record lives beside the products
            stem = pathlib.Path(installed[0].path).stem
            files = {os.path.basename(new.path): info[os.path.basename(old.path)]
                     for old, new in zip(products, installed)}
            prov = {**provenance, "products": [(p.tag, p.path) for p in installed],
                    "files": files, "hash": _hashing.ALGORITHM}
            (output_dir / f"{stem}.provenance.json").write_text(
                json.dumps(prov, indent=1, default=str))
    return installed


def hold(call_dir: pathlib.Path):
    """Lock a call directory for the life of the call (see :func:`prune`)."""
    f = open(call_dir / ".cpldask-lock", "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


#: base directory -> when this process last pruned it
_pruned: dict[str, float] = {}


_prune_lock = threading.Lock()


def prune(base: pathlib.Path, max_age: float | None) -> None:
    """Remove call directories left by interrupted runs (their lock is free) and,
    in the work directory, finished ones older than ``max_age``.

    At most once per ``STALE_AFTER`` per directory and worker process: a directory
    younger than that is never stale, and listing thousands of call directories on
    every call made a long batch quadratic. In a thread of its own: going through
    20 000 call directories takes 0.43 s on a quiet machine, which held up the call
    that started it (the likely cause of a 1.4 s gap between completions in a queue
    of 10 000 calls, where both workers prune at about the same time)."""
    now = time.time()
    with _prune_lock:
        if now - _pruned.get(str(base), -STALE_AFTER) < STALE_AFTER:
            return
        _pruned[str(base)] = now
    threading.Thread(target=_prune_now, args=(base, max_age, now), daemon=True,
                     name="cpldask-prune").start()


def _prune_now(base: pathlib.Path, max_age: float | None, now: float) -> None:
    if max_age is not None and (base / INPUTS).is_dir():
        for f in (base / INPUTS).iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - f.stat().st_mtime > max(max_age, STALE_AFTER):
                    f.unlink()
    for d in base.iterdir() if base.is_dir() else ():
        if not d.is_dir() or d.name.startswith(".") or "-" not in d.name:
            continue
        try:
            age = now - d.stat().st_mtime
        except FileNotFoundError:
            continue
        if age < STALE_AFTER:
            continue
        lock_file = d / ".cpldask-lock"
        try:
            with open(lock_file, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                unfinished = not (d / "report.json").exists()
                if unfinished or (max_age is not None and age > max_age):
                    shutil.rmtree(d, ignore_errors=True)
        except (BlockingIOError, FileNotFoundError, NotADirectoryError):
            continue  # a live call holds it, or it vanished meanwhile
