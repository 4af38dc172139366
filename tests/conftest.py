"""Shared fixtures: synthetic data and reference reductions are made once per session.

Tests come in two tiers (markers declared in pyproject.toml):

* the fast tier, ``pytest -m "not requires_cpl"``: no CPL library, no recipe, a few
  seconds — rules and classification on hand-written headers, call keys, config, job
  scripts, graph building. ci/test-venvs.sh runs it in a virtualenv without python-cpl
  (``-m "not requires_cpl and not requires_python_cpl"``).
* ``requires_cpl``: runs a real recipe (the C test recipe, or ``muse``/``hawki``
  recipes). Such a test gets the recipe search path (:func:`recipe_path`: compiles the
  test recipe once) without asking; a test that asks for a CPL fixture without the
  marker, or is marked ``muse``/``hawki`` without it, stops the run at collection.

Under ``--cpldask-no-skip`` (set by ci/test.sh when CI=true) a skipped test counts as
a failure: in CI every component is installed by the project's own scripts, so a skip
would hide a missing install step.
"""

from __future__ import annotations

import helpers  # noqa: F401  (sets CPLDASK_TEST_SESSION before any process starts)

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys
import time

import pytest

HERE = pathlib.Path(__file__).parent
MUSE_PLUGINS = "/usr/lib/x86_64-linux-gnu/cpl/plugins"

#: fixtures that need the CPL library (a test using one, directly or through another
#: fixture, must be marked requires_cpl)
CPL_FIXTURES = ("testrecipe_dir", "recipe_path")
#: markers that say which real recipes a test runs: each implies requires_cpl
RECIPE_MARKERS = ("muse", "hawki")
HAVE_PYTHON_CPL = importlib.util.find_spec("cpl") is not None


def pytest_addoption(parser):
    parser.addoption("--cpldask-no-skip", action="store_true",
                     help="treat skipped tests as failures (CI)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.config.getoption("--cpldask-no-skip"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (a component is missing?): {report.longrepr}"


def _module_marks(path: pathlib.Path) -> set[str]:
    """Names of the marks in a test module's top-level ``pytestmark``, read from its
    source (the module is not imported)."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError):
        return set()  # pytest reports the error when it collects the module
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            names |= {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)
                      and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"}
    return names


#: test modules left out because python-cpl is missing (for the summary)
_NOT_COLLECTED = pytest.StashKey[list]()


def pytest_ignore_collect(collection_path: pathlib.Path, config):
    """Without python-cpl (ci/test-venvs.sh), modules marked as a whole as needing it or
    CPL are not imported: their imports would fail. Any other module must import
    without python-cpl — if it does not, collection fails and says which import."""
    if HAVE_PYTHON_CPL or collection_path.suffix != ".py" \
            or not collection_path.name.startswith("test_"):
        return None
    if _module_marks(collection_path) & {"requires_cpl", "requires_python_cpl"}:
        config.stash.setdefault(_NOT_COLLECTED, []).append(collection_path.name)
        return True
    return None


def pytest_collection_modifyitems(config, items):
    wrong = []
    for item in items:
        marks = {m.name for m in item.iter_markers()}
        if "requires_cpl" in marks:
            continue
        why = [f"fixture {f}" for f in CPL_FIXTURES if f in item.fixturenames]
        why += [f"marker {m}" for m in RECIPE_MARKERS if m in marks]
        if why:
            wrong.append(f"{item.nodeid} ({', '.join(why)})")
    if wrong:
        raise pytest.UsageError("these tests need CPL but are not marked requires_cpl "
                                "(@pytest.mark.requires_cpl):\n  " + "\n  ".join(wrong))


def pytest_terminal_summary(terminalreporter, config):
    left_out = sorted(set(config.stash.get(_NOT_COLLECTED, [])))
    if left_out:
        terminalreporter.write_line(
            "without python-cpl, not collected (marked requires_cpl or requires_python_cpl "
            f"as a whole): {', '.join(left_out)}")
    started = config.stash.get(_SLURM_START, None)
    if started is not None:
        terminalreporter.write_line(f"ci/slurm-start.sh took {started:.1f} s")


_SLURM_START = pytest.StashKey[float]()


@pytest.fixture(scope="session")
def slurm(request):
    """A running single-node SLURM (tests marked ``slurm``): started here by
    ci/slurm-start.sh (and stopped at the end of the session) unless it already ran."""
    if os.geteuid() != 0:
        pytest.skip("ci/slurm-start.sh needs root")
    t = time.monotonic()
    out = subprocess.run(["bash", str(HERE.parent / "ci" / "slurm-start.sh")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    request.config.stash[_SLURM_START] = time.monotonic() - t
    started = "already running" not in out.stdout
    yield
    if started:
        subprocess.run(["bash", str(HERE.parent / "ci" / "slurm-stop.sh")], timeout=120,
                       capture_output=True)


@pytest.fixture(scope="session")
def testrecipe_dir(tmp_path_factory) -> pathlib.Path:
    """The small C test recipe ``cpldask_test``, compiled against Debian's CPL."""
    sys.path.insert(0, str(HERE / "testrecipe"))
    from build import build

    out = tmp_path_factory.mktemp("testrecipe")
    build(out)
    return out


@pytest.fixture(scope="session", autouse=True)
def isolated_config(tmp_path_factory):
    """A private work directory and product cache for the session. The cache is off
    unless a test turns it on: most tests must see their recipes really run."""
    import dask

    base = tmp_path_factory.mktemp("cpldask")
    with dask.config.set({"cpldask.work-dir": str(base / "work"),
                          "cpldask.cache.dir": str(base / "cache"),
                          "cpldask.cache.enabled": False}):
        yield base


@pytest.fixture(scope="session")
def recipe_path(testrecipe_dir, isolated_config):
    """MUSE recipes plus the test recipe, from the first test that needs CPL to the end
    of the session."""
    import cpldask

    cpldask.Recipe.path = [MUSE_PLUGINS, str(testrecipe_dir)]
    yield cpldask.Recipe.path
    cpldask.close()


@pytest.fixture(autouse=True)
def _recipe_path_for_cpl_tests(request):
    """Tests marked requires_cpl get :func:`recipe_path` without naming it; the fast
    tier never compiles the test recipe nor imports python-cpl through it."""
    if request.node.get_closest_marker("requires_cpl") is not None:
        request.getfixturevalue("recipe_path")


@pytest.fixture(scope="session")
def bias_files(tmp_path_factory) -> list[str]:
    """Three synthetic raw BIAS frames of IFU 1."""
    from cpldask.instruments.muse import synthetic

    d = tmp_path_factory.mktemp("bias")
    return [str(p) for p in synthetic.write_bias(d, n=3, ifus=(1,), seed=11)]


@pytest.fixture(scope="session")
def any_fits(bias_files) -> str:
    """A FITS file to feed the test recipe (it reads nothing from it)."""
    return bias_files[0]


@pytest.fixture(scope="session")
def bias_result(bias_files, recipe_path):
    """One real muse_bias run through cpldask, shared by many tests."""
    import cpldask

    r = cpldask.Recipe("muse_bias")
    r.param.nifu = 1
    return r(bias_files)


@pytest.fixture(scope="session")
def client(recipe_path):
    """The client cpldask uses (the embedded LocalCluster)."""
    import cpldask

    return cpldask.get_client()


@pytest.fixture
def test_recipe(recipe_path):
    import cpldask

    return cpldask.Recipe("cpldask_test")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, recipe_path):
    """The MUSE demo (``cpldask.instruments.muse.demo.demo``) of IFUs 1 and 2:
    synthetic exposure, whole cascade, PNG (~6 min on 2 cores; tests/test_reduce.py
    and tests/test_report.py share it)."""
    from cpldask.instruments.muse import demo as muse_demo

    work = tmp_path_factory.mktemp("reduce-demo")
    finished = []
    # the session's product cache is empty (conftest): every recipe really runs, and
    # its products are kept for test_rerun_is_served_from_the_cache
    red = muse_demo.demo(work, ifus=(1, 2), cache=True,
                         progress=lambda step, res: finished.append(step.label))
    return red, finished, work
