"""Benchmark 3: client memory while big products flow through a graph.

A two-step graph, ``n`` times: a producer writes a ~200 MB product, a consumer (the test
recipe) takes it as its raw input and writes a small product. The client keeps every
result, as a script that collects its results does, and at the end reads a header of
each consumer product. Measured: the client process's RSS (sampled every 20 ms) before,
at its peak and at the end.

* ``cpldask``: all ``2n`` calls submitted at once, the producer's :class:`Result` passed
  to the consumer (only paths travel; the client never opens the big products);
* ``python-cpl``: the same chain done the python-cpl way, producer then consumer with
  the producer's in-memory HDUList as input, ``m <= n`` times (it holds what it read, so
  it is run for fewer products; its growth per product is reported, and extrapolated
  to ``n`` products in the ``note``).

The producer is the test recipe with ``size=200`` (MB) when the recipe has that
parameter, else ``muse_bias`` (MASTER_BIAS: 3 images of 4096x4112, ~200 MB).
"""

from __future__ import annotations

import gc

import common
from common import PeakRSS, log, median, row

SLOTS = 2
MB = 2**20


def producer_kind(ctx) -> str:
    import cpl

    cpl.Recipe.path = ctx.search_path
    names = [p.name for p in cpl.Recipe("cpldask_test").param]
    return "cpldask_test" if "size" in names else "muse_bias"


def run(ctx: common.Context) -> dict:
    import distributed

    import cpldask

    kind = producer_kind(ctx)
    fast = kind == "cpldask_test"
    n = ctx.pick("memory.products", 10 if fast else 2, 60 if fast else 50)
    m = ctx.pick("memory.pcpl_products", 3 if fast else 1, 10 if fast else 8)
    size_mb = ctx.pick("memory.size_mb", 200, 200)
    reps = ctx.repetitions(1, 2)
    tmp = ctx.scratch("memory")
    values: dict[str, dict[str, list]] = {}

    def record(variant, metric, value):
        values.setdefault(metric, {}).setdefault(variant, []).append(value)

    def producer_args(i):
        if fast:
            return [ctx.tiny_fits], {"param": {"size": size_mb, "value": float(i)}}
        return [ctx.bias_files], {"param": {"nifu": 1}}

    tag = "PRODUCT" if fast else "MASTER_BIAS"

    def measured(variant, rep, count, mem, flowed):
        record(variant, "growth", (mem.end - mem.start) / MB)
        record(variant, "peak growth", (mem.peak - mem.start) / MB)
        record(variant, "GB flowed", flowed / 1e9)
        log(f"memory rep {rep + 1}/{reps} {variant}: {count} products, {flowed / 1e9:.1f} GB, "
            f"RSS +{(mem.end - mem.start) / MB:.0f} MB (peak +{(mem.peak - mem.start) / MB:.0f})")

    with ctx.cluster(SLOTS):
        prod = cpldask.Recipe(kind, threaded=True)
        cons = cpldask.Recipe("cpldask_test", threaded=True)
        prod_p = common.pcpl_recipe(ctx, kind, tmp)
        cons_p = common.pcpl_recipe(ctx, "cpldask_test", tmp)
        cons(ctx.tiny_fits, cache=False).result()  # warm up the workers
        for rep in range(reps):
            # -- cpldask: the whole graph at once ---------------------------------------
            gc.collect()
            with PeakRSS() as mem:
                results = []
                for i in range(n):
                    args, kw = producer_args(i)
                    p = prod(*args, **kw, cache=False)
                    c = cons(p, param={"value": float(i)}, cache=False)
                    results.append((p, c))
                distributed.wait([r.future for pair in results for r in pair])
                flowed = sum(pr.size for p, _ in results for pr in p.record.products)
                headers = [c.PRODUCT[0].header["ESO QC ECHO VALUE"] for _, c in results]
                assert headers == [float(i) for i in range(n)], headers
            measured("cpldask", rep, n, mem, flowed)
            del results, p, c
            # -- python-cpl: in-memory HDUList results -----------------------------------
            gc.collect()
            with PeakRSS() as mem:
                kept = []
                flowed = 0
                for i in range(m):
                    args, kw = producer_args(i)
                    p = prod_p(*args, **kw)
                    big = getattr(p, tag)
                    flowed += sum(h.filebytes() for h in big)
                    c = cons_p(big, param={"value": float(i)})
                    kept.append((p, c))
                headers = [c.PRODUCT[0].header["ESO QC ECHO VALUE"] for _, c in kept]
                assert headers == [float(i) for i in range(m)], headers
            measured("python-cpl", rep, m, mem, flowed)
            for p, c in kept:
                for hdul in (getattr(p, tag), c.PRODUCT):
                    hdul.close()
            del kept, p, c, big

    per_product = {k: [g / (n if k == "cpldask" else m) for g in v]
                   for k, v in values["growth"].items()}
    gb = median(values["GB flowed"]["cpldask"])
    growth = median(values["growth"]["cpldask"])
    extrapolated = median(per_product["python-cpl"]) * n
    rows = [
        row(f"client RSS growth, {n} products (python-cpl: {m})", "MB", values["growth"],
            ratio_of=("cpldask", "python-cpl"),
            target="< 100 MB with >= 10 GB flowing", met=growth < 100 and gb >= 10,
            note=f"python-cpl extrapolated to {n} products: {extrapolated:.0f} MB"),
        row("client RSS peak growth", "MB", values["peak growth"],
            ratio_of=("cpldask", "python-cpl")),
        row("client RSS growth per product", "MB", per_product,
            ratio_of=("cpldask", "python-cpl")),
        row("products flowing through the graph", "GB", values["GB flowed"]),
    ]
    notes = [f"producer: {kind}" + (f" size={size_mb} MB" if fast else " (MASTER_BIAS)")]
    if gb < 10:
        notes.append(f"only {gb:.1f} GB flowed (the target needs >= 10 GB: full run, or "
                     f"--set memory.products=N)")
    return common.result("memory", {"producer": kind, "products": n, "pcpl_products": m,
                                    "reps": reps, "slots": SLOTS}, rows, notes=notes)
