"""Issue 8: the ``cpldask`` command line — list, info, run (files and SOFs), demo.

Every subcommand is driven through ``handle_args`` in this process (the session's
embedded cluster runs the calls); one test runs the installed console script in a
subprocess, end to end, with real ``muse_bias`` calls over several SOFs.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys

import distributed
import numpy as np
import pytest
from astropy.io import fits
from rich.console import Console

import cpldask
from cpldask._cli import handle_args
from cpldask._cli import _demo, _run
from cpldask._cli._inputs import UsageError, read_sof
from helpers import max_overlap

#: cpldask._cli imports python-cpl; the tests marked requires_cpl run recipes, the
#: others (help, SOF parsing, dry runs) none
pytestmark = pytest.mark.requires_python_cpl

MUSE_PLUGINS = "/usr/lib/x86_64-linux-gnu/cpl/plugins"
CPLDASK = pathlib.Path(sys.executable).with_name("cpldask")


def write_sof(path: pathlib.Path, frames: list[tuple[str, str]], header: str = "") -> pathlib.Path:
    """A SOF listing ``(file, tag)`` with paths relative to the SOF's folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header] if header else []
    lines += [f"{os.path.relpath(f, path.parent)} {tag}" for f, tag in frames]
    path.write_text("\n".join(lines) + "\n")
    return path


def echo(path, key: str):
    """A value the test recipe echoed into its product header."""
    return fits.getheader(path)[f"ESO QC ECHO {key}"]


# -- list and info -------------------------------------------------------------------
@pytest.mark.requires_cpl
@pytest.mark.muse
def test_list(capsys):
    assert handle_args(["list"]) == 0
    out = capsys.readouterr().out
    assert "cpldask_test" in out and "1.0.0" in out
    assert "muse_bias" in out and "2.8.7" in out
    assert "Combine several separate bias images" in out  # the synopsis

    assert handle_args(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {r["name"]: r for r in data["recipes"]}
    assert names["cpldask_test"]["versions"] == ["1.0.0"]
    assert data["recipe_path"] == cpldask.Recipe.search_path()


def test_help_and_version(capsys):
    assert handle_args(["--help"]) == 0
    assert "run" in capsys.readouterr().out
    assert handle_args(["run", "--help"]) == 0
    assert "--sof" in capsys.readouterr().out
    assert handle_args(["--version"]) == 0
    assert cpldask.__version__ in capsys.readouterr().out


@pytest.mark.requires_cpl
def test_info(capsys):
    assert handle_args(["info", "cpldask_test"]) == 0
    out = capsys.readouterr().out
    assert "cpldask_test 1.0.0" in out
    assert "nproducts" in out and "0..1000" in out  # a range
    assert "none|segv|abort|kill" in out  # an enum
    assert "Number of PRODUCT frames to write" in out  # the doc, without python-cpl's tail
    assert "RAW" in out and "PRODUCT" in out


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_info_json(capsys):
    assert handle_args(["info", "muse_bias", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "muse_bias" and data["version"] == "2.8.7"
    params = {p["name"]: p for p in data["parameters"]}
    assert params["nifu"] == {
        "name": "nifu", "fullname": "muse.muse_bias.nifu", "type": "int", "default": 0,
        "range": [-1, 24], "enum": None,
        "doc": "IFU to handle. If set to 0, all IFUs are processed serially. If set "
               "to -1, all IFUs are processed in parallel."}
    assert params["combine"]["enum"] == ["average", "median", "minmax", "sigclip"]
    assert params["merge"]["type"] == "bool" and params["merge"]["default"] is False
    assert data["raw_tags"] == ["BIAS"]
    assert data["calib_tags"] == [{"tag": "BADPIX_TABLE", "min": None, "max": None,
                                   "required": False}]
    assert data["outputs"] == {"BIAS": ["MASTER_BIAS"]}


# -- run -------------------------------------------------------------------------------
@pytest.mark.requires_cpl
def test_run_files(any_fits, tmp_path, capsys):
    out_dir = tmp_path / "out"
    # options after the file, as esorex users write them
    code = handle_args(["run", "cpldask_test", any_fits, "--param", "nproducts=2",
                        "--param", "value=2.5", "--param", "label=hello",
                        "--param", "fail=false", "--output-dir", str(out_dir)])
    assert code == 0
    products = sorted(out_dir.glob("PRODUCT_*.fits"))
    assert [p.name for p in products] == ["PRODUCT_0000.fits", "PRODUCT_0001.fits"]
    assert echo(products[0], "VALUE") == 2.5 and echo(products[0], "LABEL") == "hello"
    captured = capsys.readouterr()
    assert "PRODUCT_0000.fits" in captured.out and "done" in captured.out
    assert "dashboard:" in captured.err
    assert "[1/1] done" in captured.err  # without a terminal: one line per call


@pytest.mark.requires_cpl
def test_run_sofs_in_parallel(bias_files, tmp_path, monkeypatch, capsys):
    """Several SOFs: one call each, products in OUTPUT_DIR/<sof stem>/; an rc file
    sets parameters, --param overrides it."""
    monkeypatch.chdir(tmp_path)
    sofs = []
    for i in (1, 2, 3):  # SOF i lists i raw frames
        sofs.append(write_sof(pathlib.Path("sofs", f"night{i}.sof"),
                              [(f, "RAW") for f in bias_files[:i]],
                              header=f"# night {i}\n\n"))
    pathlib.Path("test.rc").write_text(
        "# esorex parameters\nesorex.caller.recipe-dir=/nowhere\n"
        "cpldask.cpldask_test.nproducts=2\ncpldask.cpldask_test.value=1.5\n")
    code = handle_args(["run", "cpldask_test", "--sof", *map(str, sofs), "--rc", "test.rc",
                        "--param", "value=3", "--output-dir", "out"])
    assert code == 0
    out = capsys.readouterr().out
    for i, sof in enumerate(sofs, start=1):
        products = sorted(pathlib.Path("out", f"night{i}").glob("PRODUCT_*.fits"))
        assert len(products) == 2  # from the rc file
        assert echo(products[0], "NRAW") == i  # this SOF's frames
        assert echo(products[0], "VALUE") == 3.0  # --param over the rc file
        assert str(sof) in out and str(products[1]) in out
    assert out.count("done") == 3


@pytest.mark.requires_cpl
@pytest.mark.muse
def test_run_sof_given_as_file_and_calibrations(bias_files, tmp_path):
    """esorex's spelling (`RECIPE FILE.sof`) works; raw and calibration frames are
    sorted by the recipe's tags; --calib replaces a SOF's frames of its tag."""
    recipe = cpldask.Recipe("muse_bias")
    badpix = tmp_path / "badpix.fits"
    fits.HDUList([fits.PrimaryHDU()]).writeto(badpix)
    sof = write_sof(tmp_path / "bias.sof", [*[(f, "BIAS") for f in bias_files],
                                            (str(badpix), "BADPIX_TABLE")])
    (call,) = _run.plan(recipe, files=[str(sof)], sofs=[], tag=None, calib={},
                        output_dir=tmp_path / "out")
    assert call.raw == {"BIAS": [str(pathlib.Path(f).absolute()) for f in bias_files]}
    assert call.calib == {"BADPIX_TABLE": [str(badpix)]}
    assert call.output_dir == tmp_path / "out" / "bias"
    (call,) = _run.plan(recipe, files=[], sofs=[str(sof)], tag=None,
                        calib={"BADPIX_TABLE": ["/other.fits"]}, output_dir=tmp_path)
    assert call.calib == {"BADPIX_TABLE": ["/other.fits"]}


def test_read_sof(tmp_path):
    sof = tmp_path / "sub" / "x.sof"
    sof.parent.mkdir()
    any_fits = str(tmp_path / "frame.fits")  # read_sof checks paths, not contents
    fits.PrimaryHDU().writeto(any_fits)
    rel = os.path.relpath(any_fits, sof.parent)
    sof.write_text(f"# comment\n\n  {rel}   RAW  RAW\n{rel} RAW\n")
    parsed = read_sof(sof)
    assert parsed.name == "x"
    assert parsed.frames == ((("RAW", str(pathlib.Path(any_fits).absolute())),) * 2)
    sof.write_text(f"{rel}\n")
    with pytest.raises(UsageError, match=r"x.sof:1: expected 'PATH TAG'"):
        read_sof(sof)


@pytest.mark.requires_cpl
def test_run_failure_shows_recipe_log(any_fits, tmp_path, capsys):
    sof = write_sof(tmp_path / "bad.sof", [(any_fits, "RAW")])
    code = handle_args(["run", "cpldask_test", "--sof", str(sof), "--param", "fail=true",
                        "--output-dir", str(tmp_path / "out")])
    assert code == 1
    captured = capsys.readouterr()
    assert "failed" in captured.out
    assert "CplError" in captured.err and "failure requested" in captured.err
    assert "[ INFO  ] cpldask_test: cpldask_test: pid=" in captured.err  # the log tail
    assert "Traceback" not in captured.err


@pytest.mark.requires_cpl
def test_run_on_a_scheduler_with_slots(any_fits, tmp_path, capsys):
    """--scheduler sends the calls to that cluster, --slots 1 runs them one at a time
    (the limit is kept per scheduler: the session's cluster is not affected)."""
    sofs = [write_sof(tmp_path / f"s{i}.sof", [(any_fits, "RAW")] * i) for i in (1, 2)]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster:
        code = handle_args(["run", "cpldask_test", "--sof", *map(str, sofs),
                            "--param", "sleep=1", "--scheduler", cluster.scheduler_address,
                            "--slots", "1", "--output-dir", str(tmp_path / "out")])
        assert code == 0, capsys.readouterr()
        assert "cpldask_test" in cluster.scheduler.task_prefixes
    spans = [(echo(p, "TSTART"), echo(p, "TEND"))
             for p in (tmp_path / "out").glob("s*/PRODUCT_0000.fits")]
    assert len(spans) == 2 and max_overlap(spans) == 1


# -- bad input: one line on stderr, exit code 2, nothing submitted -------------------
BAD = {
    "unknown recipe": (["info", "muse_bais"], "Did you mean muse_bias"),
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "unknown option": (["run", "cpldask_test", "{fits}", "--bogus"], "--bogus"),
    "unknown parameter": (["run", "cpldask_test", "{fits}", "--param", "nprod=3"],
                          "no parameter 'nprod'. Did you mean nproducts"),
    "wrong type": (["run", "cpldask_test", "{fits}", "--param", "nproducts=many"],
                   "parameter 'nproducts' takes an int, not 'many'"),
    "bad bool": (["run", "cpldask_test", "{fits}", "--param", "fail=maybe"],
                 "takes a bool"),
    "out of range": (["run", "cpldask_test", "{fits}", "--param", "nproducts=5000"],
                     "not in range"),
    "not in enum": (["run", "cpldask_test", "{fits}", "--param", "crash=boom"],
                    "'boom' is not in ['none', 'segv', 'abort', 'kill']"),
    "no equals": (["run", "cpldask_test", "{fits}", "--param", "nproducts"],
                  "--param expects NAME=VALUE"),
    "missing SOF": (["run", "cpldask_test", "--sof", "{tmp}/none.sof"],
                    "cannot read SOF"),
    "malformed SOF": (["run", "cpldask_test", "--sof", "{tmp}/malformed.sof"],
                      "malformed.sof:2: expected 'PATH TAG'"),
    "SOF frame missing": (["run", "cpldask_test", "--sof", "{tmp}/missing.sof"],
                          "does not exist"),
    "unknown SOF tag": (["run", "cpldask_test", "--sof", "{tmp}/foo.sof"],
                        "does not take frames tagged 'FOO'; raw tags: RAW"),
    "no raw frames in SOF": (["run", "muse_bias", "--sof", "{tmp}/calib.sof"],
                             "no raw frames"),
    "same SOF name twice": (["run", "cpldask_test", "--sof", "{tmp}/a/raw.sof",
                             "{tmp}/b/raw.sof"], "would both write to"),
    "unknown tag": (["run", "cpldask_test", "{fits}", "--tag", "BIAS"],
                    "has no raw tag 'BIAS'"),
    "unknown calib tag": (["run", "cpldask_test", "{fits}", "--calib", "FOO={fits}"],
                          "has no calibration tag 'FOO'"),
    "missing file": (["run", "cpldask_test", "{tmp}/none.fits"], "does not exist"),
    "missing rc": (["run", "cpldask_test", "{fits}", "--rc", "{tmp}/none.rc"],
                   "cannot read rc file"),
    "bad rc value": (["run", "cpldask_test", "{fits}", "--rc", "{tmp}/bad.rc"],
                     "bad.rc: cpldask_test: parameter 'nproducts' takes an int"),
    "no input": (["run", "cpldask_test"], "no input"),
    "files and SOFs": (["run", "cpldask_test", "{fits}", "--sof", "{tmp}/foo.sof"],
                       "not both"),
    "bad slots": (["run", "cpldask_test", "{fits}", "--slots", "0"],
                  "--slots: expected a whole number >= 1"),
}


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.parametrize("argv, message", list(BAD.values()), ids=list(BAD))
def test_bad_input(argv, message, any_fits, tmp_path, capsys):
    (tmp_path / "malformed.sof").write_text(f"# ok\n{any_fits}\n")
    (tmp_path / "missing.sof").write_text(f"{tmp_path}/gone.fits RAW\n")
    write_sof(tmp_path / "foo.sof", [(any_fits, "FOO")])
    write_sof(tmp_path / "a" / "raw.sof", [(any_fits, "RAW")])
    write_sof(tmp_path / "b" / "raw.sof", [(any_fits, "RAW")])
    write_sof(tmp_path / "calib.sof", [(any_fits, "BADPIX_TABLE")])
    (tmp_path / "bad.rc").write_text("cpldask.cpldask_test.nproducts=lots\n")
    argv = [a.format(fits=any_fits, tmp=tmp_path) for a in argv]
    assert handle_args(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cpldask: error: "), captured.err
    assert message in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


# -- demo ----------------------------------------------------------------------------
@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_demo(tmp_path, capsys):
    code = handle_args(["demo", "--bias", "--sets", "2", "--workdir", str(tmp_path)])
    assert code == 0
    captured = capsys.readouterr()
    assert "median DATA [adu]" in captured.out and "dashboard:" in captured.err
    raws = []
    for name in ("set1", "set2"):
        (product,) = (tmp_path / name).glob("MASTER_BIAS*.fits")
        assert f"{name}/{product.name}" in captured.out
        with fits.open(product) as hdul:
            assert hdul["DATA"].data.shape == (4112, 4096)
            assert abs(np.median(hdul["DATA"].data)) < 1  # overscan-subtracted
        raws.append(fits.getdata(tmp_path / name / "raw" / "BIAS_01.fits", ext=1))
    assert not np.array_equal(*raws)  # a different seed per set
    # a second demo reuses the frames: nothing is written again
    stamps = [p.stat().st_mtime_ns for p in sorted(tmp_path.glob("set*/raw/*.fits"))]
    _demo.write_sets(tmp_path, sets=2, frames=3, seed=0, err=Console(file=io.StringIO()))
    assert stamps == [p.stat().st_mtime_ns for p in sorted(tmp_path.glob("set*/raw/*.fits"))]


# -- the console script, end to end --------------------------------------------------
@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
def test_console_script_runs_muse_bias_over_sofs(bias_files, tmp_path):
    sofs = [write_sof(tmp_path / "sofs" / f"night{i}.sof",
                      [(f, "BIAS") for f in bias_files], header=f"# night {i}")
            for i in (1, 2, 3)]
    env = {**os.environ,
           "DASK_CPLDASK__RECIPE_PATH": MUSE_PLUGINS,
           # a private work directory, and no cache: the recipes must really run
           "DASK_CPLDASK__WORK_DIR": str(tmp_path / "work"),
           "DASK_CPLDASK__CACHE__ENABLED": "False",
           "DASK_CPLDASK__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0"}
    proc = subprocess.run(
        [str(CPLDASK), "run", "muse_bias", "--sof", *[os.path.relpath(s, tmp_path) for s in sofs],
         "--param", "nifu=1", "--output-dir", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for i in (1, 2, 3):
        (product,) = (tmp_path / "out" / f"night{i}").glob("MASTER_BIAS*.fits")
        assert f"out/night{i}/{product.name}" in proc.stdout
        with fits.open(product) as hdul:
            assert hdul[0].header["ESO PRO CATG"] == "MASTER_BIAS"
            assert hdul["DATA"].data.shape == (4112, 4096)
    assert proc.stdout.count("done") == 3
    assert "dashboard: http://127.0.0.1:" in proc.stderr


def test_reduce_dry_run(tmp_path, capsys):
    from test_reduce import night

    night(tmp_path)
    graph = tmp_path / "graph.dot"
    assert handle_args(["reduce", str(tmp_path), "--ifus", "1-2", "--dry-run",
                        "--output-dir", str(tmp_path / "out"), "--graph", str(graph)]) == 0
    text = capsys.readouterr().out
    assert "muse_bias[1]" in text and "muse_scipost" in text
    assert '"muse_bias[1]" -> "muse_dark[1]";' in graph.read_text()


def test_reduce_bad_ifus(tmp_path, capsys):
    assert handle_args(["reduce", str(tmp_path), "--ifus", "0-30", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cpldask: error: --ifus") and "Traceback" not in err


# -- --recipe-path --------------------------------------------------------------------
@pytest.mark.requires_cpl
def test_recipe_path_is_this_command_lines_only(testrecipe_dir, any_fits, tmp_path,
                                                monkeypatch, capsys):
    """--recipe-path finds the test recipe, which is not on Recipe.path, and leaves
    Recipe.path (the process's, python-cpl's attribute) alone."""
    monkeypatch.setattr(cpldask.Recipe, "path", [MUSE_PLUGINS])
    before = cpldask.Recipe.path
    assert handle_args(["info", "cpldask_test"]) == 2  # not on Recipe.path
    assert "not found in " + MUSE_PLUGINS in capsys.readouterr().err

    where = f"{tmp_path / 'none'}:{testrecipe_dir}"
    assert handle_args(["--recipe-path", where, "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe_path"] == [str(tmp_path / "none"), str(testrecipe_dir)]
    assert [r["name"] for r in data["recipes"]] == ["cpldask_test"]
    assert handle_args(["--recipe-path", where, "info", "cpldask_test"]) == 0
    assert "cpldask_test 1.0.0" in capsys.readouterr().out
    assert handle_args(["--recipe-path", where, "run", "cpldask_test", any_fits,
                        "--output-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "PRODUCT_0000.fits").exists()
    assert cpldask.Recipe.path is before and before == [MUSE_PLUGINS]


def test_reduce_takes_the_recipe_path(tmp_path, capsys):
    """The reduction's recipes are searched on --recipe-path: an empty directory has
    no muse_bias, and the error says where it looked (before anything is submitted)."""
    from test_reduce import night

    night(tmp_path / "night")
    empty = tmp_path / "no-recipes"
    empty.mkdir()
    before = cpldask.Recipe.path
    assert handle_args(["--recipe-path", str(empty), "reduce", str(tmp_path / "night"),
                        "--ifus", "1", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"'muse_bias' not found in {empty}." in err and "Traceback" not in err
    assert cpldask.Recipe.path is before
