"""The recipe process (:mod:`cpldask.worker.runner`) on its own.

It drives python-cpl's C engine without python-cpl's Python layer (which imports
astropy into every recipe process), so the rules that layer applied per call are
checked here: recipe search on the path, parameter types, CPL's log as records.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from astropy.io import fits
from helpers import recipe_pids, wait_until

# only the runner here: the rest of cpldask.worker imports python-cpl through errors.py,
# and the log parser's test belongs to the fast tier
from cpldask.worker import runner


def write_job(call_dir: pathlib.Path, **job) -> pathlib.Path:
    """A job file for the runner in a new ``call_dir``."""
    call_dir.mkdir(parents=True)
    job = {"recipe": "cpldask_test", "version": None, "recipe_path": [], "recipe_file": None,
           "params": [], "raw": [], "calib": {}, "call_dir": str(call_dir),
           "memory_limit": None, **job}
    job_file = call_dir / ".cpldask-job.json"
    job_file.write_text(json.dumps(job))
    return job_file


def run_job(call_dir: pathlib.Path, **job) -> dict:
    """Run one job with ``python runner.py JOB`` (no fork server) and return its report."""
    job_file = write_job(call_dir, **job)
    # stdin stays open while it runs: EOF on it means "the worker died, kill everything"
    proc = subprocess.Popen([sys.executable, runner.__file__, str(job_file)],
                            stdin=subprocess.PIPE)
    assert proc.wait(timeout=120) == 0
    proc.stdin.close()
    return json.loads((call_dir / "report.json").read_text())


@pytest.mark.requires_cpl
def test_a_library_missing_on_this_node_is_found_on_the_path(tmp_path, testrecipe_dir,
                                                             any_fits):
    # a long call directory too: CPL refuses log names over 72 characters
    call_dir = tmp_path / ("a-call-directory-with-a-long-name-" * 3)
    report = run_job(call_dir, recipe_file="/elsewhere/cpldask_test.so",
                     recipe_path=[str(testrecipe_dir)],
                     params=[["cpldask.cpldask_test.value", 3]],  # an int for a double
                     raw=[["RAW", [any_fits]]])
    assert report["kind"] == "ok", report
    assert report["products"] == [["PRODUCT", "PRODUCT_0000.fits"]]
    header = fits.getheader(call_dir / "PRODUCT_0000.fits")
    assert header["ESO QC ECHO VALUE"] == 3.0
    assert any("wrote 1 product" in entry[3] for entry in report["log"])
    assert not (call_dir / runner.RECIPE_LOG).exists()  # read into the report


@pytest.mark.requires_cpl
def test_an_unknown_parameter_is_an_error_not_ignored(tmp_path, testrecipe_dir, any_fits):
    report = run_job(tmp_path / "call", recipe_file=str(testrecipe_dir / "cpldask_test.so"),
                     params=[["cpldask.cpldask_test.valu", 1.0]], raw=[["RAW", [any_fits]]])
    assert report["kind"] == "error"
    assert "cpldask.cpldask_test.valu" in report["message"]


def test_cpl_log_lines_become_python_cpl_records(tmp_path):
    log = tmp_path / "recipe.log"
    log.write_text("\n".join([
        "",
        "Start time     : 2026-11-25T02:28:57",
        "10:35:25 [WARNING] muse_bias: [tid=000] No file tagged with FLAT",
        "    second line of that warning",
        "10:35:26 [ ERROR ] muse_utils_load: cannot read file",
        "10:35:27 [  INFO ] cpl_dfs_product_save: Writing product",
    ]) + "\n")
    entries = runner.read_log(str(log), "muse_bias")
    assert [(e[0], e[1], e[2], e[3]) for e in entries] == [
        ("cpl.muse_bias.muse_bias", 30, "muse_bias", "No file tagged with FLAT"),
        ("cpl.muse_bias.muse_bias", 30, "muse_bias", "    second line of that warning"),
        ("cpl.muse_bias.muse_utils_load", 40, "muse_utils_load", "cannot read file"),
        ("cpl.muse_bias.cpl_dfs_product_save", 20, "cpl_dfs_product_save", "Writing product"),
    ]
    assert entries[0][4] == entries[1][4] < entries[2][4]
    assert not log.exists()


def sleep_job(call_dir: pathlib.Path, testrecipe_dir, any_fits, value: float) -> pathlib.Path:
    return write_job(call_dir, recipe_file=str(testrecipe_dir / "cpldask_test.so"),
                     params=[["cpldask.cpldask_test.sleep", 60],
                             ["cpldask.cpldask_test.value", value]],
                     raw=[["RAW", [any_fits]]])


@pytest.mark.requires_cpl
def test_a_recipe_dies_with_its_fork_server(tmp_path, testrecipe_dir, any_fits):
    """The kernel kills a recipe process group once its server is gone (the server
    killed by the OOM killer, say): no recipe runs on as an orphan."""
    before = recipe_pids("cpldask_test")
    from cpldask.worker import forkserver

    server = forkserver.ForkServer(())
    job = sleep_job(tmp_path / "call", testrecipe_dir, any_fits, 41.0)
    proc = server.start(job, dict(os.environ), "cpldask_test", None)
    recipe = wait_until(lambda: recipe_pids("cpldask_test") - before, 60, "the recipe")
    server.proc.kill()
    wait_until(lambda: not recipe_pids("cpldask_test") & recipe, 10, "the recipe to die")
    proc.ended.wait(10)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.requires_cpl
def test_a_standalone_runner_dies_with_its_caller(tmp_path, testrecipe_dir, any_fits):
    before = recipe_pids("cpldask_test")
    job = sleep_job(tmp_path / "call", testrecipe_dir, any_fits, 42.0)
    proc = subprocess.Popen([sys.executable, runner.__file__, str(job)],
                            stdin=subprocess.PIPE)
    recipe = wait_until(lambda: recipe_pids("cpldask_test") - before, 60, "the recipe")
    proc.stdin.close()  # as if the caller died
    assert proc.wait(timeout=10) == -signal.SIGKILL
    wait_until(lambda: not recipe_pids("cpldask_test") & recipe, 10, "the recipe to die")


@pytest.mark.requires_cpl
def test_the_recipe_process_has_the_callers_environment(tmp_path, testrecipe_dir, any_fits,
                                                        monkeypatch):
    """A recipe process starts with its fork server's environment; what the call's
    environment lacks is removed, what it has is set."""
    monkeypatch.setenv("CPLDASK_TEST_GONE", "server only")
    from cpldask.worker import forkserver

    server = forkserver.ForkServer(())
    monkeypatch.delenv("CPLDASK_TEST_GONE")
    entries = []
    for name in ["CPLDASK_TEST_GONE", "CPLDASK_TEST_NEW"]:
        job = write_job(tmp_path / name, recipe_file=str(testrecipe_dir / "cpldask_test.so"),
                        params=[["cpldask.cpldask_test.envvar", name]],
                        raw=[["RAW", [any_fits]]])
        proc = server.start(job, {**os.environ, "CPLDASK_TEST_NEW": "call"}, "cpldask_test",
                            None)
        assert proc.ended.wait(60) and proc.returncode == 0
        entries += json.loads((job.parent / "report.json").read_text())["log"]
    server.proc.stdin.close()
    assert [e[3] for e in entries if " ENV " in e[3]] == [
        "cpldask_test: ENV CPLDASK_TEST_GONE=unset", "cpldask_test: ENV CPLDASK_TEST_NEW=call"]
