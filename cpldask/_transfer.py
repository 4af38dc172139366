"""Read product files through the worker that wrote them, for clients that cannot see
the worker's disk (no shared filesystem: batch jobs writing to node-local scratch, a
worker in another mount namespace).

Whether the client opens a product in place or fetches it is the
``cpldask.jobqueue.shared-filesystem`` key: ``true`` (always in place, no copy),
``false`` (always through the worker), ``auto`` (in place when this process sees the
very file the worker described, by its identity, or a file of the same size and
content hash at that path; else through the worker). Every copy is checked against
the worker's size and xxh3-128 hash before it is used.

:func:`local_file` is what ``Result.paths`` and the path products of an
``output_dir`` call go through: a product on a worker's disk arrives in the client's
own ``output_dir`` of the same name. Between workers, the same decision and a copy
without the client are :mod:`cpldask.worker.fetch`'s.

Bytes travel with :meth:`distributed.Client.run` in chunks: ``run`` executes on the
worker's event loop (the read itself in a thread), so a fetch never waits behind
recipes occupying the worker's task threads, and no chunk is larger than
:data:`CHUNK`. Worker-agnostic: any worker that has cpldask importable will do.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import dask.config
import xxhash

from . import _config, _hashing
from .worker import fetch as fetch_worker
from .worker.fetch import same_file

#: bytes per round trip; large products (MUSE pixel tables: GBs) arrive in pieces
CHUNK = 32 * 2**20
SHARED_FS_KEY = "cpldask.jobqueue.shared-filesystem"


def shared_filesystem() -> bool | None:
    """The configured answer: True, False, or None for ``auto``."""
    value = dask.config.get(SHARED_FS_KEY, "auto")
    if isinstance(value, str):
        value = {"true": True, "yes": True, "1": True, "false": False, "no": False,
                 "0": False}.get(value.strip().lower(), None)
    return value if value is None else bool(value)


def _exists_here(path: str, size: int) -> bool:
    """Whether this process sees the product file (a copy of the same size)."""
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False


def must_fetch(product, record, client=None) -> bool:
    """Whether ``product`` of ``record`` has to be read through its worker.

    ``auto``: not when this process sees the very file the worker described (its
    identity: device, inode, size, mtime), nor when a file at that path has the same
    size and content hash as the worker's (a shared filesystem mounted otherwise,
    e.g. NFS). A same-named file that differs (an older product in a node-local
    ``output_dir`` of the same name here) is fetched over. Records without an
    identity (made before it was recorded) keep the size rule.
    """
    if record.worker is None:  # not run on a distributed worker: nobody to ask
        return False
    shared = shared_filesystem()
    if shared is not None:
        return not shared
    if not _exists_here(product.path, product.size):
        return True
    if not product.identity or same_file(product):
        return False
    if client is None:
        return True
    remote = _remote_hash(client, record, product.path)
    if remote is None:
        # its worker has left (a killed worker, an ended job): nobody to fetch from.
        # A file of the recorded size at that path is then what a shared filesystem
        # shows after the call ran again elsewhere and replaced it (python-cpl's
        # overwrite); it is used, as before products could be fetched. (The chaos test
        # of tests/test_reduce.py: products bit-equal to a clean run.)
        return False
    return remote != _hashing.file_hash(product.path)


def _remote_hash(client, record, path: str) -> str | None:
    try:
        return client.run(describe, path, workers=[record.worker])[record.worker]["hash"]
    except (OSError, KeyError, ValueError):
        return None


# -- worker side (run by Client.run on the worker that holds the file) ---------------
async def read_chunk(path: str, offset: int, size: int) -> bytes:
    """``size`` bytes of ``path`` from ``offset`` (off the worker's event loop)."""
    return await asyncio.get_running_loop().run_in_executor(None, fetch_worker._pread,
                                                            path, offset, size)


async def describe(path: str) -> dict:
    """``{"size", "hash"}`` of the file ``path`` (xxh3-128, remembered per identity)."""
    return await asyncio.get_running_loop().run_in_executor(None, fetch_worker._stat, path)


# -- client side --------------------------------------------------------------------
def fetch(client, worker: str, path: str, dest, *, host: str | None = None,
          chunk: int = CHUNK) -> str:
    """Copy ``path`` from ``worker``'s disk to the local file ``dest``; return ``dest``.

    Raises FileNotFoundError when the worker has left the cluster or no longer has the
    file, OSError when the copy comes out short.
    """
    where = f"worker {worker}" + (f" on {host}" if host else "")
    if worker not in client.scheduler_info(n_workers=-1)["workers"]:
        raise FileNotFoundError(
            f"{path} is on the local disk of {where}, which has left the cluster; "
            f"put cpldask.work-dir (or output_dir) on a filesystem the client shares, "
            f"or run the call again")
    try:
        info = client.run(describe, path, workers=[worker])[worker]
    except OSError as err:
        raise FileNotFoundError(f"{path} is no longer on {where}: {err}") from err
    size = info["size"]
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = f"{dest}.part{os.getpid()}"
    h = xxhash.xxh3_128()
    try:
        with open(tmp, "wb") as out:
            offset = 0
            while offset < size:
                data = client.run(read_chunk, path, offset, min(chunk, size - offset),
                                  workers=[worker])[worker]
                if not data:
                    break
                out.write(data)
                h.update(data)
                offset += len(data)
        if offset != size or h.hexdigest() != info["hash"]:
            raise OSError(f"{path} from {where}: got {offset} of {size} bytes, hash "
                          f"{h.hexdigest()} instead of {info['hash']} (changed there "
                          f"meanwhile?)")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(dest)


def local_file(product, record, client) -> str:
    """The path of ``product`` on this machine: where its worker wrote it when this
    client sees that file, else a copy fetched through the worker, checked: at the
    same path for a call with an ``output_dir`` (the client's own directory of that
    name, as python-cpl would have written it), else in
    ``<work-dir>/fetched/<hash>/<name>``.

    Examples
    --------
    >>> res = cpldask.Recipe("muse_bias")(raw, output_dir="out")   # doctest: +SKIP
    >>> local_file(res.record.products[0], res.record, client)     # doctest: +SKIP
    '/home/me/out/MASTER_BIAS.fits'
    """
    if same_file(product) or not must_fetch(product, record, client):
        return product.path  # (the very file: never copied onto itself, whatever the key)
    if record.output_dir:
        dest = product.path
    else:
        info = client.run(describe, product.path, workers=[record.worker])[record.worker]
        dest = os.path.join(str(_config.work_dir()), fetch_worker.FETCHED, info["hash"],
                            os.path.basename(product.path))
        if os.path.exists(dest) and _hashing.file_hash(dest) == info["hash"]:
            return dest
    return fetch(client, record.worker, product.path, dest, host=record.host)


def fetch_dir() -> str:
    d = dask.config.get("cpldask.jobqueue.fetch-dir", None) or tempfile.gettempdir()
    d = os.path.expanduser(str(d))
    os.makedirs(d, exist_ok=True)
    return d


def open_fetched(product, record, client):
    """The product as a lazily read HDUList, from a local copy fetched through the
    worker. The copy is unlinked once open: its space is freed with the HDUList."""
    from astropy.io import fits

    fd, local = tempfile.mkstemp(prefix=f"cpldask-{product.tag}-", suffix=".fits",
                                 dir=fetch_dir())
    os.close(fd)
    try:
        fetch(client, record.worker, product.path, local, host=record.host)
        hdul = fits.open(local, memmap=True)
    finally:
        if os.path.exists(local):
            os.unlink(local)
    return hdul


def copy_products(result, directory, *, tags=None) -> dict[str, list[str]]:
    """Copy a result's product files into a local ``directory`` (through the workers
    where the client cannot see them); ``{tag: [local paths]}``.

    For results whose products the client cannot open where they are, e.g. calls
    with an ``output_dir`` on a worker's local disk.
    """
    import shutil

    record = result.record
    client = result.future.client
    os.makedirs(directory, exist_ok=True)
    out: dict[str, list[str]] = {}
    for p in record.products:
        if tags is not None and p.tag not in tags:
            continue
        dest = os.path.join(directory, os.path.basename(p.path))
        if must_fetch(p, record):
            fetch(client, record.worker, p.path, dest, host=record.host)
        elif os.path.abspath(p.path) != os.path.abspath(dest):
            shutil.copyfile(p.path, dest)
        out.setdefault(p.tag, []).append(dest)
    return out
