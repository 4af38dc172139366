"""Issue 3: the seed's parallel execution, on Dask."""

from __future__ import annotations

import logging
import os
import pickle
import time

import dask
import distributed
import pytest
from astropy.io import fits

import cpldask as cpl
from helpers import intervals, max_overlap, recipe_pids, wait_until


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_seed_three_ways_to_run_in_background(bias_files, tmp_path, monkeypatch, client):
    # (the client fixture: the embedded cluster is up before the clock starts; the
    # test is about calls returning at once, not about starting a cluster)
    # the seed's first example, verbatim but for nifu=1 (the frames hold one IFU)
    monkeypatch.chdir(tmp_path)
    # Create a threaded recipe
    r1 = cpl.Recipe('muse_bias', threaded = True)
    r1.param.nifu = 1
    r1.param.ovscignore = 6  # not the session's muse_bias call, which Dask would share
    t0 = time.monotonic()
    result1 = r1(bias_files)
    # Prepare a recipe for background execution
    r2 = cpl.Recipe('muse_bias')
    r2.param.nifu = 1
    r2.threaded = True
    result2 = r2(bias_files, param={'ovscignore': 4})
    # Execute a recipe in background
    r3 = cpl.Recipe('muse_bias')
    r3.param.nifu = 1
    result3 = r3(bias_files, threaded = True, param={'ovscignore': 5})
    assert time.monotonic() - t0 < 1.0  # all three returned at once
    assert all(r.is_alive() for r in (result1, result2, result3))
    for res in (result1, result2, result3):
        assert res.MASTER_BIAS[1].data.shape == (4112, 4096)  # waits
        assert not res.is_alive() and res.status == "finished"


@pytest.mark.requires_cpl
def test_seed_results_list_and_maxthreads(test_recipe, any_fits, tmp_path, monkeypatch):
    # the seed's second example, with the test recipe standing in for muse_focus
    monkeypatch.chdir(tmp_path)
    cpl.Recipe.set_maxthreads(2)
    try:
        muse_focus = cpl.Recipe('cpldask_test', threaded = True)
        muse_focus.param.sleep = 0.5
        files = [any_fits] * 6
        results = [ muse_focus(f, param={'value': float(i)}) for i, f in enumerate(files) ]
        for i, res in enumerate(results):
            res.PRODUCT.writeto('FOCUS_TABLE_%02i.fits' % (i+1))
        assert [fits.getheader('FOCUS_TABLE_%02i.fits' % (i+1))['ESO QC ECHO VALUE']
                for i in range(6)] == [float(i) for i in range(6)]
        assert max_overlap(intervals(results)) == 2
    finally:
        cpl.Recipe.set_maxthreads(2)


@pytest.mark.requires_cpl
def test_failure_raised_on_access(test_recipe, any_fits):
    res = test_recipe(any_fits, threaded=True, param={"fail": True})
    with pytest.raises(cpl.CplError):
        res.PRODUCT
    with pytest.raises(cpl.CplError):
        "PRODUCT" in res
    assert res.status == "error"
    assert isinstance(res.exception(), cpl.CplError)


@pytest.mark.requires_cpl
@pytest.mark.parametrize("n", [1, 3])
def test_maxthreads_limits_overlap_embedded(test_recipe, any_fits, n):
    cpl.Recipe.set_maxthreads(n)
    try:
        results = [test_recipe(any_fits, threaded=True,
                               param={"sleep": 1.5, "value": float(i)}) for i in range(6)]
        distributed.wait([r.future for r in results])
        assert max_overlap(intervals(results)) == n
    finally:
        cpl.Recipe.set_maxthreads(2)


@pytest.mark.requires_cpl
def test_embedded_cluster_grows_only_after_earlier_calls(test_recipe, any_fits, client):
    """A limit of at least the embedded cluster's threads needs no semaphore (the
    threads are the limit); a larger limit set while such calls are pending adds
    workers only once they are done, so they never run more at once than allowed."""
    from cpldask import _cluster

    threads = _cluster._embedded["threads"]
    cpl.Recipe.set_maxthreads(threads)
    try:
        assert _cluster.slots_for_call(client, direct=True)[0] is None  # no semaphore
        early = [test_recipe(any_fits, threaded=True,
                             param={"sleep": 1.0, "value": 100.0 + i})
                 for i in range(2 * threads)]
        cpl.Recipe.set_maxthreads(threads + 2)  # returns at once: the growth waits
        assert _cluster._embedded["threads"] == threads
        late = [test_recipe(any_fits, threaded=True, param={"sleep": 1.0, "value": 200.0 + i})
                for i in range(threads + 2)]
        distributed.wait([r.future for r in early + late])
        assert max_overlap(intervals(early)) == threads
        assert max_overlap(intervals(early + late)) <= threads + 2
        wait_until(lambda: _cluster._embedded["threads"] == threads + 2, 60,
                   "the cluster to grow once the earlier calls were done")
        assert sum(client.nthreads().values()) == threads + 2
    finally:
        cpl.Recipe.set_maxthreads(2)


@pytest.mark.requires_cpl
def test_maxthreads_on_a_cluster_the_user_brought(test_recipe, any_fits):
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, host="127.0.0.1",
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        assert cpl.get_client() is client
        cpl.Recipe.set_maxthreads(3)
        results = [test_recipe(any_fits, threaded=True,
                               param={"sleep": 1.5, "value": float(i)}) for i in range(7)]
        assert {r.record.worker for r in results} <= set(client.scheduler_info()["workers"])
        assert max_overlap(intervals(results)) == 3
        cpl.Recipe.set_maxthreads(1)
        results = [test_recipe(any_fits, threaded=True,
                               param={"sleep": 0.5, "value": float(i)}) for i in range(3)]
        assert max_overlap(intervals(results)) == 1
    assert cpl.get_client() is not client  # back to the embedded cluster


@pytest.mark.requires_cpl
def test_future_interface(test_recipe, any_fits):
    res = test_recipe(any_fits, threaded=True, param={"sleep": 0.3})
    assert isinstance(res.future, distributed.Future)
    assert "cpldask_test" in repr(res) and res.key.startswith("cpldask_test-")
    done = []
    res.add_done_callback(done.append)
    assert res.result(timeout=60) is res
    assert res.done() and res.exception() is None and res.status == "finished"
    res.join()
    assert done == [res] or wait_until(lambda: done == [res], 5, "the callback")
    html = res._repr_html_()
    assert "cpldask_test" in html and "PRODUCT" in html and "finished" in html


@pytest.mark.requires_cpl
def test_join_with_timeout_does_not_raise(test_recipe, any_fits):
    res = test_recipe(any_fits, threaded=True, param={"sleep": 30, "value": 7.0})
    res.join(timeout=0.2)
    assert res.is_alive()
    res.cancel()


@pytest.mark.requires_cpl
def test_await(test_recipe, any_fits):
    import asyncio

    res = test_recipe(any_fits, threaded=True, param={"value": 3.0})

    async def main():
        return await res

    assert asyncio.run(main()) is res and res.status == "finished"


@pytest.mark.requires_cpl
def test_cancel_kills_the_recipe_process(test_recipe, any_fits):
    before = recipe_pids("cpldask_test")
    res = test_recipe(any_fits, threaded=True, param={"sleep": 120, "value": 99.0})
    started = wait_until(lambda: recipe_pids("cpldask_test") - before, 30, "the recipe")
    t0 = time.monotonic()
    res.cancel()
    wait_until(lambda: not (recipe_pids("cpldask_test") & started), 5, "the recipe to end")
    assert time.monotonic() - t0 < 3
    assert res.cancelled()


@pytest.mark.requires_cpl
def test_identical_calls_share_a_task_key(test_recipe, any_fits, tmp_path):
    a = test_recipe.delayed(any_fits, output_dir=tmp_path, param={"value": 5.0})
    b = test_recipe.delayed(any_fits, output_dir=tmp_path, param={"value": 5.0})
    c = test_recipe.delayed(any_fits, output_dir=tmp_path, param={"value": 6.0})
    assert a.key == b.key != c.key
    assert a.key.startswith("cpldask_test-")
    ra, rb, rc = dask.compute(a, b, c)
    assert ra.PRODUCT == rb.PRODUCT  # ran once


@pytest.mark.requires_cpl
def test_graph_of_results_resolved_on_workers(test_recipe, any_fits, tmp_path):
    first = test_recipe(any_fits, threaded=True, param={"sleep": 1.0, "value": 1.0})
    # a background result, a delayed one and one product of a delayed one as inputs,
    # all wired before anything finished
    second = test_recipe.delayed(first, param={"value": 2.0})
    t0 = time.monotonic()
    third = test_recipe(raw={"RAW": [second.PRODUCT, first]}, threaded=True,
                        param={"value": 3.0})
    assert time.monotonic() - t0 < 1.0 and first.is_alive()
    assert fits.getheader(third.paths["PRODUCT"][0])["ESO QC ECHO VALUE"] == 3.0
    rec = third.record
    # only the small record travelled back: no pixels
    assert len(pickle.dumps(rec)) < 50_000


@pytest.mark.requires_cpl
def test_recipe_log_reaches_python_logging(test_recipe, any_fits, caplog):
    with caplog.at_level(logging.INFO, logger="cpl.cpldask_test"):
        res = test_recipe(any_fits, param={"value": 4.0})
        wait_until(lambda: any("OMP_NUM_THREADS" in r.getMessage() for r in caplog.records),
                   10, "the replayed log")
    assert any(r.name.startswith("cpl.cpldask_test") for r in caplog.records)
    assert any("OMP_NUM_THREADS" in line for line in res.log.info)


@pytest.mark.requires_cpl
def test_recipe_messages_reach_logging_while_it_runs(test_recipe, any_fits, caplog):
    """python-cpl hands each CPL message to logging as the recipe writes it; so does
    cpldask, from the worker, while the recipe still runs (here: burns 6 s of CPU
    after its first messages). Latency: from the recipe's start (its own clock, in
    the product) to the message in the client's logging."""
    with caplog.at_level(logging.INFO, logger="cpl.cpldask_test"):
        res = test_recipe(any_fits, param={"spin": 6.0, "label": "live"}, threaded=True,
                          cache=False)
        wait_until(lambda: any("OMP_NUM_THREADS" in r.getMessage() for r in caplog.records),
                   60, "a message of the running recipe")
        seen = time.time()
        assert not res.done()
    start = fits.getheader(res.paths["PRODUCT"][0])["ESO QC ECHO TSTART"]
    print(f"live log latency: {seen - start:.2f} s")
    assert 0 <= seen - start < 1.0
    # each message once: those sent live are not sent again at the end
    live = [r for r in caplog.records if "OMP_NUM_THREADS" in r.getMessage()]
    assert len(live) == 1 and live[0].name == "cpl.cpldask_test.cpldask_test"
    assert sum("OMP_NUM_THREADS" in line for line in res.log.info) == 1


@pytest.mark.requires_cpl
def test_a_running_result_shows_its_messages_so_far(test_recipe, any_fits, monkeypatch):
    """Nobody's logging shows cpl.cpldask_test here (python-cpl's NullHandler only),
    yet the messages reach the Result while the recipe runs (cpldask.live-log-level,
    INFO): ``res.log_so_far`` grows, ``current_message``, the Jupyter display and
    the CLI's live lines show it. ``res.log`` waits for the end, as python-cpl's."""
    from cpldask._cli._batch import Job, _current_messages

    logger = logging.getLogger("cpl.cpldask_test")
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "handlers", [logging.NullHandler()])
    res = test_recipe(any_fits, param={"spin": 6.0, "label": "so-far"}, threaded=True,
                      cache=False)
    assert len(res.log_so_far) == 0  # returns at once, nothing yet
    wait_until(lambda: any("OMP_NUM_THREADS" in r.msg for r in res.log_so_far), 60,
               "a message of the running recipe in log_so_far")
    assert not res.done()
    assert res.current_message
    assert "log (so far)" in res._repr_html_() and "OMP_NUM_THREADS" in res._repr_html_()
    job = Job("so-far", res, started=time.monotonic())
    assert res.current_message in str(_current_messages([job])[0])
    full = res.log  # waits
    assert res.done()
    assert [r.msg for r in res.log_so_far] == [r.msg for r in full]  # the whole log now


@pytest.mark.requires_cpl
def test_logname_and_loglevel_as_in_python_cpl(test_recipe, any_fits, caplog):
    with caplog.at_level(logging.DEBUG, logger="my.reduction"):
        res = test_recipe(any_fits, logname="my.reduction", loglevel=logging.INFO,
                          cache=False)
        wait_until(lambda: any(r.name.startswith("my.reduction.") for r in caplog.records),
                   10, "the messages under logname")
    assert all(r.levelno >= logging.INFO for r in res.log)
    assert {r.name.split(".")[0] for r in res.log} == {"my"}


@pytest.mark.requires_python_cpl
def test_log_messages_are_sent_only_where_logging_shows_them(monkeypatch):
    from cpldask._logs import log_threshold

    logger = logging.getLogger("cpl.threshold_check")
    monkeypatch.setattr(logger, "propagate", False)  # away from pytest's root handlers
    assert log_threshold("cpl.threshold_check") == logging.WARNING  # Python's last resort
    monkeypatch.setattr(logger, "handlers", [logging.NullHandler()])
    assert log_threshold("cpl.threshold_check") > logging.CRITICAL  # python-cpl's default
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO)
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "level", logging.DEBUG)
    assert log_threshold("cpl.threshold_check") == logging.INFO


@pytest.mark.requires_cpl
def test_omp_threads_set_before_the_recipe_loads(test_recipe, any_fits):
    res = test_recipe(any_fits, env={"OMP_NUM_THREADS": "3"})
    assert fits.getheader(res.paths["PRODUCT"][0])["ESO QC ECHO OMP"] == "3"
    res = test_recipe(any_fits, param={"value": 8.0})  # default: cores // slots
    assert fits.getheader(res.paths["PRODUCT"][0])["ESO QC ECHO OMP"] == "1"


@pytest.mark.requires_cpl
def test_the_recipe_sees_the_calls_environment(test_recipe, any_fits, client):
    """The recipe's environment is the worker's plus the call's ``env``: nothing of
    the fork server's own (which keeps OpenBLAS single-threaded for itself; see also
    test_runner.py::test_the_recipe_process_has_the_callers_environment)."""
    def logged(res, name):
        return [e.msg for e in res.log if f"ENV {name}=" in e.msg]

    res = test_recipe(any_fits, env={"CPLDASK_TEST_GREETING": "hello there"},
                      param={"envvar": "CPLDASK_TEST_GREETING", "value": 12.0})
    assert logged(res, "CPLDASK_TEST_GREETING") == [
        "cpldask_test: ENV CPLDASK_TEST_GREETING=hello there"]
    res = test_recipe(any_fits, param={"envvar": "OPENBLAS_NUM_THREADS", "value": 13.0})
    on_worker = client.run(lambda: os.environ.get("OPENBLAS_NUM_THREADS", "unset"))
    assert logged(res, "OPENBLAS_NUM_THREADS") == [
        f"cpldask_test: ENV OPENBLAS_NUM_THREADS={on_worker[res.record.worker]}"]


@pytest.mark.requires_cpl
def test_recipes_run_without_the_nannys_malloc_setting(test_recipe, any_fits, client):
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ (for Python workers);
    glibc reads it when a process starts, and with it muse_bias took 1.3 s of system
    CPU instead of 0.9. Neither the fork servers nor the recipes get it."""
    from cpldask.worker import forkserver

    def servers():
        return [(os.environ.get("MALLOC_TRIM_THRESHOLD_"), s.proc.pid)
                for s in forkserver._servers.values() if s.alive()]

    res = test_recipe(any_fits, param={"envvar": "MALLOC_TRIM_THRESHOLD_", "value": 14.0})
    assert [e.msg for e in res.log if " ENV " in e.msg] == [
        "cpldask_test: ENV MALLOC_TRIM_THRESHOLD_=unset"]
    for worker, found in client.run(servers).items():
        assert found, worker
        for in_worker, pid in found:
            assert in_worker == "65536"  # the nanny's, in the worker itself
            with open(f"/proc/{pid}/environ", "rb") as f:
                assert b"MALLOC_TRIM_THRESHOLD_=" not in f.read()


@pytest.mark.requires_cpl
def test_omp_threads_show_in_cpu_usage(test_recipe, any_fits):
    """python-cpl's per-call env is too late for OpenMP; ours is not: the runtime
    starts as many threads as the call's OMP_NUM_THREADS says, and each of them
    burns its share of CPU (the recipe spins 0.5 CPU-seconds per thread)."""
    cpu = {}
    for n in (1, 2):
        res = test_recipe(any_fits, env={"OMP_NUM_THREADS": str(n)},
                          param={"spin": 0.5, "value": float(n)})
        assert fits.getheader(res.paths["PRODUCT"][0])["ESO QC ECHO NTHREADS"] == n
        cpu[n] = res.stat["user_time"] + res.stat["sys_time"]
    assert 0.4 < cpu[1] < 0.9 and 0.9 < cpu[2] < 1.6


@pytest.mark.requires_cpl
def test_a_failed_background_call_logs_its_errors_unasked(test_recipe, any_fits, caplog):
    # python-cpl logs a recipe's messages as it runs, failed or not: nobody has to
    # read the result for them to appear
    with caplog.at_level(logging.INFO, logger="cpl.cpldask_test"):
        res = test_recipe(any_fits, threaded=True, param={"fail": True, "value": 41.0})
        wait_until(lambda: any("fail=1" in r.getMessage() for r in caplog.records), 20,
                   "the failed call's log")
    assert res.status == "error"


@pytest.mark.requires_cpl
def test_background_calls_in_a_burst_share_graphs(test_recipe, any_fits, client,
                                                  monkeypatch):
    from cpldask import _submit

    sizes = []
    send = _submit._Batch._send
    monkeypatch.setattr(_submit._Batch, "_send",
                        lambda self, c: (sizes.append(len(self._calls)), send(self, c)))
    results = [test_recipe(any_fits, threaded=True, param={"value": 500.0 + i})
               for i in range(40)]
    twin = test_recipe(any_fits, threaded=True, param={"value": 500.0})  # shares a task
    # a batched call used at once: as input of a call, and of the user's own task
    after = test_recipe(raw={"RAW": [results[-1]]}, threaded=True, param={"value": 1.5})
    call_dir = client.submit(lambda rec: rec.call_dir, results[-2].future)
    distributed.wait([r.future for r in results] + [after.future, call_dir])
    assert all(r.status == "finished" for r in results + [after])
    assert twin.key == results[0].key and twin.paths == results[0].paths
    assert call_dir.result() == results[-2].record.call_dir
    assert sum(sizes) == 40 and max(sizes) > 1  # 40 tasks in fewer graphs than calls


@pytest.mark.requires_cpl
def test_a_running_result_answers_from_local_state(test_recipe, any_fits):
    """repr, HTML, key, status and duck-typing probes of a running call return at
    once, as distributed.Future's do; only product names wait for the recipe."""
    res = test_recipe(any_fits, threaded=True, param={"sleep": 5.0}, cache=False)
    t0 = time.monotonic()
    assert getattr(res, "compute", None) is None  # not a product name: no wait
    assert "status=pending" in repr(res) and "pending" in res._repr_html_()
    assert res.key.startswith("cpldask_test-") and res.status == "pending"
    assert time.monotonic() - t0 < 1.0 and not res.done()
    assert "PRODUCT" in res  # a product: waits
    assert "products=['PRODUCT']" in repr(res)
