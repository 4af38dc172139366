"""cpldask's dask-jobqueue cluster classes: one per batch system.

This module imports dask-jobqueue (the ``hpc`` extra) at its top, so only
:mod:`cpldask.cluster` imports it, when a cluster class is needed
(``cpldask.cluster.slurm(...)``, ``cpldask.cluster.SLURMCluster``); ``import
cpldask.cluster`` works without dask-jobqueue.

Each class is dask-jobqueue's own, with what cpldask adds (:class:`SlotsMixin`):
sizes in recipe *slots*, an attached client, and a job class that marks a
cancelled job closed (:class:`ClosingJob`).

>>> import cpldask.cluster, dask_jobqueue
>>> cluster = cpldask.cluster.slurm(slots=2, adapt=False)        # doctest: +SKIP
>>> isinstance(cluster, dask_jobqueue.SLURMCluster)               # doctest: +SKIP
True
"""

from __future__ import annotations

import math
from contextlib import suppress

import dask
import dask_jobqueue
import dask_jobqueue.lsf
import dask_jobqueue.pbs
import dask_jobqueue.sge
import dask_jobqueue.slurm
import distributed
from distributed.deploy.adaptive import Adaptive
from distributed.deploy.spec import ProcessInterface


__all__ = ["SLURMCluster", "PBSCluster", "SGECluster", "LSFCluster", "CLUSTERS",
           "SlotsMixin", "ClosingJob", "Pool"]


def _cfg(key: str, value=None):
    """``value``, or the ``cpldask.jobqueue.<key>`` default (cpldask.yaml)."""
    return value if value is not None else dask.config.get(f"cpldask.jobqueue.{key}")


# -- jobs -----------------------------------------------------------------------------
class ClosingJob:
    """A dask-jobqueue Job whose ``close`` also marks it closed.

    dask-jobqueue's ``Job.close`` (0.9.0) cancels the batch job (scancel, qdel,
    bkill) but does not call :meth:`ProcessInterface.close`, so the job's status
    stays ``running``. distributed's ``SpecCluster.close`` (2026.8) then asserts that
    every job it ever created is closed, and fails whenever anything still holds a
    Job (``list(cluster.workers.values())``, a notebook's variable). Closing it the
    way ProcessInterface's contract says (status closed, ``finished()`` returns)
    fixes that; should dask-jobqueue do so itself one day, this does it a second
    time, which is harmless.
    """

    async def close(self) -> None:
        await super().close()  # the batch system's cancel command
        await ProcessInterface.close(self)


class SLURMJob(ClosingJob, dask_jobqueue.slurm.SLURMJob):
    """dask-jobqueue's SLURM job (sbatch, scancel), marked closed once cancelled."""


class PBSJob(ClosingJob, dask_jobqueue.pbs.PBSJob):
    """dask-jobqueue's PBS job (qsub, qdel), marked closed once cancelled."""


class SGEJob(ClosingJob, dask_jobqueue.sge.SGEJob):
    """dask-jobqueue's SGE job (qsub, qdel), marked closed once cancelled."""


class LSFJob(ClosingJob, dask_jobqueue.lsf.LSFJob):
    """dask-jobqueue's LSF job (bsub, bkill), marked closed once cancelled."""


# -- clusters -------------------------------------------------------------------------
class SlotsMixin:
    """What cpldask adds to a dask-jobqueue cluster class (see
    :func:`cpldask.cluster.jobqueue`, which sets the attributes)."""

    client: distributed.Client | None = None
    """The attached client (None once closed)."""
    slots_per_job: int = 1
    cores_per_slot: int = 1
    layout: dict = {}
    """How the slots map onto a job (system, slots_per_job, cores_per_slot, ...)."""
    offers: list = []
    """What the workers of each job template offer (Dask worker resources, MEMORY
    and CORES), known before any job has started: calls are checked against it."""
    adaptive: Adaptive | None = None
    """The adaptive scaler of the last :meth:`adapt` (None: never adapted)."""

    @property
    def slots(self) -> int:
        """Recipe slots of the workers connected now (threads of live workers)."""
        return sum(w.get("nthreads", 0) for w in self.scheduler_info["workers"].values())

    @property
    def adapting(self) -> bool:
        """Whether the cluster adapts (rather than holding a fixed number of jobs)."""
        return self.adaptive is not None and self.adaptive.state in ("starting",
                                                                     "running")

    def jobs_for(self, slots: int) -> int:
        """How many jobs hold ``slots`` recipe slots."""
        return math.ceil(max(0, int(slots)) / self.slots_per_job)

    def adapt(self, *args, **kwargs) -> Adaptive:
        """dask-jobqueue's :meth:`adapt`; the scaler it returns is kept as
        :attr:`adaptive` (distributed keeps it in a private attribute only)."""
        self.adaptive = super().adapt(*args, **kwargs)
        return self.adaptive

    def scale_slots(self, n: int) -> None:
        """Hold jobs for ``n`` recipe slots (0: cancel all jobs); stops adaptivity."""
        if self.adaptive is not None:
            self.adaptive.stop(reason="cpldask-scale-slots")
        self.scale(jobs=self.jobs_for(n))

    def adapt_slots(self, minimum: int = 0, maximum: int | None = None, *,
                    interval=None, wait_count: int | None = None,
                    target_duration=None) -> Adaptive:
        """Adapt between ``minimum`` and ``maximum`` recipe slots (whole jobs).

        ``interval``, ``wait_count`` and ``target_duration`` are those of
        :class:`distributed.deploy.Adaptive`, defaults from the
        ``cpldask.jobqueue.adapt-*`` keys. The default target duration is tiny:
        every waiting recipe call asks for a slot (Dask's 5 s target would start one
        job for a handful of calls whose duration it does not know yet).

        Examples
        --------
        >>> cluster.adapt_slots(0, 8)        # doctest: +SKIP
        """
        maximum = minimum if maximum is None else maximum
        return self.adapt(minimum_jobs=self.jobs_for(minimum),
                          maximum_jobs=self.jobs_for(maximum),
                          interval=_cfg("adapt-interval", interval),
                          wait_count=int(_cfg("adapt-wait-count", wait_count)),
                          target_duration=_cfg("adapt-target-duration", target_duration))

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
        """Close the client, cancel every job (those of its pools too) and stop the
        scheduler."""
        for pool in list(getattr(self, "pools", ())):
            with suppress(Exception):
                pool.close()
        client, self.client = self.client, None
        if client is not None and client.status not in ("closed", "closing"):
            with suppress(Exception):
                client.close()
        return super().close(timeout)


class Pool:
    """Jobs of another size whose workers join a cluster's scheduler: a second node
    type (more memory, another partition or queue) beside the cluster's own jobs.

    Made by :func:`cpldask.cluster.add_pool`. It holds a fixed number of jobs (the
    cluster's adaptive scaler neither starts nor stops them); :meth:`close` cancels
    them, as closing the cluster does.
    """

    def __init__(self, cluster: SlotsMixin, name: str, jobs: list, offers: dict):
        self.cluster, self.name, self.jobs, self.offers = cluster, name, jobs, offers

    @property
    def job_ids(self) -> list[str]:
        """The batch job ids of the pool's jobs."""
        return [str(job.job_id) for job in self.jobs if job.job_id]

    def close(self) -> None:
        """Cancel the pool's jobs."""
        async def cancel():
            for job in self.jobs:
                await job.close()

        jobs, self.jobs = self.jobs, []
        if jobs and self.cluster.status.name not in ("closed",):
            self.jobs = jobs
            self.cluster.sync(cancel)
            self.jobs = []
        with suppress(ValueError):
            self.cluster.pools.remove(self)
        with suppress(ValueError):
            self.cluster.offers.remove(self.offers)


class SLURMCluster(SlotsMixin, dask_jobqueue.SLURMCluster):
    """dask-jobqueue's SLURMCluster sized in recipe slots; made by
    :func:`cpldask.cluster.slurm`."""

    job_cls = SLURMJob


class PBSCluster(SlotsMixin, dask_jobqueue.PBSCluster):
    """dask-jobqueue's PBSCluster sized in recipe slots; made by
    :func:`cpldask.cluster.pbs`."""

    job_cls = PBSJob


class SGECluster(SlotsMixin, dask_jobqueue.SGECluster):
    """dask-jobqueue's SGECluster sized in recipe slots; made by
    :func:`cpldask.cluster.sge`."""

    job_cls = SGEJob


class LSFCluster(SlotsMixin, dask_jobqueue.LSFCluster):
    """dask-jobqueue's LSFCluster sized in recipe slots; made by
    :func:`cpldask.cluster.lsf`."""

    job_cls = LSFJob


#: the cluster class of each batch system name
CLUSTERS: dict[str, type] = {"slurm": SLURMCluster, "pbs": PBSCluster,
                             "sge": SGECluster, "lsf": LSFCluster}
