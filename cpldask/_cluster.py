"""Client side: which Dask cluster runs the recipes, and how many at once.

* A :class:`distributed.Client` already in use always wins.
* Else, ``cpldask.scheduler-address`` names a scheduler to connect to.
* Else an embedded :class:`~distributed.LocalCluster` starts on first use, bound to
  127.0.0.1, sized by ``cpldask.local.*``.

The parallel-process limit (:func:`set_maxthreads`) is a cluster-wide
:class:`distributed.Semaphore`: a recipe task takes a lease before it starts its
recipe process and gives it back when the process has ended. As in python-cpl, a new
limit applies to calls started afterwards: each limit is a new semaphore, and calls
carry the name of the one in force when they were made. Without ``set_maxthreads``
the embedded cluster allows as many recipes as the machine has cores, and a cluster
the user brought allows as many as its workers have threads.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import uuid

import dask.config
import distributed

from . import _config
from ._execute import warm_up

_lock = threading.RLock()
_embedded: dict = {}  # "cluster", "client" of the embedded LocalCluster
_limits: dict = {}  # scheduler address -> (semaphore name, n) in force there


def get_client() -> distributed.Client:
    """The client recipe calls go to, starting the embedded cluster if needed."""
    with _lock:
        try:
            return distributed.get_client()
        except ValueError:
            pass
        address = _config.get("scheduler-address")
        if address:
            return distributed.Client(address, set_as_default=True)
        return _start_embedded()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


#: An idle embedded cluster used 0.09 CPU s per s (4.5 % of 2 cores), mostly the
#: statistical profiler sampling worker threads every 10 ms — which in cpldask only
#: ever sees threads waiting for their recipe process — the system monitor and the
#: event-loop tick. Without them: 0.037 (docs/benchmarks.md, target 2). The dashboard
#: keeps its task stream and progress; its system plots update every 5 s.
_QUIET = {"distributed.worker.profile.enabled": False,
          "distributed.admin.system-monitor.interval": "5s",
          "distributed.admin.tick.interval": "100ms"}


def _start_embedded() -> distributed.Client:
    slots = int(_config.get("local.slots") or _cores())
    n_workers = int(_config.get("local.n-workers") or min(2, slots))
    tls = {}
    if _config.get("local.tls"):
        tls = {"security": distributed.Security.temporary(), "protocol": "tls://"}
    with dask.config.set({"distributed.scheduler.allowed-failures":
                          int(_config.get("retries")), **_QUIET}):
        cluster = distributed.LocalCluster(
            **tls,
            n_workers=n_workers,
            threads_per_worker=max(1, math.ceil(slots / n_workers)),
            processes=True,
            host=_config.get("local.host"),
            dashboard_address=_config.get("local.dashboard-address"),
        )
    client = distributed.Client(cluster, set_as_default=True,
                                security=tls.get("security"))
    _embedded.update(cluster=cluster, client=client, slots=slots)
    atexit.register(close)  # before distributed's own hooks: no "lost task" warnings
    # each worker starts its fork server now, which imports python-cpl (~0.4 s of
    # CPU) while the caller is still preparing its first call
    _, omp = slots_for_call(client)
    client.run(warm_up, omp)  # only starts it: returns in milliseconds
    return client


def embedded_cluster() -> distributed.LocalCluster | None:
    """The embedded LocalCluster if cpldask started one."""
    return _embedded.get("cluster")


def close() -> None:
    """Close the embedded cluster (it restarts on the next call)."""
    with _lock:
        client, cluster = _embedded.pop("client", None), _embedded.pop("cluster", None)
        _embedded.clear()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def set_maxthreads(n: int) -> None:
    """Allow at most ``n`` recipe processes at once for calls started afterwards."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_maxthreads needs a whole number >= 1, not {n!r}")
    with _lock:
        client = get_client()
        _ensure_threads(client, n)
        _limits[client.scheduler.address] = (f"cpldask-slots-{uuid.uuid4().hex[:8]}", n)


def _ensure_threads(client: distributed.Client, n: int) -> None:
    """Give the embedded cluster enough worker threads to run ``n`` recipes at once
    (a recipe task occupies a worker thread while its process runs)."""
    # -- issue 7 hook: a dask-jobqueue cluster (cpldask.cluster) scales to n slots
    from .cluster import scale_to_slots

    if scale_to_slots(client, n):
        return
    # -- end of issue 7 hook
    cluster = _embedded.get("cluster")
    if cluster is None or client is not _embedded.get("client"):
        return
    have = sum(w.nthreads for w in cluster.scheduler.workers.values())
    if have >= n:
        return
    per_worker = max(1, have // max(1, len(cluster.scheduler.workers)))
    target = len(cluster.scheduler.workers) + math.ceil((n - have) / per_worker)
    cluster.scale(target)  # asynchronous: wait for the new workers to arrive
    client.wait_for_workers(target, timeout="60s")


def slots_for_call(client: distributed.Client) -> tuple[tuple[str, int] | None, int | None]:
    """The semaphore (name, leases) a call made now must hold, and its OpenMP threads.

    OpenMP threads are set where cpldask knows the cores: on the embedded cluster,
    cores // slots, so that slots x threads stays within the machine. Elsewhere the
    ``cpldask.omp-num-threads`` key (or the call's env) decides.
    """
    limit = _limits.get(client.scheduler.address)
    embedded = client is _embedded.get("client")
    setting = _config.get("omp-num-threads")
    if setting not in (None, "auto"):
        omp = int(setting)
    elif embedded:
        omp = max(1, _cores() // (limit[1] if limit else _embedded["slots"]))
    else:
        omp = None
    return limit, omp


def check_resources(client: distributed.Client, resources: dict, recipe: str) -> None:
    """Refuse resource annotations no worker can satisfy: the task would wait forever."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    for name, amount in resources.items():
        offered = [w.get("resources", {}).get(name, 0) for w in workers]
        if not any(o >= amount for o in offered):
            raise ValueError(
                f"{recipe}: no worker offers {name}={amount:g} (largest: "
                f"{max(offered, default=0):g}); start workers with --resources "
                f"'{name}=...' or drop the resources= option")


def dashboard_link() -> str | None:
    """The dashboard URL of the cluster in use, if it has one."""
    try:
        return get_client().dashboard_link
    except Exception:  # no dashboard (bokeh missing) is not an error for the caller
        return None
