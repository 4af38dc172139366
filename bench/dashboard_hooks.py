"""What the page of recipe runs costs the scheduler (docs/dashboard.md).

``python bench/dashboard_hooks.py [N]``: the hooks of :class:`cpldask._dashboard.RecipeRuns`
called as the scheduler calls them for N recipe calls (default 20 000) — ``update_graph``,
the transitions waiting, processing, memory, one log message and the worker's
``done`` event — then the page's data built once for all of them, then the calls forgotten.
The scheduler's task table is stood in for by objects with the attributes the hooks
read (``state``, ``run_spec.func``, ``processing_on``, ``waiting_on``): the figure is the
plugin's own cost, not the scheduler's.
"""

from __future__ import annotations

import sys
import time
import types

from cpldask import _dashboard
from cpldask.worker.task import run_recipe


def main(n: int) -> None:
    spec = types.SimpleNamespace(func=run_recipe)
    tasks = {f"muse_bias-{i:032x}": types.SimpleNamespace(
        key=f"muse_bias-{i:032x}", state="queued", run_spec=spec, processing_on=None,
        waiting_on=set()) for i in range(n)}
    scheduler = types.SimpleNamespace(tasks=tasks)
    plugin = _dashboard.RecipeRuns(history=1000)
    plugin.scheduler = scheduler
    line = [["cpl.muse_bias.muse_bias_compute", 20, "muse_bias_compute", "a message", 0.0]]
    done = [["MASTER_BIAS", "/data/reduced/MASTER_BIAS.fits"]]
    t0 = time.perf_counter()
    plugin.update_graph(scheduler, tasks=list(tasks))
    for key in tasks:
        plugin.transition(key, "released", "waiting", stimulus_id="bench")
        plugin.transition(key, "waiting", "processing", stimulus_id="bench")
        plugin.log_event("cpldask-log", {"key": key, "entries": line, "worker": "w"})
        plugin.log_event("cpldask-runs", {"key": key, "event": "done", "products": done,
                                          "cache_hit": False, "worker": "w"})
        plugin.transition(key, "processing", "memory", stimulus_id="bench")
    t1 = time.perf_counter()
    view = plugin.view(limit=200)
    t2 = time.perf_counter()
    for key in tasks:
        plugin.transition(key, "memory", "forgotten", stimulus_id="bench")
    print(f"hooks: {1e6 * (t1 - t0) / n:.1f} us per call; the page's data for {n} runs: "
          f"{1e3 * (t2 - t1):.1f} ms ({len(view['runs'])} rows); kept after forgetting: "
          f"{len(plugin.runs)} live, {len(plugin.history)} in history")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
