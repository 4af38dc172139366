"""Profiles behind the figures of docs/benchmarks.md (not part of run.py).

    python bench/profiling.py start     # what a recipe process costs to start
    python bench/profiling.py submit    # where the client's time per call goes
    python bench/profiling.py percall   # CPU per call of each process; slot time
    python bench/profiling.py all

``start``: CPU and wall of the steps a fresh recipe process goes through (``python -c
pass``, importing numpy, astropy.io.fits, python-cpl, loading the recipe), of a whole
``_runner.py JOB`` process started by exec (how every call started before the fork
server), and of one no-op cpldask call now (process tree CPU per call, from a batch).

``submit``: ``N`` background calls that never start (they wait behind 2 slots held by
long sleeps), profiled with cProfile on the main thread's *CPU* clock
(``time.thread_time``), so the split holds on a loaded machine; plus the CPU of the
whole client process (its event loop thread runs the scheduler of the embedded cluster)
and, for scale, a bare ``client.submit`` of a trivial function with the same number of
tasks. Works from CPU clocks, which a busy machine inflates far less than wall time.

Wall-clock profilers work too, on a quiet machine: ``pyinstrument bench/profiling.py
submit`` or ``py-spy record -o submit.svg -- python bench/profiling.py submit``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pathlib
import pstats
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = pathlib.Path(__file__).resolve().parent


def _child_cost(cmd: list[str], n: int = 5, **kw) -> tuple[float, float]:
    """Median-free mean (wall ms, CPU ms) of running ``cmd`` n times."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(cmd, check=True, **kw)
    wall = (time.perf_counter() - t0) / n
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / n
    return 1000 * wall, 1000 * cpu


def _runner_cost(cmd: list[str], cwd: pathlib.Path) -> tuple[float, float]:
    """(wall ms, CPU ms) of one runner process, started as cpldask's worker did: in a
    session of its own, its stdin a pipe held open until it ends (EOF on it means
    "the worker died": the runner then kills its process group)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
    proc.wait()
    wall = time.perf_counter() - t0
    proc.stdin.close()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return 1000 * wall, 1000 * (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)


def start(ctx) -> dict:
    import common

    import cpldask
    from cpldask.worker import runner as _runner

    py = sys.executable
    path = json.dumps(ctx.search_path)
    steps = [
        ("python -c pass", [py, "-c", "pass"]),
        ("import numpy", [py, "-c", "import numpy"]),
        ("import astropy.io.fits", [py, "-c", "import astropy.io.fits"]),
        ("import cpl (python-cpl)", [py, "-c", "import cpl"]),
        ("import cpl + load the recipe",
         [py, "-c", f"import cpl; cpl.Recipe.path = {path}; cpl.Recipe('cpldask_test')"]),
    ]
    out = {}
    for name, cmd in steps:
        out[name] = _child_cost(cmd)
        common.log(f"start: {name}: wall {out[name][0]:.0f} ms, CPU {out[name][1]:.0f} ms")
    # a whole recipe process started by exec, as before the fork server
    work = pathlib.Path(tempfile.mkdtemp(prefix="runner-", dir=ctx.tmp))
    walls, cpus = [], []
    for i in range(5):
        call = work / f"call{i}"
        call.mkdir()
        job = call / ".cpldask-job.json"
        job.write_text(json.dumps({
            "recipe": "cpldask_test", "version": None, "recipe_path": ctx.search_path,
            "params": [["cpldask_test.value", float(i)]], "raw": [["RAW", [ctx.tiny_fits]]],
            "calib": {}, "tag": "RAW", "call_dir": str(call), "memory_limit": None}))
        w, c = _runner_cost([py, _runner.__file__, str(job)], call)
        assert (call / "report.json").exists(), "the runner wrote no report"
        walls.append(w)
        cpus.append(c)
    out["exec _runner.py JOB (one no-op call)"] = (common.median(walls), common.median(cpus))
    common.log(f"start: exec runner: wall {out['exec _runner.py JOB (one no-op call)'][0]:.0f} "
               f"ms, CPU {out['exec _runner.py JOB (one no-op call)'][1]:.0f} ms")
    # one no-op call through cpldask now (whatever starts its process), tree CPU per call
    with ctx.cluster(2):
        r = cpldask.Recipe("cpldask_test", threaded=True)
        r(ctx.tiny_fits, cache=False).result()
        n = 100
        with common.Timer() as t:
            rs = [r(ctx.tiny_fits, param={"value": float(i)}, cache=False) for i in range(n)]
            for x in rs:
                x.result()
        out["cpldask no-op call, whole process tree"] = (1000 * t.wall * 2 / n, 1000 * t.cpu / n)
    common.log("start: cpldask call: slot-ms {:.0f}, CPU {:.0f} ms per call".format(
        *out["cpldask no-op call, whole process tree"]))
    return {k: {"wall_ms": round(w, 1), "cpu_ms": round(c, 1)} for k, (w, c) in out.items()}


def submit(ctx, n: int = 300) -> dict:
    import distributed

    import common
    import cpldask

    with ctx.cluster(2) as client:
        r = cpldask.Recipe("cpldask_test", threaded=True)
        r(ctx.tiny_fits, cache=False).result()
        # hold both slots so that nothing runs while the client submits
        holders = [r(ctx.tiny_fits, param={"sleep": 3600.0, "value": -1.0 - i}, cache=False)
                   for i in range(2)]
        time.sleep(1.0)
        # unprofiled first: the real cost per call
        t0, p0 = time.perf_counter(), time.process_time()
        plain = [r(ctx.tiny_fits, param={"value": 1e6 + i}, cache=False) for i in range(n)]
        plain_wall, plain_cpu = time.perf_counter() - t0, time.process_time() - p0
        for x in plain:
            x.cancel()
        del plain
        time.sleep(1.0)
        # then under cProfile (which makes it 2-4 times slower): the shares
        prof = cProfile.Profile(time.thread_time)
        p0, t0, c0 = time.process_time(), time.perf_counter(), common.cpu_tree()
        m0 = time.thread_time()
        prof.enable()
        rs = [r(ctx.tiny_fits, param={"value": float(i)}, cache=False) for i in range(n)]
        prof.disable()
        main_cpu = time.thread_time() - m0
        wall = time.perf_counter() - t0
        proc_cpu, tree_cpu = time.process_time() - p0, common.cpu_tree() - c0
        for x in rs + holders:
            x.cancel()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("cumulative").print_stats(40)
        # for scale: distributed's own cost of submitting n small tasks
        time.sleep(2.0)
        t1, p1 = time.perf_counter(), time.process_time()
        futs = [client.submit(_noop, i, key=f"bare-{i}-{time.time_ns()}", pure=False)
                for i in range(n)]
        bare_wall, bare_cpu = time.perf_counter() - t1, time.process_time() - p1
        distributed.wait(futs)
    res = {"calls": n, "unprofiled_wall_ms_per_call": 1000 * plain_wall / n,
           "unprofiled_client_cpu_ms_per_call": 1000 * plain_cpu / n,
           "profiled_wall_ms_per_call": 1000 * wall / n,
           "profiled_client_process_cpu_ms_per_call": 1000 * proc_cpu / n,
           "profiled_process_tree_cpu_ms_per_call": 1000 * tree_cpu / n,
           "profiled_main_thread_cpu_ms_per_call": 1000 * main_cpu / n,
           "bare_client_submit_wall_ms_per_task": 1000 * bare_wall / n,
           "bare_client_submit_cpu_ms_per_task": 1000 * bare_cpu / n,
           "profile": _digest(stats, main_cpu)}
    common.log(f"submit: {res['unprofiled_wall_ms_per_call']:.2f} ms wall, "
               f"{res['unprofiled_client_cpu_ms_per_call']:.2f} ms client CPU per call "
               f"(unprofiled); bare "
               f"client.submit {res['bare_client_submit_cpu_ms_per_task']:.2f} ms CPU per task")
    print(buf.getvalue()[:6000])
    return res


def percall(ctx, n: int = 600, maxthreads: bool = False) -> dict:
    """CPU per no-op call of every process of the cluster: the client (which also runs
    the scheduler), each worker, each fork server and the recipe processes it forked
    (their ``children`` CPU), and the split of a recipe process's CPU between the
    runner itself and python-cpl's recipe fork (from each call's ``report.json``)."""
    import distributed
    import psutil

    import common
    import cpldask

    def snapshot():
        out = {}
        for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                t = proc.cpu_times()
                out[proc.pid] = (_role(proc.cmdline()), t.user + t.system,
                                 t.children_user + t.children_system)
            except psutil.Error:
                continue
        return out

    with ctx.cluster(2) as client:
        if not maxthreads:  # ctx.cluster sets the limit as a python-cpl user would
            from cpldask import _cluster

            _cluster._limits.pop(client.scheduler.address, None)
        r = cpldask.Recipe("cpldask_test")
        for i in range(4):  # warm: fork servers started, recipe library loaded
            r(ctx.tiny_fits, param={"value": -1.0 - i}, cache=False)
        before, t0 = snapshot(), time.perf_counter()
        with distributed.get_task_stream() as stream:
            rs = [r(ctx.tiny_fits, param={"value": float(i)}, cache=False, threaded=True)
                  for i in range(n)]
            distributed.wait(rs)
        wall, after = time.perf_counter() - t0, snapshot()
        reports = [json.loads(p.read_text())
                   for p in pathlib.Path(rs[0].record.call_dir).parent.glob("*/report.json")]
        slots = _slot_time(stream.data, {x.key: x.record for x in rs})
    roles: dict[str, float] = {}
    for pid, (role, own, children) in after.items():
        _, own0, children0 = before.get(pid, (role, 0.0, 0.0))
        roles[role] = roles.get(role, 0.0) + 1000 * (own - own0) / n
        if children - children0 > 0:
            roles[f"{role} children"] = roles.get(f"{role} children", 0.0) + \
                1000 * (children - children0) / n
    runner = [x["cpu"] for x in reports if "cpu" in x]
    res = {"calls": n, "set_maxthreads": maxthreads, "calls_per_s": n / wall,
           "cpu_ms_per_call": {k: round(v, 2) for k, v in roles.items()},
           "total_cpu_ms_per_call": round(sum(roles.values()), 1),
           "recipe_process_cpu_ms": {
               "runner": 1000 * (common.median([c["runner"] for c in runner]) or 0),
               "python-cpl recipe fork": 1000 * (common.median([c["recipe"] for c in runner])
                                                 or 0)},
           "slot_time_ms": slots}
    common.log(f"percall: {res['calls_per_s']:.1f} calls/s, "
               f"{res['total_cpu_ms_per_call']} ms CPU per call: {res['cpu_ms_per_call']}; "
               f"recipe process {res['recipe_process_cpu_ms']}; slot time {slots}")
    return res


def _slot_time(task_stream: list[dict], records: dict) -> dict[str, float | None]:
    """Where a slot's time goes (medians, ms): the task on the worker thread, the
    recipe process's run of the recipe within it, the rest of the task after the
    recipe ended (process exit, report, product header), and the idle gap between one
    task's end and the next one's start on the same worker thread."""
    import common

    by_thread: dict[tuple, list] = {}
    for d in task_stream:
        for s in d["startstops"]:
            if s["action"] == "compute" and d["key"] in records:
                by_thread.setdefault((d["worker"], d.get("thread")), []).append(
                    (s["start"], s["stop"], records[d["key"]]))
    task, run, after, gap = [], [], [], []
    for calls in by_thread.values():
        calls.sort(key=lambda c: c[0])
        for (start, stop, rec), nxt in zip(calls, calls[1:] + [None]):
            task.append(stop - start)
            run.append(rec.end - rec.start)
            after.append(stop - rec.end)
            if nxt is not None:
                gap.append(nxt[0] - stop)
    return {name: round(1000 * common.median(v), 2) if v else None
            for name, v in (("task", task), ("recipe run", run),
                            ("recipe end -> task end", after),
                            ("gap between tasks", gap))}


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    if "--serve" in text:
        return "fork servers"
    if "multiprocessing-fork" in text:
        return "workers"
    if "resource_tracker" in text:
        return "other"
    return "client + scheduler"


def _noop(x):
    return x


def _digest(stats: pstats.Stats, total: float) -> dict[str, float]:
    """Share of the main thread's CPU in the parts of a call worth knowing about."""
    wanted = {
        "Recipe._build (validation, provenance, key, spec)": ("recipe.py", "_build"),
        "  parameters of the call": ("recipe.py", "_for_call"),
        "  input checks (headers, identities)": ("_call.py", "inputs"),
        "  task key": ("_call.py", "_task_key"),
        "Client.submit": ("client.py", "submit"),
        "Result.__init__ (done callback)": ("result.py", "__init__"),
    }
    out = {}
    for label, (file, func) in wanted.items():
        cum = sum(v[3] for (f, _, fn), v in stats.stats.items()
                  if f.endswith(file) and fn == func)
        out[label] = round(100 * cum / total, 1) if total else None
    return out


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    import common

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["start", "submit", "percall", "all"])
    parser.add_argument("--maxthreads", action="store_true",
                        help="percall: with set_maxthreads(2) (the slot semaphore)")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", type=pathlib.Path,
                        default=HERE / "results" / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.json")
    args = parser.parse_args(argv)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cpldask-profile-"))
    ctx = common.Context(quick=True, tmp=tmp,
                         data_dir=pathlib.Path(tempfile.gettempdir()) / "cpldask-bench-data")
    ctx.data_dir.mkdir(exist_ok=True)
    common.configure(ctx)
    out = {"loadavg": os.getloadavg(), "environment": common.environment()}
    try:
        if args.what in ("start", "all"):
            out["start"] = start(ctx)
        if args.what in ("submit", "all"):
            out["submit"] = submit(ctx, args.calls)
        if args.what in ("percall", "all"):
            out["percall"] = percall(ctx, 2 * args.calls, args.maxthreads)
    finally:
        import shutil

        import cpldask

        cpldask.close()
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps({k: v for k, v in out.items() if k != "environment"}, indent=1, default=str))
    print("JSON:", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
