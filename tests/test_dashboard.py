"""Issue 9: the Dask dashboard shows recipe runs by name — checked as a user would see
it, in a real browser (Debian's headless Chromium) while recipes run.

The dashboard's Status page is a Bokeh application: its progress bars and task stream
are drawn into a canvas, so neither the HTML the server sends nor Chromium's
``--dump-dom`` contains the names. The test therefore drives Chromium over the DevTools
protocol (a websocket; tornado, which distributed already needs, is the client): it
loads the page, lets Bokeh's JavaScript fetch its data over the page's own websocket,
and reads back what the page holds — the columns of the Bokeh data sources behind the
progress bars (one bar per task-key prefix, labelled with it) and behind the task
stream (one rectangle per finished task, named by its prefix) — and takes a
screenshot of what it draws.

``python tests/test_dashboard.py docs/dashboard.png`` makes the screenshot kept in
docs/: the Status page during a one-IFU synthetic MUSE reduction (see
docs/notebooks.md).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest
from helpers import CHROMIUM, Browser, wait_until

#: the dashboard shows test-recipe runs
pytestmark = pytest.mark.requires_cpl

#: The Bokeh data sources of the page: their columns and the distinct values of
#: their ``name`` column (task-key prefixes), with the progress bars' counts by name.
BOKEH_SOURCES_JS = r"""(() => {
  const out = [];
  for (const doc of (window.Bokeh ? window.Bokeh.documents : [])) {
    for (const model of doc.all_models) {
      const data = model.data;
      if (!data || typeof data !== 'object' || model.type !== 'ColumnDataSource') continue;
      const get = (k) => data instanceof Map ? data.get(k) : data[k];
      const cols = data instanceof Map ? [...data.keys()] : Object.keys(data);
      const names = get('name') ? Array.from(get('name'), String) : [];
      const count = (col) => get(col) ? Array.from(get(col), Number) : [];
      out.push({cols: cols, names: names, all: count('all'),
                processing: count('processing'), memory: count('memory')});
    }
  }
  return JSON.stringify(out);
})()"""


def dashboard_view(browser: Browser) -> dict:
    """What the Status page holds now: ``progress`` {name: {'all', 'processing',
    'memory'}} of the progress bars, and ``stream``, the names in the task stream."""
    sources = json.loads(browser.evaluate(BOKEH_SOURCES_JS) or "[]")
    progress, stream = {}, set()
    for src in sources:
        cols = set(src["cols"])
        if {"all", "processing", "memory", "name"} <= cols:  # TaskProgress
            for i, name in enumerate(src["names"]):
                progress[name] = {k: src[k][i] for k in ("all", "processing", "memory")}
        elif {"start", "duration", "key", "name"} <= cols:  # TaskStream
            stream.update(src["names"])
    return {"progress": progress, "stream": stream}


def wait_for_view(browser: Browser, condition, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    view = {}
    while time.monotonic() < deadline:
        view = dashboard_view(browser)
        if condition(view):
            return view
        time.sleep(0.5)
    raise AssertionError(f"the dashboard did not show it within {timeout} s: {view}")


# -- the test ------------------------------------------------------------------------------
@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (ci/install-system.sh installs it)")
    with Browser() as b:
        yield b


@pytest.mark.timeout(240)
def test_status_page_shows_recipe_runs_by_name(client, test_recipe, any_fits, browser,
                                               tmp_path):
    link = client.dashboard_link
    assert link and link.endswith("/status")
    # a user opens the dashboard first (the task stream records tasks from then on)
    browser.goto(link)
    wait_for_view(browser, lambda v: bool(v["stream"]), timeout=60)  # Bokeh has its data
    run = uuid.uuid4().hex[:8]  # calls of their own: they share no task with other tests
    short = [test_recipe(any_fits, param={"sleep": 0.2, "value": i}, env={"RUN": run},
                         threaded=True) for i in range(2)]
    long = [test_recipe(any_fits, param={"sleep": 300.0, "value": 10 + i},
                        env={"RUN": run}, threaded=True) for i in range(2)]
    try:
        for res in short:
            res.result()
        # the progress bars: one labelled cpldask_test, with the two short calls done
        # and recipes still running; the task stream: the finished calls, named so
        def shown(v):
            bar = v["progress"].get("cpldask_test", {})
            return (bar.get("memory", 0) >= 2 and bar.get("processing", 0) >= 1
                    and "cpldask_test" in v["stream"])

        view = wait_for_view(browser, shown, timeout=60)
        assert not any(res.done() for res in long), [(r.status, r.exception(0)) for r in long]
        assert view["progress"]["cpldask_test"]["all"] >= 4
        shot = browser.screenshot(tmp_path / "status.png")
        assert shot.stat().st_size > 20_000  # a drawn page, not a blank one
        # the task-stream page of its own shows the same names
        browser.goto(link.rsplit("/", 1)[0] + "/individual-task-stream")
        wait_for_view(browser, lambda v: "cpldask_test" in v["stream"], timeout=30)
    finally:
        for res in long:
            res.cancel()


# -- cpldask's page of recipe runs (issue 22.4) -------------------------------------------
#: The rows of the page of recipe runs, as the browser shows them: {task key: {state,
#: recipe, time, line (the current log line, or the error), products (file names)}},
#: or null before the page has drawn its first data.
RUNS_JS = r"""(() => {
  if (!document.body || !document.body.dataset.updated) return null;
  const rows = {};
  for (const tr of document.querySelectorAll('#runs tr')) {
    const text = (cls) => tr.querySelector('.' + cls).textContent;
    rows[tr.dataset.key] = {state: tr.dataset.state, recipe: text('recipe'),
      time: text('time'), line: text('line'),
      products: Array.from(tr.querySelectorAll('.products span'), (s) => s.textContent)};
  }
  return JSON.stringify(rows);
})()"""


def runs_view(browser: Browser) -> dict | None:
    out = browser.evaluate(RUNS_JS)
    return None if out is None else json.loads(out)


def wait_for_runs(browser: Browser, condition, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    rows = None
    while time.monotonic() < deadline:
        rows = runs_view(browser)
        if rows is not None and condition(rows):
            return rows
        time.sleep(0.5)
    raise AssertionError(f"the page of recipe runs did not show {what} within {timeout} s: "
                         f"{json.dumps(rows, indent=1)}")


@pytest.mark.muse
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_runs_page_lists_recipe_runs_with_their_log_line_and_products(
        client, test_recipe, bias_files, any_fits, browser, tmp_path):
    """During a small reduction (a real muse_bias, a test-recipe call that fails, more
    long test-recipe calls than the cluster has threads), the page lists them running,
    queued and failed, the muse_bias run with the message it logs now; then its
    products once done; cancelled calls stay listed. The page reports no error."""
    import cpldask

    link = cpldask.dashboard_link(page="runs")
    assert link == client.dashboard_link.rsplit("/", 1)[0] + "/cpldask/runs"
    browser.goto(link)
    wait_for_runs(browser, lambda rows: True, timeout=30, what="its first data")
    threads = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
    run = uuid.uuid4().hex[:8]  # calls of their own: they share no task with other tests
    bias = cpldask.Recipe("muse_bias", threaded=True)(bias_files, param={"nifu": 1},
                                                      env={"RUN": run})
    failed = test_recipe(any_fits, param={"fail": True}, env={"RUN": run}, threaded=True)
    # with muse_bias running, one of these always waits for a thread
    long = [test_recipe(any_fits, param={"sleep": 300.0, "value": 20 + i},
                        env={"RUN": run}, threaded=True) for i in range(threads)]
    try:
        def busy(rows):
            b, f = rows.get(bias.key, {}), rows.get(failed.key, {})
            return (b.get("state") == "running" and b.get("line", "").startswith("[INFO] muse_")
                    and f.get("state") == "failed"
                    and any(rows.get(r.key, {}).get("state") == "queued" for r in long))

        rows = wait_for_runs(browser, busy, timeout=120,
                             what="muse_bias running with a log line, a failed and a queued call")
        assert bias.status == "pending", bias.status  # seen while it ran
        assert "failure requested" in rows[failed.key]["line"]  # the recipe's CPL error
        assert rows[bias.key]["recipe"] == "muse_bias"
        assert rows[bias.key]["time"].startswith("running for")
        browser.screenshot(tmp_path / "runs-busy.png")

        bias.result()
        expected = sorted(os.path.basename(p) for p in bias.paths["MASTER_BIAS"])
        rows = wait_for_runs(browser, lambda rows: rows.get(bias.key, {}).get("products"),
                             timeout=30, what="the products of muse_bias")
        assert rows[bias.key]["state"] == "done"
        assert sorted(rows[bias.key]["products"]) == expected
        assert rows[bias.key]["time"].startswith("took")
    finally:
        for res in long:
            res.cancel()
    wait_for_runs(browser, lambda rows: all(rows.get(r.key, {}).get("state") == "cancelled"
                                            for r in long),
                  timeout=30, what="the long calls cancelled")
    shot = browser.screenshot(tmp_path / "runs.png")
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one
    runs_view(browser)  # reads what the browser reported meanwhile
    assert browser.console_errors() == []


def runs_json(link: str) -> dict:
    """The page's data, as its script reads it: {task key: run}."""
    with urllib.request.urlopen(link + ".json", timeout=10) as r:
        return {run["key"]: run for run in json.load(r)["runs"]}


@pytest.mark.timeout(120)
def test_runs_page_tells_a_call_waiting_for_a_slot_from_a_running_one(client, test_recipe,
                                                                       any_fits):
    """Under ``set_maxthreads(1)`` on a cluster of more threads, the second call holds
    a worker thread but waits for the slot: queued, saying so; then running."""
    import cpldask

    threads = sum(w["nthreads"] for w in client.scheduler_info(n_workers=-1)["workers"].values())
    assert threads >= 2, "the session's cluster has one thread: no slot to wait for"
    link = cpldask.dashboard_link(page="runs")
    run = uuid.uuid4().hex[:8]
    cpldask.Recipe.set_maxthreads(1)
    try:
        calls = [test_recipe(any_fits, param={"sleep": 4.0, "value": 30 + i},
                             env={"RUN": run}, threaded=True) for i in range(2)]

        def one_runs_one_waits():
            rows = runs_json(link)
            states = [rows.get(c.key, {}).get("state") for c in calls]
            details = [rows.get(c.key, {}).get("detail", "") for c in calls]
            if states.count("running") == 1 and any("waiting for a slot" in d for d in details):
                return rows
            return None

        rows = wait_until(one_runs_one_waits, 30, "one call running, one waiting for the slot")
        waiting = next(c for c in calls if rows[c.key]["state"] == "queued")
        wait_until(lambda: runs_json(link)[waiting.key]["state"] in ("running", "done"),
                   30, "the waiting call running")
        for c in calls:
            c.result()
    finally:
        cpldask.Recipe.set_maxthreads(threads)


@pytest.fixture
def scheduler_of_its_own(tmp_path):
    """A ``dask scheduler`` and one ``dask worker`` in processes of their own, on
    127.0.0.1 with free ports (as a user's cluster elsewhere would be): its address."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this cpldask
    file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        wait_until(lambda: file.exists() and file.stat().st_size, 60, "the scheduler's file")
        address = json.loads(file.read_text())["address"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
             "--host", "127.0.0.1", "--no-dashboard", "--no-nanny"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(120)
def test_runs_page_on_a_scheduler_the_client_connects_to(scheduler_of_its_own, test_recipe,
                                                         any_fits):
    """A scheduler cpldask did not start gets the page from the first client that uses
    it (unpickled there: this cpldask on its PYTHONPATH)."""
    import distributed

    import cpldask

    with distributed.Client(scheduler_of_its_own, set_as_default=True) as client:
        client.wait_for_workers(1, timeout=60)
        res = test_recipe(any_fits, param={"value": 7.0}, threaded=True)
        res.result()
        link = cpldask.dashboard_link(page="runs")
        assert link.startswith(client.dashboard_link.rsplit("/", 1)[0])

        row = wait_until(lambda: runs_json(link).get(res.key, {}).get("products")
                         and runs_json(link)[res.key], 30, "the call on the page")
        assert row["state"] == "done" and row["recipe"] == "cpldask_test"
        assert [tag for tag, _ in row["products"]] == ["PRODUCT"]
        assert [path for _, path in row["products"]] == res.paths["PRODUCT"]
        with urllib.request.urlopen(link, timeout=10) as r:  # the page itself
            assert b"cpldask: recipe runs" in r.read()


# -- the screenshot in docs/ -----------------------------------------------------------------
def _main(argv: list[str]) -> int:
    """``python tests/test_dashboard.py OUT.png [--page runs] [--workdir DIR]``:
    screenshot the Status page (or cpldask's page of recipe runs) in the middle of a
    one-IFU synthetic MUSE reduction."""
    import argparse

    import cpldask
    from cpldask.instruments.muse import demo

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("png")
    parser.add_argument("--workdir", default=str(pathlib.Path(tempfile.gettempdir())
                                                 / "cpldask-notebooks" / "dashboard"))
    parser.add_argument("--page", default="status", choices=("status", "runs"))
    parser.add_argument("--after", type=int, default=6,
                        help="take it once this many recipe calls have finished")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.png).absolute()
    red = demo.demo(args.workdir, ifus=(1,), wait=False)
    try:
        with Browser() as b:
            b.goto(cpldask.dashboard_link(page=args.page))
            while True:
                done = sum(1 for s in red.steps if s.status == "finished")
                running = len(red.steps) - done
                if done >= args.after or not running:
                    break
                time.sleep(1)
            time.sleep(2)  # the page polls the scheduler about every 100 ms - 1 s
            # the runs page: down to the end of its table, not the empty window below
            height = b.evaluate("document.body.scrollHeight") if args.page == "runs" else None
            b.screenshot(out, clip=dict(x=0, y=0, width=1400, height=height + 10)
                         if height else None)
            print(f"{out}: {done} of {len(red.steps)} calls finished")
    finally:
        red.cancel()
        cpldask.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
