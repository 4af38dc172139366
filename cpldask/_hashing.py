"""Content hashes of files and of plain data: the bricks of the product cache's keys.

A file's hash covers every byte of it, header and data: a FITS keyword such as
``DATAMD5`` is evidence of what a file holds, not proof (it is not updated when a
pixel is edited in place, and never covers the header). The hash is xxh3-128 (the
``xxhash`` package): on this project's 2-core VM it hashes 9.4 GB/s in memory on one
core against blake3's 3.5 and MD5's 0.32, and a file from the page cache at 0.31 s per
GB against blake3's 0.43 (``python bench/run.py --only hashing``): hashing is bounded
by reading the file, which the recipe then reads again from the page cache. It is not a
cryptographic hash: a cache key guards against accidents, not against an adversary
forging a collision in a user's own cache.

Hashing a file once per *identity* — (device, inode, size, mtime_ns, ctime_ns) — is
what makes it cheap to leave on. Any write changes the ctime (which no user call
can set back); a file replaced by another has another inode. What the identity cannot
tell apart is two writes within one tick of the kernel's file clock (a few ms), so a
file changed less than :data:`YOUNG` before it is hashed is not remembered ("racy
git"'s rule). The memory of hashes is a bounded LRU (:data:`MEMO_SIZE` entries).

Used on workers and on the client; imports nothing from cpldask.
"""

from __future__ import annotations

import collections
import concurrent.futures
import importlib.util
import json
import os
import shutil
import subprocess
import threading
import time

import xxhash

#: name of the hash, recorded with every hash so that a later change is visible
ALGORITHM = "xxh3-128"
#: a file modified less than this long (ns) before it was hashed is hashed again
YOUNG = 100_000_000
#: remembered file hashes (per process); a MUSE dataset of 10 000 files fits
MEMO_SIZE = 65536
#: bytes read at a time (bench/hashing.py: 1-4 MiB read fastest here)
BLOCK = 1 << 20
#: files hashed at once by :func:`file_hashes` (xxhash releases the GIL)
THREADS = 4


class Changing(OSError):
    """A file changed while it was being hashed (someone is writing it)."""


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """(device, inode, size, mtime_ns, ctime_ns): what changes when a file does."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def young(st: os.stat_result, now_ns: int | None = None) -> bool:
    """Whether ``st`` is too recent for its identity to tell a later write apart."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    return now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < YOUNG


class LRU:
    """A thread-safe mapping of at most ``size`` entries; the least recently used
    entry goes first. The bounded memory of hashes and checks, instead of a dict
    that only grows."""

    def __init__(self, size: int):
        self.size = size
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            try:
                self._data.move_to_end(key)
            except KeyError:
                return default
            return self._data[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_MEMO = LRU(MEMO_SIZE)


def file_hash(path: str, st: os.stat_result | None = None) -> str:
    """The xxh3-128 hex digest of every byte of ``path``, remembered per identity.

    Raises OSError if the file cannot be read, :class:`Changing` if it keeps
    changing while it is read.

    Examples
    --------
    >>> file_hash('MASTER_BIAS.fits')
    '5f3c0d2e8a1b4c6d9e0f1a2b3c4d5e6f'
    """
    st = os.stat(path) if st is None else st
    known = _MEMO.get(identity(st))
    if known is not None:
        return known
    for _ in range(3):
        start = time.time_ns()
        digest = _hash_bytes(path)
        after = os.stat(path)
        if identity(after) == identity(st):
            if not young(after, start):
                _MEMO.put(identity(after), digest)
            return digest
        st = after  # written meanwhile: once more, with what is there now
    raise Changing(f"{path} changed while it was being read (is something writing it?)")


def _hash_bytes(path: str) -> str:
    h = xxhash.xxh3_128()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def file_hashes(paths: list[str]) -> list[str]:
    """:func:`file_hash` of each path; those not remembered are hashed in parallel
    threads (reading and hashing both release the GIL)."""
    stats = [os.stat(p) for p in paths]
    out = [_MEMO.get(identity(st)) for st in stats]
    todo = [i for i, h in enumerate(out) if h is None]
    if len(todo) <= 1:
        for i in todo:
            out[i] = file_hash(paths[i], stats[i])
        return out
    with concurrent.futures.ThreadPoolExecutor(min(THREADS, len(todo)),
                                               thread_name_prefix="cpldask-hash") as pool:
        for i, h in zip(todo, pool.map(lambda i: file_hash(paths[i], stats[i]), todo)):
            out[i] = h
    return out


def digest(value) -> str:
    """A stable hash of plain data (JSON with sorted keys): the same in every session
    and on every machine, as a cache key must be; 1, 1.0 and True differ.

    Examples
    --------
    >>> digest({'b': 1, 'a': [1.0, 'x']}) == digest({'a': [1.0, 'x'], 'b': 1})
    True
    """
    text = json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))
    return xxhash.xxh3_128_hexdigest(text.encode())


# -- what a recipe runs on ------------------------------------------------------------
_CLOSURES = LRU(256)


def shared_libraries(library: str) -> list[str]:
    """The shared libraries ``library`` loads, as this machine's dynamic loader finds
    them (``ldd``): for a MUSE recipe libmuse, CPL, cfitsio, wcslib, GSL, FFTW, libc...
    Remembered per identity of ``library``; [] where ``ldd`` is not available."""
    st = os.stat(library)
    known = _CLOSURES.get((library, identity(st)))
    if known is not None:
        return known
    ldd = shutil.which("ldd")
    found: list[str] = []
    if ldd is not None:
        try:
            out = subprocess.run([ldd, library], capture_output=True, text=True,
                                 timeout=60, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            # "libcplcore.so.26 => /lib/x86_64-linux-gnu/libcplcore.so.26 (0x...)"
            # or "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file
            part = line.split("=>", 1)[-1].strip().split(" (", 1)[0].strip()
            if part.startswith("/") and os.path.isfile(part):
                found.append(os.path.realpath(part))
    found = sorted(set(found))
    _CLOSURES.put((library, identity(st)), found)
    return found


def engine_file() -> str | None:
    """python-cpl's C engine (``cpl/CPL_recipe*.so``), found without importing cpl."""
    import importlib.machinery

    spec = importlib.util.find_spec("cpl")
    for d in list(spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(d, "CPL_recipe" + suffix)
            if os.path.isfile(path):
                return path
    return None
