"""cpldask as a drop-in for python-cpl, tested with code we did not write.

* python-cpl's own unit tests (``test/TestRecipe.py`` and its C recipe ``rtest.c``,
  from python-cpl 0.7.4's sdist on PyPI), run once with python-cpl and once with the
  single line ``import cpl`` replaced by ``import cpldask as cpl``: every test that
  passes with python-cpl must pass with cpldask. Nothing else of the file is edited,
  skipped or deselected.
* The README's examples and the examples of python-cpl's parallel-mode page (the
  seed, ``shared/seed/parallel.rst``) saved as files and run as ``python file.py``,
  no ``if __name__ == '__main__'`` guard, the way users run them.
* A user's script killed with SIGKILL leaves no process behind.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET

import pytest
from astropy.io import fits

#: every test here runs real recipes (python-cpl's own rtest, or MUSE's)
pytestmark = [pytest.mark.requires_cpl, pytest.mark.slow]

ROOT = pathlib.Path(__file__).resolve().parents[1]
MUSE_PLUGINS = "/usr/lib/x86_64-linux-gnu/cpl/plugins"
PYTHON_CPL = "0.7.4"


def _env(tmp: pathlib.Path) -> dict[str, str]:
    """A user's environment, with cpldask's cache and work directory in ``tmp``."""
    env = dict(os.environ)
    env.update(DASK_CPLDASK__CACHE__DIR=str(tmp / "cache"),
               DASK_CPLDASK__WORK_DIR=str(tmp / "work"),
               DASK_CPLDASK__LOCAL__DASHBOARD_ADDRESS="127.0.0.1:0")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


# -- python-cpl's own test suite ------------------------------------------------------

@pytest.fixture(scope="module")
def python_cpl_sdist(tmp_path_factory) -> pathlib.Path:
    """python-cpl's sdist (its ``test/`` and ``doc/``), from the package registry."""
    d = tmp_path_factory.mktemp("python-cpl-sdist")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                    ":all:", "-q", "-d", str(d), f"python-cpl=={PYTHON_CPL}"], check=True)
    (sdist,) = d.glob("python-cpl-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(d, filter="data")
    return d / f"python-cpl-{PYTHON_CPL}"


def _run_suite(test_dir: pathlib.Path, tmp: pathlib.Path) -> dict[str, str]:
    """Run TestRecipe.py in ``test_dir`` with pytest; outcome by test id."""
    report = tmp / f"{test_dir.name}.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "-p", "no:randomly", f"--junitxml={report}", "TestRecipe.py"],
                   cwd=test_dir, env=_env(tmp), capture_output=True, text=True,
                   timeout=1200)
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        kinds = [child.tag for child in case]
        outcomes[name] = next((k for k in ("failure", "error", "skipped") if k in kinds),
                              "passed")
    return outcomes


def test_python_cpls_own_test_suite_passes_with_cpldask(python_cpl_sdist, tmp_path):
    python_cpl_tests = python_cpl_sdist / "test"
    runs = {}
    for variant in ("python-cpl", "cpldask"):
        d = tmp_path / variant
        d.mkdir()
        for name in ("TestRecipe.py", "rtest.c"):
            text = (python_cpl_tests / name).read_text()
            if variant == "cpldask" and name == "TestRecipe.py":
                text, n = re.subn(r"(?m)^import cpl$", "import cpldask as cpl", text)
                assert n == 1, "python-cpl's test file no longer has one 'import cpl' line"
            (d / name).write_text(text)
        runs[variant] = _run_suite(d, tmp_path)
    reference, ours = runs["python-cpl"], runs["cpldask"]
    passed = {k: sum(v == "passed" for v in r.values()) for k, r in runs.items()}
    print(f"python-cpl {PYTHON_CPL} TestRecipe.py: python-cpl passes {passed['python-cpl']}"
          f" of {len(reference)}, cpldask passes {passed['cpldask']} of {len(ours)}")
    assert len(reference) >= 80 and set(ours) == set(reference)
    lost = sorted(k for k, v in reference.items() if v == "passed" and ours[k] != "passed")
    assert not lost, f"pass with python-cpl, not with cpldask: {lost}"


# -- user scripts, run as scripts -----------------------------------------------------

def _bias_with_dead_ifus(directory: pathlib.Path, live=(1, 2)) -> list[str]:
    """bias1.fits ... bias3.fits with all 24 MUSE extensions: the ``live`` IFUs with
    pixels, the others header-only with ``ESO DET CHIP LIVE = F``, which is how the
    MUSE pipeline knows an IFU to skip (``muse_pfits_get_chip_live``): a recipe called
    with python-cpl's defaults (``nifu=0``, every IFU) then runs in seconds."""
    from cpldask.instruments.muse import synthetic

    raw = synthetic.write_bias(directory / "raw", n=3, ifus=live, seed=5)
    names = []
    for i, path in enumerate(raw, 1):
        with fits.open(path) as hdus:
            template = hdus[1].header.copy()
            out = [fits.PrimaryHDU(header=hdus[0].header)] + [h.copy() for h in hdus[1:]]
        for key in ("XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
                    "BZERO", "BSCALE", "ZIMAGE", "ZBITPIX", "ZCMPTYPE"):
            template.remove(key, ignore_missing=True, remove_all=True)
        for ifu in sorted(set(range(1, 25)) - set(live)):
            header = template.copy()
            header["EXTNAME"] = f"CHAN{ifu:02d}"
            header["HIERARCH ESO DET CHIP NAME"] = f"CHAN{ifu:02d}"
            header["HIERARCH ESO DET CHIP LIVE"] = False
            out.append(fits.ImageHDU(header=header))
        name = directory / f"bias{i}.fits"
        fits.HDUList(out).writeto(name)
        names.append(str(name))
    return names


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> pathlib.Path:
    """A user's folder: bias1-3.fits (24 extensions, IFUs 1 and 2 live) and
    dark1-3.fits (IFU 1), the names the README's examples use."""
    from cpldask.instruments.muse import synthetic

    d = tmp_path_factory.mktemp("user")
    _bias_with_dead_ifus(d)
    for i in (1, 2, 3):
        synthetic.write_raw(d / f"dark{i}.fits", "DARK", ifus=(1,), seed=20 + i, index=i,
                            mjd=60000.1 + 0.03 * i)
    return d


def _python_blocks(text: str, fence: str) -> list[str]:
    if fence == "md":
        return re.findall(r"```python\n(.*?)```", text, flags=re.S)
    blocks = re.findall(r"::\n\n((?:(?:  .*)?\n)+)", text)  # reST literal blocks
    return [re.sub(r"(?m)^  ", "", b) for b in blocks]


def _run_script(code: str, where: pathlib.Path, name: str, tmp: pathlib.Path,
                python_cpl: bool = False) -> subprocess.CompletedProcess:
    if python_cpl:
        code = code.replace("import cpldask as cpl", "import cpl")
    path = where / name
    path.write_text(f"{'import cpl' if python_cpl else 'import cpldask as cpl'}\n"
                    f"cpl.Recipe.path = [{MUSE_PLUGINS!r}]\n{code}")
    return subprocess.run([sys.executable, path.name], cwd=where, env=_env(tmp),
                          capture_output=True, text=True, timeout=900)


@pytest.mark.muse
def test_readme_examples_run_as_plain_scripts(user_dir, tmp_path):
    blocks = [b for b in _python_blocks((ROOT / "README.md").read_text(), "md")
              if "cpl.Recipe" in b]
    assert len(blocks) >= 3
    for i, code in enumerate(blocks):
        proc = _run_script(code, user_dir, f"readme_{i}.py", tmp_path)
        assert proc.returncode == 0, f"README example {i}:\n{code}\n{proc.stderr[-3000:]}"
        assert proc.stderr == ""  # start-up and interpreter exit are quiet
    with fits.open(user_dir / "master_bias.fits") as hdus:  # the first example's product
        assert hdus[0].header["ESO PRO CATG"] == "MASTER_BIAS"
        assert hdus["DATA"].data.shape == (4112, 4096)


@pytest.mark.muse
def test_seed_examples_run_as_plain_scripts(python_cpl_sdist, user_dir, tmp_path):
    """python-cpl's parallel-mode page (the seed): its first example (three ways to
    run muse_bias in the background) runs; its second one's recipe, muse_focus, is
    not in MUSE 2.8.7, and python-cpl and cpldask refuse it alike."""
    first, second = _python_blocks((python_cpl_sdist / "doc" / "parallel.rst").read_text(),
                                   "rst")[:2]
    # one MASTER_BIAS per live IFU (python-cpl's rule: a list where a tag has several)
    check = ("\nfor r in (result1, result2, result3):\n"
             "    assert [m[0].header['EXTNAME'] for m in r.MASTER_BIAS] == "
             "['CHAN01', 'CHAN02']\n"
             "print('three master biases')\n")
    proc = _run_script(first + check, user_dir, "seed_1.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("three master biases") == 1  # the top level ran once
    for python_cpl in (True, False):
        proc = _run_script(second, user_dir, f"seed_2_{python_cpl}.py", tmp_path,
                           python_cpl=python_cpl)
        assert proc.returncode != 0
        assert re.search(r"(OS|IO)Error: Recipe 'muse_focus'", proc.stderr), proc.stderr


@pytest.mark.muse
def test_python_cpls_tutorial_script_runs(python_cpl_sdist, user_dir, tmp_path):
    """The tutorial's opening script (command-line options, ``cpl.esorex.init()``
    reading ``~/.esorex/esorex.rc``), as ``python bias.py -o out.fits bias*.fits``."""
    text = (python_cpl_sdist / "doc" / "tutorial.rst").read_text()
    code = _python_blocks(text, "rst")[0].replace("import cpl\n", "import cpldask as cpl\n")
    assert "cpl.esorex.init()" in code and "import cpldask as cpl" in code
    (user_dir / "bias.py").write_text(code)
    home = tmp_path / "home"
    (home / ".esorex").mkdir(parents=True)
    (home / ".esorex" / "esorex.rc").write_text(
        f"esorex.caller.recipe-dir={MUSE_PLUGINS}\n")
    env = {**_env(tmp_path), "HOME": str(home)}
    proc = subprocess.run([sys.executable, "bias.py", "-o", "tutorial_bias.fits",
                           "bias1.fits", "bias2.fits", "bias3.fits"], cwd=user_dir,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert fits.getval(user_dir / "tutorial_bias.fits", "ESO PRO CATG") == "MASTER_BIAS"


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


@pytest.mark.muse
@pytest.mark.parametrize("how", ["script", "-c", "stdin", "-m", "multiprocessing"])
def test_a_plain_script_starts_and_a_killed_one_leaves_nothing(user_dir, tmp_path, how):
    """A script without a guard, ``python -c``, ``python - < file``, ``python -m
    module`` and a script that uses multiprocessing itself start the embedded
    cluster; SIGKILL of the user's process ends every worker, fork server and recipe
    process it started."""
    pool = ("import multiprocessing\n"
            "assert multiprocessing.Pool(2).map(abs, [-1, -2]) == [1, 2]\n"
            if how == "multiprocessing" else "")
    code = ("import cpldask as cpl, time\n"
            f"{pool}"
            f"cpl.Recipe.path = [{MUSE_PLUGINS!r}]\n"
            "print('top level', flush=True)\n"
            "r = cpl.Recipe('muse_bias', threaded=True)\n"
            "res = [r(['bias1.fits', 'bias2.fits', 'bias3.fits'], cache=False,\n"
            "         param={'nifu': 1, 'combine': c}) for c in ('median', 'average')]\n"
            "res[0].future\n"
            "print('submitted', flush=True)\n"
            "time.sleep(600)\n")
    (user_dir / "kill_me.py").write_text(code)
    args = {"script": [sys.executable, "kill_me.py"], "-c": [sys.executable, "-c", code],
            "stdin": [sys.executable, "-"], "-m": [sys.executable, "-m", "kill_me"],
            "multiprocessing": [sys.executable, "kill_me.py"]}[how]
    proc = subprocess.Popen(args, cwd=user_dir, env=_env(tmp_path), text=True,
                            stdin=open(user_dir / "kill_me.py") if how == "stdin" else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "top level\n"
        assert proc.stdout.readline() == "submitted\n"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the recipes have started
            names = [_name(p) for p in _descendants(proc.pid)]
            if names.count("muse_bias") == 2:
                break
            time.sleep(0.2)
        children = _descendants(proc.pid)
        assert len(children) >= 6, names  # 2 Nannies, 2 workers, fork servers, recipes
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in children):
        time.sleep(0.2)
    assert [p for p in children if _alive(p)] == []
    assert "top level" not in proc.stdout.read()  # the workers never ran the script


def _name(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.muse
def test_other_pipelines_chatter_stays_out_of_the_terminal(tmp_path):
    """With UVES and GIRAFFE installed beside MUSE, python-cpl prints their libraries'
    start-up messages when it looks for a recipe; cpldask keeps them in its debug log."""
    plugins = pathlib.Path(MUSE_PLUGINS)
    assert any(plugins.glob("uves-*")) and any(plugins.glob("giraf-*"))
    code = ("import logging, sys\n"
            "logging.basicConfig(level=logging.DEBUG, stream=open('debug.log', 'w'))\n"
            f"cpl.Recipe.path = [{MUSE_PLUGINS!r}]\n"
            "r = cpl.Recipe('muse_bias')\n"
            "print(r.__name__)\n")
    out = {}
    for variant in ("cpl", "cpldask"):
        (tmp_path / f"with_{variant}.py").write_text(f"import {variant} as cpl\n{code}")
        proc = subprocess.run([sys.executable, f"with_{variant}.py"], cwd=tmp_path,
                              env=_env(tmp_path), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        out[variant] = (proc.stdout + proc.stderr).splitlines()
    print(f"lines printed by Recipe('muse_bias'): python-cpl {len(out['cpl'])}, "
          f"cpldask {len(out['cpldask'])}")
    assert len(out["cpl"]) > 10  # the premise: the other pipelines do talk
    assert out["cpldask"] == ["muse_bias"]
    assert "Run-time version" in (tmp_path / "debug.log").read_text()
