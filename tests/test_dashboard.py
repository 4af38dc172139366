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
import pathlib
import sys
import tempfile
import time
import uuid

import pytest

from helpers import CHROMIUM, Browser

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


# -- the screenshot in docs/ -----------------------------------------------------------------
def _main(argv: list[str]) -> int:
    """``python tests/test_dashboard.py OUT.png [--workdir DIR]``: screenshot the Status
    page in the middle of a one-IFU synthetic MUSE reduction."""
    import argparse

    import cpldask
    from cpldask.instruments.muse import demo

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("png")
    parser.add_argument("--workdir", default=str(pathlib.Path(tempfile.gettempdir())
                                                 / "cpldask-notebooks" / "dashboard"))
    parser.add_argument("--after", type=int, default=6,
                        help="take it once this many recipe calls have finished")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.png).absolute()
    red = demo.demo(args.workdir, ifus=(1,), wait=False)
    try:
        with Browser() as b:
            b.goto(cpldask.dashboard_link())
            while True:
                done = sum(1 for s in red.steps if s.status == "finished")
                running = len(red.steps) - done
                if done >= args.after or not running:
                    break
                time.sleep(1)
            time.sleep(2)  # the page polls the scheduler about every 100 ms - 1 s
            b.screenshot(out)
            print(f"{out}: {done} of {len(red.steps)} calls finished")
    finally:
        red.cancel()
        cpldask.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
