"""Client side: what identifies a call — its task key — and the checks of its input
files before anything is submitted.

Two keys name a call (docs/cache.md):

* the **task key** (``<recipe>-<hex>``), made here: identical calls of one session
  share one Dask task. It covers the recipe (name, version, the library file's
  identity), every parameter with its default, the environment, the raw tags,
  python-cpl's list rule, the output directory, and the *identity* of every input
  file (path, device, inode, size, mtime, ctime: any write changes it) or the task
  key of the upstream call that makes it. A file written a moment ago is hashed here
  too, since its identity cannot yet tell a second write apart (:mod:`cpldask._hashing`).
* the **content key**, made on the worker (:func:`cpldask.worker.task.content_key`):
  the product cache's key. It covers the same call description (``spec.cache_key``,
  computed here) with every input by the xxh3-128 hash of all its bytes, the recipe
  library and the shared libraries it loads by theirs, and the runner. Hashing there
  reads each file where it is, in the worker that the recipe then reads it from.

Input files are checked from their headers only (:func:`check_file`): a missing,
empty, truncated, unreadable or non-FITS file, a directory, or a raw frame without
the extension its call needs, is refused with the file named and the fault said.
What is known of a file is remembered per identity in a bounded LRU.
"""

from __future__ import annotations

import os
import stat
import uuid

from dask.base import tokenize

from . import _fitsheader, _hashing, errors, instruments
from ._spec import FileInput, MemoryInput

#: the version of what the keys hold: a change here gives every call a new key
KEY_VERSION = 2

_digest = _hashing.digest
#: identity of an input file -> what its headers say (see :func:`check_file`)
_CHECKS = _hashing.LRU(_hashing.MEMO_SIZE)


def _checksum(path: str) -> str:
    """The content hash of a file (every byte; remembered per identity)."""
    return _hashing.file_hash(path)


def check_file(path: str, *, recipe: str, tag: str) -> list[dict]:
    """Refuse an input file that no recipe could read, before any work is done; its
    HDUs (:func:`cpldask._fitsheader.layout`) otherwise.

    Raises
    ------
    InputError
        Naming the file and what is wrong with it: it does not exist, is a directory,
        is not readable, is empty, is not FITS, or is truncated.
    """
    def refuse(what: str, fix: str = "") -> errors.InputError:
        return errors.InputError(f"{recipe}: input {tag} file {path!r} {what}"
                                 f"{'; ' + fix if fix else ''}")

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise refuse("does not exist") from None
    except OSError as err:
        raise refuse(f"cannot be looked at ({err.strerror})",
                     "check the permissions of its directories") from err
    if stat.S_ISDIR(st.st_mode):
        raise refuse("is a directory, not a FITS file", "give the files in it")
    if not os.access(path, os.R_OK):
        raise refuse("is not readable", "check its permissions")
    known = _CHECKS.get(_hashing.identity(st))
    if known is not None:
        return known
    if st.st_size == 0:
        raise refuse("is empty (0 bytes)", "was it written completely?")
    try:
        hdus = _fitsheader.layout(path, st.st_size)
    except _fitsheader.BadFits as err:
        if str(err).startswith("is gzip"):
            hdus = []  # cfitsio reads it; its headers cannot be read without inflating
        else:
            raise refuse(str(err)) from None
    except PermissionError as err:
        raise refuse("is not readable", "check its permissions") from err
    except OSError as err:
        raise refuse(f"cannot be read ({err.strerror})") from err
    if not _hashing.young(st):
        _CHECKS.put(_hashing.identity(st), hdus)
    return hdus


# -- what a call needs of its raw frames -----------------------------------------------
def _check_extensions(recipe: str, params: dict, tag: str, path: str,
                      hdus: list[dict]) -> None:
    """The instrument's own check of a raw frame for this call, if it has one
    (``cpldask/instruments/<name>/checks.py``; MUSE: the IFU extension ``nifu`` needs)."""
    check = instruments.raw_frame_check(recipe)
    if check is not None:
        check(recipe, params, tag, path, hdus)


def inputs(recipe: str, params: dict, frames, deps, raw_tags) -> tuple[list[dict], list]:
    """The input part of a call's provenance record, and of its task key.

    For a file: its tag and path (the worker adds its content hash); for an
    in-memory frame (an HDUList): the MD5 of its FITS bytes; for a product of another
    call: the tag, that call's task key and the product tag. The key part
    holds each file's identity instead (and its hash while it is young). Raw files
    are checked against what the call needs of them (:func:`_check_extensions`).
    """
    record, key = [], []
    for tag, item in frames:
        if isinstance(item, FileInput):
            st = os.stat(item.path)
            if tag in raw_tags:
                hdus = check_file(item.path, recipe=recipe, tag=tag)
                _check_extensions(recipe, params, tag, item.path, hdus)
            ident = _hashing.identity(st)
            record.append({"tag": tag, "path": item.path})
            key.append([tag, item.path, ident,
                        _hashing.file_hash(item.path, st) if _hashing.young(st) else None])
        elif isinstance(item, MemoryInput):  # its bytes, named by their MD5
            record.append({"tag": tag, "in_memory": item.digest})
            key.append([tag, "in_memory", item.digest])
        else:
            upstream = _dep_key(deps[item.dep])
            record.append({"tag": tag, "from": upstream, "product": item.tag})
            key.append([tag, upstream, item.tag])
    return record, key


def _dep_key(dep) -> str:
    """The task key of an upstream call (a Result's future, a Delayed, a Future)."""
    return str(dep.key) if hasattr(dep, "key") else tokenize(dep)


def _task_key(provenance: dict, input_key: list, *, raw_tags, input_len: int,
              output_dir: str | None, library: str, client) -> tuple[str, str]:
    """(task key, the client's part of the content key) of a call.

    The client's part describes the call without its input files' contents, which
    the worker adds (:func:`cpldask.worker.task.content_key`). The task key adds what
    tells this session's inputs and library apart (their identities) and the output
    directory, so that identical calls share a task and a changed input never does.
    """
    p = provenance
    described = _digest(["call", KEY_VERSION, p["recipe"], p["recipe_version"],
                         p["cpl_version"], p["params"], list(raw_tags), p["env"],
                         input_len, [i["tag"] for i in p["inputs"]],
                         [i.get("product") for i in p["inputs"]]])
    lib = os.stat(library)
    key = f"{p['recipe']}-{_digest([described, _hashing.identity(lib), input_key, output_dir])}"
    held = client.futures.get(key)
    if held is not None and held.status in ("error", "cancelled", "lost"):
        # an identical call that failed is still referenced: python-cpl re-runs a call,
        # so this one gets a task of its own instead of the old error
        key = f"{key}-{uuid.uuid4().hex[:8]}"
    return key, described
