"""Calls that state what they need, workers of different sizes (issue 21, part 3).

The fast tier checks how needs are read and refused; the CPL tier runs the test
recipe ``cpldask_test`` on two workers of different sizes side by side behind one
scheduler: a call goes where it fits, and one that dies for memory on the small
worker runs once more on the big one.
"""

from __future__ import annotations

import json

import dask
import distributed
import pytest

from helpers import wait_until


# -- fast: what a call asks for --------------------------------------------------------
def test_memory_and_cores_become_dask_resources():
    from cpldask._cluster import call_resources

    assert call_resources({"memory": "2 GiB", "Cores": 4, "GPU": 1}, "r") == {
        "MEMORY": 2 * 2**30, "CORES": 4.0, "GPU": 1.0}
    with pytest.raises(ValueError, match="not an amount"):
        call_resources({"cores": "many"}, "muse_scipost")
    with pytest.raises(ValueError, match=">= 0"):
        call_resources({"memory": -1}, "muse_scipost")


@pytest.mark.requires_python_cpl  # cpldask.errors holds python-cpl's exception classes
def test_memory_failures_are_told_apart_from_other_failures():
    from cpldask.errors import memory_failure

    # the runner's MemoryError under its RLIMIT_AS
    assert memory_failure({"kind": "error", "message": "out of memory under the limit "
                                                        "of 100 bytes"})
    # a CPL error about an allocation (the test recipe's words; CPL's cpl_malloc
    # says "Could not allocate", glibc "Cannot allocate memory")
    assert "allocate" in memory_failure({"kind": "CplError", "errors": [
        [2, "cpldask_test: could not allocate 3000 MB", "f.c", 1, "f"]]})
    assert memory_failure({"kind": "CplError", "errors": [
        [6, "Illegal input: no BIAS frame", "f.c", 1, "f"]]}) is None
    # SIGKILL counts only when the kernel's OOM killer killed something meanwhile
    crash = {"kind": "RecipeCrash", "signal": 9, "backtrace": []}
    assert memory_failure(crash, oom_kills=0) is None  # scancel, kill -9
    assert "out-of-memory killer" in memory_failure(crash, oom_kills=1)
    assert memory_failure({"kind": "RecipeCrash", "signal": 11, "backtrace": []}) is None


def test_batch_workers_offer_the_memory_and_cores_of_their_job():
    import cpldask.cluster

    script = cpldask.cluster.job_script("slurm", slots_per_job=2, cores_per_slot=3,
                                        memory_per_slot="4 GiB")
    assert f"--resources MEMORY={8 * 2**30},CORES=6" in script
    mine = cpldask.cluster.job_script("slurm", worker_extra_args=["--resources", "GPU=1"])
    assert "--resources GPU=1" in mine and "MEMORY=" not in mine


@pytest.fixture(scope="module")
def sized_client():
    """An in-process cluster (no CPL: nothing runs) of two workers offering 1 and 4
    GiB of MEMORY and 1 and 2 CORES."""
    workers = {name: {"cls": distributed.Worker, "options": {
        "nthreads": 1, "resources": {"MEMORY": memory, "CORES": cores}}}
        for name, memory, cores in (("small", 2**30, 1), ("big", 4 * 2**30, 2))}
    scheduler = {"cls": distributed.Scheduler, "options": {"port": 0,
                                                            "dashboard_address": ":0"}}
    with distributed.SpecCluster(scheduler=scheduler, workers=workers) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2)
        yield client


def test_a_need_no_worker_can_meet_is_refused_naming_the_fix(sized_client):
    from cpldask._cluster import check_resources

    assert check_resources(sized_client, {"MEMORY": 3 * 2**30}, "r") == {
        "MEMORY": 3 * 2**30}
    with pytest.raises(ValueError, match=r"no worker offers 8.00 GiB of MEMORY \(the "
                                         r"largest offers 4.00 GiB\); start workers"):
        check_resources(sized_client, {"MEMORY": 8 * 2**30}, "muse_scipost")
    with pytest.raises(ValueError, match="no worker offers GPU=1"):
        check_resources(sized_client, {"GPU": 1.0}, "muse_scipost")
    # a rule's need (strict=False): a resource the cluster does not model is dropped,
    # one it models but cannot meet is still refused
    assert check_resources(sized_client, {"GPU": 1.0, "CORES": 2.0}, "r",
                           strict=False) == {"CORES": 2.0}
    # one every worker meets chooses no worker: dropped (the task keeps Dask's queuing)
    assert check_resources(sized_client, {"MEMORY": 2.0**29}, "r", strict=False) == {}
    with pytest.raises(ValueError, match="CORES=4"):
        check_resources(sized_client, {"CORES": 4.0}, "r", strict=False)


def test_the_muse_rules_state_what_each_step_needs():
    import yaml

    from cpldask.instruments import rules_file

    needs = yaml.safe_load(rules_file("muse").read_text())["workflow"]["resources"]
    memory = {step: dask.utils.parse_bytes(n["memory"]) for step, n in needs.items()}
    assert memory["muse_scipost"] > memory["muse_bias"]


def test_each_step_of_a_plan_carries_what_its_rules_say_it_needs(tmp_path):
    from cpldask import workflow
    from cpldask.instruments.muse import synthetic

    synthetic.write_dataset(tmp_path / "raw", ifus=(1, 2), headers_only=True)
    red = workflow.reduce(tmp_path / "raw", output_dir=tmp_path / "out", dry_run=True)
    by_name = {s.name: s.resources for s in red.steps}
    assert by_name["muse_scipost"] == {"memory": "2 GiB"}
    assert by_name.get("muse_twilight", {"memory": "3 GiB"}) == {"memory": "3 GiB"}
    assert {s.name for s in red.steps if not s.resources} <= {"muse_lingain",
                                                              "muse_standard"}
    plan = workflow.Plan(tmp_path, {"resources": {"x_big": {"memory": "9 GiB"}}})
    assert plan.call("x_big", {"RAW": ["/a.fits"]}).resources == {"memory": "9 GiB"}
    assert plan.call("x_small", {"RAW": ["/a.fits"]}).resources == {}


# -- CPL: two worker sizes behind one scheduler ---------------------------------------
#: the small worker's recipes may use this much address space (RLIMIT_AS): the test
#: recipe's 100 MB fit, its 2000 MB do not (test_failures.test_memory_limit: a recipe
#: process needs ~1 GB of address space besides what it allocates)
SMALL_LIMIT = "1500 MiB"


@pytest.fixture(scope="module")
def two_sizes(recipe_path):
    """A small worker (MEMORY 1 GiB, its recipes limited to :data:`SMALL_LIMIT`) and a
    big one (MEMORY 8 GiB, no limit), each a Nanny of its own, behind one scheduler:
    a model of two node sizes. Yields (client, small address, big address)."""
    config = dask.config.config
    spec = {}
    for name, memory, limit in (("small", 2**30, SMALL_LIMIT), ("big", 8 * 2**30, None)):
        own = dask.config.merge(config, {"cpldask": {"worker-memory-limit": limit}})
        spec[name] = {"cls": distributed.Nanny, "options": {
            "nthreads": 1, "resources": {"MEMORY": memory, "CORES": 1},
            "config": own, "silence_logs": 40}}
    scheduler = {"cls": distributed.Scheduler, "options": {"port": 0,
                                                            "dashboard_address": ":0"}}
    with distributed.SpecCluster(scheduler=scheduler, workers=spec) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(2)
        names = {info["name"]: address
                 for address, info in client.scheduler_info()["workers"].items()}
        yield client, names["small"], names["big"]


@pytest.mark.requires_cpl
def test_each_call_goes_only_where_it_fits(two_sizes, test_recipe, any_fits):
    client, small, big = two_sizes
    fits_both = [test_recipe(any_fits, param={"value": float(v)}, threaded=True,
                             resources={"memory": "512 MiB"}) for v in range(4)]
    needs_big = [test_recipe(any_fits, param={"value": 10.0 + v}, threaded=True,
                             resources={"memory": "2 GiB"}) for v in range(3)]
    assert {r.record.worker for r in needs_big} == {big}
    assert {r.record.worker for r in fits_both} <= {small, big}
    with pytest.raises(ValueError, match="no worker offers 16.00 GiB of MEMORY"):
        test_recipe(any_fits, resources={"memory": "16 GiB"})
    # a workflow step's needs (Recipe.needs, from the rules) choose the same way
    test_recipe.needs = {"memory": "2 GiB"}
    assert test_recipe(any_fits, param={"value": 30.0}).record.worker == big


@pytest.mark.requires_cpl
def test_a_recipe_that_dies_for_memory_runs_again_on_a_bigger_worker(
        two_sizes, test_recipe, any_fits, tmp_path):
    import cpldask

    client, small, big = two_sizes
    with pytest.warns(cpldask.errors.MemoryRetryWarning, match="died for memory") as got:
        with dask.annotate(workers=[small]):  # its first run on the small worker
            res = test_recipe(any_fits, param={"alloc": 2000, "value": 7.0},
                              output_dir=tmp_path)
        wait_until(lambda: got.list, 10, "the warning")
    assert res.record.worker == big
    assert "runs once more on a worker offering MEMORY 8.00 GiB" in str(got.list[0].message)
    retry = res.provenance["memory_retry"]
    assert retry["worker"] == small and "could not allocate 2000 MB" in retry["error"]
    assert retry["limit"] == dask.utils.parse_bytes(SMALL_LIMIT)
    # the record beside the product says it too
    beside = json.loads((tmp_path / "PRODUCT_0000.provenance.json").read_text())
    assert beside["memory_retry"]["worker"] == small and beside["run"]["worker"] == big


@pytest.mark.requires_cpl
def test_no_bigger_worker_fails_with_the_recipes_own_error(two_sizes, test_recipe,
                                                           any_fits):
    import cpl
    import cpldask

    client, small, big = two_sizes
    # a call that set its own memory_limit is not re-run: the limit is the call's
    with pytest.raises(cpl.CplError, match="could not allocate"):
        test_recipe(any_fits, memory_limit=SMALL_LIMIT, param={"alloc": 2000})
    # on the big worker (limited for this test) no worker is bigger: the call fails
    # with the recipe's error, and the user is told what to start
    set_limit = lambda value: dask.config.set({"cpldask.worker-memory-limit": value})  # noqa: E731
    client.run(set_limit, SMALL_LIMIT, workers=[big])
    try:
        with pytest.warns(cpldask.errors.MemoryRetryWarning, match="start bigger") as got:
            with pytest.raises(cpl.CplError, match="could not allocate"), \
                    dask.annotate(workers=[big]):
                test_recipe(any_fits, param={"alloc": 2000, "value": 8.0})
            wait_until(lambda: got.list, 10, "the warning")
    finally:
        client.run(set_limit, None, workers=[big])
