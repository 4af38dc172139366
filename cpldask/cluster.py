"""Run recipes on an HPC batch system (SLURM; PBS, SGE, LSF alike) with dask-jobqueue.

>>> import cpldask, cpldask.cluster
>>> cluster = cpldask.cluster.slurm(slots=8, memory_per_slot="6 GiB", walltime="2 hours")
>>> res = cpldask.Recipe("muse_bias")(bias_files, param={"nifu": 1})  # runs in a job
>>> cluster.close()                                               # cancels the jobs

The cluster is the dask-jobqueue one (``SLURMCluster``...), with a
:class:`distributed.Client` attached as ``cluster.client`` and set as the default, so
every cpldask call made afterwards runs in the batch jobs. Defaults are recipe-aware;
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
* its worker retires gracefully (``--lifetime``) a margin before the walltime, so its
  results move to other workers before the batch system kills the job; a recipe
  still running then is re-run elsewhere;
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
import threading
import weakref
from contextlib import suppress

import dask.config
import distributed

from . import _config
from ._transfer import copy_products

__all__ = ["jobqueue", "slurm", "pbs", "sge", "lsf", "options", "job_script",
           "scale_to_slots", "copy_products", "walltime_seconds", "lifetime"]

SYSTEMS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
           "lsf": "LSFCluster"}

_live: "weakref.WeakSet" = weakref.WeakSet()  # clusters made here, closed at exit
_subclasses: dict = {}
_lock = threading.Lock()


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
             lifetime_margin, lifetime_stagger, interface, job_name, kwargs):
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
    if life is not None:  # before the user's own arguments: theirs win
        extra = ["--lifetime", f"{int(life[0])}s", "--lifetime-stagger",
                 f"{int(life[1])}s", *extra]
    prologue = list(kw.pop("job_script_prologue", None)
                    or dask.config.get(f"{jq}.job-script-prologue", None) or [])
    prologue.append(f"export OMP_NUM_THREADS={cps}")

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
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        kw.setdefault("resource_spec",
                      f"select=1:ncpus={cpus}:mem={pbs_format_bytes_ceil(spj * mem)}")
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
              "lifetime": life[0] if life else None}
    return system, layout, kw


def options(system: str | None = None, *, slots_per_job: int | None = None,
            cores_per_slot: int | None = None, memory_per_slot=None, walltime=None,
            lifetime_margin=None, lifetime_stagger=None, interface: str | None = None,
            job_name: str | None = None, **kwargs) -> dict:
    """The keyword arguments cpldask passes to the dask-jobqueue cluster class.

    Takes the arguments of :func:`jobqueue` that shape a job (not ``slots``, ``adapt``);
    ``kwargs`` (any dask-jobqueue argument) are passed on.
    """
    return _resolve(system, slots_per_job, cores_per_slot, memory_per_slot, walltime,
                    lifetime_margin, lifetime_stagger, interface, job_name, kwargs)[2]


def job_script(system: str | None = None, **kwargs) -> str:
    """The batch script one job would get (a dry run: nothing starts or is submitted).

    Takes the same arguments as :func:`options`.
    """
    system = str(_cfg("system", system)).lower()
    kw = options(system, **kwargs)
    cls = _cluster_class(system).job_cls
    kw.pop("scheduler_options", None)
    for key in ("n_workers", "security", "shared_temp_directory", "silence_logs", "name",
                "asynchronous", "loop", "scheduler_cls", "protocol"):
        kw.pop(key, None)
    return cls("tcp://<scheduler>:8786", name="<worker-name>", **kw).job_script()


# -- the cluster ----------------------------------------------------------------------
def _cluster_class(system: str):
    try:
        import dask_jobqueue
    except ImportError as err:
        raise ImportError("cpldask.cluster needs dask-jobqueue: pip install "
                          "'cpldask[hpc]' (or dask-jobqueue)") from err
    return getattr(dask_jobqueue, SYSTEMS[system])


class _SlotsMixin:
    """What cpldask adds to a dask-jobqueue cluster class (see :func:`jobqueue`)."""

    client: distributed.Client | None = None
    slots_per_job: int = 1
    cores_per_slot: int = 1
    layout: dict = {}

    @property
    def slots(self) -> int:
        """Recipe slots of the workers connected now (threads of live workers)."""
        return sum(w.get("nthreads", 0) for w in self.scheduler_info["workers"].values())

    def jobs_for(self, slots: int) -> int:
        """How many jobs hold ``slots`` recipe slots."""
        return math.ceil(max(0, int(slots)) / self.slots_per_job)

    def scale_slots(self, n: int) -> None:
        """Hold jobs for ``n`` recipe slots (0: cancel all jobs); stops adaptivity."""
        adaptive = getattr(self, "_adaptive", None)
        if adaptive is not None:
            adaptive.stop(reason="cpldask-scale-slots")
            self._adaptive = None
        self.scale(jobs=self.jobs_for(n))

    def adapt_slots(self, minimum: int = 0, maximum: int | None = None, **kwargs):
        """Adapt between ``minimum`` and ``maximum`` recipe slots (whole jobs).

        ``kwargs`` go to :class:`distributed.deploy.Adaptive` (``interval``,
        ``wait_count``, ``target_duration``...); defaults from ``cpldask.jobqueue``.
        The default target duration is tiny: every waiting recipe call asks for a slot
        (Dask's 5 s target would start one job for a handful of calls whose duration
        it does not know yet).
        """
        maximum = minimum if maximum is None else maximum
        kwargs.setdefault("interval", _cfg("adapt-interval"))
        kwargs.setdefault("wait_count", int(_cfg("adapt-wait-count")))
        kwargs.setdefault("target_duration", _cfg("adapt-target-duration"))
        return self.adapt(minimum_jobs=self.jobs_for(minimum),
                          maximum_jobs=self.jobs_for(maximum), **kwargs)

    def job_ids(self) -> dict[str, str]:
        """``{worker address: batch job id}`` of the workers connected now."""
        by_name = {str(name): str(job.job_id) for name, job in list(self.workers.items())
                   if getattr(job, "job_id", None)}
        out = {}
        for address, info in list(self.scheduler_info["workers"].items()):
            name = str(info.get("name"))
            job = by_name.get(name) or by_name.get(name.rsplit("-", 1)[0])
            if job:
                out[address] = job
        return out

    def close(self, timeout: float | None = None):
        """Close the client, cancel every job and stop the scheduler."""
        client, self.client = self.client, None
        if client is not None and client.status not in ("closed", "closing"):
            with suppress(Exception):
                client.close()
        return super().close(timeout)


def _closing_job(job_cls):
    """dask-jobqueue's Job.close never marks the job closed, so SpecCluster.close
    asserts while anything still references a Job; mark it closed."""

    async def close(self):
        await job_cls.close(self)
        from distributed.core import Status

        self.status = Status.closed

    return type(job_cls.__name__, (job_cls,), {"close": close, "__module__": __name__})


def _subclass(base):
    with _lock:
        cls = _subclasses.get(base)
        if cls is None:
            cls = type(base.__name__, (_SlotsMixin, base),
                       {"__module__": __name__, "__doc__": base.__doc__,
                        "job_cls": _closing_job(base.job_cls)})
            _subclasses[base] = cls
        return cls


def jobqueue(system: str | None = None, *, slots: int | None = None,
             minimum_slots: int | None = None, slots_per_job: int | None = None,
             cores_per_slot: int | None = None, memory_per_slot=None, walltime=None,
             adapt: bool | None = None, lifetime_margin=None, lifetime_stagger=None,
             interface: str | None = None, job_name: str | None = None,
             set_as_default: bool = True, **kwargs):
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
    set_as_default : bool
        Make the client the default, so cpldask calls (and ``dask.compute``) go there.
    **kwargs
        Passed to the dask-jobqueue class (``queue``, ``account``, ``log_directory``,
        ``job_extra_directives``, ``security``, ...).

    Returns
    -------
    The dask-jobqueue cluster (e.g. ``SLURMCluster``), with ``.client`` (the attached
    :class:`distributed.Client`), ``.scale_slots(n)``, ``.adapt_slots(min, max)``,
    ``.slots``, ``.job_ids()`` and ``.close()`` (which also closes the client).
    """
    system, layout, kw = _resolve(system, slots_per_job, cores_per_slot, memory_per_slot,
                                  walltime, lifetime_margin, lifetime_stagger, interface,
                                  job_name, kwargs)
    slots = int(_cfg("slots", slots))
    minimum = int(_cfg("minimum-slots", minimum_slots))
    adaptive = bool(_cfg("adapt", adapt))
    cls = _subclass(_cluster_class(system))
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
        # (the client takes the cluster's own security, TLS included)
        cluster.client = distributed.Client(cluster, set_as_default=set_as_default)
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
    """:func:`jobqueue` on SLURM (``SLURMCluster``)."""
    return jobqueue("slurm", **kwargs)


def pbs(**kwargs):
    """:func:`jobqueue` on PBS / Torque (``PBSCluster``)."""
    return jobqueue("pbs", **kwargs)


def sge(**kwargs):
    """:func:`jobqueue` on (Son of) Grid Engine (``SGECluster``)."""
    return jobqueue("sge", **kwargs)


def lsf(**kwargs):
    """:func:`jobqueue` on LSF (``LSFCluster``)."""
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
    adaptive = getattr(cluster, "_adaptive", None)
    adapting = adaptive is not None and getattr(adaptive, "state", None) in ("starting",
                                                                             "running")
    if isinstance(cluster, _SlotsMixin):
        if adapting:
            cluster.adapt_slots(min(adaptive.minimum * cluster.slots_per_job, n), n)
        else:
            cluster.scale_slots(n)
        return True
    # a dask-jobqueue cluster made without cpldask: its workers' threads are the slots
    job = cluster._dummy_job
    jobs = math.ceil(n / job.worker_cores)
    if adapting:
        cluster.adapt(minimum_jobs=min(math.ceil(adaptive.minimum / job.worker_processes),
                                       jobs), maximum_jobs=jobs)
    else:
        cluster.scale(jobs=jobs)
    return True


@atexit.register
def _close_all() -> None:
    """Cancel the jobs of clusters still open at exit (before distributed's hooks)."""
    for cluster in list(_live):
        with suppress(Exception):
            cluster.close(timeout=10)
