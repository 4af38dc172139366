"""Worker side: an upstream call's product that this worker cannot see, fetched from
the worker that made it (no shared filesystem between them).

A downstream call names its inputs by the upstream :class:`~cpldask._spec.RunRecord`:
product paths on the disk of ``record.worker``, each with the file's identity there
(device, inode, size, mtime_ns). :func:`local_path` decides, for each product:

1. the call runs on the worker that made it, or this worker finds the very same
   identity at that path (one machine, or a shared filesystem mounted alike): the
   file is used in place, **no copy**;
2. a file of the same size is at that path, and its content hash equals the one the
   producing worker reports (another client's mount of a shared filesystem: NFS
   gives each its own device numbers): used in place, no copy;
3. else it is fetched from the producing worker, in :data:`CHUNK` pieces over
   distributed's connections between workers (never through the client or the
   scheduler), into ``<work-dir>/fetched/<hash>/<name>``; its size and xxh3-128
   hash are checked against the producer's before it is renamed into place. The
   copy is named by its content: later calls on this worker that need it use it
   again, and ``work-dir-max-age`` prunes it like in-memory inputs.

A same-named file that differs (each node's own ``/tmp/cpldask-$USER``, an older run's
``MASTER_BIAS.fits`` in a node-local ``output_dir``) is never taken for the product:
neither its identity nor its hash matches.

The producing worker serves its files through the operation :data:`OP`, added to its
server by :func:`serve` when it finished a call (``cpldask.worker.task``). A worker
already runs any function a client sends (distributed's ``run``); reading files adds no
access that it did not have.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import threading
import time

from .. import _compat, _hashing
from .._spec import Product, RunRecord

#: the worker operation that describes and reads product files
OP = "cpldask_product"
#: bytes per request; two requests are in flight while a chunk is written
CHUNK = 16 * 2**20
#: where fetched products go, in the work directory
FETCHED = "fetched"


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells the same file from another: (device, inode, size, mtime_ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def identified(product: Product) -> Product:
    """``product`` with the identity of its file as it is now (after install)."""
    import dataclasses

    return dataclasses.replace(product, identity=identity(os.stat(product.path)))


def same_file(product: Product) -> bool:
    """Whether this process sees the very file the producing worker described."""
    if not product.identity:
        return False
    try:
        return identity(os.stat(product.path)) == tuple(product.identity)
    except OSError:
        return False


# -- the producing worker ------------------------------------------------------------
def serve(worker=None) -> None:
    """Let other workers read this worker's product files (``worker``: the one this
    task runs on; the operation is added once)."""
    worker = worker or _worker()
    if worker is not None:
        _compat.add_worker_handler(worker, OP, _handle)


def _stat(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "hash": _hashing.file_hash(path, st)}


def _pread(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), size, offset)


async def _handle(action: str, path: str, offset: int = 0, size: int = 0):
    """``stat``: the file's size and hash; ``read``: ``size`` bytes from ``offset``.
    Off the event loop (a thread), so that heartbeats and other fetches go on."""
    from distributed.protocol import to_serialize

    loop = asyncio.get_running_loop()
    if action == "stat":
        return await loop.run_in_executor(None, _stat, path)
    if action == "read":  # as a frame of its own: not copied into the message
        return {"data": to_serialize(await loop.run_in_executor(None, _pread, path,
                                                                offset, size))}
    raise ValueError(f"{OP}: unknown action {action!r}")


# -- the consuming worker ------------------------------------------------------------
class Fetched:
    """What :func:`local_path` copied for one call: bytes, seconds, from where (for
    the call's provenance)."""

    def __init__(self) -> None:
        self.files: list[dict] = []

    def add(self, **info) -> None:
        self.files.append(info)


def local_path(product: Product, record: RunRecord, work_dir: str,
               fetched: Fetched | None = None, *, recipe: str = "") -> str:
    """The path of an upstream ``product`` on this worker: in place when this is the
    same file (or the same bytes), else a verified copy from ``record.worker``.

    Raises :class:`~cpldask.errors.InputError` when the file is neither here nor
    can be fetched (the producing worker has left the cluster, or lost the file).
    """
    worker = _worker()
    if worker is None or record.worker is None or record.worker == worker.address:
        return product.path  # made here (or no distributed workers): nothing to fetch
    if same_file(product):
        return product.path
    where = f"{product.path} (made by {record.recipe} on worker {record.worker}, " \
            f"host {record.host})"
    try:
        info = _compat.worker_request(worker, record.worker, OP, action="stat",
                                      path=product.path).result()
    except (OSError, FileNotFoundError) as err:
        # imported here: errors loads python-cpl, which cpldask.cluster (it imports this
        # module through _transfer) must not, to write job scripts without CPL
        from .. import errors

        raise errors.InputError(
            f"{recipe}: input {where} is not on this worker's disk and cannot be "
            f"fetched ({err!r}): its worker has left the cluster or lost the file. Put "
            f"cpldask.work-dir and output_dir on a filesystem all workers share, or "
            f"run the upstream call again") from err
    size, digest = info["size"], info["hash"]
    if _same_bytes(product.path, size, digest):  # a shared filesystem, seen otherwise
        return product.path
    dest = pathlib.Path(work_dir) / FETCHED / digest / os.path.basename(product.path)
    if _same_bytes(str(dest), size, digest):  # fetched before for another call
        os.utime(dest)  # (in use: not pruned)
        return str(dest)
    start = time.monotonic()
    _pull(worker, record.worker, product.path, size, digest, dest, where)
    if fetched is not None:
        fetched.add(path=product.path, worker=record.worker, host=record.host,
                    local=str(dest), bytes=size, seconds=time.monotonic() - start)
    return str(dest)


def _same_bytes(path: str, size: int, digest: str) -> bool:
    try:
        st = os.stat(path)
        return st.st_size == size and _hashing.file_hash(path, st) == digest
    except OSError:
        return False


def _pull(worker, address: str, path: str, size: int, digest: str,
          dest: pathlib.Path, where: str) -> None:
    """Copy ``path`` from the worker at ``address`` to ``dest``, checked; the next
    chunk is on its way while one is written and hashed."""
    import xxhash

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part"

    def request(offset: int):
        return _compat.worker_request(worker, address, OP, action="read", path=path,
                                      offset=offset, size=min(CHUNK, size - offset))

    h = xxhash.xxh3_128()
    got = 0
    try:
        with open(tmp, "wb") as out:
            pending = request(0) if size else None
            while pending is not None:
                data = pending.result()["data"]
                got += len(data)
                pending = request(got) if data and got < size else None
                out.write(data)
                h.update(data)
        if got != size or h.hexdigest() != digest:
            raise OSError(f"{where}: the copy fetched from its worker has {got} of "
                          f"{size} bytes, hash {h.hexdigest()} instead of {digest} "
                          f"(the file changed there meanwhile?)")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _worker():
    try:
        from distributed.worker import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None
