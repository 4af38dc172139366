"""Client side: which Dask cluster runs the recipes, and how many at once.

* A :class:`distributed.Client` already in use always wins.
* Else, ``cpldask.scheduler-address`` names a scheduler to connect to,
* or ``cpldask.scheduler-file`` a scheduler file (``cpldask cluster start`` writes
  one; distributed's JSON format) to read the address from.
* Else an embedded cluster starts on first use — its scheduler in this process, its
  workers in subprocesses — bound to 127.0.0.1, sized by ``cpldask.local.*``.

The parallel-process limit (:func:`set_maxthreads`) is a cluster-wide
:class:`distributed.Semaphore`: a recipe task takes a lease before it starts its
recipe process and gives it back when the process has ended. As in python-cpl, a new
limit applies to calls started afterwards: each limit is a new semaphore, and calls
carry the name of the one in force when they were made. Without ``set_maxthreads``
the embedded cluster allows as many recipes as the machine has cores, and a cluster
the user brought allows as many as its workers have threads.

On the embedded cluster, whose size cpldask alone decides, a limit of at least its
worker threads needs no semaphore: a recipe task holds a worker thread while its
process runs, so the threads are the limit. Such calls skip the lease (two scheduler
round trips each), and the cluster does not grow while any of them is unfinished
(:func:`_ensure_threads`), so that they never run more at once than they were
allowed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import threading
import uuid
import weakref

import dask.config
import dask.utils
import distributed
from distributed.deploy.spec import SpecCluster

from . import _compat, _config, _dashboard
from ._compat import SubprocessNanny
from .worker.forkserver import WarmUp

logger = logging.getLogger(__name__)
_lock = threading.RLock()
_embedded: dict = {}  # "cluster", "client" of the embedded cluster
_limits: dict = {}  # scheduler address -> (semaphore name, n) in force there


def get_client() -> distributed.Client:
    """The client recipe calls go to, starting the embedded cluster if needed; its
    scheduler gets cpldask's page of recipe runs (:mod:`cpldask._dashboard`)."""
    with _lock:
        try:
            client = distributed.get_client()
        except ValueError:
            address = _config.get("scheduler-address")
            scheduler_file = _config.get("scheduler-file")
            if address:
                client = distributed.Client(address, set_as_default=True)
            elif scheduler_file:
                client = join_scheduler_file(scheduler_file, set_as_default=True)
            else:
                client = _start_embedded()
        _dashboard.install(client)
        return client


def join_scheduler_file(path, **client_options) -> distributed.Client:
    """A client of the scheduler that the scheduler file ``path`` names.

    Unlike ``distributed.Client(scheduler_file=path)``, which waits for a missing
    file to appear and then says only that it timed out, a missing file or a
    scheduler that no longer answers is an error that names the file and the fix.

    Examples
    --------
    >>> client = join_scheduler_file("~/.cpldask/scheduler.json")  # doctest: +SKIP
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scheduler file {path} does not exist: start a cluster "
                                "that writes it with 'cpldask cluster start "
                                f"--scheduler-file {path}', or name another file")
    try:
        return distributed.Client(scheduler_file=path, **client_options)
    except (ValueError, KeyError) as err:  # not JSON, or no "address"
        raise ValueError(f"{path} is not a scheduler file (distributed's JSON with an "
                         f"'address'): {err!r}") from err
    except OSError as err:  # (TimeoutError is one)
        raise OSError(f"the scheduler named by {path} does not answer ({err}); if its "
                      "cluster ended without 'cpldask cluster stop', remove the file "
                      f"(cpldask cluster stop --scheduler-file {path} does)") from err


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


#: Settings of the embedded cluster, for recipes rather than small Python tasks:
#:
#: * An idle cluster used 0.09 CPU s per s (4.5 % of 2 cores), mostly the statistical
#:   profiler sampling worker threads every 10 ms — which in cpldask only ever sees
#:   threads waiting for their recipe process — the system monitor and the event-loop
#:   tick. Without them: 0.037 (docs/benchmarks.md, target 2). The dashboard keeps its
#:   task stream and progress; its system plots update every 5 s.
#: * worker-saturation 1.0: a worker gets a task only for a free thread. With Dask's
#:   default 1.1, each worker held one call in reserve behind its running ones, while
#:   another worker's thread stood idle: 24 two-second calls on 8 slots took 8.0 s
#:   instead of 6.2 (and the cascade's muse_twilight once waited 41 s behind muse_lsf).
#:   Throughput of no-op calls is the same (82-83 calls/s either way).
_EMBEDDED_CONFIG = {"distributed.worker.profile.enabled": False,
                    "distributed.admin.system-monitor.interval": "5s",
                    "distributed.admin.tick.interval": "100ms",
                    "distributed.scheduler.worker-saturation": 1.0}


def _start_embedded() -> distributed.Client:
    slots = int(_config.get("local.slots") or _cores())
    n_workers = int(_config.get("local.n-workers") or min(2, slots))
    per_worker = max(1, math.ceil(slots / n_workers))
    security = distributed.Security.temporary() if _config.get("local.tls") else None
    with dask.config.set({"distributed.scheduler.allowed-failures":
                          int(_config.get("retries")), **_EMBEDDED_CONFIG}):
        cluster = _embedded_cluster(n_workers, per_worker, security)
    client = distributed.Client(cluster, set_as_default=True, security=security)
    _embedded.update(cluster=cluster, client=client, slots=slots, per_worker=per_worker,
                     offers=_embedded_offers(n_workers, per_worker),
                     threads=n_workers * per_worker, target=n_workers * per_worker,
                     unguarded=weakref.WeakSet())
    atexit.register(close)  # before distributed's own hooks: no "lost task" warnings
    if n_workers * per_worker > slots:  # 3 slots on 2 workers of 2 threads: 4 threads
        _limits[client.scheduler.address] = (f"cpldask-slots-{uuid.uuid4().hex[:8]}", slots)
    # each worker starts its fork server as soon as it has joined, which imports
    # python-cpl's engine (~0.4 s of CPU) while the caller prepares its first call;
    # the first call itself waits at the scheduler for the first worker
    _, omp = slots_for_call(client)
    client.register_plugin(WarmUp(omp), name="cpldask-warm-up")
    return client


def _embedded_cluster(n_workers: int, per_worker: int,
                      security: distributed.Security | None) -> SpecCluster:
    """A scheduler in this process and ``n_workers`` Nannies, each a ``dask spec``
    subprocess (:class:`cpldask._compat.SubprocessNanny`).

    Not :class:`~distributed.LocalCluster`: its Nannies start their workers with
    multiprocessing's *spawn*, which imports the user's ``__main__`` module again in
    every worker. A python-cpl user's plain script (no ``if __name__ == '__main__'``)
    then stops with "An attempt has been made to start a new process before the
    current process has finished its bootstrapping phase", after each worker has run
    the script's top-level code once more. A ``dask spec`` process imports only
    distributed; its Nanny's worker restarts after a crash as before.
    """
    host = _config.get("local.host")
    protocol = "tls://" if security is not None else "tcp://"
    scheduler = {"cls": distributed.Scheduler,
                 "options": {"host": host, "port": 0, "protocol": protocol,
                             "security": security, "dashboard": True,
                             "dashboard_address": _config.get("local.dashboard-address")}}
    worker = {"cls": SubprocessNanny,
              "options": {"env": _worker_env(security),
                          "worker_kwargs": {"nthreads": per_worker, "host": host,
                                            "memory_limit": int(_embedded_offers(
                                                n_workers, per_worker)[MEMORY]),
                                            "resources": _embedded_offers(n_workers,
                                                                          per_worker),
                                            "silence_logs": logging.WARNING}}}
    return SpecCluster(scheduler=scheduler, workers={i: worker for i in range(n_workers)},
                       worker=worker, security=security, silence_logs=logging.WARNING,
                       name="cpldask")


def _embedded_offers(n_workers: int, per_worker: int) -> dict[str, float]:
    """What each worker of the embedded cluster offers: its share of the machine's
    memory and its threads as CORES (a call asking for more waits for no worker: it
    is refused on the client)."""
    return {MEMORY: float(distributed.system.MEMORY_LIMIT // n_workers),
            CORES: float(per_worker)}


def _worker_env(security: distributed.Security | None) -> dict[str, str]:
    """Environment of the worker subprocesses: this session's dask configuration (as
    a spawned worker would have inherited it), the temporary TLS certificate, and
    distributed's INFO messages kept out of the user's terminal."""
    config = jsonable_config()
    if security is not None:
        config = dask.config.merge(config, {"distributed": {"comm": {
            "require-encryption": True,
            "tls": {"ca-file": security.tls_ca_file,
                    "worker": {"cert": security.tls_worker_cert,
                               "key": security.tls_worker_key}}}}})
    # a worker closed while it runs a call (Ctrl-C, interpreter exit) warns of each
    # cancelled task: the user asked for it; real errors still show
    logging_config = {"distributed.worker.state_machine": "error"}
    if "DASK_LOGGING__DISTRIBUTED" not in os.environ:
        logging_config["distributed"] = "warning"
    config = dask.config.merge(config, {"logging": logging_config})
    env = {"DASK_INTERNAL_INHERIT_CONFIG": dask.config.serialize(config)}
    # The Nanny forks its worker instead of spawning a fresh interpreter that imports
    # distributed a second time: workers are ready in about half the time (2.0-4.1 s
    # against 5.2-6.7 s on a loaded 2-core machine, docs/benchmarks.md). The Nanny is
    # a small asyncio process; CPython re-initialises its own locks after a fork.
    if "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD" not in os.environ:
        env["DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"] = "fork"
    return env


def jsonable_config() -> dict:
    """This session's dask configuration, the sections that JSON can carry to another
    process (``DASK_INTERNAL_INHERIT_CONFIG``): a user's own objects in the config
    stay here."""
    config = {}
    for key, value in dask.config.config.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        config[key] = value
    return config


def embedded_cluster() -> SpecCluster | None:
    """The embedded cluster if cpldask started one."""
    return _embedded.get("cluster")


def close() -> None:
    """Close the embedded cluster (it restarts on the next call).

    Calls still running are cancelled first (their recipe processes are killed), so
    that the workers close with nothing to report: at interpreter exit, after Ctrl-C,
    the user's terminal shows only the user's own traceback."""
    with _lock:
        client, cluster = _embedded.pop("client", None), _embedded.pop("cluster", None)
        _embedded.clear()
        if client is not None:
            running = [f for f in client.futures.values() if not f.done()]
            if running and client.status == "running":
                client.cancel(running, force=True)
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
    if client is not _embedded.get("client") or _embedded["threads"] >= n:
        return
    _embedded["target"] = max(_embedded["target"], n)
    pending = [f for f in _embedded["unguarded"] if not f.done()]
    if pending:
        # Calls made earlier without a semaphore (see slots_for_call) are bounded by
        # the worker threads alone; more threads now would let them exceed the limit
        # they were made under. The cluster grows once they are done; until then the
        # calls made under the new limit share the present threads.
        threading.Thread(target=_grow_after, args=(pending, n), daemon=True,
                         name="cpldask-grow").start()
        return
    _grow(n)


def _grow_after(pending: list, n: int) -> None:
    try:
        distributed.wait(pending)
        with _lock:
            if _embedded.get("cluster") is not None and _embedded["threads"] < n:
                _grow(n)
    except Exception:  # noqa: BLE001  (closed meanwhile: nothing left to grow)
        logger.warning("cpldask: could not add workers for %d slots", n, exc_info=True)


def _grow(n: int) -> None:
    cluster, client, per_worker = (_embedded[k] for k in ("cluster", "client", "per_worker"))
    target = math.ceil(n / per_worker)
    cluster.scale(target)  # asynchronous: wait for the new workers to arrive
    client.wait_for_workers(target, timeout="60s")
    _embedded["threads"] = target * per_worker


def track_unguarded(client: distributed.Client, result) -> None:
    """Remember a call (its :class:`~cpldask.Result`) on the embedded cluster that
    holds no semaphore (its limit is the threads of the cluster), so that the cluster
    does not grow under it."""
    with _lock:
        if client is _embedded.get("client"):
            _embedded["unguarded"].add(result)


def slots_for_call(client: distributed.Client, *, direct: bool = False
                   ) -> tuple[tuple[str, int] | None, int | None]:
    """The semaphore (name, leases) a call made now must hold, and its OpenMP threads.

    A ``direct`` call (submitted now, its future kept: see :func:`track_unguarded`)
    on the embedded cluster holds no semaphore when the limit is at least the
    cluster's worker threads: the threads alone keep it, and taking a lease costs
    two scheduler round trips per call (~2.5 ms of CPU, 8 % of a no-op call).

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
    # (target: the threads the cluster has or is about to grow to)
    if direct and embedded and limit is not None and limit[1] >= _embedded["target"]:
        limit = None
    return limit, omp


def recipe_slots(client: distributed.Client) -> int:
    """How many recipes run at once now: the worker threads (each runs one recipe
    task), at most the :func:`set_maxthreads` limit in force; the limit alone while
    no worker is there yet (a batch-system cluster before its first job starts).
    The embedded cluster counts the threads it is starting, not only those that
    have joined (its second worker arrives a few seconds after the first)."""
    limit = _limits.get(client.scheduler.address)
    threads = sum(client.nthreads().values())
    if client is _embedded.get("client"):
        threads = max(threads, _embedded["threads"])
    if limit is not None:
        return max(1, min(limit[1], threads) if threads else limit[1])
    return max(1, threads)


#: The resource names cpldask gives a meaning to (Dask's worker resources are free
#: names; these are the ones cpldask's workers offer and its rules ask for): MEMORY in
#: bytes (a call may say ``"8 GiB"``), CORES in cores. A call holds what it asks for
#: while it runs, so a worker offering MEMORY=16 GiB runs two 8 GiB calls at once.
MEMORY, CORES = "MEMORY", "CORES"


def call_resources(resources: dict | None, recipe: str) -> dict[str, float]:
    """The resources a call asks for, as Dask's worker resources: ``memory`` and
    ``cores`` (any case) become MEMORY (bytes; ``"8 GiB"`` allowed) and CORES; other
    names are kept as they are (a site's own, e.g. ``GPU``).

    Examples
    --------
    >>> call_resources({"memory": "2 GiB", "cores": 4}, "muse_scipost")
    {'MEMORY': 2147483648.0, 'CORES': 4.0}
    """
    out: dict[str, float] = {}
    for name, value in (resources or {}).items():
        canon = str(name).upper() if str(name).upper() in (MEMORY, CORES) else str(name)
        try:
            amount = float(_config.nbytes(value) if canon == MEMORY else value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{recipe}: resources={{{name!r}: {value!r}}} is not an "
                             f"amount; give a number (memory also as '8 GiB')") from err
        if not amount >= 0:
            raise ValueError(f"{recipe}: resources={{{name!r}: {value!r}}} must be >= 0")
        out[canon] = amount
    return out


def offered_resources(client: distributed.Client) -> list[dict]:
    """What each worker of the client's cluster offers (Dask worker resources): the
    workers connected now and those its cluster will start (the embedded cluster's
    worker spec; a cpldask batch cluster's job templates, which offer nothing before
    the first job starts)."""
    offers = [dict(w.get("resources") or {})
              for w in client.scheduler_info(n_workers=-1)["workers"].values()]
    if client is _embedded.get("client"):
        offers.append(dict(_embedded.get("offers") or {}))
    offers.extend(getattr(getattr(client, "cluster", None), "offers", None) or [])
    return offers


def check_resources(client: distributed.Client, resources: dict, recipe: str, *,
                    strict: bool = True) -> dict[str, float]:
    """The resources a call can ask for on this cluster; an error for those no
    worker can satisfy (the task would wait forever).

    ``strict=False`` (needs from an instrument's rules): a need that every worker
    meets is dropped, and so is one no worker offers at all (a cluster of workers
    started without resources does not model sizes): such a need would choose no
    worker, and a task with resources loses the scheduler's queuing
    (``worker-saturation``: a call goes to a worker only for a free thread), which
    on the embedded cluster made a cascade slower. One offered, but by no worker in
    that amount, is still an error.
    """
    offers = offered_resources(client)
    out = {}
    for name, amount in resources.items():
        offered = [o.get(name, 0) for o in offers]
        if not strict and (not any(name in o for o in offers)
                           or all(o >= amount for o in offered)):
            continue
        if not any(o >= amount for o in offered):
            largest = max(offered, default=0)
            what = (f"{dask.utils.format_bytes(amount)} of MEMORY" if name == MEMORY
                    else f"{name}={amount:g}")
            has = (dask.utils.format_bytes(largest) if name == MEMORY else f"{largest:g}")
            raise ValueError(
                f"{recipe}: no worker offers {what} (the largest offers {has}); start "
                f"workers that do (cpldask.cluster.slurm(memory_per_slot=...), dask "
                f"worker --resources '{name}=...'), or ask for less with resources=")
        out[name] = amount
    return out


_histories: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # client -> History


def expected_duration(client: distributed.Client, provenance: dict) -> float | None:
    """The expected wall time (s) of a call (its client-side provenance) from earlier
    runs of the same recipe, parameters and inputs (the product cache's records, read
    once per client: :class:`cpldask._estimate.History`), on a cluster whose workers'
    jobs end (a cpldask batch cluster with a lifetime, or a scheduler that gives its
    workers cpldask's job-end plugin); else None, and nothing read."""
    if not _jobs_end(client):
        return None
    from ._estimate import Features, History

    with _lock:
        history = _histories.get(client)
        if history is None:
            history = _histories[client] = History.from_disk(
                cache_dir=_config.cache_dir())
    return history.expected(Features.of(provenance))


_ending: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # client -> bool


def _jobs_end(client: distributed.Client) -> bool:
    """Whether the workers of ``client``'s cluster may have jobs that end. Known from
    the cluster object when this process made it; a client that joined a running
    scheduler (``cpldask cluster start``'s scheduler file, an address) has none, so
    it asks the scheduler once whether it gives its workers the
    :class:`~cpldask.worker.jobend.JobEnd` plugin (which cpldask's batch clusters
    register), so that such clients send expected durations too."""
    cluster = getattr(client, "cluster", None)
    if cluster is not None:  # (the embedded cluster's has no layout: no jobs, no ask)
        return bool((getattr(cluster, "layout", None) or {}).get("lifetime"))
    with _lock:
        if client not in _ending:
            from .worker.jobend import JobEnd

            try:
                _ending[client] = bool(client.run_on_scheduler(
                    _compat.has_worker_plugin, name=JobEnd.name))
            except Exception:  # (an older scheduler: then durations are not sent)
                _ending[client] = False
        return _ending[client]


def learn_duration(client: distributed.Client, result) -> None:
    """Let the history of :func:`expected_duration` learn the wall time of ``result``
    (a :class:`~cpldask.Result`) when it has run, if the client keeps one."""
    history = _histories.get(client)
    if history is None:
        return

    def learn(res) -> None:
        from ._estimate import Run

        if res.status == "finished":
            with contextlib.suppress(Exception):  # (a lost record teaches nothing)
                history.add(Run.of(res.provenance))

    result.add_done_callback(learn)


def dashboard_link(*, page: str = "status") -> str | None:
    """The address of a dashboard page of the cluster in use, if it has a dashboard.

    Parameters
    ----------
    page : str
        ``"status"``: Dask's Status page; ``"runs"``: cpldask's page of recipe runs
        (queued, running, done, failed, with their current log line and products; see
        docs/dashboard.md), None where the scheduler does not have it; any other of
        Dask's pages by its name (``"workers"``).

    Examples
    --------
    >>> import cpldask
    >>> cpldask.dashboard_link(page="runs")  # doctest: +SKIP
    'http://127.0.0.1:8787/cpldask/runs'
    """
    try:
        client = get_client()
        link = client.dashboard_link
    except Exception:  # no dashboard (bokeh missing) is not an error for the caller
        return None
    if not link or (page == "runs" and not _dashboard.has_page(client)):
        return None
    return _dashboard.page_link(link, page)
