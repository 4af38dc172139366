"""Issue 9: the notebooks in notebooks/ run top to bottom on synthetic data.

Each notebook is executed with nbclient in a fresh Jupyter kernel (the venv's Python),
as a user's "Restart & Run All" would, and its outputs are checked for what it
promises to show (images, rich results, SLURM job ids). The kernel gets a temporary
directory of its own (``TMPDIR``: the notebooks' data and the work directory) and an
empty product cache, so every recipe really runs. The scaling-out notebook needs
SLURM: the session's ``slurm`` fixture (conftest.py) starts it with ci/slurm-start.sh.

Set ``CPLDASK_EXECUTED_NOTEBOOKS=DIR`` to keep the executed notebooks (with outputs)
in DIR, e.g. to look at them or to render docs/quickstart.png (docs/notebooks.md).
The notebooks in the repository carry no outputs; a test checks that too.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
QUICKSTART = "01-quickstart.ipynb"
CASCADE = "02-muse-cascade.ipynb"
SCALING = "03-scaling-out.ipynb"


def _outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def _text(nb) -> str:
    """Every text an executed notebook shows: streams, plain and HTML results."""
    parts = []
    for out in _outputs(nb):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in out.data:
                    parts.append(out.data[mime])
    return "\n".join(parts)


def _images(nb) -> int:
    return sum(1 for out in _outputs(nb) if "image/png" in out.get("data", {}))


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """Environment of the notebook kernels: their own temp dir and product cache, and
    a free dashboard port (8787 may be taken by this test session's cluster)."""
    base = tmp_path_factory.mktemp("notebooks")
    env = {"TMPDIR": str(base / "tmp"),
           "DASK_CPLDASK__CACHE__DIR": str(base / "cache"),
           "DASK_CPLDASK__LOCAL__DASHBOARD_ADDRESS": "127.0.0.1:0",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    (base / "tmp").mkdir()
    return env


def execute(name: str, env: dict, timeout: float) -> "nbformat.NotebookNode":
    """Run notebooks/<name> in a new kernel; a failing cell raises CellExecutionError
    naming the cell and the error."""
    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", allow_errors=False,
            record_timing=True, resources={"metadata": {"path": str(NOTEBOOKS)}})
        t = time.monotonic()
        try:
            client.execute()
        finally:
            keep = os.environ.get("CPLDASK_EXECUTED_NOTEBOOKS")
            if keep:
                pathlib.Path(keep).mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, pathlib.Path(keep) / name)
        print(f"\n[{name}] executed in {time.monotonic() - t:.1f} s")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


# -- the repository's notebooks ---------------------------------------------------------
def test_every_notebook_is_executed_here():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(
        [QUICKSTART, CASCADE, SCALING])


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    """Outputs and execution counts are not committed (strip with the command in
    docs/notebooks.md)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{path.name} cell {i} has outputs: strip them (docs/notebooks.md)"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


# -- running them -------------------------------------------------------------------------
@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_notebook(kernel_env):
    nb = execute(QUICKSTART, kernel_env, timeout=600)
    text = _text(nb)
    # the seed's loop wrote all four master biases
    assert all(f"MASTER_BIAS_{i:02d}.fits" in text for i in range(1, 5)), text
    assert "Dask dashboard: <a href=\"http://127.0.0.1:" in text
    assert "widget-view" in json.dumps(_outputs(nb)) or "100%" in text  # progress bar
    # a finished result's rich display names the recipe, its parameters and products
    html = [o.data["text/html"] for o in _outputs(nb) if "text/html" in o.get("data", {})]
    assert any("muse_bias" in h and "finished" in h and "MASTER_BIAS" in h and "median" in h
               for h in html)
    # the failed call shows its error and the recipe's own words from the log
    assert any("error" in h and "CplError" in h and "Required 3" in h for h in html)
    assert "raised on reading: CplError" in text
    assert _images(nb) >= 1  # the master bias


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_muse_cascade_notebook(kernel_env):
    nb = execute(CASCADE, kernel_env, timeout=1500)
    text = _text(nb)
    for step in ("muse_bias[1]", "muse_flat[1]", "muse_wavecal[1]", "muse_scibasic[1]",
                 "muse_scipost"):
        assert step in text
    assert "finished" in text and "DATACUBE_FINAL" in text
    assert "ESO QC BIAS MASTER1 RON" in text  # QC header values are shown
    # the look at the target (issue 20.4): its sources, the compact QC table per step
    assert "sources found: " in text and "rank        x" in text, text
    assert "step                       IFU  #QC  QC keywords" in text
    # the plan, dask.visualize, master bias and flat, white light, spectrum
    assert _images(nb) >= 5


@pytest.mark.requires_cpl
@pytest.mark.muse
@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(1200)
def test_scaling_out_notebook(kernel_env, slurm):
    nb = execute(SCALING, kernel_env, timeout=900)
    text = _text(nb)
    assert "on the LocalCluster" in text
    jobs = [line for line in text.splitlines() if "in SLURM job" in line]
    # two calls on the plain SLURMCluster, two on cpldask.cluster.slurm
    assert len(jobs) >= 4, text
    assert "#SBATCH" in text  # the job script is shown


# -- maintenance: strip outputs, render the quickstart screenshot ---------------------------
def strip(paths) -> None:
    """Clear outputs, execution counts and execution metadata (what nbstripout does)."""
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)


def screenshot(executed: pathlib.Path, png: pathlib.Path, *, start: str, width: int = 1100,
               height: int = 1500) -> pathlib.Path:
    """Render an executed notebook to HTML (nbconvert) and photograph it in headless
    Chromium, from the heading whose text starts with ``start`` down ``height`` px."""
    import tempfile

    from nbconvert import HTMLExporter

    from test_dashboard import Browser

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    with tempfile.TemporaryDirectory() as tmp:
        page = pathlib.Path(tmp, executed.stem + ".html")
        page.write_text(body)
        with Browser(width=width, height=height) as browser:
            browser.goto(page.as_uri())
            top = None
            for _ in range(100):  # until the page has laid out the heading
                top = browser.evaluate(
                    "(() => { for (const h of document.querySelectorAll('h1,h2')) "
                    f"if (h.textContent.startsWith({json.dumps(start)})) "
                    "return h.getBoundingClientRect().top + window.scrollY - 10; "
                    "return null; })()")
                if top is not None:
                    break
                time.sleep(0.1)
            if top is None:
                raise ValueError(f"no heading starting with {start!r} in {executed}")
            return browser.screenshot(png, clip={"x": 0, "y": top, "width": width,
                                                 "height": height})


def _main(argv: list[str]) -> int:
    """``python tests/test_notebooks.py strip [NOTEBOOK...]`` (default: notebooks/*)
    or ``python tests/test_notebooks.py screenshot EXECUTED.ipynb OUT.png HEADING``."""
    if argv[:1] == ["strip"]:
        strip([pathlib.Path(p) for p in argv[1:]] or sorted(NOTEBOOKS.glob("*.ipynb")))
        return 0
    if argv[:1] == ["screenshot"] and len(argv) == 4:
        print(screenshot(pathlib.Path(argv[1]), pathlib.Path(argv[2]), start=argv[3]))
        return 0
    print(_main.__doc__)
    return 2


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    sys.exit(_main(sys.argv[1:]))
