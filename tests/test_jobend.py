"""Workers whose jobs end (issue 21, part 2): they take no call that would not finish
in time and leave by draining, not by killing a running recipe.

A worker here is a batch job's as cpldask.cluster makes it: its environment names
when it should be gone (``CPLDASK_JOB_END``, which a job script exports) and the
scheduler runs cpldask's :class:`~cpldask.worker.jobend.JobEnd` plugin. Two Nannies
behind one scheduler: "ending" (its job ends soon) and "staying" (no end).
"""

from __future__ import annotations

import time

import dask
import distributed
import pytest

from helpers import wait_until

pytestmark = pytest.mark.requires_cpl


def test_the_job_end_comes_from_the_environment(monkeypatch):
    from cpldask.worker import jobend

    monkeypatch.delenv(jobend.ENV, raising=False)
    assert jobend.job_end() is None
    monkeypatch.setenv(jobend.ENV, "1800000000")
    assert jobend.job_end() == 1.8e9


def _cluster(end: float | None, *, lifetime: bool = True):
    """A cluster of the "staying" worker and, with ``end``, the "ending" one, whose
    job ends at ``end`` (epoch s). ``cluster.layout`` says, as a cpldask batch
    cluster's does, that its workers have a lifetime: calls carry their expected
    duration."""
    from cpldask.worker.jobend import ENV

    def nanny(env):
        return {"cls": distributed.Nanny, "options": {"nthreads": 1, "env": env,
                                                      "silence_logs": 40}}

    workers = {"staying": nanny({})}
    if end is not None:
        workers["ending"] = nanny({ENV: str(end)})
    scheduler = {"cls": distributed.Scheduler, "options": {"port": 0,
                                                            "dashboard_address": ":0"}}
    cluster = distributed.SpecCluster(scheduler=scheduler, workers=workers)
    if lifetime:
        cluster.layout = {"lifetime": 1.0}
    return cluster


def _addresses(client) -> dict[str, str]:
    return {info["name"]: a for a, info in client.scheduler_info()["workers"].items()}


def _start(cluster) -> distributed.Client:
    from cpldask.worker.jobend import JobEnd

    client = distributed.Client(cluster)
    client.register_plugin(JobEnd(), name=JobEnd.name)
    client.wait_for_workers(len(cluster.worker_spec), timeout=60)
    return client


def test_a_worker_whose_job_ends_drains_instead_of_killing_its_recipe(test_recipe,
                                                                     any_fits):
    end = time.time() + 20
    with _cluster(end) as cluster, _start(cluster) as client:
        ending = _addresses(client)["ending"]
        assert time.time() < end - 5, "the workers took too long to start"
        with dask.annotate(workers=[ending]):
            res = test_recipe(any_fits, param={"sleep": 20.0, "value": 1.0},
                              threaded=True)
        rec = res.record  # the recipe ran to its end where it started
        assert rec.worker == ending and rec.start < end < rec.end
        # then the worker left; the result had moved to the staying worker
        wait_until(lambda: ending not in _addresses(client).values(), 30,
                   "the drained worker to leave")
        assert client.gather(res.future).recipe == "cpldask_test"
        assert client.who_has(res.future)[res.key] == (_addresses(client)["staying"],)


def test_a_call_that_would_not_finish_in_time_goes_to_another_worker(test_recipe,
                                                                      any_fits):
    with _cluster(None, lifetime=False) as cluster, _start(cluster) as client:
        staying = _addresses(client)["staying"]
        # an earlier run, recorded in the product cache, says how long this call
        # takes (~15 s)
        first = test_recipe(any_fits, param={"sleep": 15.0, "value": 2.0}, cache=True)
        assert first.record.end - first.record.start > 15
        # a worker whose job ends in 14 s joins; by the time it is there, less time
        # is left than the call takes, however fast it started (0.5-6 s here)
        from cpldask.worker.jobend import ENV

        end = time.time() + 14
        cluster.worker_spec["ending"] = {"cls": distributed.Nanny, "options": {
            "nthreads": 1, "env": {ENV: str(end)}, "silence_logs": 40}}
        cluster.scale(2)
        client.wait_for_workers(2, timeout=30)
        ending = _addresses(client)["ending"]
        left = end - time.time()
        assert 0 < left < 15
        # offered to the ending worker first, which hands it back and leaves early;
        # the call comes from a client that joined the running scheduler, as after
        # `cpldask cluster start` (no cluster object here: the scheduler's job-end
        # plugin tells it that jobs end, the product cache how long the call takes)
        with distributed.Client(cluster.scheduler_address, set_as_default=False) as joined, \
                joined.as_current(), \
                dask.annotate(workers=[ending], allow_other_workers=True):
            assert joined.cluster is None
            again = test_recipe(any_fits, param={"sleep": 15.0, "value": 2.0},
                                cache=False, threaded=True)
            wait_until(lambda: ending not in _addresses(client).values(), 30,
                       "the ending worker to leave")
            left_at = time.time()
            assert again.record.worker == staying
        assert left_at < end, "it left before its job's end: it drained at once"


def test_a_call_lost_with_its_worker_runs_again_and_the_summary_counts_it(
        test_recipe, any_fits):
    import os
    import signal

    from cpldask._cli._batch import ran_again
    from cpldask._progress import Job
    from helpers import recipe_pids

    with _cluster(time.time() + 3600, lifetime=False) as cluster, \
            _start(cluster) as client:
        ending = _addresses(client)["ending"]
        before = recipe_pids("cpldask_test")
        with dask.annotate(workers=[ending], allow_other_workers=True):
            res = test_recipe(any_fits, param={"sleep": 8.0, "value": 3.0},
                              threaded=True)
        wait_until(lambda: recipe_pids("cpldask_test") - before, 30, "the recipe to start")
        # the job is killed (as by its walltime): the worker process dies at once
        pid = client.run(os.getpid, workers=[ending])[ending]
        os.kill(pid, signal.SIGKILL)
        assert res.record.worker != ending  # run again, on the other worker
        assert ran_again([Job("lost", res)]) == (
            "1 call ran again after its worker was lost (a job ended or was killed: "
            "1 time)")
