"""Issue 7: cpldask on SLURM through dask-jobqueue, tested against a real single-node
SLURM (ci/slurm-start.sh), and products read through the worker that wrote them.

The first group needs no SLURM (reading products through a worker on the embedded
LocalCluster; job scripts and their configuration are in test_jobqueue.py, the fast
tier). The ``slurm`` group starts SLURM once per
session, submits real muse_bias calls as SLURM jobs, scales 0 -> 2 -> 0 jobs and
scancels a job in the middle of a call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid

import dask
import numpy as np
import pytest
from astropy.io import fits

import cpldask as cpl
import cpldask.cluster
from cpldask import _transfer
from helpers import recipe_pids, squeue, wait_until

#: every test here runs recipes (most muse_bias); job scripts: test_jobqueue.py
pytestmark = pytest.mark.requires_cpl


@pytest.fixture(scope="module")
def bias_result(bias_files, recipe_path):
    """This module's own muse_bias run. The session's may have been recomputed by the
    time these tests run (the chaos test of test_reduce.py kills the embedded
    cluster's workers, and with them the records they held), and these tests compare
    a record's product path with what a fresh handle opens."""
    r = cpl.Recipe("muse_bias")
    r.param.nifu = 1
    return r(bias_files, cache=False)

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: in every call's env: no call here shares a task with another test's call
RUN = uuid.uuid4().hex[:8]
TIMINGS: dict[str, float] = {}


def _fresh(res) -> cpl.Result:
    """A second Result on the same future: nothing opened or cached yet."""
    return cpl.Result(res.future, res.recipe, output=None)


def _same_hdus(a: fits.HDUList, b: fits.HDUList) -> None:
    assert [h.name for h in a] == [h.name for h in b]
    for x, y in zip(a, b):
        if x.data is not None:
            np.testing.assert_array_equal(x.data, y.data)


# -- products read through the worker that has them (embedded LocalCluster) -------------
@pytest.mark.muse
def test_product_is_fetched_through_its_worker_without_shared_filesystem(bias_result):
    direct = bias_result.MASTER_BIAS
    product = bias_result.record.products[0]
    with dask.config.set({"cpldask.jobqueue.shared-filesystem": False}):
        fetched = _fresh(bias_result).MASTER_BIAS
    assert fetched.filename() != product.path  # a copy made through the worker...
    assert not os.path.exists(fetched.filename())  # ...already unlinked: no leftovers
    _same_hdus(direct, fetched)
    assert fetched[0].header["DATAMD5"] == direct[0].header["DATAMD5"]


@pytest.mark.muse
def test_shared_filesystem_opens_products_in_place(bias_result):
    path = bias_result.record.products[0].path
    for setting in (True, "auto"):
        with dask.config.set({"cpldask.jobqueue.shared-filesystem": setting}):
            assert _fresh(bias_result).MASTER_BIAS.filename() == path  # no copy


@pytest.mark.muse
def test_auto_fetches_what_this_host_cannot_see(bias_result, monkeypatch):
    # as if the worker had written to a node-local disk: the path is not here
    monkeypatch.setattr(_transfer, "_exists_here", lambda path, size: False)
    fetched = _fresh(bias_result).MASTER_BIAS
    assert fetched.filename() != bias_result.record.products[0].path
    _same_hdus(bias_result.MASTER_BIAS, fetched)


@pytest.mark.muse
def test_copy_products_to_a_local_directory(bias_result, tmp_path):
    with dask.config.set({"cpldask.jobqueue.shared-filesystem": False}):
        copied = cpldask.cluster.copy_products(bias_result, tmp_path / "out")
    (path,) = copied["MASTER_BIAS"]
    original = bias_result.record.products[0].path
    assert pathlib.Path(path).read_bytes() == pathlib.Path(original).read_bytes()


@pytest.mark.muse
def test_a_product_of_a_worker_that_left_says_so(bias_result):
    record = bias_result.record
    product = record.products[0]
    gone = dataclasses.replace(record, worker="tcp://127.0.0.1:1")
    with dask.config.set({"cpldask.jobqueue.shared-filesystem": False}):
        with pytest.raises(FileNotFoundError, match="left the cluster.*cpldask.work-dir"):
            _transfer.open_fetched(product, gone, bias_result.future.client)


# -- real SLURM ---------------------------------------------------------------------------
def _job_of(pid: int) -> str | None:
    """The SLURM job a process belongs to (slurmd puts SLURM_JOB_ID in its env)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    except OSError:
        return None
    job = env.get(b"SLURM_JOB_ID")
    return job.decode() if job else None


@pytest.fixture(scope="session", autouse=True)
def _print_timings():
    yield
    if TIMINGS:
        print("\n[test_slurm timings] " + ", ".join(f"{k}: {v:.1f} s"
                                                   for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def reference(bias_result) -> fits.HDUList:
    """muse_bias's MASTER_BIAS from the embedded cluster, read before any SLURM
    cluster becomes the default client."""
    hdul = bias_result.MASTER_BIAS
    for h in hdul:
        _ = h.data
    return hdul


@pytest.fixture(scope="module")
def slurm_cluster(slurm, reference, tmp_path_factory):
    """A cpldask SLURM cluster with no job yet, sized by hand (adapt=False)."""
    assert squeue() == [], "the SLURM queue must start empty"
    cluster = cpldask.cluster.slurm(
        slots=2, adapt=False, walltime="00:10:00", memory_per_slot="2 GiB",
        log_directory=str(tmp_path_factory.mktemp("slurm-logs")))
    try:
        yield cluster
    finally:
        cluster.close()
        wait_until(lambda: squeue() == [], 30, "the jobs to leave the queue")


@pytest.fixture
def muse_bias():
    r = cpl.Recipe("muse_bias", threaded=True)
    r.param.nifu = 1
    return r


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_omp_threads_per_slot_reach_the_recipe(slurm, test_recipe, any_fits):
    """cores_per_slot=2: the job reserves 2 CPUs and the recipe runs 2 OpenMP threads
    (the job script's export beats the Nanny's OMP_NUM_THREADS=1)."""
    assert squeue() == []
    cluster = cpldask.cluster.slurm(slots=1, cores_per_slot=2, adapt=False,
                                    memory_per_slot="1 GiB", walltime="00:05:00")
    try:
        assert "export OMP_NUM_THREADS=2" in cluster.job_script()
        cluster.scale_slots(1)
        cluster.client.wait_for_workers(1, timeout=120)
        assert len(squeue()) == 1
        res = test_recipe(any_fits, param={"spin": 0.5}, env={"RUN": RUN})
        header = fits.getheader(res.paths["PRODUCT"][0])
        assert header["ESO QC ECHO OMP"] == "2" and header["ESO QC ECHO NTHREADS"] == 2
        assert res.record.worker in cluster.job_ids()
        held = list(cluster.workers.values())  # a held Job must not break close()
        assert [job.job_id for job in held] == squeue()
    finally:
        cluster.close()
    wait_until(lambda: squeue() == [], 30, "the job to leave the queue")


# -- the command line on SLURM (issue 21.4) -----------------------------------------------
# Before the tests of the module's SLURM cluster: these run the console script, whose
# clusters are its own, on an empty queue.
CPLDASK = pathlib.Path(sys.executable).with_name("cpldask")
MUSE_PLUGINS = "/usr/lib/x86_64-linux-gnu/cpl/plugins"


def cli_env(tmp_path: pathlib.Path, testrecipe_dir, **settings: str) -> dict[str, str]:
    """The console script's environment: the recipes, a private work directory, no
    product cache (the recipes must run), and jobs that fit the CI node — set as a
    user sets them (DASK_... variables)."""
    return {**os.environ, "DASK_CPLDASK__RECIPE_PATH": f"{MUSE_PLUGINS}:{testrecipe_dir}",
            "DASK_CPLDASK__WORK_DIR": str(tmp_path / "work"),
            "DASK_CPLDASK__CACHE__ENABLED": "False",
            "DASK_CPLDASK__JOBQUEUE__DASHBOARD_ADDRESS": "127.0.0.1:0",
            "DASK_CPLDASK__JOBQUEUE__MEMORY_PER_SLOT": "2 GiB",
            "DASK_CPLDASK__JOBQUEUE__WALLTIME": "00:15:00", **settings}


def cpldask_cli(argv: list[str], env: dict[str, str], cwd: pathlib.Path,
                timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(CPLDASK), *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    print(f"$ cpldask {' '.join(argv)}  -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def bias_sofs(folder: pathlib.Path, bias_files: list[str], n: int) -> list[str]:
    """``n`` SOFs of the same three bias frames (one muse_bias call each)."""
    folder.mkdir(parents=True, exist_ok=True)
    sofs = []
    for i in range(1, n + 1):
        sof = folder / f"night{i}.sof"
        sof.write_text("".join(f"{f} BIAS\n" for f in bias_files))
        sofs.append(str(sof))
    return sofs


def jobs_of_workers(log_dir: pathlib.Path) -> dict[str, str]:
    """``{worker address: SLURM job id}`` from the jobs' own logs: dask-jobqueue names
    them ``<job-name>-<job id>.err``, and each worker logs its address there."""
    found = {}
    for log in log_dir.glob("*.err"):
        for match in re.finditer(r"Start worker at:\s+(\S+)", log.read_text()):
            found[match.group(1)] = log.stem.rsplit("-", 1)[1]
    return found


def assert_masters_match(out: pathlib.Path, reference: fits.HDUList) -> None:
    """Each SOF's MASTER_BIAS under ``out`` has the embedded cluster's HDUs."""
    for night in ("night1", "night2"):
        (product,) = (out / night).glob("MASTER_BIAS*.fits")
        with fits.open(product) as hdul:
            _same_hdus(reference, hdul)


def product_workers(out: pathlib.Path) -> list[str]:
    """The worker that made each MASTER_BIAS under ``out`` (its provenance record)."""
    return [json.loads(p.read_text())["run"]["worker"]
            for p in sorted(out.glob("*/MASTER_BIAS*.provenance.json"))]


@pytest.mark.muse
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cpldask_run_with_cluster_slurm_runs_in_jobs_it_cancels(slurm, bias_files, reference,
                                                               testrecipe_dir, tmp_path):
    """``cpldask run ... --cluster slurm --slots 2``: two muse_bias calls in two SLURM
    jobs that the command starts, and that are gone from squeue when it returns."""
    assert squeue() == []
    env = cli_env(tmp_path, testrecipe_dir,
                  DASK_JOBQUEUE__SLURM__LOG_DIRECTORY=str(tmp_path / "jobs"))
    sofs = bias_sofs(tmp_path / "sofs", bias_files, 2)
    t = time.monotonic()
    proc = cpldask_cli(["run", "muse_bias", "--sof", *sofs, "--param", "nifu=1", "--cluster",
                        "slurm", "--slots", "2", "--output-dir", "out"], env, tmp_path)
    TIMINGS["cpldask run --cluster slurm, 2 muse_bias"] = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cpldask: slurm cluster at tcp://127.0.0.1:" in proc.stderr
    assert squeue() == []  # the command cancelled its jobs before it returned
    jobs = jobs_of_workers(tmp_path / "jobs")
    workers = product_workers(tmp_path / "out")
    assert len(workers) == 2 and all(w in jobs for w in workers)  # made in SLURM jobs
    cancelled = re.search(r"SLURMCluster closed, jobs ([\d ]+) cancelled", proc.stderr)
    assert cancelled and {jobs[w] for w in workers} <= set(cancelled.group(1).split())
    assert_masters_match(tmp_path / "out", reference)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_of_cpldask_run_with_cluster_slurm_cancels_its_jobs(slurm, any_fits,
                                                                  testrecipe_dir, tmp_path):
    """Ctrl-C while a call runs in a SLURM job: exit status 130, the job is cancelled
    and its recipe process ends with it."""
    assert squeue() == []
    env = cli_env(tmp_path, testrecipe_dir,
                  DASK_JOBQUEUE__SLURM__LOG_DIRECTORY=str(tmp_path / "jobs"))
    proc = subprocess.Popen(
        [str(CPLDASK), "run", "cpldask_test", any_fits, "--param", "sleep=300",
         "--cluster", "slurm", "--slots", "1", "--output-dir", "out"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the recipe process runs inside the SLURM job
        pids = wait_until(lambda: {p for p in recipe_pids("cpldask_test")
                                   if _job_of(p) in squeue()}, 180, "the recipe to start")
        (job,) = {_job_of(p) for p in pids}
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    TIMINGS["Ctrl-C -> cpldask run exited"] = time.monotonic() - t
    assert f"jobs {job} cancelled" in err and "Traceback" not in err
    wait_until(lambda: job not in squeue(), 30, "the job to leave the queue")
    wait_until(lambda: not (pids & recipe_pids("cpldask_test")), 30, "the recipe to end")
    TIMINGS["Ctrl-C -> job gone, recipe ended"] = time.monotonic() - t
    assert squeue() == []


@pytest.mark.muse
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cluster_start_slurm_is_joined_by_cpldask_run_and_stopped(slurm, bias_files, reference,
                                                                  testrecipe_dir, tmp_path):
    """``cpldask cluster start --cluster slurm``: no job while idle; a later ``cpldask
    run --scheduler-file`` gets its calls run in the server's jobs; ``status`` shows
    them; ``stop`` cancels them and removes the file."""
    assert squeue() == []
    env = cli_env(tmp_path, testrecipe_dir)
    path = tmp_path / "cluster" / "scheduler.json"
    where = ["--scheduler-file", str(path)]
    t = time.monotonic()
    proc = cpldask_cli(["cluster", "start", "--cluster", "slurm", "--slots", "2", *where],
                       env, tmp_path)
    TIMINGS["cluster start --cluster slurm"] = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr
    try:
        doc = json.loads(path.read_text())
        assert doc["cpldask"]["system"] == "slurm" and doc["cpldask"]["slots"] == 2
        assert f"started a slurm cluster (pid {doc['cpldask']['pid']})" in proc.stdout
        assert squeue() == []  # adaptive from 0 slots: no job while nothing waits

        sofs = bias_sofs(tmp_path / "sofs", bias_files, 2)
        t = time.monotonic()
        proc = cpldask_cli(["run", "muse_bias", "--sof", *sofs, "--param", "nifu=1", *where,
                            "--output-dir", "out"], env, tmp_path)
        TIMINGS["cpldask run --scheduler-file, 2 muse_bias"] = time.monotonic() - t
        assert proc.returncode == 0, proc.stderr
        assert f"dashboard: {doc['cpldask']['dashboard']}" in proc.stderr
        jobs = jobs_of_workers(path.with_name("scheduler-jobs"))  # the server's job logs
        workers = product_workers(tmp_path / "out")
        assert len(workers) == 2 and all(w in jobs for w in workers)  # in its SLURM jobs
        assert_masters_match(tmp_path / "out", reference)

        proc = cpldask_cli(["cluster", "status", "--json", *where], env, tmp_path)
        assert proc.returncode == 0, proc.stderr
        status = json.loads(proc.stdout)
        assert status["system"] == "slurm" and status["slots"] == 2 and status["adapting"]
        running = squeue()
        assert {job["id"] for job in status["jobs"]} <= set(running) | set(jobs.values())
        proc = cpldask_cli(["cluster", "status", *where], env, tmp_path)
        assert proc.returncode == 0 and "jobs " in proc.stdout
    finally:
        t = time.monotonic()
        proc = cpldask_cli(["cluster", "stop", *where], env, tmp_path)
        TIMINGS["cluster stop"] = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr
    assert f"stopped the slurm cluster at {doc['address']}" in proc.stdout
    assert not path.exists()
    wait_until(lambda: squeue() == [], 30, "the jobs to leave the queue")
    proc = cpldask_cli(["cluster", "status", *where], env, tmp_path)
    assert proc.returncode == 1 and "no cluster" in proc.stderr


@pytest.mark.muse
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scale_from_zero_to_two_jobs_and_run_muse_bias(slurm_cluster, muse_bias,
                                                       bias_files, reference):
    client = slurm_cluster.client
    assert cpl.get_client() is client  # cpldask calls go to the SLURM cluster now
    assert squeue() == [] and slurm_cluster.slots == 0
    t = time.monotonic()
    cpl.Recipe.set_maxthreads(2)  # what the CLI's --slots does: 2 slots = 2 jobs
    client.wait_for_workers(2, timeout=120)
    TIMINGS["scale 0->2 jobs"] = time.monotonic() - t
    jobs = squeue()
    assert len(jobs) == 2 and sorted(slurm_cluster.job_ids().values()) == jobs
    assert slurm_cluster.slots == 2

    t = time.monotonic()
    results = [muse_bias(bias_files, env={"RUN": f"{RUN}-{i}"}) for i in range(2)]
    for res in results:
        _same_hdus(reference, res.MASTER_BIAS)
    TIMINGS["2 muse_bias on 2 jobs"] = time.monotonic() - t
    records = [res.record for res in results]
    assert {r.worker for r in records} == set(slurm_cluster.job_ids())  # one per job
    assert max(r.start for r in records) < min(r.end for r in records)  # at once
    # the same product read through the job's worker, as without a shared filesystem
    with dask.config.set({"cpldask.jobqueue.shared-filesystem": False}):
        fetched = _fresh(results[0]).MASTER_BIAS
    assert fetched.filename() != records[0].products[0].path
    _same_hdus(reference, fetched)


@pytest.mark.muse
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scancel_of_a_job_mid_call_is_survived(slurm_cluster, muse_bias, bias_files,
                                               reference):
    client = slurm_cluster.client
    # a scancelled job leaves the cluster's plan after lost-worker-timeout (15 s by
    # default); then the adaptive loop submits a replacement
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
        slurm_cluster.adapt_slots(2, 2, interval="0.5s")
        client.wait_for_workers(2, timeout=120)
        before = squeue()
        assert len(before) == 2

        res = muse_bias(bias_files, env={"RUN": f"{RUN}-scancel"})
        # the recipe process is running inside one of the jobs
        pids = wait_until(lambda: {p for p in recipe_pids("muse_bias", any_session=True)
                                   if _job_of(p) in before}, 60, "muse_bias to start")
        (victim,) = {_job_of(p) for p in pids}
        processing = {w for w, keys in client.processing().items() if res.key in keys}
        assert {slurm_cluster.job_ids().get(w) for w in processing} == {victim}
        time.sleep(1.0)  # well into the recipe (it takes ~10 s)
        t, t_wall = time.monotonic(), time.time()
        subprocess.run(["scancel", victim], check=True, timeout=30)

        # adapt(minimum=2) replaces the lost job, while the call runs again
        replaced = None
        while not res.done() or replaced is None:
            jobs = squeue()
            if replaced is None and len(jobs) == 2 and victim not in jobs:
                replaced = time.monotonic() - t
            assert time.monotonic() - t < 400, "no replacement job or no result"
            time.sleep(0.2)
        TIMINGS["scancel -> replacement job in squeue"] = replaced

        _same_hdus(reference, res.MASTER_BIAS)  # retried on the other job, completes
        TIMINGS["scancel -> call done"] = time.monotonic() - t
        TIMINGS["scancel -> retry started"] = res.record.start - t_wall
        TIMINGS["retried muse_bias"] = res.record.end - res.record.start
        assert slurm_cluster.job_ids().get(res.record.worker) not in (None, victim)
        wait_until(lambda: not (pids & recipe_pids("muse_bias", any_session=True)), 30,
                   "the cancelled job's recipe to be gone")
        client.wait_for_workers(2, timeout=120)
        jobs = squeue()
        assert len(jobs) == 2 and victim not in jobs
        assert sorted(slurm_cluster.job_ids().values()) == jobs


@pytest.mark.muse
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_scale_back_to_zero_jobs(slurm_cluster):
    client = slurm_cluster.client
    assert len(squeue()) == 2
    t = time.monotonic()
    slurm_cluster.scale_slots(0)  # stops the adaptive scaler too
    wait_until(lambda: squeue() == [], 60, "the jobs to leave the queue")
    wait_until(lambda: not client.scheduler_info()["workers"], 60, "the workers to go")
    TIMINGS["scale 2->0 jobs"] = time.monotonic() - t
    time.sleep(3)  # nothing comes back by itself
    assert squeue() == []


# -- nodes of different sizes (issue 21.3) -------------------------------------------
def partitions() -> dict[str, str]:
    """``{partition: MaxMemPerNode}`` of this SLURM (``UNLIMITED`` or MB)."""
    out = subprocess.run(["scontrol", "show", "partition", "-o"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return {re.search(r"PartitionName=(\S+)", line).group(1):
            re.search(r"MaxMemPerNode=(\S+)", line).group(1)
            for line in out.splitlines() if line.strip()}


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_node_sizes_each_call_goes_where_it_fits(slurm, test_recipe, any_fits,
                                                     tmp_path_factory):
    """Partition small (jobs of at most 2 GB) and big model two node sizes: a cluster
    of small jobs with a pool of one big job behind its scheduler. A call that needs
    3 GiB runs in the big job; one that dies for memory in a small job (its recipes
    limited to the job's 1.5 GiB) runs once more in the big one, and says so."""
    parts = partitions()
    assert parts.get("debug") == "UNLIMITED" and parts.get("small") == "2048"
    assert "big" in parts
    assert squeue() == []
    logs = tmp_path_factory.mktemp("sizes-logs")
    cluster = cpldask.cluster.slurm(slots=1, minimum_slots=1, adapt=False,
                                    memory_per_slot="1500 MiB", walltime="00:10:00",
                                    queue="small", limit_memory=True,
                                    log_directory=str(logs))
    try:
        pool = cpldask.cluster.add_pool(cluster, "big", jobs=1, memory_per_slot="4 GiB",
                                        queue="big", walltime="00:10:00",
                                        log_directory=str(logs))
        client = cluster.client
        client.wait_for_workers(2, timeout=120)
        out = subprocess.run(["squeue", "-h", "-o", "%i %P %m"], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        print("\n[squeue]\n" + out)
        by_partition = {line.split()[1]: line.split()[0] for line in out.splitlines()}
        assert set(by_partition) == {"small", "big"}
        assert pool.job_ids == [by_partition["big"]]
        workers = {info["name"]: (address, info["resources"])
                   for address, info in client.scheduler_info()["workers"].items()}
        (small, small_offers), = [v for k, v in workers.items() if not k.startswith("big")]
        big, big_offers = workers["big-0"]
        assert small_offers == {"MEMORY": 1500 * 2**20, "CORES": 1}
        assert big_offers == {"MEMORY": 4 * 2**30, "CORES": 1}

        needs_big = test_recipe(any_fits, resources={"memory": "3 GiB"},
                                param={"value": 21.0}, env={"RUN": RUN})
        assert needs_big.record.worker == big
        with pytest.raises(ValueError, match="no worker offers 8.00 GiB of MEMORY"):
            test_recipe(any_fits, resources={"memory": "8 GiB"})

        out_dir = tmp_path_factory.mktemp("sizes-out")
        with pytest.warns(cpl.errors.MemoryRetryWarning, match="died for memory") as got:
            with dask.annotate(workers=[small]):
                res = test_recipe(any_fits, param={"alloc": 2000, "value": 22.0},
                                  env={"RUN": RUN}, output_dir=out_dir)
            wait_until(lambda: got.list, 10, "the warning")
        print(f"[warning] {got.list[0].message}")
        assert res.record.worker == big
        retry = json.loads((out_dir / "PRODUCT_0000.provenance.json").read_text())[
            "memory_retry"]
        print(f"[provenance memory_retry] {json.dumps(retry)}")
        assert retry["worker"] == small and retry["limit"] == 1500 * 2**20
        assert "could not allocate 2000 MB" in retry["error"]
    finally:
        cluster.close()
        wait_until(lambda: squeue() == [], 60, "the jobs to leave the queue")


# -- jobs that end (issue 21.2) ------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_job_ended_by_its_walltime_mid_call_loses_it_and_it_runs_again(
        slurm, test_recipe, any_fits, tmp_path_factory):
    """A one-minute job runs a recipe that takes longer (no earlier run of it: its
    duration is unknown, so the job's worker takes it). SLURM ends the job at its
    walltime; the call runs again in the other (ten-minute) job, and the scheduler's
    count of lost calls, which the run's summary prints, says so."""
    from cpldask import _dashboard
    from cpldask._cli._batch import ran_again
    from cpldask._progress import Job

    assert squeue() == []
    logs = tmp_path_factory.mktemp("walltime-logs")
    cluster = cpldask.cluster.slurm(slots=1, minimum_slots=1, adapt=False,
                                    memory_per_slot="1 GiB", walltime="00:01:00",
                                    lifetime_stagger="0s", log_directory=str(logs))
    try:
        pool = cpldask.cluster.add_pool(cluster, "long", jobs=1, memory_per_slot="1 GiB",
                                        walltime="00:10:00", log_directory=str(logs))
        client = cluster.client
        client.wait_for_workers(2, timeout=120)
        workers = {info["name"]: a for a, info in client.scheduler_info()["workers"].items()}
        long_worker = workers.pop("long-0")
        (short_worker,) = workers.values()
        (short_job,) = set(squeue()) - set(pool.job_ids)
        t = time.monotonic()
        with dask.annotate(workers=[short_worker], allow_other_workers=True):
            res = test_recipe(any_fits, param={"sleep": 100.0, "value": 31.0},
                              env={"RUN": RUN}, threaded=True)
        wait_until(lambda: short_job not in squeue(), 150, "the walltime to end the job")
        TIMINGS["walltime job: submitted -> ended"] = time.monotonic() - t
        assert res.record.worker == long_worker
        TIMINGS["walltime job: call done (run again)"] = time.monotonic() - t
        assert _dashboard.lost_calls(client, [res.key]) == {res.key: 1}
        line = ran_again([Job("walltime", res)])
        print(f"\n[summary] cpldask: {line}")
        assert line.startswith("1 call ran again after its worker was lost")
        job_log = "\n".join(p.read_text(errors="replace") for p in logs.glob(f"*{short_job}*"))
        print(f"[job {short_job} log] " + "\n".join(
            ln for ln in job_log.splitlines() if "TIME LIMIT" in ln or "CANCELLED" in ln))
        assert "DUE TO TIME LIMIT" in job_log
    finally:
        cluster.close()
        wait_until(lambda: squeue() == [], 60, "the jobs to leave the queue")
