"""The product cache: a finished call's products, kept under its content key.

Layout: ``<cache dir>/<key>/`` holds the product files and ``provenance.json``, the
call's provenance record with, under ``files``, each product's size and content hash.
An entry is built in a temporary sibling directory (``.<key>-*``) and renamed into
place in one step, so it appears only complete; when two hosts finish the same call
at once, the first rename wins and the other copy is dropped.

An entry is served only once each of its files is there with its recorded size and
hash (:func:`lookup`; the hash is remembered per file identity, see
:mod:`cpldask._hashing`): one truncated, deleted or changed since — a product edited
in its output_dir is the cache's file too, as they are hard links — and the entry is
removed and the recipe runs. A cache directory that is missing, full or read-only is
a cache that serves nothing or keeps nothing, never a failed call: the functions here
return what went wrong for the caller to warn about. Used on workers; imports
nothing from the client side.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
import time

from . import _hashing

PROVENANCE = "provenance.json"
#: version of the entry format; entries without ``files`` (format 1) are unverifiable
FORMAT = 2
#: a temporary directory older than this is the leftover of a writer that died
LEFTOVER_AGE = 600.0


def lookup(cache_dir: str, key: str) -> tuple[dict | None, str | None]:
    """(the provenance record of a verified entry for ``key`` or None, a problem to
    warn about or None). A damaged entry is removed, and the problem says why."""
    entry = pathlib.Path(cache_dir) / key
    try:
        text = (entry / PROVENANCE).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as err:
        return None, f"the cache entry {entry} cannot be read ({err.strerror})"
    fault = check(entry, text)
    if fault is not None:
        _remove(entry)
        return None, f"the cache entry {entry} {fault}: it was removed"
    with contextlib.suppress(OSError):
        os.utime(entry)  # last use, for pruning
    return json.loads(text), None


def check(entry: pathlib.Path, text: str | None = None) -> str | None:
    """What is wrong with a cache entry (its record unreadable, a product file missing,
    of another size or with other bytes than recorded), or None if nothing is."""
    try:
        record = json.loads(text if text is not None else (entry / PROVENANCE).read_text())
        files = record["files"]
        names = [name for _, name in record["products"]]
    except (OSError, ValueError, KeyError, TypeError):
        return "has no valid record of its files (made by an older cpldask, or damaged)"
    return _fault(entry, names, files)


def _fault(entry: pathlib.Path, names: list[str], files: dict) -> str | None:
    """What is wrong with the product files ``names`` in ``entry`` against ``files``
    (name -> recorded size and hash), or None."""
    paths, stats = [], []
    for name in names:
        path = entry / name
        try:
            st = os.stat(path)
        except OSError:
            return f"has lost its product {name}"
        if st.st_size != files.get(name, {}).get("size"):
            return (f"has its product {name} truncated or changed ({st.st_size} bytes, "
                    f"recorded {files.get(name, {}).get('size')})")
        paths.append(str(path))
        stats.append(st)
    try:
        hashes = _hashing.file_hashes(paths)
    except OSError as err:
        return f"has a product that cannot be read ({err})"
    for name, digest in zip(names, hashes):
        if digest != files[name].get("hash"):
            return f"has its product {name} changed since it was stored (other bytes)"
    return None


def installed(output_dir: str | os.PathLike, key: str | None = None
              ) -> list[tuple[dict, list[tuple[str, str]]]]:
    """Finished calls whose products are in ``output_dir`` and intact: the provenance
    records written beside the products (``<product>.provenance.json``, see
    worker/install.py) each with its (tag, path) products, every product there with
    the size and content hash its record gives. With ``key``, only the calls of that
    content key. This is how a reduction run again finds what an interrupted one
    finished; a record without sizes and hashes (made before cpldask recorded them),
    or one whose product was changed or removed since, does not count.

    Examples
    --------
    >>> [rec["recipe"] for rec, _ in installed("reduced/muse_bias/ifu01")]  # doctest: +SKIP
    ['muse_bias']
    """
    d = pathlib.Path(output_dir)
    out = []
    for path in sorted(d.glob(f"*.{PROVENANCE}")):
        try:
            record = json.loads(path.read_text())
            files = record["files"]
            products = [(str(tag), str(d / pathlib.Path(p).name)) for tag, p in record["products"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (key is not None and record.get("key") != key) or not products \
                or not isinstance(files, dict):
            continue
        if _fault(d, [pathlib.Path(p).name for _, p in products], files) is None:
            out.append((record, products))
    return out


def describe_files(paths: list[str]) -> dict[str, dict]:
    """Name -> {size, hash} of product files, as a record keeps them (see
    :func:`check`, :func:`installed`)."""
    hashes = _hashing.file_hashes(paths)
    return {os.path.basename(p): {"size": os.stat(p).st_size, "hash": h}
            for p, h in zip(paths, hashes)}


def store(cache_dir: str, key: str, files: list[tuple[str, str]], record: dict) -> str | None:
    """Put product ``files`` ((tag, path) pairs) and ``record`` under ``key``.

    Products are hard-linked where the filesystem allows (no copy), else copied, and
    their sizes and hashes recorded. Returns None, or what kept the entry from being
    stored (a full or read-only cache directory): the products are then simply not
    cached.
    """
    root = pathlib.Path(cache_dir)
    entry = root / key
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        if (entry / PROVENANCE).exists():
            return None
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        names, info = [], {}
        for tag, path in files:
            name = os.path.basename(path)
            link_or_copy(path, tmp / name)
            st = os.stat(tmp / name)
            info[name] = {"size": st.st_size, "hash": _hashing.file_hash(str(tmp / name), st)}
            names.append((tag, name))
        (tmp / PROVENANCE).write_text(json.dumps(
            {**record, "products": names, "files": info, "format": FORMAT,
             "hash": _hashing.ALGORITHM}, indent=1, default=str))
        try:
            os.rename(tmp, entry)
        except OSError:  # another writer was first: its entry is as good as ours
            pass
    except OSError as err:
        return (f"the product cache {root} cannot keep these products "
                f"({err.strerror or err}); they are not cached")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return None


def verify(cache_dir: str, *, remove: bool = True) -> tuple[int, list[tuple[str, str]]]:
    """Check every entry against its record (every byte of every product), remove the
    bad ones and the leftovers of interrupted writers. Returns (entries checked,
    [(key, what was wrong)] of those found bad).

    Examples
    --------
    >>> checked, bad = verify('/home/me/.cache/cpldask')
    """
    root = pathlib.Path(cache_dir)
    checked, bad = 0, []
    now = time.time()
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        if entry.name.startswith("."):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > LEFTOVER_AGE and remove:
                    shutil.rmtree(entry, ignore_errors=True)
            continue
        if not entry.is_dir():
            continue
        checked += 1
        fault = check(entry)
        if fault is not None:
            bad.append((entry.name, fault))
            if remove:
                _remove(entry)
    return checked, bad


def link_or_copy(src, dest) -> None:
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
