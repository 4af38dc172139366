"""Run recipes on an HPC batch system (SLURM; PBS, SGE, LSF alike) with dask-jobqueue.

>>> import cpldask, cpldask.cluster
>>> cluster = cpldask.cluster.slurm(slots=8, memory_per_slot="6 GiB", walltime="2 hours")
>>> res = cpldask.Recipe("muse_bias")(bias_files, param={"nifu": 1})  # runs in a job
>>> cluster.close()                                               # cancels the jobs

The cluster is a :class:`SLURMCluster` (:class:`PBSCluster`, :class:`SGECluster`,
:class:`LSFCluster`): dask-jobqueue's class of that name, subclassed in
:mod:`cpldask._jobqueue` with recipe slots, a :class:`distributed.Client` attached as
``cluster.client`` and set as the default (so every cpldask call made afterwards runs
in the batch jobs), and jobs that close cleanly. The classes are imported with
dask-jobqueue on first use: ``import cpldask.cluster``, :func:`options` (but PBS's,
written in dask-jobqueue's PBS memory form) and the walltime helpers work without
it; :func:`job_script` and the clusters then raise an ImportError naming the ``hpc``
extra. Defaults are recipe-aware;
all of them come from the ``cpldask.jobqueue.*`` keys of :mod:`dask.config` (see
``cpldask.yaml``), and anything dask-jobqueue itself knows (queue, account,
log-directory, job-extra-directives, local-directory...) from its own
``jobqueue.<system>.*`` keys or as keyword arguments.

How recipe *slots* (recipes running at once) map onto jobs:

* a job runs one Dask worker process with ``slots_per_job`` threads: a recipe call
  occupies one worker thread while its recipe process runs, so a job runs
  ``slots_per_job`` recipes at once (recipes are processes of their own; more worker
  processes per job would add nothing but memory);
* it reserves ``slots_per_job * cores_per_slot`` cores and
  ``slots_per_job * memory_per_slot`` memory from the batch system;
* its job script exports ``OMP_NUM_THREADS=cores_per_slot``: recipe processes inherit
  it (unless ``cpldask.omp-num-threads`` or a call's ``env`` says otherwise);
* its worker leaves a margin before the walltime (``CPLDASK_JOB_END``,
  :mod:`cpldask.worker.jobend`): it takes no call that would not finish by then,
  lets its running recipes end, moves its results to other workers and leaves; a
  recipe still running when the batch system kills the job is re-run elsewhere;
* it offers its memory and cores to calls that state their needs (Dask worker
  resources MEMORY and CORES); :func:`add_pool` adds jobs of another size;
* the cluster adapts between ``minimum_slots`` and ``slots`` (``adapt=True``), or
  holds a fixed number of jobs (``adapt=False``; ``scale_slots``);
  :func:`cpldask.Recipe.set_maxthreads` (and the CLI's ``--slots``) scales it to ``n``
  slots (on an adaptive cluster: caps it at ``n``).

The scheduler runs in this (the client's) process and binds to 127.0.0.1 (interface
``lo``) unless an interface or scheduler host is configured: that suits one node and
is safe by default. On a real cluster set ``cpldask.jobqueue.interface`` (or
dask-jobqueue's ``jobqueue.<system>.interface``) to the network the compute nodes
reach the login node on, e.g. ``ib0``.
"""

from __future__ import annotations

import atexit
import math
import re
import sys
import weakref
from contextlib import suppress

import dask.config
import distributed

from . import _compat, _config
from ._transfer import copy_products

__all__ = ["jobqueue", "slurm", "pbs", "sge", "lsf", "add_pool", "options", "job_script",
           "scale_to_slots", "copy_products", "walltime_seconds", "lifetime"]

SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
           "lsf": "LSFCluster"}

_live: "weakref.WeakSet" = weakref.WeakSet()  # clusters made here, closed at exit


def _cfg(key: str, value=None):
    return value if value is not None else dask.config.get(f"cpldask.jobqueue.{key}")


# -- walltime and lifetime ----------------------------------------------------------
def walltime_seconds(walltime, system: str = "slurm") -> float | None:
    """A batch walltime in seconds.

    Accepts the batch systems' own forms (SLURM ``MM``, ``MM:SS``, ``HH:MM:SS``,
    ``D-HH[:MM[:SS]]``; PBS/SGE ``HH:MM:SS``; LSF ``HH:MM``) and Dask durations
    (``"2 hours"``, ``7200``).
    """
    if walltime is None:
        return None
    if isinstance(walltime, (int, float)):
        return float(walltime)
    text = str(walltime).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        return _config.seconds(text)
    days, a, b, c = match.groups()
    days = int(days or 0)
    if days and b is None:  # SLURM D-HH
        h, m, s = int(a), 0, 0
    elif c is not None:  # HH:MM:SS
        h, m, s = int(a), int(b), int(c)
    elif b is not None:  # two fields: LSF HH:MM, SLURM D-HH:MM, else MM:SS
        h, m, s = (int(a), int(b), 0) if system == "lsf" or days else (0, int(a), int(b))
    else:  # one number: minutes for SLURM and LSF, seconds for PBS and SGE
        h, m, s = (0, int(a), 0) if system in ("slurm", "lsf") else (0, 0, int(a))
    return float(days * 86400 + h * 3600 + m * 60 + s)


def format_walltime(seconds: float, system: str) -> str:
    """``HH:MM:SS`` (SLURM, PBS, SGE) or ``HH:MM`` (LSF), rounded up."""
    seconds = int(math.ceil(seconds))
    if system == "lsf":
        h, m = divmod(math.ceil(seconds / 60), 60)
        return f"{h:02d}:{m:02d}"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"


def lifetime(walltime_s: float | None, margin=None, stagger=None
             ) -> tuple[float, float] | None:
    """``(lifetime, stagger)`` in seconds for a worker of a job with this walltime.

    The worker retires between ``walltime - margin - stagger`` and ``walltime - margin
    + stagger``. The margin is at most a quarter of the walltime and the stagger at
    most half the margin, so a worker always retires before its job is killed. None
    when there is no walltime or ``lifetime-margin`` is null.
    """
    margin = _config.seconds(_cfg("lifetime-margin", margin))
    if walltime_s is None or margin is None:
        return None
    margin = min(margin, walltime_s / 4)
    stagger = min(_config.seconds(_cfg("lifetime-stagger", stagger)) or 0.0, margin / 2)
    return walltime_s - margin, stagger


# -- options --------------------------------------------------------------------------
def _resolve(system, slots_per_job, cores_per_slot, memory_per_slot, walltime,
             lifetime_margin, lifetime_stagger, interface, job_name, kwargs,
             limit_memory=None):
    system = str(_cfg("system", system)).lower()
    if system not in SYSTEMS:
        raise ValueError(f"cpldask.cluster: unknown batch system {system!r}; choose one "
                         f"of {', '.join(SYSTEMS)}")
    spj = int(_cfg("slots-per-job", slots_per_job))
    cps = int(_cfg("cores-per-slot", cores_per_slot))
    if spj < 1 or cps < 1:
        raise ValueError("cpldask.cluster: slots_per_job and cores_per_slot must be >= 1")
    mem = _config.nbytes(_cfg("memory-per-slot", memory_per_slot))
    wall_s = walltime_seconds(_cfg("walltime", walltime), system)
    life = lifetime(wall_s, lifetime_margin, lifetime_stagger)
    kw = dict(kwargs)
    jq = f"jobqueue.{system}"
    taken = sorted({"cores", "processes", "memory"} & set(kw))
    if taken:
        raise TypeError(f"cpldask.cluster sets {', '.join(taken)} from the recipe slots: "
                        f"give slots_per_job, cores_per_slot and memory_per_slot instead")

    extra = [str(a) for a in kw.pop("worker_extra_args", None)
             or dask.config.get(f"{jq}.worker-extra-args", None) or []]
    # what a job's worker offers calls that state their needs (resources=, an
    # instrument's rules): the memory and cores the job reserves
    offers = {"MEMORY": float(spj * mem), "CORES": float(spj * cps)}
    if "--resources" not in extra:
        extra += ["--resources", ",".join(f"{k}={v:.0f}" for k, v in offers.items())]
    else:  # the user's own: what they say is offered
        given = extra[extra.index("--resources") + 1] if extra[-1] != "--resources" else ""
        offers = {k.strip(): float(v) for k, v in
                  (item.split("=", 1) for item in given.split(",") if "=" in item)}
    prologue = list(kw.pop("job_script_prologue", None)
                    or dask.config.get(f"{jq}.job-script-prologue", None) or [])
    prologue.append(f"export OMP_NUM_THREADS={cps}")
    if life is not None:
        # when the worker should be gone: the lifetime from the job's start, give or
        # take the stagger (so that jobs started together do not all leave at once).
        # Not dask's --lifetime, which retires the worker at that moment and kills
        # the recipes it runs: cpldask.worker.jobend drains it (the JobEnd plugin)
        span = 2 * int(life[1]) + 1
        prologue.append(f"export CPLDASK_JOB_END=$(( $(date +%s) + {int(life[0])} "
                        f"+ RANDOM % {span} - {int(life[1])} ))")
    if _cfg("limit-memory", limit_memory):
        # the worker limits each recipe's address space to a slot's memory, so that
        # a recipe too big for this node fails here (and runs again on a bigger
        # worker) rather than the batch system killing the whole job
        prologue.append(f"export DASK_CPLDASK__WORKER_MEMORY_LIMIT={mem}")

    sched = dict(dask.config.get(f"{jq}.scheduler-options", None) or {})
    sched.update(kw.pop("scheduler_options", None) or {})
    iface = _cfg("interface", interface)
    if iface is None:
        iface = dask.config.get(f"{jq}.interface", None)
    if iface is None and "host" not in sched and "interface" not in sched:
        iface = "lo"  # one node, and nothing listens beyond this machine
    sched.setdefault("dashboard_address", _cfg("dashboard-address"))

    # dask-jobqueue's cores are the worker's threads: one per recipe slot. The cores
    # the job reserves (a slot's recipe runs cores_per_slot OpenMP threads) go to the
    # batch system's own CPU request, unless configured there already.
    cpus = spj * cps
    if system == "slurm":
        kw.setdefault("job_cpu", dask.config.get(f"{jq}.job-cpu", None) or cpus)
    elif system == "lsf":
        kw.setdefault("ncpus", dask.config.get(f"{jq}.ncpus", None) or cpus)
    elif system == "pbs" and not dask.config.get(f"{jq}.resource-spec", None):
        # PBS's own memory form, written as dask-jobqueue writes its -l mem
        mem_spec = _require_jobqueue().pbs.pbs_format_bytes_ceil(spj * mem)
        kw.setdefault("resource_spec", f"select=1:ncpus={cpus}:mem={mem_spec}")
    # (SGE requests no CPUs unless told: job_extra_directives=['-pe smp N'])
    kw.update(
        cores=spj,
        processes=1,
        memory=f"{spj * mem}B",
        walltime=format_walltime(wall_s, system) if wall_s is not None else None,
        interface=iface,
        scheduler_options=sched,
        worker_extra_args=extra,
        job_script_prologue=prologue,
        job_name=_cfg("job-name", job_name),
    )
    if kw["walltime"] is None:
        del kw["walltime"]
    layout = {"system": system, "slots_per_job": spj, "cores_per_slot": cps,
              "memory_per_slot": mem, "walltime": wall_s,
              "lifetime": life[0] if life else None, "offers": offers}
    return system, layout, kw


def options(system: str | None = None, *, slots_per_job: int | None = None,
            cores_per_slot: int | None = None, memory_per_slot=None, walltime=None,
            lifetime_margin=None, lifetime_stagger=None, interface: str | None = None,
            job_name: str | None = None, limit_memory: bool | None = None,
            **kwargs) -> dict:
    """The keyword arguments cpldask passes to the dask-jobqueue cluster class.

    Takes the arguments of :func:`jobqueue` that shape a job (not ``slots``, ``adapt``);
    ``kwargs`` (any dask-jobqueue argument) are passed on.
    """
    return _resolve(system, slots_per_job, cores_per_slot, memory_per_slot, walltime,
                    lifetime_margin, lifetime_stagger, interface, job_name, kwargs,
                    limit_memory)[2]


def _job_options(system: str, **kwargs) -> dict:
    """The keyword arguments of one job (the Job class): :func:`options` without
    those only the cluster takes."""
    kw = options(system, **kwargs)
    for key in ("scheduler_options", "n_workers", "security", "shared_temp_directory",
                "silence_logs", "name", "asynchronous", "loop", "scheduler_cls",
                "protocol"):
        kw.pop(key, None)
    return kw


def job_script(system: str | None = None, **kwargs) -> str:
    """The batch script one job would get (a dry run: nothing starts or is submitted).

    Takes the same arguments as :func:`options`.
    """
    system = str(_cfg("system", system)).lower()
    kw = _job_options(system, **kwargs)  # (an unknown system is refused here)
    cls = _cluster_class(system).job_cls
    return cls("tcp://<scheduler>:8786", name="<worker-name>", **kw).job_script()


def add_pool(cluster, name: str, *, jobs: int = 1, slots_per_job: int | None = None,
             cores_per_slot: int | None = None, memory_per_slot=None, walltime=None,
             limit_memory: bool | None = None, **kwargs):
    """Start ``jobs`` jobs of another size whose workers join ``cluster``'s scheduler.

    Nodes of different sizes side by side: the cluster's own jobs are the small
    nodes, a pool the big-memory ones (another partition or queue, more
    ``memory_per_slot``). Every worker offers the MEMORY and CORES of its job, so a
    call that asks for more than a small job has (``resources=``, an instrument's
    rules) runs only in the pool, and a recipe that dies for memory in a small job
    runs once more there. The pool holds its jobs until it or the cluster is closed.

    Parameters
    ----------
    cluster : SLURMCluster, PBSCluster, SGECluster or LSFCluster
        A cluster made by :func:`jobqueue` (:func:`slurm`...).
    name : str
        Names the pool's workers (``<name>-0``...).
    jobs : int
        Jobs to start (each one worker of ``slots_per_job`` slots).
    slots_per_job, cores_per_slot, memory_per_slot, walltime, limit_memory, **kwargs
        As for :func:`jobqueue` (``queue="bigmem"``, ``account``...); unset ones
        from the ``cpldask.jobqueue.*`` defaults, not from the cluster.

    Returns
    -------
    cpldask._jobqueue.Pool
        ``.jobs``, ``.job_ids``, ``.offers`` and ``.close()``.

    Examples
    --------
    >>> small = cpldask.cluster.slurm(slots=4, memory_per_slot="2 GiB", queue="small")
    >>> big = cpldask.cluster.add_pool(small, "big", jobs=1, memory_per_slot="16 GiB",
    ...                                queue="bigmem")              # doctest: +SKIP
    """
    system = cluster.layout["system"]
    kw = _job_options(system, slots_per_job=slots_per_job, cores_per_slot=cores_per_slot,
                      memory_per_slot=memory_per_slot, walltime=walltime,
                      limit_memory=limit_memory, **kwargs)
    offers = _resolve(system, slots_per_job, cores_per_slot, memory_per_slot, walltime,
                      None, None, None, None, dict(kwargs), limit_memory)[1]["offers"]
    cls = type(cluster).job_cls
    # the cluster's TLS certificates, if it has any (a Security without them would
    # give the worker "--tls-ca-file None")
    security = cluster.security if getattr(cluster.security, "tls_ca_file", None) else None
    made = [cls(cluster.scheduler_address, name=f"{name}-{i}", security=security, **kw)
            for i in range(int(jobs))]

    async def start():
        for job in made:
            await job  # submits the batch job (sbatch, qsub, bsub)

    pool = _classes().Pool(cluster, name, made, offers)
    cluster.pools = [*getattr(cluster, "pools", []), pool]
    cluster.offers = [*cluster.offers, offers]
    try:
        cluster.sync(start)
    except BaseException:
        pool.close()
        raise
    return pool


# -- the cluster classes (cpldask._jobqueue, imported when needed) -----------------------
def _require_jobqueue():
    """dask-jobqueue, or an ImportError that names the extra to install."""
    try:
        import dask_jobqueue
    except ImportError as err:
        raise ImportError("cpldask.cluster needs dask-jobqueue: pip install "
                          "'cpldask[hpc]' (or dask-jobqueue)") from err
    _compat.keep_ctrl_c()  # dask-jobqueue 0.9.0 turns Ctrl-C into sys.exit()
    return dask_jobqueue


def _classes():
    """:mod:`cpldask._jobqueue`, which holds the cluster classes and imports
    dask-jobqueue at its top."""
    _require_jobqueue()
    from . import _jobqueue

    return _jobqueue


def _cluster_class(system: str) -> type:
    return _classes().CLUSTERS[system]


def __getattr__(name: str):
    """``cpldask.cluster.SLURMCluster`` (``PBSCluster``, ``SGECluster``,
    ``LSFCluster``): the classes need dask-jobqueue, so they are imported on first
    use and ``import cpldask.cluster`` works without it."""
    if name in SYSTEMS.values():
        return getattr(_classes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def jobqueue(system: str | None = None, *, slots: int | None = None,
             minimum_slots: int | None = None, slots_per_job: int | None = None,
             cores_per_slot: int | None = None, memory_per_slot=None, walltime=None,
             adapt: bool | None = None, lifetime_margin=None, lifetime_stagger=None,
             interface: str | None = None, job_name: str | None = None,
             limit_memory: bool | None = None, set_as_default: bool = True, **kwargs):
    """Start a dask-jobqueue cluster for recipe calls and attach a client to it.

    Parameters
    ----------
    system : {'slurm', 'pbs', 'sge', 'lsf'}
        Batch system; default ``cpldask.jobqueue.system``.
    slots : int
        Most recipes at once over all jobs (the adaptive maximum).
    minimum_slots : int
        Slots kept even when idle (adaptive minimum; default 0: no job when idle).
    slots_per_job, cores_per_slot, memory_per_slot
        Shape of one job: ``slots_per_job`` recipes at once, each with
        ``cores_per_slot`` cores (``OMP_NUM_THREADS``) and ``memory_per_slot``.
    walltime : str or float
        Job walltime, in the batch system's form or as a Dask duration
        (``"2 hours"``).
    adapt : bool
        Scale between ``minimum_slots`` and ``slots`` with the work (True), or start
        ``minimum_slots`` worth of jobs and hold them (False; scale with
        :meth:`scale_slots` or ``set_maxthreads``).
    lifetime_margin, lifetime_stagger
        Workers retire ``margin ± stagger`` before the walltime (see :func:`lifetime`).
    interface : str
        Network interface of the scheduler and workers; default ``lo`` unless one is
        configured here or in ``jobqueue.<system>``.
    limit_memory : bool
        Limit each recipe's address space to ``memory_per_slot`` (the workers'
        ``cpldask.worker-memory-limit``), so that a recipe too big for the job fails
        in it and runs once more on a worker offering more MEMORY (:func:`add_pool`);
        default ``cpldask.jobqueue.limit-memory``.
    set_as_default : bool
        Make the client the default, so cpldask calls (and ``dask.compute``) go there.
    **kwargs
        Passed to the dask-jobqueue class (``queue``, ``account``, ``log_directory``,
        ``job_extra_directives``, ``security``, ...).

    Returns
    -------
    SLURMCluster, PBSCluster, SGECluster or LSFCluster
        A subclass of dask-jobqueue's class of that name, with ``.client`` (the
        attached :class:`distributed.Client`), ``.scale_slots(n)``,
        ``.adapt_slots(min, max)``, ``.adapting``, ``.slots``, ``.job_ids()`` and
        ``.close()`` (which also closes the client).

    Examples
    --------
    >>> cluster = cpldask.cluster.jobqueue("pbs", slots=4, walltime="01:00:00",
    ...                                    queue="long")           # doctest: +SKIP
    """
    system, layout, kw = _resolve(system, slots_per_job, cores_per_slot, memory_per_slot,
                                  walltime, lifetime_margin, lifetime_stagger, interface,
                                  job_name, kwargs, limit_memory)
    slots = int(_cfg("slots", slots))
    minimum = int(_cfg("minimum-slots", minimum_slots))
    adaptive = bool(_cfg("adapt", adapt))
    cls = _cluster_class(system)
    # the scheduler runs here: a call whose worker died (job ended, scancel) is re-run
    # cpldask.retries times; a slot takes exactly one recipe, so queued calls wait on
    # the scheduler for whichever job frees a slot or arrives first
    with dask.config.set({"distributed.scheduler.allowed-failures":
                          int(_config.get("retries")),
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = cls(**kw)
    try:
        cluster.slots_per_job = layout["slots_per_job"]
        cluster.cores_per_slot = layout["cores_per_slot"]
        cluster.layout = layout
        cluster.offers = [layout["offers"]]  # before any job has started
        # (the client takes the cluster's own security, TLS included)
        cluster.client = distributed.Client(cluster, set_as_default=set_as_default)
        # workers of jobs that end drain before they do (cpldask.worker.jobend)
        from .worker.jobend import JobEnd

        cluster.client.register_plugin(JobEnd(), name=JobEnd.name)
        if adaptive:
            cluster.adapt_slots(minimum, max(minimum, slots))
        elif minimum:
            cluster.scale_slots(minimum)
    except BaseException:
        cluster.close()
        raise
    _live.add(cluster)
    return cluster


def slurm(**kwargs):
    """:func:`jobqueue` on SLURM: a :class:`SLURMCluster`."""
    return jobqueue("slurm", **kwargs)


def pbs(**kwargs):
    """:func:`jobqueue` on PBS / Torque: a :class:`PBSCluster`."""
    return jobqueue("pbs", **kwargs)


def sge(**kwargs):
    """:func:`jobqueue` on (Son of) Grid Engine: a :class:`SGECluster`."""
    return jobqueue("sge", **kwargs)


def lsf(**kwargs):
    """:func:`jobqueue` on LSF: a :class:`LSFCluster`."""
    return jobqueue("lsf", **kwargs)


def scale_to_slots(client: distributed.Client, n: int) -> bool:
    """``set_maxthreads(n)`` on a dask-jobqueue cluster: scale it to ``n`` slots.

    A fixed cluster gets the jobs for ``n`` slots; an adaptive one adapts up to ``n``
    (its minimum capped at ``n``). Returns False when the client's cluster is not a
    dask-jobqueue cluster in this process (nothing done).
    """
    cluster = getattr(client, "cluster", None)
    jq = sys.modules.get("dask_jobqueue")
    if cluster is None or jq is None or not isinstance(cluster, jq.JobQueueCluster):
        return False
    from . import _jobqueue

    if isinstance(cluster, _jobqueue.SlotsMixin):
        if cluster.adapting:
            minimum = cluster.adaptive.minimum * cluster.slots_per_job  # 1 worker a job
            cluster.adapt_slots(min(minimum, n), n)
        else:
            cluster.scale_slots(n)
        return True
    # a dask-jobqueue cluster made without cpldask: its workers' threads are the slots
    threads, processes = _job_shape(cluster)
    jobs = math.ceil(n / threads)
    adaptive = _compat.adaptive_of(cluster)
    if adaptive is not None and adaptive.state in ("starting", "running"):
        # Adaptive counts workers: `processes` of them a job
        minimum_jobs = math.ceil(adaptive.minimum / processes)
        cluster.adapt(minimum_jobs=min(minimum_jobs, jobs), maximum_jobs=jobs)
    else:
        cluster.scale(jobs=jobs)
    return True


def _job_shape(cluster) -> tuple[int, int]:
    """``(worker threads, worker processes)`` of one job of a dask-jobqueue cluster.

    Read from a job made (not submitted) from the cluster's spec for new workers, as
    the cluster itself makes its jobs (:meth:`SpecCluster.new_worker_spec`): the
    job resolves what the spec leaves to dask-jobqueue's configuration
    (``jobqueue.slurm.cores``...).
    """
    ((name, spec),) = cluster.new_worker_spec().items()
    job = spec["cls"](cluster.scheduler_address, name=str(name), **spec["options"])
    return int(job.worker_cores), int(job.worker_processes)


@atexit.register
def _close_all() -> None:
    """Cancel the jobs of clusters still open at exit (before distributed's hooks)."""
    for cluster in list(_live):
        with suppress(Exception):
            cluster.close(timeout=10)
