"""Issue 10: the product cache and provenance."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from astropy.io import fits

import cpldask
from cpldask import _cache
from helpers import SESSION, wait_until

#: every test here runs the test recipe (one runs muse_bias)
pytestmark = pytest.mark.requires_cpl


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    import dask

    d = tmp_path / "cache"
    with dask.config.set({"cpldask.cache.enabled": True, "cpldask.cache.dir": str(d)}):
        yield d


def job_files(work_dir) -> set[str]:
    """One job file per recipe process the workers started (see cpldask.worker.task._spawn)."""
    return {str(p) for p in pathlib.Path(work_dir).glob("*/.cpldask-job.json")}


@pytest.fixture
def work_dir(tmp_path):
    import dask

    with dask.config.set({"cpldask.work-dir": str(tmp_path / "work")}):
        yield tmp_path / "work"


def test_identical_call_is_served_from_the_cache(test_recipe, any_fits, cache_dir, work_dir):
    first = test_recipe(any_fits, param={"value": 42.0, "sleep": 1.0})
    assert first.record.cache_hit is False
    pid = fits.getheader(first.paths["PRODUCT"][0])["ESO QC ECHO PID"]
    runs = job_files(work_dir)
    # forget the first result, so that the scheduler no longer holds it: the next
    # identical call then goes to the cache (while it is held, Dask itself shares it)
    key, client = first.key, cpldask.get_client()
    del first
    wait_until(lambda: key not in client.who_has(), 10, "the scheduler to forget it")
    t0 = time.monotonic()
    again = test_recipe(any_fits, param={"value": 42.0, "sleep": 1.0})
    assert time.monotonic() - t0 < 1.0
    assert again.record.cache_hit is True
    assert job_files(work_dir) == runs  # no recipe process was started
    # the very same bytes: the product of the first run
    assert fits.getheader(again.paths["PRODUCT"][0])["ESO QC ECHO PID"] == pid
    assert again.provenance["cache_hit"] is True
    # cache=False bypasses it
    fresh = test_recipe(any_fits, param={"value": 42.0, "sleep": 1.0}, cache=False)
    assert fresh.record.cache_hit is False and len(job_files(work_dir)) == len(runs) + 1


def test_changing_a_parameter_reruns_exactly_the_affected_calls(
        test_recipe, any_fits, cache_dir, work_dir):
    def graph(b_value):
        a = test_recipe.delayed(any_fits, param={"value": 1.0})
        b = test_recipe.delayed(a, param={"value": b_value})
        c = test_recipe.delayed(any_fits, param={"value": 3.0})
        d = test_recipe.delayed(b, param={"value": 4.0})
        return cpldask.get_client().compute([a, b, c, d], sync=True)

    client = cpldask.get_client()

    def forgotten(records):
        # while the scheduler still holds a result, Dask itself shares it with an
        # identical call (no cache lookup): wait until it has let them go
        keys = {r.key for r in records}
        wait_until(lambda: not keys & set(client.who_has()), 10, "the scheduler to forget")
        return records

    forgotten(graph(2.0))
    before = job_files(work_dir)
    records = forgotten(graph(2.0))
    assert job_files(work_dir) == before and all(r.cache_hit for r in records)
    records = graph(2.5)  # b changes, and d, which used b's product
    assert len(job_files(work_dir) - before) == 2
    assert [r.cache_hit for r in records] == [True, False, True, False]


def test_cache_hit_into_an_output_dir(test_recipe, any_fits, cache_dir, tmp_path):
    a = test_recipe(any_fits, output_dir=tmp_path / "a", param={"value": 7.0})
    b = test_recipe(any_fits, output_dir=tmp_path / "b", param={"value": 7.0})
    assert b.record.cache_hit and b.PRODUCT.startswith(str(tmp_path / "b"))
    assert fits.getheader(b.PRODUCT)["ESO QC ECHO VALUE"] == 7.0
    assert os.path.exists(b.PRODUCT.replace(".fits", ".provenance.json"))
    assert a.PRODUCT != b.PRODUCT


_CONCURRENT = """
import sys, cpldask, dask
cpldask.Recipe.path = [sys.argv[1]]
with dask.config.set({"cpldask.cache.dir": sys.argv[2], "cpldask.local.n-workers": 1,
                      "cpldask.local.slots": 1, "cpldask.local.dashboard-address": ":0",
                      "cpldask.work-dir": sys.argv[4]}):
    if __name__ == "__main__":
        res = cpldask.Recipe("cpldask_test")(sys.argv[3], param={"value": 5.0, "sleep": 2.0})
        print(res.record.cache_hit, res.paths["PRODUCT"][0])
"""


@pytest.mark.slow
def test_two_processes_same_call_one_entry(testrecipe_dir, any_fits, tmp_path):
    script = tmp_path / "same_call.py"
    script.write_text(_CONCURRENT)
    cache = tmp_path / "shared-cache"
    procs = [subprocess.Popen([sys.executable, str(script), str(testrecipe_dir), str(cache),
                               any_fits, str(tmp_path / f"work{i}")],
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=180)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [o[0] for o in outs] == ["False", "False"]  # both ran: they overlapped
    entries = _cache.entries(str(cache))
    assert len(entries) == 1 and entries[0]["recipe"] == "cpldask_test"
    entry = cache / entries[0]["key"]
    prov = json.loads((entry / "provenance.json").read_text())
    assert fits.getheader(entry / prov["products"][0][1])["ESO QC ECHO VALUE"] == 5.0
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no leftovers


def test_cache_ls_du_prune(test_recipe, any_fits, cache_dir):
    for v in (1.0, 2.0, 3.0):
        test_recipe(any_fits, param={"value": v, "label": "prune"})
    entries = _cache.entries(str(cache_dir))
    assert len(entries) == 3 and all(e["size"] > 0 for e in entries)
    oldest = min(entries, key=lambda e: e["used"])["key"]
    removed = _cache.prune(str(cache_dir), max_size=sum(e["size"] for e in entries) - 1)
    assert removed == [oldest] and len(_cache.entries(str(cache_dir))) == 2
    assert len(_cache.prune(str(cache_dir), older_than=0)) == 2
    assert _cache.entries(str(cache_dir)) == []


def test_provenance_record(test_recipe, any_fits, tmp_path):
    res = test_recipe(any_fits, output_dir=tmp_path, param={"value": 6.0})
    prov = res.provenance
    assert prov["recipe"] == "cpldask_test" and prov["recipe_version"] == "1.0.0"
    assert prov["params"]["cpldask.cpldask_test.value"] == 6.0
    assert prov["params"]["cpldask.cpldask_test.sleep"] == 0.0  # defaults included
    assert prov["inputs"][0]["path"] == any_fits and len(prov["inputs"][0]["hash"]) == 32
    assert prov["hash"] == "xxh3-128" and len(prov["key"]) == 32
    run = prov["run"]
    assert run["host"] and run["end"] >= run["start"] and run["max_rss"] > 0
    assert prov["cache_hit"] is False and prov["cpl_version"]
    beside = json.loads(pathlib.Path(res.PRODUCT.replace(".fits", ".provenance.json")).read_text())
    assert beside["key"] == prov["key"]


def test_prov_export_and_replay(test_recipe, any_fits, tmp_path):
    a = test_recipe(any_fits, output_dir=tmp_path / "a", param={"value": 1.5})
    b = test_recipe(a, output_dir=tmp_path / "b", param={"value": 2.5})
    doc = cpldask.provenance.to_prov([b, a])
    assert len(doc["activity"]) == 2 and len(doc["wasGeneratedBy"]) == 2
    used_entities = {u["prov:entity"] for u in doc["used"].values()}
    generated = {g["prov:entity"] for g in doc["wasGeneratedBy"].values()}
    assert used_entities & generated  # b used what a generated
    script = cpldask.provenance.replay_script([b, a])
    assert script.index("'value': 1.5") < script.index("'value': 2.5")  # a before b
    for p in (tmp_path / "a").glob("*.fits"):
        p.unlink()
    namespace: dict = {}
    exec(compile(script, "replay", "exec"), namespace)
    assert fits.getheader(namespace["res1"].paths["PRODUCT"][0])["ESO QC ECHO VALUE"] == 2.5


@pytest.mark.muse
@pytest.mark.slow
def test_from_product_recreates_the_call(bias_result, bias_files):
    recipe, raw = cpldask.provenance.from_product(
        bias_result.paths["MASTER_BIAS"][0], search=[os.path.dirname(bias_files[0])])
    assert recipe.name == "muse_bias" and recipe.param.nifu.value == 1
    assert sorted(raw["BIAS"]) == sorted(bias_files)
    again = recipe(raw)
    np.testing.assert_array_equal(again.MASTER_BIAS["DATA"].data,
                                  bias_result.MASTER_BIAS["DATA"].data)


def test_cache_command(test_recipe, any_fits, cache_dir, capsys):
    from cpldask._cli import handle_args

    test_recipe(any_fits, param={"value": 11.0, "label": "cli"})
    assert handle_args(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert "cpldask_test" in out and "PRODUCT" in out and "1 entries" in out
    assert handle_args(["cache", "du"]) == 0
    assert "in 1 entries" in capsys.readouterr().out
    assert handle_args(["cache", "prune"]) == 2
    assert "needs --older-than" in capsys.readouterr().err
    assert handle_args(["cache", "prune", "--older-than", "0s"]) == 0
    assert "removed 1 entry" in capsys.readouterr().out
    assert _cache.entries(str(cache_dir)) == []


# -- issue 17: the cache verifies what it serves ----------------------------------------
def _entry_product(cache_dir, key: str) -> pathlib.Path:
    record = json.loads((cache_dir / key / "provenance.json").read_text())
    return cache_dir / key / record["products"][0][1]


def _truncate(path):
    os.truncate(path, path.stat().st_size - 2880)


def _flip_a_byte(path):  # same size, other bytes: only the hash can tell
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 10)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, os.unlink],
                         ids=["truncated", "changed", "deleted"])
def test_a_damaged_entry_is_never_served(test_recipe, any_fits, cache_dir, damage):
    client = cpldask.get_client()
    value = {_truncate: 21.0, _flip_a_byte: 22.0, os.unlink: 23.0}[damage]
    first = test_recipe(any_fits, param={"value": value, "label": "damage"})
    key, task, run = first.provenance["key"], first.key, first.record.start
    del first
    wait_until(lambda: task not in client.who_has(), 10, "the scheduler to forget it")
    damage(_entry_product(cache_dir, key))
    with pytest.warns(cpldask.errors.CacheWarning, match="it was removed") as caught:
        again = test_recipe(any_fits, param={"value": value, "label": "damage"})
        wait_until(lambda: caught.list, 10, "the warning")
    assert again.record.cache_hit is False and again.record.start > run
    assert len([w for w in caught if issubclass(w.category, cpldask.errors.CacheWarning)]) == 1
    # the fresh run made a good entry in its place
    assert _cache.verify(str(cache_dir)) == (1, [])


def test_cache_verify_command(test_recipe, any_fits, cache_dir, capsys):
    from cpldask._cli import handle_args

    keys = [test_recipe(any_fits, param={"value": v, "label": "verify"}).provenance["key"]
            for v in (31.0, 32.0, 33.0)]
    _truncate(_entry_product(cache_dir, keys[0]))
    _flip_a_byte(_entry_product(cache_dir, keys[1]))
    old = cache_dir / ("0" * 32)  # an entry of the format before issue 17: no hashes
    old.mkdir()
    (old / "provenance.json").write_text(json.dumps({"recipe": "x", "products": []}))
    leftover = cache_dir / f".{keys[2]}-interrupted"  # a writer killed mid-store
    leftover.mkdir()
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    assert handle_args(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    assert "checked 4 entries: 3 bad, removed" in out and keys[0][:12] in out
    assert "truncated" in out and "other bytes" in out and "older cpldask" in out
    assert sorted(p.name for p in cache_dir.iterdir()) == [keys[2]]
    assert handle_args(["cache", "verify"]) == 0
    assert "checked 1 entries: all good" in capsys.readouterr().out


def test_a_cache_that_cannot_exist_runs_the_recipe(test_recipe, any_fits, tmp_path):
    import dask

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with dask.config.set({"cpldask.cache.enabled": True,
                          "cpldask.cache.dir": str(blocker / "cache")}):
        with pytest.warns(cpldask.errors.CacheWarning, match="cannot keep") as caught:
            res = test_recipe(any_fits, param={"value": 41.0})
            wait_until(lambda: caught.list, 10, "the warning")
    assert res.record.cache_hit is False
    assert fits.getheader(res.paths["PRODUCT"][0])["ESO QC ECHO VALUE"] == 41.0


_READ_ONLY = SESSION + """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = cpldask.Recipe("cpldask_test")(sys.argv[3], param={"value": 7.0})
            deadline = time.monotonic() + 10
            while not caught and time.monotonic() < deadline:  # the worker's warning
                time.sleep(0.05)
        print(res.record.cache_hit, [str(w.message) for w in caught])
"""


def test_a_read_only_cache_runs_the_recipe(testrecipe_dir, any_fits, tmp_path):
    """A session whose cache directory it may not write. The suite may run as root,
    who writes anywhere: the session then runs without root's power to ignore
    permissions (util-linux's setpriv drops CAP_DAC_OVERRIDE)."""
    script = tmp_path / "read_only.py"
    script.write_text(_READ_ONLY)
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    cache.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:
        prefix = [shutil.which("setpriv"), "--bounding-set=-dac_override,-dac_read_search"]
        assert prefix[0], "setpriv (util-linux) is needed to test permissions as root"
    out = subprocess.run([*prefix, sys.executable, str(script), str(testrecipe_dir),
                          str(cache), any_fits, str(tmp_path / "work")],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    hit, messages = out.stdout.split(" ", 1)
    assert hit == "False" and "cannot keep" in messages and str(cache) in messages
    assert list(cache.iterdir()) == []
