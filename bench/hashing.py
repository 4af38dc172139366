"""Benchmark 7: the cost of content keys (issue 17) — hashing inputs, and calls with it.

* **hash rate on one core**, in memory: xxh3-128 (``xxhash``, what cpldask uses),
  blake3 (``blake3``, one thread) and MD5 (what the cache used before), on a buffer
  larger than this machine's last-level cache;
* **a file from the page cache** through :func:`cpldask._hashing.file_hash` (read in
  1 MiB blocks and hashed), in seconds per GB, and the same file's hash once
  remembered (a ``stat`` and a lookup), in microseconds;
* **several files at once** through :func:`cpldask._hashing.file_hashes` (threads);
* **per-call overhead against python-cpl in the same run**: synchronous no-op calls
  of the C test recipe (it reads nothing of its input) with the product cache on,
  cpldask against python-cpl serial, on a MUSE-sized raw frame (``hashing.frame_mb``,
  200 MB) that is either the same file every call (its hash remembered) or "new"
  every call (``os.utime``: a new identity, hashed again from the page cache — a
  dataset of new frames). python-cpl reads nothing of the frame either, so the
  difference is what cpldask's checks and hashing cost; a real recipe reads the
  whole frame anyway, and then from the page cache hashing filled.
"""

from __future__ import annotations

import hashlib
import os
import time

import common
from common import log, median, row


def _rate(fn, nbytes: int, reps: int) -> float:
    """GB/s of the fastest of ``reps`` runs of ``fn``."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def run(ctx: common.Context) -> dict:
    import blake3
    import xxhash

    from cpldask import _hashing

    reps = ctx.repetitions(2, 5)
    buf_mb = ctx.pick("hashing.buffer_mb", 256, 1024)
    frame_mb = ctx.pick("hashing.frame_mb", 200, 200)
    calls = ctx.pick("hashing.calls", 5, 20)
    tmp = ctx.scratch("hashing")
    values: dict[str, dict[str, list]] = {}

    def record(metric, variant, value):
        values.setdefault(metric, {}).setdefault(variant, []).append(value)

    # -- in memory, one core -----------------------------------------------------------
    buf = os.urandom(buf_mb << 20)
    for rep in range(reps):
        record("in memory", "cpldask xxh3-128", _rate(lambda: xxhash.xxh3_128(buf).digest(),
                                                      len(buf), 2))
        record("in memory", "blake3", _rate(lambda: blake3.blake3(buf, max_threads=1).digest(),
                                            len(buf), 2))
        record("in memory", "md5", _rate(lambda: hashlib.md5(buf).digest(), len(buf), 1))
    log("hashing in memory (GB/s): " + ", ".join(
        f"{k} {median(v):.2f}" for k, v in values["in memory"].items()))

    # -- a file from the page cache -------------------------------------------------------
    import numpy as np
    from astropy.io import fits

    frame = tmp / "frame.fits"  # a FITS file (the client checks its headers)
    pixels = np.frombuffer(buf, np.uint8, count=frame_mb << 20).reshape(-1, 1024)
    fits.PrimaryHDU(pixels).writeto(frame)
    del buf, pixels
    size = frame.stat().st_size
    _hashing._hash_bytes(str(frame))  # into the page cache

    def blake3_file():
        h = blake3.blake3(max_threads=1)
        h.update_mmap(str(frame))
        return h.hexdigest()

    for rep in range(reps):
        _hashing._MEMO.clear()
        t0 = time.perf_counter()
        _hashing.file_hash(str(frame))
        record("file, s per GB", "cpldask xxh3-128", (time.perf_counter() - t0) / size * 1e9)
        t0 = time.perf_counter()
        blake3_file()
        record("file, s per GB", "blake3", (time.perf_counter() - t0) / size * 1e9)
        time.sleep(2 * _hashing.YOUNG / 1e9)  # its ctime old enough to be remembered
        _hashing.file_hash(str(frame))
        t0 = time.perf_counter()
        for _ in range(1000):
            _hashing.file_hash(str(frame))
        record("remembered", "cpldask", (time.perf_counter() - t0) / 1000 * 1e6)

    # several files: threads against one after another
    copies = []
    for i in range(4):
        copies.append(tmp / f"copy{i}.fits")
        copies[-1].write_bytes(frame.read_bytes())
    for path in copies:
        _hashing._hash_bytes(str(path))
    for rep in range(reps):
        _hashing._MEMO.clear()
        t0 = time.perf_counter()
        for path in copies:
            _hashing._hash_bytes(str(path))
        record("4 files, s per GB", "one after another", (time.perf_counter() - t0) / (4 * size) * 1e9)
        t0 = time.perf_counter()
        _hashing.file_hashes([str(p) for p in copies])
        record("4 files, s per GB", "cpldask file_hashes", (time.perf_counter() - t0) / (4 * size) * 1e9)
    for path in copies:
        path.unlink()

    # -- calls -----------------------------------------------------------------------------
    import dask

    import cpldask

    serial = common.pcpl_recipe(ctx, "cpldask_test", tmp)
    with ctx.cluster(2), dask.config.set({"cpldask.cache.enabled": True,
                                          "cpldask.cache.dir": str(tmp / "cache")}):
        sync = cpldask.Recipe("cpldask_test")
        sync(ctx.tiny_fits, param={"value": -1.0})  # warm up: libraries hashed, loaded
        serial(ctx.tiny_fits, param={"value": -1.0})
        value = 0.0
        for rep in range(reps):
            for variant, path, renew in (("tiny input", ctx.tiny_fits, False),
                                         ("200 MB input, same file", str(frame), False),
                                         ("200 MB input, new each call", str(frame), True)):
                for i in range(calls):
                    value += 1
                    if renew:  # a new identity: the worker hashes it again
                        os.utime(path, (time.time() - 10 - value, time.time() - 10 - value))
                        # (the utime set its ctime to now: a frame of a dataset is older
                        # than _hashing.YOUNG, which would have the client hash it too)
                        time.sleep(2 * _hashing.YOUNG / 1e9)
                    t0 = time.perf_counter()
                    sync(path, param={"value": value})
                    record(variant, "cpldask", 1000 * (time.perf_counter() - t0))
                    t0 = time.perf_counter()
                    serial(path, param={"value": value}).PRODUCT
                    record(variant, "python-cpl serial", 1000 * (time.perf_counter() - t0))
            log(f"hashing rep {rep + 1}/{reps}: " + "; ".join(
                f"{v}: cpldask {median(values[v]['cpldask']):.1f} ms, python-cpl "
                f"{median(values[v]['python-cpl serial']):.1f} ms"
                for v in ("tiny input", "200 MB input, same file", "200 MB input, new each call")))

    mem = values["in memory"]
    fh = values["file, s per GB"]
    rows = [
        row(f"hash rate in memory ({buf_mb} MB buffer, 1 core)", "GB/s", mem,
            ratio_of=("cpldask xxh3-128", "blake3")),
        row(f"file_hash, {frame_mb} MB file from the page cache", "s/GB", fh,
            ratio_of=("cpldask xxh3-128", "blake3")),
        row("file_hash of a remembered file (stat + lookup)", "us", values["remembered"]),
        row("4 files from the page cache", "s/GB", values["4 files, s per GB"],
            ratio_of=("cpldask file_hashes", "one after another")),
    ]
    for variant in ("tiny input", "200 MB input, same file", "200 MB input, new each call"):
        v = values[variant]
        diff = median(v["cpldask"]) - median(v["python-cpl serial"])
        rows.append(row(f"sync call, cache on, {variant}", "ms", v,
                        ratio_of=("cpldask", "python-cpl serial"),
                        note=f"cpldask - python-cpl serial = {diff:+.1f} ms"))
    return common.result(
        "hashing", {"reps": reps, "buffer_mb": buf_mb, "frame_mb": frame_mb, "calls": calls},
        rows, notes=[f"per GB hashed: xxh3-128 {median(fh['cpldask xxh3-128']):.3f} s, "
                     f"blake3 {median(fh['blake3']):.3f} s (one core, page cache)"])
