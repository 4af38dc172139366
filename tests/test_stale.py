"""Issue 17: never a stale product. A call whose inputs or recipe changed is never
given the products of the earlier content: not by a task shared in the session, not
from the product cache in a later session."""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

import cpldask

pytestmark = pytest.mark.requires_cpl
from helpers import SESSION, wait_until

HERE = pathlib.Path(__file__).parent


@pytest.fixture
def cache_dir(tmp_path):
    import dask

    d = tmp_path / "cache"
    with dask.config.set({"cpldask.cache.enabled": True, "cpldask.cache.dir": str(d)}):
        yield d


def write_frame(path, data) -> str:
    """A raw frame as the ESO archive delivers it: with ``DATAMD5``, the MD5 of the
    data part (ESO's archive keyword; CPL's ``cpl_dfs_update_product_header`` writes
    the same for products)."""
    hdu = fits.PrimaryHDU(np.asarray(data, dtype=np.float32))
    hdu.header["INSTRUME"] = "TEST"
    hdu.header["OBJECT"] = "first"
    hdu.writeto(path, overwrite=True)
    with fits.open(path) as hdul:
        start = hdul.fileinfo(0)["datLoc"]
    with open(path, "rb") as f:
        f.seek(start)
        md5 = hashlib.md5(f.read()).hexdigest()
    fits.setval(path, "DATAMD5", value=md5)
    return str(path)


def run_of(res) -> tuple:
    """What identifies one run of the test recipe: its process and its start time,
    written by the recipe into the product."""
    h = fits.getheader(res.paths["PRODUCT"][0])
    return h["ESO QC ECHO PID"], h["ESO QC ECHO TSTART"]


def forgotten(key: str) -> None:
    """Wait until the scheduler has let the task ``key`` go (once its results are
    dropped): a call made afterwards is a new task, not Dask's shared one."""
    client = cpldask.get_client()
    wait_until(lambda: key not in client.who_has(), 10, "the scheduler to forget it")


def test_pixel_edit_with_stale_datamd5_is_not_the_old_product(test_recipe, tmp_path,
                                                               cache_dir):
    raw = write_frame(tmp_path / "raw.fits", np.zeros((8, 8)))
    datamd5 = fits.getval(raw, "DATAMD5")
    original = pathlib.Path(raw).read_bytes()
    first = test_recipe(raw, param={"value": 1.0})
    with fits.open(raw, mode="update") as hdul:  # one pixel, DATAMD5 left as it was
        hdul[0].data[3, 3] = 1.0
    assert fits.getval(raw, "DATAMD5") == datamd5
    second = test_recipe(raw, param={"value": 1.0})  # the first result is still held
    assert second.key != first.key
    assert run_of(second) != run_of(first) and second.record.cache_hit is False
    assert second.provenance["inputs"][0]["hash"] != first.provenance["inputs"][0]["hash"]
    # the unchanged call is still served without a run: the old bytes come back
    # and so does the first run's product, from the cache
    pathlib.Path(raw).write_bytes(original)
    first_run, key = run_of(first), first.key
    del first, second
    forgotten(key)
    again = test_recipe(raw, param={"value": 1.0})
    assert again.record.cache_hit is True and run_of(again) == first_run


def test_header_only_edit_is_not_the_old_product(test_recipe, tmp_path, cache_dir):
    raw = write_frame(tmp_path / "raw.fits", np.ones((8, 8)))
    first = test_recipe(raw, param={"value": 2.0})
    first_run, size, key = run_of(first), pathlib.Path(raw).stat().st_size, first.key
    del first
    forgotten(key)
    fits.setval(raw, "OBJECT", value="fixed")  # the data and DATAMD5 untouched
    assert pathlib.Path(raw).stat().st_size == size
    second = test_recipe(raw, param={"value": 2.0})
    assert second.record.cache_hit is False and run_of(second) != first_run


def product_value(res) -> float:
    return float(fits.getdata(res.paths["PRODUCT"][0])[0, 0])


def test_library_rebuilt_in_the_session_runs_the_new_code(tmp_path, monkeypatch):
    """The workers' fork servers keep the recipe libraries they loaded: a rebuilt
    library (same path, same version) must not run the old code."""
    sys.path.insert(0, str(HERE / "testrecipe"))
    from build import build

    lib_dir = tmp_path / "lib"
    build(lib_dir)
    monkeypatch.setattr(cpldask.Recipe, "path", [str(lib_dir)])
    raw = write_frame(tmp_path / "raw.fits", np.zeros((4, 4)))
    first = cpldask.Recipe("cpldask_test")(raw, param={"value": 3.0})
    assert product_value(first) == 0.0
    key = first.key
    del first
    forgotten(key)
    build(lib_dir, {"CPLDASK_TEST_FILL_OFFSET": 100})
    second = cpldask.Recipe("cpldask_test")(raw, param={"value": 3.0})
    assert product_value(second) == 100.0


_SESSION = SESSION + """
        res = cpldask.Recipe("cpldask_test")(sys.argv[3], param={"value": 4.0})
        print(res.record.cache_hit, float(fits.getdata(res.paths["PRODUCT"][0])[0, 0]))
"""


def test_library_rebuilt_between_sessions_is_not_served_from_the_cache(tmp_path, any_fits):
    sys.path.insert(0, str(HERE / "testrecipe"))
    from build import build

    script = tmp_path / "session.py"
    script.write_text(_SESSION)
    lib_dir, cache = tmp_path / "lib", tmp_path / "shared-cache"

    def session() -> list[str]:
        out = subprocess.run([sys.executable, str(script), str(lib_dir), str(cache),
                              any_fits, str(tmp_path / "work")],
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    build(lib_dir)
    assert session() == ["False", "0.0"]
    build(lib_dir, {"CPLDASK_TEST_FILL_OFFSET": 100})  # same version string, 1.0.0
    assert session() == ["False", "100.0"]
    assert session() == ["True", "100.0"]  # the same library again: from the cache
