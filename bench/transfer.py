"""Products between workers that share no disk (issue 21.1): how fast a product moves.

    python bench/transfer.py                 # a 200 MB file, 3 repetitions
    python bench/transfer.py --mb 800 --reps 2

Two workers, each in a mount namespace of its own (``unshare``, needs root: the
fixture of tests/test_nofs.py), the scheduler in this process. A file of ``--mb`` MB
(the size of a MUSE master bias of one IFU: 193 MiB) is written on worker A and
described as a product of a call there. Measured, as medians of ``--reps``:

* worker B fetching it from A (``cpldask.worker.fetch.local_path``: chunked
  requests between the workers, written and hashed on B, checked), a new file each
  repetition;
* the client fetching it through A (``cpldask._transfer.fetch``, ``Client.run``);
* on a shared filesystem (two workers in this machine's namespace): what
  ``local_path`` does instead — no copy — and how long that decision takes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from helpers import isolated_cluster  # noqa: E402


def _make(path: str, mb: int, seed: int, dask_worker=None) -> dict:
    """On worker A: a file of ``mb`` MB (random: no filesystem compresses it), and
    this worker serving its files."""
    import random

    from cpldask.worker import fetch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(rng.randbytes(2**20))
    fetch.serve(dask_worker)  # (Client.run passes the worker as dask_worker)
    return {"identity": fetch.identity(os.stat(path))}


def _pull(product, record, work_dir: str) -> dict:
    """On worker B (a task): the product's path here, and how long that took."""
    from cpldask.worker import fetch

    got = fetch.Fetched()
    start = time.perf_counter()
    path = fetch.local_path(product, record, work_dir, got)
    return {"seconds": time.perf_counter() - start, "path": path, "copies": len(got.files)}


def _record(worker: str, path: str, size: int, identity: tuple):
    from cpldask._spec import Product, RunRecord

    product = Product("MASTER_BIAS", path, size, {}, (), tuple(identity))
    record = RunRecord(recipe="bench", key="bench", products=[product], input_len=-1,
                       log=[], stat={}, host="nodeA", worker=worker, start=0, end=0,
                       call_dir="", output_dir=None)
    return product, record


def measure(client, a: str, b: str, mb: int, reps: int, work: str) -> dict:
    from cpldask import _transfer

    worker_s, client_s, copies = [], [], []
    for rep in range(reps):
        path = f"/tmp/bench-transfer/{rep}/MASTER_BIAS.fits"
        made = client.run(_make, path, mb, rep, workers=[a])[a]
        product, record = _record(a, path, mb * 2**20, made["identity"])
        out = client.submit(_pull, product, record, work, workers=[b], pure=False).result()
        worker_s.append(out["seconds"])
        copies.append(out["copies"])
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
            start = time.perf_counter()
            _transfer.fetch(client, a, path, os.path.join(d, "copy.fits"))
            client_s.append(time.perf_counter() - start)
    mbytes = mb * 2**20 / 1e6
    return {"worker_to_worker_s": worker_s, "client_s": client_s, "copies": copies,
            "worker_to_worker_MB_s": mbytes / statistics.median(worker_s),
            "client_MB_s": mbytes / statistics.median(client_s)}


def shared(mb: int, work: str) -> dict:
    """Two workers on this machine's filesystem: in place, no copy."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        path = os.path.join(work, "shared", "MASTER_BIAS.fits")
        made = client.run(_make, path, mb, 0, workers=[a])[a]
        product, record = _record(a, path, mb * 2**20, made["identity"])
        out = client.submit(_pull, product, record, work, workers=[b], pure=False).result()
        os.unlink(path)
        return {"shared_copies": out["copies"], "shared_same_path": out["path"] == path,
                "shared_decision_s": out["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=193, help="file size in MiB (193: "
                        "a MUSE master bias of one IFU)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as base:
        base = pathlib.Path(base)
        with isolated_cluster(base, []) as (client, (a, b), _):
            result = measure(client, a, b, args.mb, args.reps, "/tmp/bench-work")
        result.update(shared(args.mb, str(base)), mib=args.mb)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
