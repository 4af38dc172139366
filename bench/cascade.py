"""Benchmark 5: the cascade — a synthetic MUSE exposure reduced end to end.

For 2 and 4 IFUs (``synthetic.make_exposure``, made once and kept in ``--data-dir``),
the recipe calls that :func:`cpldask.reduce` plans (bias, dark, flat, wavecal, lsf per
IFU; illum and twilight over all IFUs; scibasic per IFU; scipost; with 3 or more IFUs
also the flux branch: scibasic of the standard star, muse_standard, a flux-calibrated
scipost) are run three ways on 2 cores:

* ``cpldask``: the plan submitted as one Dask graph (:meth:`Reduction.submit`, 2 slots,
  the embedded cluster's default of 2 worker processes with 1 thread each);
* ``cpldask 1 worker``: the same with ``cpldask.local.n-workers=1`` (one worker process
  with 2 threads). With one thread per worker, Dask assigns a call that becomes ready
  to a worker at once, even a busy one, and a worker runs what it was given in
  priority order: a critical call (muse_twilight) can then wait behind a
  non-critical one (muse_lsf) on one worker while the other worker runs another
  non-critical call. One worker with both slots picks the most urgent ready call
  whenever a slot frees (full run; ``--set cascade.variants=...`` to choose);
* ``cpldask 2 OpenMP threads``: as ``cpldask``, with ``cpldask.omp-num-threads=2``:
  each recipe process gets two OpenMP threads instead of ``cores // slots = 1``: 4
  threads on 2 cores while two calls run, both cores for a call that runs alone (the
  graph's tail). Not in the default variants (not run yet);
* ``python-cpl serial``: the same calls one after another with python-cpl
  (:func:`run_sequential`);
* ``python-cpl threaded``: a hand-written python-cpl script: the calls in the plan's
  order (stage by stage) with ``threaded=True`` and ``set_maxthreads(2)``, each call
  reading the products of the calls it needs (which waits for them) before it starts:
  what one writes with python-cpl's background results (:func:`run_threaded`).

The lower bound of the wall on 2 cores is ``max(critical path, total / 2)``, from the
durations of the calls in the serial run (longest path through the graph, and all the
work spread perfectly over both cores). Every variant's recipes run with one OpenMP
thread (bench/run.py sets ``OMP_NUM_THREADS=1`` for python-cpl; cpldask gives
``cores // slots = 1``), so the serial durations are those of one core. The bound of
a run's own call durations is reported too (on a busy machine the serial run's, taken
at another moment, are a bound of another load), and the notes compare the sum of
``cpldask``'s call durations with the serial run's (what running two at once costs
each call).

``--set cascade.data=targets`` runs the same on the two-target data set of
issue 19 instead (:func:`targets`: 2 IFUs, two nights, 2 x 3 dithered exposures
combined per target).

Planning (classification, association) is done once and not timed; every variant
writes its products to a directory of its own.
"""

from __future__ import annotations

import json
import pathlib
import time

import common
from common import PeakRSS, log, median, row

SLOTS = 2


def exposure(ctx: common.Context, n_ifus: int) -> tuple[pathlib.Path, tuple[int, ...]]:
    """The raw files of a synthetic exposure of IFUs 1..n (made once)."""
    from cpldask.instruments.muse import synthetic

    ifus = tuple(range(1, n_ifus + 1))
    raw = ctx.data_dir / f"exposure-{n_ifus}ifu"
    stamp = raw / ".bench-exposure.json"
    want = {"ifus": list(ifus), "seed": 0, "synthetic": synthetic.VERSION}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        log(f"writing a synthetic exposure of IFUs {ifus} to {raw} (once)")
        synthetic.make_exposure(raw, ifus=ifus, seed=0, lingain=False)
        stamp.write_text(json.dumps(want))
    return raw, ifus


def targets(ctx: common.Context) -> tuple[pathlib.Path, tuple[int, ...]]:
    """The synthetic data set of issue 19 on IFUs 1-2 (made once): two nights, two
    targets with three dithered exposures each (SYNTH_A in WFM-NOAO, SYNTH_B in
    WFM-AO), each night's calibrations, standards, a HAWK-I file and a corrupt flat
    (:func:`synthetic.write_dataset`). Reduced, it is one graph of both targets: each
    night's masters, per exposure muse_scibasic and muse_scipost, per target
    muse_exp_align and muse_exp_combine (issue 20 part 5)."""
    from cpldask.instruments.muse import synthetic

    ifus = (1, 2)
    raw = ctx.data_dir / "targets-2ifu"
    stamp = raw / ".bench-targets.json"
    want = {"ifus": list(ifus), "seed": 0, "synthetic": synthetic.VERSION}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):
        log(f"writing the synthetic data set of IFUs {ifus} to {raw} (once)")
        synthetic.write_dataset(raw, ifus=ifus, seed=0, lingain=False, processes=2)
        stamp.write_text(json.dumps(want))
    return raw, ifus


def run(ctx: common.Context) -> dict:
    if ctx.quick and not ctx.cascade and "cascade.ifus" not in ctx.options:
        raise NotImplementedError("the cascade is left out of --quick (add --cascade)")
    from cpldask import workflow as red_mod

    counts = ctx.pick("cascade.ifus", [2], [2, 4])
    reps = int(ctx.options.get("cascade.reps", ctx.reps or 1))
    variants = ctx.pick("cascade.variants",
                        ["cpldask", "python-cpl threaded", "python-cpl serial"],
                        ["cpldask", "cpldask 1 worker", "python-cpl threaded",
                         "python-cpl serial"])
    if "python-cpl serial" not in variants:  # it gives the step times of the lower bound
        variants.append("python-cpl serial")
    rows, extra, notes = [], {"steps": {}, "critical_path": {}}, []
    # --set cascade.data=targets: the two-target data set instead (2 IFUs)
    data = ctx.options.get("cascade.data", "exposure")
    if data not in ("exposure", "targets"):
        raise ValueError(f"cascade.data={data!r}: 'exposure' or 'targets'")
    if data == "targets":
        counts = [2]
    for k in counts:
        raw, ifus = exposure(ctx, k) if data == "exposure" else targets(ctx)
        what = f"{k} IFUs" if data == "exposure" else "2 targets x 3 exposures, 2 IFUs"
        walls: dict[str, list] = {}
        peaks: dict[str, list] = {}
        bounds = []
        for rep in range(reps):
            base = ctx.scratch(f"cascade-{k}-{rep}")
            plan = red_mod.reduce(raw, ifus=ifus, output_dir=base / "plan", dry_run=True)
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for name in order:
                log(f"cascade {what} rep {rep + 1}/{reps}: {name} ({len(plan.steps)} calls)")
                # the whole process tree's memory (workers and recipe processes), every
                # 0.5 s: recipes hold their peak for seconds
                with PeakRSS(0.5, tree=True) as memory:
                    wall = run_variant(ctx, name, raw, ifus, plan, base, k, rep, extra, bounds)
                walls.setdefault(name, []).append(wall)
                peaks.setdefault(name, []).append(memory.peak / 2**30)
                log(f"cascade {what} rep {rep + 1}/{reps}: {name} {wall:.1f} s, "
                    f"peak memory {memory.peak / 2**30:.1f} GiB")
        walls["lower bound"] = bounds
        rows.append(row(f"{what} ({len(plan.steps)} calls): wall", "s", walls,
                        ratio_of=("cpldask", "python-cpl serial")))
        lb = median(bounds)
        rows.append(row(f"{what}: wall / lower bound", "",
                        {n: [w / lb for w in ws] for n, ws in walls.items()
                         if n != "lower bound"},
                        ratio_of=("cpldask", "python-cpl threaded")))
        own = {n: [w / extra["own_bound"][f"{k}-{n}-{i}"] for i, w in enumerate(ws)]
               for n, ws in walls.items() if n.startswith("cpldask")}
        ours = median(own["cpldask"]) if own.get("cpldask") else None
        rows.append(row(f"{what}: wall / the bound of its own step times", "", own,
                        target="cpldask <= 1.2 (issue 20.5)",
                        met=None if ours is None else ours <= 1.2))
        rows.append(row(f"{what}: peak memory of the process tree", "GiB", peaks,
                        ratio_of=("cpldask", "python-cpl serial")))
        mine = [v for key, v in extra["critical_path"].items() if key.startswith(f"{k}-")]
        notes.append(f"{what}: critical path {median([v['critical_path_s'] for v in mine]):.0f}"
                     f" s, work / {SLOTS} cores "
                     f"{median([v['total_s'] for v in mine]) / SLOTS:.0f} s (serial step times)")
        sums = {n: median([sum(e - b for b, e in spans.values())
                           for key, spans in extra["steps"].items()
                           if key.startswith(f"{k}-{n}-")]) for n in walls
                if n.startswith("cpldask")}
        serial_sum = median([v["total_s"] for v in mine])
        for n, total in sums.items():
            notes.append(f"{what}: {n}: call durations sum to {total:.0f} s, "
                         f"{total / serial_sum:.2f}x the serial run's {serial_sum:.0f} s "
                         f"(one OpenMP thread each)")
    return common.result("cascade", {"ifus": counts, "reps": reps, "slots": SLOTS}, rows,
                         notes=notes, extra=extra)


def run_variant(ctx: common.Context, name: str, raw, ifus, plan, base: pathlib.Path,
                k: int, rep: int, extra: dict, bounds: list) -> float:
    """Run one variant of the cascade; return its wall (s). Step times go to ``extra``,
    the serial run's lower bound to ``bounds``."""
    from cpldask import workflow as red_mod

    if name.startswith("cpldask"):
        import dask

        workers = 1 if name == "cpldask 1 worker" else None
        omp = 2 if name == "cpldask 2 OpenMP threads" else "auto"
        with ctx.cluster(SLOTS, n_workers=workers), \
                dask.config.set({"cpldask.omp-num-threads": omp}):
            red = red_mod.reduce(raw, ifus=ifus, output_dir=base / name.replace(" ", "-"),
                                 dry_run=True)
            t0 = time.perf_counter()
            red.submit().wait()
            wall = time.perf_counter() - t0
            spans = {r["step"]: [round(r["start"], 2), round(r["end"], 2)]
                     for r in red.rows() if r["start"] is not None}
            extra["steps"][f"{k}-{name}-{rep}"] = spans
            extra.setdefault("own_bound", {})[f"{k}-{name}-{rep}"] = own_bound(red, spans)
        return wall
    if name == "python-cpl threaded":
        t0 = time.perf_counter()
        run_threaded(plan, base / "python-cpl-threaded", SLOTS)
        return time.perf_counter() - t0
    times = run_sequential(plan, base / "python-cpl-serial")
    wall = times.pop("total")
    cp = critical_path(plan, times)
    bound = max(cp, sum(times.values()) / SLOTS)
    bounds.append(bound)
    extra["steps"][f"{k}-serial-{rep}"] = {s: round(t, 2) for s, t in times.items()}
    extra["critical_path"][f"{k}-{rep}"] = {
        "critical_path_s": cp, "total_s": sum(times.values()), "lower_bound_s": bound}
    return wall


def own_bound(plan, spans: dict[str, list[float]]) -> float:
    """The lower bound of a run from the durations its own calls had (start/end by
    label): on a busy machine the serial run's step times, taken at another moment,
    are a bound of another load."""
    times = {s.label: 0.0 for s in plan.steps}  # a call served from elsewhere: none
    times.update({label: end - start for label, (start, end) in spans.items()})
    return max(critical_path(plan, times), sum(times.values()) / SLOTS)


def critical_path(plan, times: dict[str, float]) -> float:
    """Longest path through the plan's graph, each call weighted by its duration."""
    finish: dict[int, float] = {}
    for step in plan.steps:  # topological order
        start = max((finish[id(d)] for d in step.deps), default=0.0)
        finish[id(step)] = start + times[step.label]
    return max(finish.values(), default=0.0)


def run_sequential(reduction: Reduction, output_dir: str | os.PathLike) -> dict[str, float]:
    """Run the steps of ``reduction`` one after another in this process with
    python-cpl (as a script without cpldask would), products under ``output_dir``.

    Returns the wall time of each step by label, and ``'total'``.
    """
    import cpl

    from cpldask import Recipe
    from cpldask.workflow import Step

    cpl.Recipe.path = Recipe.search_path()
    base = pathlib.Path(output_dir).expanduser().absolute()
    products: dict[int, dict[str, list[str]]] = {}
    times: dict[str, float] = {}
    t_all = time.monotonic()
    for step in reduction.steps:
        def resolve(values, tag):
            out = []
            for v in values:
                if isinstance(v, Step):
                    out += products[id(v)].get(tag, [])
                else:
                    out.append(v)
            return out

        recipe = cpl.Recipe(step.recipe)
        raw = {tag: resolve(v, tag) for tag, v in step.raw.items()}
        calib = {tag: resolve(v, tag) for tag, v in step.calib.items()}
        where = base / pathlib.Path(step.output_dir).relative_to(reduction.output_dir)
        where.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        res = recipe(raw, tag=next(iter(raw)), param=dict(step.param), calib=calib,
                     output_dir=str(where))
        times[step.label] = time.monotonic() - t0
        got: dict[str, list[str]] = {}
        for tag, value in res:
            got[tag] = list(value) if isinstance(value, list) else [value]
        products[id(step)] = got
        log(f"{step.label} {times[step.label]:.1f} s")
    times["total"] = time.monotonic() - t_all
    return times


def run_threaded(plan, output_dir: pathlib.Path, maxthreads: int) -> None:
    """The plan as a hand-written python-cpl script would run it: each call started
    with ``threaded=True`` in the plan's order, after reading the products of its
    inputs (which waits for the calls that make them), at most ``maxthreads`` recipes
    at once (``cpl.Recipe.set_maxthreads``)."""
    import cpl

    from cpldask.workflow import Step

    cpl.Recipe.set_maxthreads(maxthreads)
    recipes: dict[str, cpl.Recipe] = {}
    running: dict[int, object] = {}

    def resolve(values, tag):
        out = []
        for v in values:
            if isinstance(v, Step):
                res = running[id(v)]
                if tag in res:  # waits for that call
                    got = res[tag]
                    out += got if isinstance(got, list) else [got]
            else:
                out.append(v)
        return out

    for step in plan.steps:
        if step.recipe not in recipes:
            recipes[step.recipe] = cpl.Recipe(step.recipe)
        where = output_dir / pathlib.Path(step.output_dir).relative_to(plan.output_dir)
        where.mkdir(parents=True, exist_ok=True)
        raw = {tag: resolve(v, tag) for tag, v in step.raw.items()}
        calib = {tag: resolve(v, tag) for tag, v in step.calib.items()}
        raw = {t: v for t, v in raw.items() if v}
        calib = {t: v for t, v in calib.items() if v}
        running[id(step)] = recipes[step.recipe](
            raw, tag=next(iter(raw)), param=dict(step.param), calib=calib,
            env=dict(getattr(step, "env", None) or {}), output_dir=str(where),
            threaded=True)
    for res in running.values():
        res.tags  # waits; raises a recipe's error
