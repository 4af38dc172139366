"""Benchmark 4: scale of the scheduler.

Part A, a long queue: ``N`` (10 000 in the full run) no-op calls of the test recipe
submitted at once to 2 slots. Measured: the time the client needs to submit them
(``threaded=True`` calls returning pending results), the wall until the last one has
finished, against the ideal ``N / throughput of a short batch`` measured just before on
the same cluster (the long queue must not slow the calls down), and stalls: gaps
between consecutive completions longer than ``max(1 s, 10 x the median gap)``.
python-cpl threaded runs the same queue for at most ``scale.pcpl_queued`` calls (2 000:
it starts two threads and a FIFO per call, and 20 000 threads come close to this
machine's pid limit).

Part B, sleep-recipe scaling: for each slot count ``n`` (1 ... 64), ``waves x n`` calls
of the test recipe sleeping ``S`` seconds on a fresh cluster with ``n`` slots. A
sleeping recipe uses no CPU, so slots beyond the cores still scale: the ideal wall is
``waves x S``. cpldask vs python-cpl threaded with ``set_maxthreads(n)``.
"""

from __future__ import annotations

import time

import common
from common import log, median, row


def run(ctx: common.Context) -> dict:
    a_rows, a_notes, a_extra = queued(ctx)
    b_rows, b_notes, b_extra = sleeping(ctx)
    params = {**a_extra.pop("params"), **b_extra.pop("params")}
    return common.result("scale", params, a_rows + b_rows, notes=a_notes + b_notes,
                         extra={**a_extra, **b_extra})


# ---------------------------------------------------------------------------------
# A: a long queue of no-op calls
# ---------------------------------------------------------------------------------
def queued(ctx):
    import cpl
    import distributed

    import cpldask

    n = ctx.pick("scale.queued", 200, 10000)
    n_small = ctx.pick("scale.batch", 40, 200)
    n_pcpl = min(n, ctx.pick("scale.pcpl_queued", 200, 2000))
    reps = ctx.repetitions(1, 2)
    slots = 2
    tmp = ctx.scratch("scale-queued")
    infile = ctx.tiny_fits
    v: dict[str, dict[str, list]] = {}
    gaps_all = []

    def record(variant, metric, value):
        v.setdefault(metric, {}).setdefault(variant, []).append(value)

    offset = 0
    with ctx.cluster(slots):
        recipe = cpldask.Recipe("cpldask_test", threaded=True)
        threaded = common.pcpl_recipe(ctx, "cpldask_test", tmp, threaded=True)
        cpl.Recipe.set_maxthreads(slots)
        recipe(infile, cache=False, param={"value": -1.0}).result()
        threaded(infile, param={"value": -1.0}).PRODUCT
        for rep in range(reps):
            # the throughput of a short batch on this cluster: the ideal rate
            t0 = time.perf_counter()
            batch = [recipe(infile, param={"value": float(offset + i)}, cache=False)
                     for i in range(n_small)]
            offset += n_small
            distributed.wait([r.future for r in batch])
            rate = n_small / (time.perf_counter() - t0)
            del batch
            # the long queue
            t0 = time.perf_counter()
            results = [recipe(infile, param={"value": float(offset + i)}, cache=False)
                       for i in range(n)]
            offset += n
            submit = time.perf_counter() - t0
            done = []
            for fut in distributed.as_completed([r.future for r in results]):
                done.append(time.perf_counter())
            wall = time.perf_counter() - t0
            failed = sum(r.status != "finished" for r in results)
            del results
            ideal = n / rate
            gaps = [b - a for a, b in zip(done, done[1:])]
            med_gap = median(gaps) or 0.0
            stall_limit = max(1.0, 10 * med_gap)
            stalls = [g for g in gaps if g > stall_limit]
            gaps_all.append({"max_gap_s": max(gaps, default=0.0), "median_gap_s": med_gap,
                             "stalls": len(stalls), "first_result_s": done[0] - t0,
                             "failed": failed})
            record("cpldask", "submit", submit)
            record("cpldask", "submit per call", 1000 * submit / n)
            record("cpldask", "wall", wall)
            record("cpldask", "wall / ideal", wall / ideal)
            record("cpldask", "max gap", max(gaps, default=0.0))
            record("cpldask", "stalls", len(stalls))
            log(f"scale queue rep {rep + 1}/{reps} cpldask: {n} calls submitted in "
                f"{submit:.2f} s, done in {wall:.1f} s (ideal {ideal:.1f} s at "
                f"{rate:.1f} calls/s), max gap {max(gaps, default=0):.2f} s, "
                f"{len(stalls)} stalls, {failed} failed")
            # python-cpl threaded, the same queue (capped)
            t0 = time.perf_counter()
            presults = [threaded(infile, param={"value": float(offset + i)})
                        for i in range(n_pcpl)]
            offset += n_pcpl
            psubmit = time.perf_counter() - t0
            for r in presults:
                r.PRODUCT
            pwall = time.perf_counter() - t0
            del presults
            record("python-cpl threaded", "submit per call", 1000 * psubmit / n_pcpl)
            record("python-cpl threaded", "throughput", n_pcpl / pwall)
            record("cpldask", "throughput", n / wall)
            log(f"scale queue rep {rep + 1}/{reps} python-cpl threaded: {n_pcpl} calls "
                f"submitted in {psubmit:.2f} s, done in {pwall:.1f} s")

    sub = median(v["submit"]["cpldask"])
    rows = [
        row(f"submit {n} queued no-op calls", "s", {"cpldask": v["submit"]["cpldask"]},
            target="< 5 s (for 10 000)", met=sub * 10000 / n < 5.0 if n < 10000 else sub < 5.0,
            note=None if n >= 10000 else f"{n} calls; x{10000 / n:g} = "
                                         f"{sub * 10000 / n:.1f} s for 10 000"),
        row("submit time per call", "ms", v["submit per call"],
            ratio_of=("cpldask", "python-cpl threaded")),
        row(f"wall of {n} queued calls / ideal (short-batch rate)", "", v["wall / ideal"],
            target="no stalls, <= 1.10", met=median(v["wall / ideal"]["cpldask"]) <= 1.10
            and max(v["stalls"]["cpldask"]) == 0),
        row("queued throughput (python-cpl: %d calls)" % n_pcpl, "calls/s", v["throughput"],
            ratio_of=("cpldask", "python-cpl threaded")),
        row("longest gap between completions", "s", {"cpldask": v["max gap"]["cpldask"]}),
    ]
    params = {"queued": n, "batch": n_small, "pcpl_queued": n_pcpl, "reps_queued": reps}
    return rows, [], {"params": params, "queue": gaps_all}


# ---------------------------------------------------------------------------------
# B: sleeping calls on 1 ... 64 slots
# ---------------------------------------------------------------------------------
def sleeping(ctx):
    import cpl
    import distributed

    import cpldask

    slot_list = ctx.pick("scale.slots", [1, 2, 8], [1, 2, 4, 8, 16, 32, 64])
    sleep = ctx.pick("scale.sleep", 1.0, 10.0)
    waves = ctx.pick("scale.waves", 2, 3)
    reps = ctx.repetitions(1, 2)
    tmp = ctx.scratch("scale-sleep")
    infile = ctx.tiny_fits
    ideal = waves * sleep
    eff: dict[int, dict[str, list]] = {}
    walls: dict[int, dict[str, list]] = {}
    offset = 0
    for rep in range(reps):
        for n in slot_list:
            calls = waves * n
            with ctx.cluster(n):
                recipe = cpldask.Recipe("cpldask_test", threaded=True)
                threaded = common.pcpl_recipe(ctx, "cpldask_test", tmp, threaded=True)
                cpl.Recipe.set_maxthreads(n)
                # start every worker's recipe machinery outside the timed part
                warm = [recipe(infile, param={"value": -1.0 - i}, cache=False)
                        for i in range(min(n, 4))]
                distributed.wait([r.future for r in warm])
                for r in warm:  # a failed warm-up call is a failure of the run
                    r.result()
                order = ["cpldask", "python-cpl threaded"]
                for name in order if rep % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    if name == "cpldask":
                        results = [recipe(infile, param={"sleep": sleep,
                                                         "value": float(offset + i)},
                                          cache=False) for i in range(calls)]
                        distributed.wait([r.future for r in results])
                        for r in results:
                            r.result()
                    else:
                        results = [threaded(infile, param={"sleep": sleep,
                                                           "value": float(offset + i)})
                                   for i in range(calls)]
                        for r in results:
                            r.PRODUCT
                    wall = time.perf_counter() - t0
                    offset += calls
                    del results
                    walls.setdefault(n, {}).setdefault(name, []).append(wall)
                    eff.setdefault(n, {}).setdefault(name, []).append(ideal / wall)
                    log(f"scale sleep rep {rep + 1}/{reps} {n} slots {name}: {calls} x "
                        f"{sleep:g} s in {wall:.2f} s (ideal {ideal:g} s)")
    rows = []
    for n in slot_list:
        over = {k: [w / ideal for w in ws] for k, ws in walls[n].items()}
        rows.append(row(f"sleep {sleep:g} s x {waves} waves, {n} slots: wall / ideal", "",
                        over, ratio_of=("cpldask", "python-cpl threaded"),
                        target="<= 1.10", met=median(over["cpldask"]) <= 1.10))
    curve = {n: {k: median(ws) for k, ws in walls[n].items()} for n in slot_list}
    params = {"slots": slot_list, "sleep": sleep, "waves": waves, "reps_sleep": reps}
    return rows, [], {"params": params, "sleep_walls": curve, "sleep_ideal": ideal}
