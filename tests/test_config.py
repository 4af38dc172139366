"""Configuration (the ``cpldask.*`` keys of dask.config) and what ``import cpldask``
costs: the fast tier, no CPL.

The defaults ship in cpldask/cpldask.yaml; users override them with YAML files in
their Dask config directory, environment variables ``DASK_CPLDASK__...`` or
``dask.config.set`` — the mechanisms of Dask's configuration docs
(docs.dask.org/en/stable/configuration.html), checked here in fresh interpreters,
since this session's own config is changed by conftest.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import dask
import pytest
import yaml

import cpldask
from cpldask import _config

YAML = pathlib.Path(cpldask.__file__).with_name("cpldask.yaml")


def fresh_python(code: str, tmp_path: pathlib.Path, **env: str) -> str:
    """stdout of ``code`` run by a new interpreter that sees no Dask config but
    ``env`` (an empty config directory, no DASK_* variables of this session)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    config_dir = tmp_path / "dask-config"
    config_dir.mkdir(exist_ok=True)
    clean.update({"DASK_CONFIG": str(config_dir), **env})
    return subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True,
                          text=True, check=True, timeout=60).stdout


def test_defaults_are_the_shipped_yaml(tmp_path):
    code = "import json, dask, cpldask; print(json.dumps(dask.config.get('cpldask')))"
    loaded = json.loads(fresh_python(code, tmp_path))
    assert loaded == yaml.safe_load(YAML.read_text())["cpldask"]
    assert loaded["cache"]["enabled"] is True and loaded["retries"] == 3
    # dask.config.ensure_file left the user a copy to edit, all of it commented out
    copy = (tmp_path / "dask-config" / "cpldask.yaml").read_text().splitlines()
    assert copy and all(not line.strip() or line.lstrip().startswith("#") for line in copy)


def test_environment_variables_override_the_defaults(tmp_path):
    code = ("import json, dask, cpldask\n"
            "from cpldask import _config as c\n"
            "print(json.dumps([c.get('cache.enabled'), c.recipe_path(),\n"
            "    c.get('jobqueue.slots'), c.seconds(c.get('timeout')),\n"
            "    c.nbytes(c.get('memory-limit'))]))")
    out = fresh_python(code, tmp_path,
                       DASK_CPLDASK__CACHE__ENABLED="False",
                       DASK_CPLDASK__RECIPE_PATH="/opt/a:/opt/b",
                       DASK_CPLDASK__JOBQUEUE__SLOTS="12",
                       DASK_CPLDASK__TIMEOUT="2 hours",
                       DASK_CPLDASK__MEMORY_LIMIT="8 GiB")
    # Dask parses the values as YAML literals: a bool and an int, not strings
    assert json.loads(out) == [False, ["/opt/a", "/opt/b"], 12, 7200.0, 8 * 2**30]


def test_a_yaml_file_in_the_config_directory_overrides_the_defaults(tmp_path):
    (tmp_path / "dask-config").mkdir()
    (tmp_path / "dask-config" / "site.yaml").write_text(
        "cpldask:\n  work-dir: ~/cpldask-work\n  cache:\n    dir: /scratch/cache\n")
    code = ("from cpldask import _config as c\n"
            "print(c.work_dir(), c.cache_dir(), c.get('cache.enabled'))")
    out = fresh_python(code, tmp_path, HOME=str(tmp_path))
    assert out.split() == [str(tmp_path / "cpldask-work"), "/scratch/cache", "True"]


def test_recipe_path_forms_are_normalised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _config.split_path("plugins:/opt/cpl::~/more") == [
        str(tmp_path / "plugins"), "/opt/cpl", str(tmp_path / "home" / "more")]
    assert _config.split_path(["/a", pathlib.Path("b")]) == ["/a", str(tmp_path / "b")]
    assert _config.split_path(None) == [] and _config.split_path("") == []
    with dask.config.set({"cpldask.recipe-path": "/x:/y"}):
        assert _config.recipe_path() == ["/x", "/y"]


def test_durations_and_sizes_in_dask_forms():
    assert _config.seconds("2 hours") == 7200 and _config.seconds("90 minutes") == 5400
    assert _config.seconds(90) == 90 and _config.seconds("90") == 90  # bare: seconds
    assert _config.seconds(None) is None
    assert _config.nbytes("8 GiB") == 8 * 2**30 and _config.nbytes("1.5 kB") == 1500
    assert _config.nbytes(2**30) == 2**30 and _config.nbytes(None) is None
    with pytest.raises(ValueError):
        _config.nbytes("eight gigs")


def test_default_directories(monkeypatch):
    with dask.config.set({"cpldask.work-dir": None, "cpldask.cache.dir": None}):
        assert _config.work_dir() == (pathlib.Path(tempfile.gettempdir())
                                      / f"cpldask-{getpass.getuser()}")
        monkeypatch.setenv("XDG_CACHE_HOME", "/xdg/cache")
        assert _config.cache_dir() == pathlib.Path("/xdg/cache/cpldask")
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", "/home/astro")
        assert _config.cache_dir() == pathlib.Path("/home/astro/.cache/cpldask")
    # an explicit override wins over the configuration
    assert _config.get("retries", 7) == 7 and _config.get("retries") == 3


def test_import_cpldask_loads_neither_python_cpl_nor_distributed(tmp_path):
    """What the fast tier and the workers rely on: the package, its configuration, the
    workflow and job scripts import without python-cpl (its C extension loads libcpl's
    recipes) and the client-side engine."""
    code = ("import sys, cpldask\n"
            "print(sorted({'cpl', 'distributed'} & set(sys.modules)))\n"
            "import cpldask.cluster, cpldask.workflow, cpldask.instruments.muse.synthetic\n"
            "import cpldask.instruments.muse.workflow, cpldask.instruments.hawki.workflow\n"
            "print(sorted(m for m in sys.modules if m == 'cpl' or m.startswith('cpl.')))")
    first, second = fresh_python(code, tmp_path).splitlines()
    assert first == "[]" and second == "[]"


def test_the_version_is_written_once():
    # pyproject.toml reads it from cpldask/__init__.py (tool.setuptools.dynamic)
    assert cpldask.__version__ == importlib.metadata.version("cpldask")
    pyproject = (pathlib.Path(cpldask.__file__).parents[1] / "pyproject.toml").read_text()
    project = pyproject.split("\n[project]\n", 1)[1].split("\n[", 1)[0]  # the table
    assert 'dynamic = ["version"]' in project and "\nversion =" not in project


@pytest.mark.requires_python_cpl
def test_public_names_resolve_on_first_use():
    import cpl

    for name in cpldask.__all__:
        assert getattr(cpldask, name) is not None and name in dir(cpldask)
    assert cpldask.CplError is cpl.CplError  # python-cpl's own class, as before
    from cpldask import Recipe

    assert Recipe is cpldask.recipe.Recipe
    with pytest.raises(AttributeError, match="has no attribute 'Recipes'"):
        cpldask.Recipes


def test_get_client_joins_the_scheduler_file_key(tmp_path):
    """``cpldask.scheduler-file`` (here from the environment, as docs/cli.md shows):
    cpldask.get_client() joins the scheduler the file names (the file
    distributed's Scheduler writes itself); a missing file is an error naming it and
    the command that writes it, not distributed's wait for the file to appear."""
    path = tmp_path / "scheduler.json"
    code = ("import distributed, cpldask\n"
            "try:\n"
            "    cpldask.get_client()\n"
            "except FileNotFoundError as err:\n"
            "    print(err)\n"
            "with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=':0',\n"
            f"                              scheduler_kwargs={{'scheduler_file': {str(path)!r}}}) as c:\n"
            "    print(cpldask.get_client().scheduler.address == c.scheduler_address)\n")
    missing, joined = fresh_python(code, tmp_path,
                                   DASK_CPLDASK__SCHEDULER_FILE=str(path)).splitlines()
    assert missing == (f"scheduler file {path} does not exist: start a cluster that "
                       f"writes it with 'cpldask cluster start --scheduler-file {path}', "
                       "or name another file")
    assert joined == "True"
