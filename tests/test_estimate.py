"""Issue 22.3: the time left, from the durations of earlier runs of the same recipes.

The estimator's arithmetic is tested on hand-made provenance records (fast tier: it
is our arithmetic, not a recipe's); one test runs the C test recipe for real and
checks that a second run is expected to take what the first took, and that the
terminal display says how long is left.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from cpldask._estimate import (KEEP, PACE_PRIOR, Call, Features, History, Run, describe_left,
                               format_seconds, remaining, time_left)


def record(recipe="muse_bias", *, params=None, n_inputs=3, seconds=30.0, end=1000.0,
           cache_hit=False):
    """A provenance record as cpldask.worker.task._provenance writes it (the fields
    the estimate reads)."""
    return {"recipe": recipe, "params": params or {"nifu": 1},
            "inputs": [{"tag": "BIAS", "path": f"/raw/b{i}.fits"} for i in range(n_inputs)],
            "cache_hit": cache_hit, "key": f"k{end}",
            "run": {"start": end - seconds, "end": end, "wall_time": seconds}}


def test_a_record_gives_its_features_and_run():
    run = Run.of(record(params={"b": 2, "a": 1}))
    assert run.seconds == 30.0 and run.end == 1000.0
    # parameters in any order are the same parameters
    assert run.features == Features.of(record(params={"a": 1, "b": 2}))
    assert run.features.n_inputs == 3


def test_cache_hits_and_records_without_times_say_nothing():
    assert Run.of(record(cache_hit=True)) is None  # served, took no time
    assert Run.of({k: v for k, v in record().items() if k != "run"}) is None
    assert Run.of({"params": {}}) is None


def test_the_most_alike_runs_decide():
    """Same parameters and inputs, else same parameters, else same number of
    inputs, else any run of the recipe; the median of those."""
    h = History([Run.of(record(params={"nifu": 0}, seconds=600.0, end=1)),
                 Run.of(record(params={"nifu": 1}, n_inputs=3, seconds=20.0, end=2)),
                 Run.of(record(params={"nifu": 1}, n_inputs=3, seconds=30.0, end=3)),
                 Run.of(record(params={"nifu": 1}, n_inputs=3, seconds=100.0, end=4)),
                 Run.of(record(params={"nifu": 1}, n_inputs=11, seconds=90.0, end=5))])
    f = Features.of
    assert h.expected(f(record(params={"nifu": 1}, n_inputs=3))) == 30.0  # median
    # same parameters, another number of inputs: every nifu=1 run
    assert h.expected(f(record(params={"nifu": 1}, n_inputs=5))) == 60.0
    # another IFU (nifu=2) with 3 inputs: the runs with 3 inputs, the all-IFU run
    # (nifu=0) among them; the median keeps such a run from swaying the estimate much
    assert h.expected(f(record(params={"nifu": 2}, n_inputs=3))) == 65.0
    # nothing alike but the recipe
    assert h.expected(f(record(params={"nifu": 2}, n_inputs=7))) == 90.0
    assert h.expected(f(record(recipe="muse_flat"))) is None


def test_the_history_keeps_the_newest_runs():
    old = [Run.of(record(seconds=100.0, end=i)) for i in range(KEEP)]
    new = [Run.of(record(seconds=10.0, end=1000 + i)) for i in range(KEEP)]
    h = History(new + old + [new[0]])  # in any order; the same run twice: once
    assert h.expected(Features.of(record())) == 10.0
    assert len(h) == 2 * KEEP


def test_calls_finished_meanwhile_set_the_pace():
    """Under twice the load, the calls finished so far took twice what the earlier
    runs did: every call is expected to take about twice as long. A short call
    hardly moves the pace (it starts from PACE_PRIOR seconds at pace 1)."""
    h = History([Run.of(record(seconds=60.0, end=1)),
                 Run.of(record(recipe="muse_flat", seconds=100.0, end=2)),
                 Run.of(record(recipe="muse_illum", seconds=1.0, end=3))])
    assert h.pace == 1.0
    h.add(Run.of(record(recipe="muse_illum", seconds=0.5, end=9)))
    assert h.pace == pytest.approx((PACE_PRIOR + 0.5) / (PACE_PRIOR + 1.0))
    h.add(Run.of(record(seconds=120.0, end=10)))
    h.add(Run.of(record(seconds=120.0, end=10)))  # seen twice: counted once
    pace = (PACE_PRIOR + 120.5) / (PACE_PRIOR + 61.0)
    assert h.pace == pytest.approx(pace)
    assert h.expected(Features.of(record(recipe="muse_flat"))) == pytest.approx(100.0 * pace)
    # a recipe no earlier run knows: what its calls took meanwhile (no pace)
    assert h.expected(Features.of(record(recipe="muse_wavecal"))) is None
    h.add(Run.of(record(recipe="muse_wavecal", seconds=33.0, end=11)))
    assert h.pace == pytest.approx(pace)
    assert h.expected(Features.of(record(recipe="muse_wavecal"))) == 33.0
    for end in range(12, 12 + KEEP):  # far slower: capped
        h.add(Run.of(record(seconds=6000.0, end=end)))
    assert h.pace == 10.0


def _write(path, rec, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1))
    os.utime(path.parent if path.name == "provenance.json" else path, (mtime, mtime))


def test_history_from_a_cache_and_an_output_folder(tmp_path):
    """Read lazily, the newest records first, each run once (the same run is in the
    cache and beside its products), damaged and served records skipped."""
    cache, out = tmp_path / "cache", tmp_path / "reduced" / "muse_bias" / "ifu01"
    _write(cache / "k1" / "provenance.json", record(seconds=10.0, end=1.0), 100)
    _write(cache / "k2" / "provenance.json", record(seconds=20.0, end=2.0), 200)
    _write(cache / ".k3-tmp" / "provenance.json", record(seconds=99.0, end=3.0), 300)
    (cache / "k4").mkdir()  # an entry being written: no record yet
    os.utime(cache / "k4", (50, 50))
    _write(out / "MASTER_BIAS.provenance.json", record(seconds=20.0, end=2.0), 250)
    _write(out / "OTHER.provenance.json", record(seconds=0.0, end=5.0, cache_hit=True), 260)
    (out / "BROKEN.provenance.json").write_text("{")
    h = History.from_disk(cache_dir=cache, output_dirs=[out, tmp_path / "missing"],
                          limit=10)
    assert h.loaded == 0  # nothing read before it is needed
    assert h.expected(Features.of(record())) == 15.0
    assert len(h) == 2 and h.loaded == 4  # (k4 has no record yet; BROKEN does not parse)
    # the bound: only the newest records are read
    newest = History.from_disk(cache_dir=cache, output_dirs=[out], limit=2)
    assert newest.expected(Features.of(record())) is None  # OTHER (served), BROKEN
    assert newest.loaded == 1
    newest = History.from_disk(cache_dir=cache, limit=1)
    assert newest.expected(Features.of(record())) == 20.0


def test_loading_the_history_is_bounded_and_cheap(tmp_path):
    """The cost of the history: N cache entries listed, at most ``limit`` read."""
    cache = tmp_path / "cache"
    n = 2000
    for i in range(n):
        _write(cache / f"k{i:05d}" / "provenance.json",
               record(recipe=f"r{i % 20}", seconds=float(i % 7), end=float(i)), 1000 + i)
    for limit in (n, 500):
        h = History.from_disk(cache_dir=cache, limit=limit)
        t0 = time.perf_counter()
        h.expected(Features.of(record(recipe="r1")))
        ms = 1e3 * (time.perf_counter() - t0)
        print(f"history: {n} cache entries, {h.loaded} records read in {ms:.0f} ms")
        assert h.loaded == limit
    assert ms < 2000  # generous: a shared, loaded machine


def test_time_left_is_the_longest_chain_or_the_work_per_slot():
    # a cascade: bias -> flat -> science per unit, then one combination of both
    calls = []
    for unit in (1, 2):
        calls += [Call(f"bias{unit}", 10.0), Call(f"flat{unit}", 20.0, deps=(f"bias{unit}",)),
                  Call(f"sci{unit}", 30.0, deps=(f"flat{unit}", f"bias{unit}"))]
    calls.append(Call("post", 40.0, deps=("sci1", "sci2")))
    many = time_left(calls, slots=8)
    assert (many.seconds, many.path, many.work) == (100.0, 100.0, 160.0)
    assert time_left(calls, slots=1).seconds == 160.0  # one slot: all the work in turn
    # bias1 has run 4 s of its 10; bias2 is done; sci2 took longer than expected
    calls[0] = Call("bias1", 10.0, elapsed=4.0)
    calls[3] = Call("bias2", 10.0, elapsed=12.0, done=True)
    calls[4] = Call("flat2", 20.0, elapsed=25.0, deps=("bias2",))
    later = time_left(calls, slots=8)
    assert later.overdue == 1
    assert describe_left(later) == "≥ ~2 min left (1 running late)"
    assert later.path == 6.0 + 20.0 + 30.0 + 40.0
    assert later.work == 6.0 + 20.0 + 30.0 + 0.0 + 30.0 + 40.0


def test_unknown_recipes_make_the_estimate_a_lower_bound():
    calls = [Call("a", 30.0), Call("b", None, deps=("a",)), Call("c", None),
             Call("z", None, done=True), Call("d", 10.0, deps=("not-followed",))]
    est = time_left(calls, slots=4)
    assert (est.seconds, est.unknown) == (30.0, 2)
    assert describe_left(est) == "≥ ~30 s left (2 never timed)"
    nothing = time_left([Call("b", None)], slots=4)
    assert nothing.seconds is None and describe_left(nothing) == "time left: ? (no earlier runs)"
    assert describe_left(time_left([Call("a", 150.0)], slots=1)) == "~3 min left"
    assert describe_left(time_left([Call("a", 150.0, done=True)], slots=1)) == ""


def test_a_call_counts_with_what_is_left_of_it():
    assert remaining(30.0, None) == 30.0
    assert remaining(30.0, 10.0) == 20.0
    assert remaining(30.0, 45.0) == 0.0  # over its time: nothing more expected
    assert remaining(None, 5.0) is None
    assert [format_seconds(s) for s in (0, 1.1, 9.4, 12, 42, 57.4, 89, 150, 3900)] == \
        ["~1 s", "~1 s", "~9 s", "~10 s", "~40 s", "~55 s", "~1 min", "~3 min",
         "~1 h 05 min"]


def test_a_cycle_does_not_hang_the_estimate():
    est = time_left([Call("a", 1.0, deps=("b",)), Call("b", 2.0, deps=("a",))], slots=1)
    assert est.work == 3.0


@pytest.mark.requires_cpl
def test_a_second_run_is_expected_to_take_what_the_first_took(test_recipe, any_fits,
                                                               tmp_path):
    """A first run of the test recipe (spinning 3 s) leaves its provenance in the
    product cache; a chain of two more runs of the same call (cache=False: they
    really run) is expected to take that long each, twice that for the chain; the
    terminal display says so, and the run lasts what was expected within 30 %."""
    import dask
    from rich.console import Console

    import cpldask

    from cpldask._cli._batch import _progress
    from cpldask._progress import Job, Tracker, to_html
    from helpers import wait_until

    param = {"spin": 3.0, "label": "eta"}
    with dask.config.set({"cpldask.cache.enabled": True,
                          "cpldask.cache.dir": str(tmp_path / "cache")}):
        first = test_recipe(any_fits, param=param, output_dir=tmp_path / "first")
        took = first.provenance["run"]["wall_time"]
        a = test_recipe(any_fits, param=param, threaded=True, cache=False,
                        output_dir=tmp_path / "a")
        b = test_recipe(raw={"RAW": [a]}, param=param, threaded=True, cache=False,
                        output_dir=tmp_path / "b")
        jobs = [Job("a", a), Job("b", b)]
        tracker = Tracker(jobs)
    expected = tracker.expected(jobs[0])
    assert expected == pytest.approx(took)
    assert tracker.expected(jobs[1]) == pytest.approx(took)  # its input: a product
    est = tracker.time_left()
    assert est.path == pytest.approx(2 * took)  # b waits for a
    assert est.seconds == pytest.approx(2 * took) and est.unknown == 0

    def render() -> str:
        console = Console(record=True, width=150, force_terminal=False)
        console.print(_progress(jobs, "cpldask_test", jobs[0].submitted, tracker))
        return console.export_text()

    print(render())
    assert re.search(r"~\d+ s left", render().splitlines()[0])
    # a running call shows its time left next to its current message
    wait_until(lambda: tracker.poll() is not None and jobs[0].started is not None
               and a.current_message, 60, "the first call running with a message")
    text = render()
    print(text)
    line = next(line for line in text.splitlines() if "▸ a" in line)
    assert re.search(r"(~\d+ s left|over the usual)", line)
    assert a.current_message[:20] in line
    # the notebook display says the same
    page = to_html(tracker, "cpldask_test", jobs[0].submitted)
    assert re.search(r"~\d+ s left|over the usual", page) and "<progress" in page
    b.result()
    second = a.provenance["run"]["wall_time"]
    print(f"first run {took:.2f} s, expected {expected:.2f} s, second run {second:.2f} s")
    assert second == pytest.approx(expected, rel=0.3)
    # outside a notebook, cpldask.progress is distributed.progress (a text bar)
    cpldask.progress([a, b])


@pytest.mark.requires_cpl
@pytest.mark.slow
def test_progress_in_a_notebook(testrecipe_dir, any_fits, tmp_path, monkeypatch):
    """cpldask.progress in a real Jupyter kernel: an ipywidgets HTML display that
    follows a chain of two calls to their end on its own, while the next cell runs."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    code = [f"""import cpldask
cpldask.Recipe.path = [{str(testrecipe_dir)!r}]
r = cpldask.Recipe('cpldask_test', threaded=True)
a = r({any_fits!r}, param={{'spin': 1.0}}, output_dir={str(tmp_path / 'a')!r})
b = r(raw={{'RAW': [a]}}, param={{'spin': 1.0}}, output_dir={str(tmp_path / 'b')!r})
cpldask.progress([a, b])""",
            # the display's own thread notes the end within its refresh (0.5 s)
            "b.result(); import time; time.sleep(2)"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in code])
    # the kernel inherits this process's environment
    monkeypatch.setenv("DASK_CPLDASK__CACHE__DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DASK_CPLDASK__LOCAL__DASHBOARD_ADDRESS", "127.0.0.1:0")
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    shown = nb.cells[0].outputs[0]["data"]
    assert "application/vnd.jupyter.widget-view+json" in shown
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    final = [w["state"]["value"] for w in state.values() if w["model_name"] == "HTMLModel"]
    print(final)
    assert len(final) == 1 and "2/2" in final[0] and "done 2" in final[0]
