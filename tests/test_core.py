"""The core: real muse_bias through cpldask equals python-cpl; products; bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

import cpl as pycpl
import cpldask
from cpldask import errors

#: python-cpl is the reference here; the tests marked requires_cpl run recipes, the
#: search-path ones none
pytestmark = pytest.mark.requires_python_cpl


@pytest.fixture(scope="session")
def direct_master_bias(bias_files, tmp_path_factory):
    """MASTER_BIAS of a direct python-cpl run (the reference)."""
    pycpl.Recipe.path = ["/usr/lib/x86_64-linux-gnu/cpl/plugins"]
    r = pycpl.Recipe("muse_bias")
    r.param.nifu = 1
    r.temp_dir = str(tmp_path_factory.mktemp("direct"))
    return r(bias_files).MASTER_BIAS


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_master_bias_equals_python_cpl(bias_result, direct_master_bias):
    ours = bias_result.MASTER_BIAS
    assert isinstance(ours, fits.HDUList)
    for ext in ("DATA", "DQ", "STAT"):
        assert ours[ext].data.shape == (4112, 4096)
        np.testing.assert_array_equal(ours[ext].data, direct_master_bias[ext].data)
    assert abs(np.median(ours["DATA"].data)) < 1  # overscan-subtracted bias


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_recipe_ran_in_a_worker_process(bias_result, client):
    rec = bias_result.record
    assert rec.worker in client.scheduler_info()["workers"]
    assert bias_result.key.startswith("muse_bias-")
    assert bias_result.stat["return_code"] == 0 and bias_result.stat["wall_time"] > 1
    assert bias_result.log.info  # the recipe's own messages came back


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_python_cpl_result_access(bias_result):
    assert bias_result.tags == {"MASTER_BIAS"}
    assert "MASTER_BIAS" in bias_result and "MASTER_DARK" not in bias_result
    assert len(bias_result) == 1
    assert [tag for tag, _ in bias_result] == ["MASTER_BIAS"]
    assert bias_result["MASTER_BIAS"] is bias_result.MASTER_BIAS
    with pytest.raises(AttributeError, match="MASTER_BIAS"):
        bias_result.MASTER_FLAT


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_products_open_lazily(bias_files):
    r = cpldask.Recipe("muse_bias")
    res = r(bias_files, param={"nifu": 1})
    assert res._opened == {}  # nothing read before the first access
    hdul = res.MASTER_BIAS
    assert hdul._file.memmap  # pixels are mapped from the product file, not copied
    assert res.paths["MASTER_BIAS"][0] == hdul.filename()


@pytest.mark.requires_cpl
def test_output_dir_gives_paths(test_recipe, any_fits, tmp_path):
    res = test_recipe(any_fits, output_dir=tmp_path, param={"nproducts": 1})
    assert isinstance(res.PRODUCT, str) and res.PRODUCT.startswith(str(tmp_path))
    assert os.path.exists(res.PRODUCT)
    # the product and its provenance record; no private call directory is left
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        ["PRODUCT_0000.fits", "PRODUCT_0000.provenance.json"]
    assert not any((tmp_path / ".cpldask-tmp").iterdir())


@pytest.mark.requires_cpl
def test_list_rule_for_several_frames(test_recipe, any_fits, tmp_path):
    res = test_recipe(any_fits, output_dir=tmp_path, param={"nproducts": 3})
    assert isinstance(res.PRODUCT, list) and len(res.PRODUCT) == 3
    one = test_recipe([any_fits], output_dir=tmp_path / "one", param={"nproducts": 1})
    assert isinstance(one.PRODUCT, list)  # python-cpl: a list of one in, a list out


@pytest.mark.requires_cpl
def test_two_concurrent_calls_share_output_dir(test_recipe, any_fits, tmp_path):
    a = test_recipe(any_fits, output_dir=tmp_path, threaded=True,
                    param={"value": 1.0, "sleep": 1.0})
    b = test_recipe(any_fits, output_dir=tmp_path, threaded=True,
                    param={"value": 2.0, "sleep": 1.0})
    pa, pb = a.PRODUCT, b.PRODUCT
    assert pa != pb
    assert fits.getheader(pa)["ESO QC ECHO VALUE"] == 1.0
    assert fits.getheader(pb)["ESO QC ECHO VALUE"] == 2.0


@pytest.mark.requires_cpl
def test_later_call_replaces_earlier_product(test_recipe, any_fits, tmp_path):
    first = test_recipe(any_fits, output_dir=tmp_path, param={"value": 1.0})
    second = test_recipe(any_fits, output_dir=tmp_path, param={"value": 2.0})
    assert first.PRODUCT == second.PRODUCT  # python-cpl: a later call overwrites
    assert fits.getheader(second.PRODUCT)["ESO QC ECHO VALUE"] == 2.0


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_product_summary_matches_astropy(bias_result, bias_files, tmp_path):
    """The worker reads product headers without astropy; it must say what astropy says."""
    from cpldask import _fitsheader

    table = tmp_path / "table.fits"
    column = fits.Column("A", "E", array=np.arange(5.0))
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([column], name="TAB")]
                 ).writeto(table)
    long = tmp_path / "long.fits"  # a CONTINUE card: the reader hands over to astropy
    header = fits.Header()
    header["HIERARCH ESO QC NOTE"] = "x" * 100
    header["HIERARCH ESO QC MEAN"] = 1.5e-3
    fits.PrimaryHDU(np.zeros((2, 3), "f4"), header=header).writeto(long)
    products = [bias_result.paths["MASTER_BIAS"][0], bias_files[0], str(table), str(long)]
    for path in products:
        kept, hdus = _fitsheader.summary(path)
        with fits.open(path) as hdul:
            primary = hdul[0].header
            assert kept == {k: primary[k] for k in kept}
            assert {k for k in primary if k.startswith("ESO QC")} <= set(kept)
            expect = []
            for hdu in hdul:
                if isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                    expect.append((hdu.name, (hdu.header["NAXIS2"],),
                                   f"table, {hdu.header['TFIELDS']} columns"))
                elif hdu.shape:
                    expect.append((hdu.name, hdu.shape))
        assert [(n, s) for n, s, _ in hdus] == [e[:2] for e in expect]
    assert _fitsheader.summary(str(long))[0]["ESO QC NOTE"] == "x" * 100
    assert bias_result.record.products[0].hdus[0] == ("DATA", (4112, 4096), "float32")


# -- bad input is refused on the client, before anything is submitted ----------------

@pytest.fixture
def no_submit(monkeypatch):
    """Fail the test if a bad call reaches the cluster."""
    def refuse(*args, **kwargs):
        raise AssertionError("work was submitted for a bad call")
    client = cpldask.get_client()
    monkeypatch.setattr(client, "compute", refuse)
    monkeypatch.setattr(client, "submit", refuse)


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_missing_input_file(no_submit, tmp_path):
    r = cpldask.Recipe("muse_bias")
    with pytest.raises(errors.InputError, match="does not exist"):
        r([str(tmp_path / "nope.fits")])


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_unreadable_input_file(no_submit, any_fits, monkeypatch):
    # the suite may run as root, who can read anything: let os.access say no
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if p == any_fits else real(p, m))
    with pytest.raises(errors.InputError, match="not readable"):
        cpldask.Recipe("muse_bias")([any_fits])


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_no_raw_frames(no_submit):
    with pytest.raises(ValueError, match="no raw frames"):
        cpldask.Recipe("muse_bias")([])


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_unknown_recipe_names_the_path():
    with pytest.raises(OSError) as info:
        cpldask.Recipe("muse_biass")
    msg = str(info.value)
    assert "/usr/lib/x86_64-linux-gnu/cpl/plugins" in msg and "muse_bias" in msg


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_unknown_parameter_lists_valid_names(no_submit, bias_files):
    r = cpldask.Recipe("muse_bias")
    with pytest.raises(KeyError, match="nifu") as info:
        r.param.nifuu = 1
    assert "Did you mean nifu" in str(info.value)
    with pytest.raises(KeyError, match="combine"):
        r(bias_files, param={"combin": "median"})


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_wrong_type_range_enum(no_submit, bias_files):
    r = cpldask.Recipe("muse_bias")
    with pytest.raises(TypeError, match="nifu.*int"):
        r.param.nifu = 1.5
    with pytest.raises(ValueError, match="range"):
        r.param.nifu = 25
    with pytest.raises(ValueError, match="combine"):
        r.param.combine = "mean"
    with pytest.raises(ValueError, match="range"):
        r(bias_files, param={"nifu": -2})
    r.param.nifu = 3
    del r.param.nifu
    assert r.param.nifu.value is None  # reset to default


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_unknown_calib_tag_and_missing_calib(no_submit, bias_files):
    dark = cpldask.Recipe("muse_dark")
    with pytest.raises(KeyError, match="MASTER_BIAS"):
        dark.calib.MASTER_BAIS = bias_files[0]
    with pytest.raises(ValueError, match="needs calibration MASTER_BIAS"):
        dark(bias_files)


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_unknown_raw_tag(no_submit, bias_files):
    with pytest.raises(KeyError, match="BIAS"):
        cpldask.Recipe("muse_bias")(bias_files, tag="BAIS")


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_unwritable_output_dir(no_submit, bias_files, tmp_path):
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(OSError, match="output_dir"):
        cpldask.Recipe("muse_bias")(bias_files, output_dir=target / "sub")


# -- the recipe search path ---------------------------------------------------------

def _search_path_in_subprocess(env_extra: dict, cwd) -> str:
    code = "import cpldask; print(':'.join(cpldask.Recipe.search_path()))"
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, text=True,
                          capture_output=True, check=True).stdout.strip()


def test_default_search_path_is_debian(tmp_path):
    assert _search_path_in_subprocess({}, tmp_path) == "/usr/lib/x86_64-linux-gnu/cpl/plugins"


def test_search_path_from_environment(tmp_path):
    got = _search_path_in_subprocess({"DASK_CPLDASK__RECIPE_PATH": "/a:/b"}, tmp_path)
    assert got == "/a:/b"


def test_search_path_from_dask_config(monkeypatch):
    import dask

    monkeypatch.setattr(cpldask.Recipe, "path", None)
    with dask.config.set({"cpldask.recipe-path": ["/x", "/y"]}):
        assert cpldask.Recipe.search_path() == ["/x", "/y"]


@pytest.mark.requires_cpl
def test_current_directory_is_not_searched(testrecipe_dir, monkeypatch):
    monkeypatch.setattr(cpldask.Recipe, "path", None)
    monkeypatch.chdir(testrecipe_dir)
    with pytest.raises(OSError, match="not found"):
        cpldask.Recipe("cpldask_test")
    monkeypatch.setattr(cpldask.Recipe, "path", ".")  # unless asked for
    assert cpldask.Recipe("cpldask_test").name == "cpldask_test"


@pytest.mark.requires_cpl
def test_workers_use_the_clients_path(testrecipe_dir, any_fits, tmp_path, monkeypatch):
    # the test recipe is on no path the workers were configured with
    monkeypatch.setattr(cpldask.Recipe, "path", [str(testrecipe_dir)])
    res = cpldask.Recipe("cpldask_test")(any_fits, output_dir=tmp_path)
    assert os.path.exists(res.PRODUCT)


@pytest.mark.requires_cpl
def test_a_recipes_own_path_is_searched_and_used_by_its_workers(
        testrecipe_dir, any_fits, tmp_path, monkeypatch):
    """Recipe(path=...): the test recipe's directory is on no other path, neither
    Recipe.path nor the workers' configuration; the class attribute stays as it was."""
    monkeypatch.setattr(cpldask.Recipe, "path", [str(tmp_path / "elsewhere")])
    with pytest.raises(OSError, match="not found"):
        cpldask.Recipe("cpldask_test")
    # a ':'-separated string as esorex's recipe-dir, a missing directory first
    recipe = cpldask.Recipe("cpldask_test", path=f"{tmp_path / 'none'}:{testrecipe_dir}")
    assert recipe.__file__.startswith(str(testrecipe_dir))
    res = recipe(any_fits, output_dir=tmp_path / "out")
    assert os.path.exists(res.PRODUCT)
    assert cpldask.Recipe.path == [str(tmp_path / "elsewhere")]
    names = [n for n, _ in cpldask.Recipe.list(path=[testrecipe_dir])]
    assert names == ["cpldask_test"]


@pytest.mark.requires_cpl
def test_an_hdulist_changed_in_memory_is_what_the_recipe_reads(test_recipe, any_fits):
    """python-cpl's tutorial patches a frame in memory and passes the HDUList: each
    call gets the frame as it is at that moment (its content is part of the key), and
    DATAMD5 is set in the caller's object, as python-cpl does."""
    hdus = fits.open(any_fits)
    hdus[0].header["HIERARCH ESO TEST MARK"] = 1
    first = test_recipe(hdus)
    hdus[0].header["HIERARCH ESO TEST MARK"] = 2
    second = test_recipe([hdus, any_fits])  # a list mixing an HDUList and a file name
    assert first.key != second.key
    assert "DATAMD5" in hdus[0].header
    for res, mark in ((first, 1), (second, 2)):
        header = fits.getheader(res.paths["PRODUCT"][0])
        name = header["ESO PRO REC1 RAW1 NAME"]  # the file the recipe read
        (read,) = [p for p in _inputs(res) if os.path.basename(p) == name]
        assert fits.getval(read, "ESO TEST MARK") == mark


def _inputs(res) -> list[str]:
    return [i["path"] for i in res.provenance["inputs"] if "path" in i]


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_a_required_calibration_can_be_declared_optional(any_fits):
    """muse_scipost declares STD_RESPONSE as required (min 1) but makes an
    uncalibrated cube without it: a workflow says so with ``optional_calib``."""
    scipost = cpldask.Recipe("muse_scipost")
    with pytest.raises(ValueError, match="needs calibration"):
        scipost.delayed(any_fits, tag="PIXTABLE_OBJECT")
    scipost.optional_calib = {"STD_RESPONSE"}
    with pytest.raises(ValueError, match="needs calibration EXTINCT_TABLE"):
        scipost.delayed(any_fits, tag="PIXTABLE_OBJECT")
    scipost.optional_calib.add("EXTINCT_TABLE")
    node = scipost.delayed(any_fits, tag="PIXTABLE_OBJECT")  # built, nothing run
    assert node.key.startswith("muse_scipost-")
