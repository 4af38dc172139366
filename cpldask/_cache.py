"""The product cache: a finished call's products, kept under its content key.

Layout: ``<cache dir>/<key>/`` holds the product files and ``provenance.json``. An
entry is built in a temporary sibling directory and renamed into place in one step,
so it appears only complete; when two hosts finish the same call at once, the first
rename wins and the other copy is dropped. Used on workers; imports nothing from the
client side.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
import time

PROVENANCE = "provenance.json"


def lookup(cache_dir: str, key: str) -> dict | None:
    """The provenance record of a complete entry for ``key``, or None."""
    entry = pathlib.Path(cache_dir) / key
    try:
        record = json.loads((entry / PROVENANCE).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    if not all((entry / name).is_file() for _, name in record["products"]):
        return None  # damaged by hand: treat as absent, the call runs again
    os.utime(entry)  # last use, for pruning
    return record


def store(cache_dir: str, key: str, files: list[tuple[str, str]], record: dict) -> pathlib.Path:
    """Put product ``files`` ((tag, path) pairs) and ``record`` under ``key``.

    Products are hard-linked where the filesystem allows (no copy), else copied.
    Returns the entry directory (someone else's, if they were first).
    """
    root = pathlib.Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    if (entry / PROVENANCE).exists():
        return entry
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        names = []
        for tag, path in files:
            name = os.path.basename(path)
            _link_or_copy(path, tmp / name)
            names.append((tag, name))
        (tmp / PROVENANCE).write_text(json.dumps({**record, "products": names}, indent=1,
                                                 default=str))
        try:
            os.rename(tmp, entry)
        except OSError:  # another writer was first: its entry is as good as ours
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _link_or_copy(src, dest) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def entries(cache_dir: str) -> list[dict]:
    """One dict per complete entry: key, recipe, size, last use."""
    out = []
    root = pathlib.Path(cache_dir)
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        prov = entry / PROVENANCE
        if entry.name.startswith(".") or not prov.is_file():
            continue
        with contextlib.suppress(json.JSONDecodeError, OSError):
            record = json.loads(prov.read_text())
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            out.append({"key": entry.name, "recipe": record.get("recipe"),
                        "size": size, "used": entry.stat().st_mtime,
                        "products": [tag for tag, _ in record.get("products", [])]})
    return out


def prune(cache_dir: str, *, older_than: float | None = None,
          max_size: int | None = None) -> list[str]:
    """Remove entries unused for ``older_than`` seconds, then the least recently used
    ones until the cache is at most ``max_size`` bytes. Returns the removed keys."""
    now = time.time()
    removed = []
    kept = sorted(entries(cache_dir), key=lambda e: e["used"])
    for e in list(kept):
        if older_than is not None and now - e["used"] > older_than:
            kept.remove(e)
            removed.append(e["key"])
    total = sum(e["size"] for e in kept)
    while max_size is not None and kept and total > max_size:
        e = kept.pop(0)
        total -= e["size"]
        removed.append(e["key"])
    for key in removed:
        _remove(pathlib.Path(cache_dir) / key)
    return removed


def _remove(entry: pathlib.Path) -> None:
    # rename first, so a reader never sees a half-deleted entry
    doomed = entry.with_name(f".{entry.name}-deleted-{os.getpid()}")
    with contextlib.suppress(OSError):
        os.rename(entry, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
