"""Worker side: a batch job's worker leaves before its job ends, by draining.

dask-jobqueue's ``--lifetime`` retires a worker at a fixed moment: the recipes it runs
then are killed and run again elsewhere. cpldask's batch jobs instead export
:data:`ENV`, the moment (epoch seconds) by which their worker should be gone
(walltime minus a margin, give or take a stagger: :func:`cpldask.cluster.lifetime`),
and every worker of such a cluster runs :class:`JobEnd`:

* a call whose expected duration (``CallSpec.expected``: the earlier runs of the
  same recipe, parameters and inputs, :mod:`cpldask._estimate`) does not fit in the
  time left is not started here: the worker stops taking calls (closing_gracefully)
  and hands the call back to the scheduler (:class:`distributed.Reschedule`), which
  gives it to another worker;
* at :data:`ENV`'s moment the worker stops taking calls, waits for the recipes it
  runs to end, moves their results to other workers and leaves (its job ends); a
  recipe still running when the batch system kills the job is lost and run again
  elsewhere (``cpldask.retries``).

A call of unknown duration is started while time is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from distributed import Reschedule
from distributed.diagnostics.plugin import WorkerPlugin

from .. import _compat

#: the environment variable of a job's worker: when it should be gone (epoch seconds)
ENV = "CPLDASK_JOB_END"
#: how often the worker looks at the time left and its running calls (seconds)
POLL = 0.5

logger = logging.getLogger("cpldask.jobend")


def job_end() -> float | None:
    """When this worker's job wants it gone (epoch seconds), or None (no batch job,
    or one without a walltime)."""
    value = os.environ.get(ENV)
    try:
        return float(value) if value else None
    except ValueError:
        return None


def refuse_if_late(spec) -> None:
    """Raise :class:`distributed.Reschedule` when the call ``spec`` is expected to run
    longer than this worker's job has left, after the worker has stopped taking calls
    (so the scheduler gives it to another one). Nothing when the time is unknown."""
    end = job_end()
    expected = getattr(spec, "expected", None)
    if end is None or expected is None or expected <= end - time.time():
        return
    from distributed import get_worker

    worker = get_worker()
    logger.info("%s: %s is expected to take %.0f s, the job has %.0f s left; this "
                "worker takes no more calls", worker.address, spec.recipe, expected,
                end - time.time())
    _drain_soon(worker)
    deadline = time.monotonic() + 10  # the scheduler has marked it within a moment
    while not _compat.worker_closing_gracefully(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _compat.worker_closing_gracefully(worker):
        raise Reschedule()
    # (no other worker to take its results: it runs here, and if the job ends first,
    # it is run again elsewhere)


_draining: set[str] = set()  # the address of this process's worker, once it drains


def _drain_soon(worker) -> None:
    if worker.address not in _draining:
        _draining.add(worker.address)
        worker.loop.add_callback(_compat.retire_this_worker, worker, close=False,
                                 reason="cpldask-job-end")


class JobEnd(WorkerPlugin):
    """Registered by :func:`cpldask.cluster.jobqueue` on its scheduler: every worker
    whose job exported :data:`ENV` drains and leaves before the job ends."""

    name = "cpldask-job-end"

    def setup(self, worker) -> None:
        if job_end() is not None:
            worker.loop.add_callback(self._watch, worker)

    async def _watch(self, worker) -> None:
        from distributed.core import Status

        end = job_end()
        while worker.status in (Status.running, Status.paused, Status.closing_gracefully):
            if time.time() >= end:
                _drain_soon(worker)
            if worker.address in _draining and _compat.executing_count(worker) == 0:
                logger.info("%s: the job ends at %s; no call runs here: leaving",
                            worker.address, time.strftime("%H:%M:%S", time.localtime(end)))
                await _compat.retire_this_worker(worker, close=True,
                                                 reason="cpldask-job-end")
                return
            await asyncio.sleep(POLL)
