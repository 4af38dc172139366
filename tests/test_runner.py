"""The recipe process (:mod:`cpldask._runner`) on its own.

It drives python-cpl's C engine without python-cpl's Python layer (which imports
astropy into every recipe process), so the rules that layer applied per call are
checked here: recipe search on the path, parameter types, CPL's log as records.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from astropy.io import fits

from cpldask import _runner


def run_job(call_dir: pathlib.Path, **job) -> dict:
    """Run one job with ``python _runner.py JOB`` (no fork server) and return its report."""
    call_dir.mkdir(parents=True)
    job = {"recipe": "cpldask_test", "version": None, "recipe_path": [], "recipe_file": None,
           "params": [], "raw": [], "calib": {}, "call_dir": str(call_dir),
           "memory_limit": None, **job}
    job_file = call_dir / ".cpldask-job.json"
    job_file.write_text(json.dumps(job))
    # stdin stays open while it runs: EOF on it means "the worker died, kill everything"
    proc = subprocess.Popen([sys.executable, _runner.__file__, str(job_file)],
                            stdin=subprocess.PIPE)
    assert proc.wait(timeout=120) == 0
    proc.stdin.close()
    return json.loads((call_dir / "report.json").read_text())


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
    assert not (call_dir / _runner.RECIPE_LOG).exists()  # read into the report


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
    entries = _runner._read_log(str(log), "muse_bias")
    assert [(e[0], e[1], e[2], e[3]) for e in entries] == [
        ("cpl.muse_bias.muse_bias", 30, "muse_bias", "No file tagged with FLAT"),
        ("cpl.muse_bias.muse_bias", 30, "muse_bias", "    second line of that warning"),
        ("cpl.muse_bias.muse_utils_load", 40, "muse_utils_load", "cannot read file"),
        ("cpl.muse_bias.cpl_dfs_product_save", 20, "cpl_dfs_product_save", "Writing product"),
    ]
    assert entries[0][4] == entries[1][4] < entries[2][4]
    assert not log.exists()
