"""Benchmark 6: cold start — from ``import cpldask`` to the first result.

Each repetition starts a fresh Python process (``python bench/coldstart.py --child
...``) that imports cpldask, makes a Recipe, starts the embedded cluster (2 slots) and
runs one no-op call of the test recipe; the baseline process does the same with
python-cpl (``import cpl``, Recipe, one call). The child reports the time of each phase;
the parent adds the interpreter's own start (from ``Popen`` to the child's first line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

if __name__ not in ("__main__", "__mp_main__"):  # not in the child and its workers
    import common
    from common import log, row

PHASES = ["interpreter", "import", "Recipe()", "cluster start", "first call", "total"]


def run(ctx: "common.Context") -> dict:
    reps = ctx.repetitions(2, 5)
    values: dict[str, dict[str, list]] = {}
    for rep in range(reps):
        for name in (["cpldask", "python-cpl"] if rep % 2 == 0 else ["python-cpl", "cpldask"]):
            work = ctx.scratch(f"coldstart-{rep}-{name}")
            args = {"variant": name, "path": ctx.search_path, "input": ctx.tiny_fits,
                    "work": str(work)}
            t_spawn = time.time()
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)],
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"cold start child ({name}) failed:\n{proc.stderr[-3000:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            out["interpreter"] = out.pop("t_start") - t_spawn
            out["total"] = out.pop("t_result") - t_spawn
            for phase in PHASES:
                if phase in out:
                    values.setdefault(phase, {}).setdefault(name, []).append(out[phase])
            log(f"coldstart rep {rep + 1}/{reps} {name}: first result {out['total']:.2f} s "
                f"after the process started ("
                + ", ".join(f"{p} {out[p]:.2f}" for p in PHASES[:-1] if p in out) + ")")
    rows = [row("from process start to first result", "s", values["total"],
                ratio_of=("cpldask", "python-cpl"))]
    since_import = {k: [t - i for t, i in zip(values["total"][k], values["interpreter"][k])]
                    for k in values["total"]}
    rows.append(row("from import to first result", "s", since_import,
                    ratio_of=("cpldask", "python-cpl")))
    for phase in PHASES[:-1]:
        if phase in values:
            rows.append(row(f"  phase: {phase}", "s", values[phase]))
    return common.result("coldstart", {"reps": reps, "slots": 2}, rows)


def child(args: dict) -> None:
    """In the fresh process: time the road to the first result."""
    t_start = time.time()
    t = time.perf_counter()
    out = {"t_start": t_start}
    if args["variant"] == "cpldask":
        import cpldask

        out["import"] = time.perf_counter() - t
        import dask

        dask.config.set({"cpldask.cache.enabled": False, "cpldask.work-dir": args["work"],
                         "cpldask.local.slots": 2,
                         "cpldask.local.dashboard-address": "127.0.0.1:0"})
        cpldask.Recipe.path = args["path"]
        t = time.perf_counter()
        recipe = cpldask.Recipe("cpldask_test")
        out["Recipe()"] = time.perf_counter() - t
        t = time.perf_counter()
        cpldask.get_client()  # what the first call does first
        out["cluster start"] = time.perf_counter() - t
        t = time.perf_counter()
        res = recipe(args["input"], cache=False)
        assert "PRODUCT" in res
        out["first call"] = time.perf_counter() - t
        out["t_result"] = time.time()
        cpldask.close()
    else:
        import cpl

        out["import"] = time.perf_counter() - t
        cpl.Recipe.path = args["path"]
        t = time.perf_counter()
        recipe = cpl.Recipe("cpldask_test")
        recipe.temp_dir = args["work"]
        out["Recipe()"] = time.perf_counter() - t
        t = time.perf_counter()
        res = recipe(args["input"])
        assert "PRODUCT" in res
        out["first call"] = time.perf_counter() - t
        out["t_result"] = time.time()
    print(json.dumps(out), flush=True)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    child(json.loads(sys.argv[2]))
