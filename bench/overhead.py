"""Benchmark 1: overhead and throughput of no-op recipe calls.

Hundreds of calls of the C test recipe ``cpldask_test`` with ``sleep=0`` (it writes one
16x16 product and returns), three ways, interleaved repetition by repetition so that a
change of machine load hits all of them alike:

* ``cpldask``: background calls (``threaded=True``) on an embedded cluster with 2 slots
  (``cpldask.local.slots=2`` and ``Recipe.set_maxthreads(2)``), waited for with
  ``Result.result()``;
* ``python-cpl threaded``: ``cpl.Recipe(..., threaded=True)`` with
  ``cpl.Recipe.set_maxthreads(2)``, waited for by reading each product;
* ``python-cpl serial``: one call after another.

Every call has its own ``value`` parameter and cpldask's calls ``cache=False``, so no
call is shared or served from the product cache.

Figures: calls/s; per-call cost in slot-milliseconds (wall x slots / calls: the time a
call keeps a slot busy, python-cpl serial's being its own fork-and-run cost); CPU
milliseconds per call over the whole process tree (client, scheduler, workers, recipe
processes). Then a latency run: single synchronous calls one after another, whose
cpldask time is split into phases from the scheduler's task stream and the files of the
call directory (see :func:`phases`).
"""

from __future__ import annotations

import pathlib
import time

import common
from common import Timer, log, median, row

SLOTS = 2


def run(ctx: common.Context) -> dict:
    import cpl
    import distributed

    import cpldask

    n = ctx.pick("overhead.calls", 100, 500)
    n_latency = ctx.pick("overhead.latency_calls", 10, 30)
    reps = ctx.repetitions(2, 5)
    tmp = ctx.scratch("overhead")
    infile = ctx.tiny_fits
    values: dict[str, dict[str, list]] = {}

    def record(variant, metric, value):
        values.setdefault(metric, {}).setdefault(variant, []).append(value)

    with ctx.cluster(SLOTS):
        dask_recipe = cpldask.Recipe("cpldask_test", threaded=True)
        serial = common.pcpl_recipe(ctx, "cpldask_test", tmp)
        threaded = common.pcpl_recipe(ctx, "cpldask_test", tmp, threaded=True)
        cpl.Recipe.set_maxthreads(SLOTS)
        # warm up every path once (library loads, worker imports, fork server)
        dask_recipe(infile, param={"value": -1.0}, cache=False).result()
        serial(infile, param={"value": -1.0})
        threaded(infile, param={"value": -1.0}).PRODUCT
        offset = 0

        def run_cpldask():
            results = [dask_recipe(infile, param={"value": float(offset + i)}, cache=False)
                       for i in range(n)]
            distributed.wait([r.future for r in results])
            bad = [r for r in results if r.status != "finished"]
            if bad:
                bad[0].result()  # raises the recipe's error

        def run_threaded():
            results = [threaded(infile, param={"value": float(offset + i)}) for i in range(n)]
            for r in results:
                r.PRODUCT  # waits; raises the recipe's error
            results.clear()

        def run_serial():
            for i in range(n):
                serial(infile, param={"value": float(offset + i)}).PRODUCT

        variants = [("cpldask", run_cpldask, SLOTS), ("python-cpl threaded", run_threaded, SLOTS),
                    ("python-cpl serial", run_serial, 1)]
        for rep in range(reps):
            # rotate the order: whoever runs first does not always get the quiet start
            order = variants[rep % 3:] + variants[:rep % 3]
            for name, fn, slots in order:
                offset += n
                with Timer() as t:
                    fn()
                record(name, "calls/s", n / t.wall)
                record(name, "slot-ms per call", 1000 * t.wall * slots / n)
                record(name, "CPU ms per call", 1000 * t.cpu / n)
                log(f"overhead rep {rep + 1}/{reps} {name}: {n} calls in {t.wall:.2f} s, "
                    f"CPU {t.cpu:.2f} s")

        # latency: one synchronous call at a time
        sync = cpldask.Recipe("cpldask_test")
        lat_dask, lat_serial, stream = [], [], []
        with distributed.get_task_stream() as ts:
            for i in range(n_latency):
                offset += 1
                t0 = time.time()
                res = sync(infile, param={"value": float(offset)}, cache=False)
                t1 = time.time()
                lat_dask.append(1000 * (t1 - t0))
                stream.append((res, t0, t1))
                t0 = time.perf_counter()
                serial(infile, param={"value": float(offset)}).PRODUCT
                lat_serial.append(1000 * (time.perf_counter() - t0))
        breakdown = phases(stream, ts.data)

    per_call = values["slot-ms per call"]
    calls = values["calls/s"]
    m_dask = median(per_call["cpldask"])
    m_serial = median(per_call["python-cpl serial"])
    rows = [
        row("throughput (no-op calls, 2 slots)", "calls/s", calls,
            ratio_of=("cpldask", "python-cpl threaded"), target=">= 1.0x python-cpl threaded",
            met=median(calls["cpldask"]) >= median(calls["python-cpl threaded"])),
        row("per-call cost (wall x slots / calls)", "ms", per_call,
            ratio_of=("cpldask", "python-cpl serial"),
            target="<= python-cpl serial + 2 ms", met=m_dask <= m_serial + 2.0,
            note=f"cpldask - python-cpl serial = {m_dask - m_serial:+.1f} ms"),
        row("CPU per call (whole process tree)", "ms", values["CPU ms per call"],
            ratio_of=("cpldask", "python-cpl serial")),
        row("latency of one synchronous call", "ms",
            {"cpldask": lat_dask, "python-cpl serial": lat_serial},
            ratio_of=("cpldask", "python-cpl serial"),
            note=f"{n_latency} calls one after another, median"),
    ]
    return common.result(
        "overhead", {"calls": n, "slots": SLOTS, "reps": reps, "latency_calls": n_latency},
        rows, extra={"phases_ms": breakdown},
        notes=["cpldask phases of a synchronous no-op call (median ms): "
               + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items() if v is not None)])


def phases(stream, task_stream: list[dict]) -> dict[str, float | None]:
    """Where the time of a synchronous cpldask call goes (medians, ms).

    * ``to worker``: from the client's call to the task's start on a worker (validation,
      key, submission, scheduling);
    * ``worker prep``: task start until the recipe's job file is written (inputs, slot,
      call directory);
    * ``process start``: job file until python-cpl starts the recipe (a fresh process or
      a fork, importing python-cpl and astropy where not inherited, loading the recipe);
    * ``python-cpl run``: python-cpl's own fork-and-run of the recipe in that process;
    * ``worker finish``: python-cpl's return until the task ends (report, process exit,
      product headers, provenance);
    * ``to client``: task end until the call returned in the client.

    File times come from the kernel's coarse clock (a few ms), so a short phase next to
    one (``worker prep``) can come out a few ms negative.
    """
    by_key = {d["key"]: d for d in task_stream}
    cols: dict[str, list[float]] = {k: [] for k in (
        "to worker", "worker prep", "process start", "python-cpl run", "worker finish",
        "to client", "total")}
    for res, t0, t1 in stream:
        d = by_key.get(res.key)
        rec = res.record
        job = pathlib.Path(rec.call_dir) / ".cpldask-job.json"
        if d is None or not job.exists():
            continue
        comp = [s for s in d["startstops"] if s["action"] == "compute"]
        if not comp:
            continue
        start, stop = comp[0]["start"], comp[0]["stop"]
        written = job.stat().st_mtime
        for name, value in (("to worker", start - t0), ("worker prep", written - start),
                            ("process start", rec.start - written),
                            ("python-cpl run", rec.end - rec.start),
                            ("worker finish", stop - rec.end), ("to client", t1 - stop),
                            ("total", t1 - t0)):
            cols[name].append(1000 * value)
    return {k: median(v) for k, v in cols.items()}
