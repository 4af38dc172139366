"""Benchmark 2: real recipes — ``muse_bias`` runs (nifu=1, 3 synthetic frames) on 2 slots.

Three ways, interleaved by repetition: cpldask background calls on an embedded cluster
with 2 slots; python-cpl ``threaded=True`` with ``set_maxthreads(2)``; python-cpl
serial. Every run writes its MASTER_BIAS into an ``output_dir`` of its own (python-cpl
then returns file names instead of reading 200 MB back into memory, and cpldask installs
the product there), so all three do the same work: the recipe and its files.

Parallel efficiency = (sum of serial CPU seconds) / (cores x wall), where the serial CPU
seconds are those of the recipe processes of the python-cpl serial run (the work
itself) and cores = 2 = slots. It is the product of two rows also printed: how busy the
variant kept the cores (its process tree's CPU / (cores x wall)), and how much CPU the
same work took when two recipes ran at once (serial CPU / the variant's CPU). Every
recipe runs with one OpenMP thread (run.py sets OMP_NUM_THREADS=1 for python-cpl;
cpldask gives cores // slots = 1).
"""

from __future__ import annotations

import shutil

import common
from common import Timer, children_cpu, log, median, row

SLOTS = 2
#: each variant's directory under the scratch directory
DIRS = {"cpldask": "cpldask", "python-cpl threaded": "threaded", "python-cpl serial": "serial"}


def run(ctx: common.Context) -> dict:
    import cpl
    import distributed

    import cpldask

    n = ctx.pick("muse_bias.runs", 2, 8)
    reps = ctx.repetitions(1, 3)
    bias = ctx.bias_files
    tmp = ctx.scratch("muse_bias")
    values: dict[str, dict[str, list]] = {}

    def record(variant, metric, value):
        values.setdefault(metric, {}).setdefault(variant, []).append(value)

    with ctx.cluster(SLOTS):
        dask_recipe = cpldask.Recipe("muse_bias", threaded=True)
        dask_recipe.param.nifu = 1
        serial = common.pcpl_recipe(ctx, "muse_bias", tmp)
        serial.param.nifu = 1
        threaded = common.pcpl_recipe(ctx, "muse_bias", tmp, threaded=True)
        threaded.param.nifu = 1
        cpl.Recipe.set_maxthreads(SLOTS)
        # start the workers' recipe machinery outside the timed part
        cpldask.Recipe("cpldask_test")(ctx.tiny_fits, cache=False)

        def rep_dir(variant, rep):
            return tmp / DIRS[variant] / f"rep{rep}"

        def dirs(variant, rep):
            out = [rep_dir(variant, rep) / f"run{i}" for i in range(n)]
            for d in out:
                d.mkdir(parents=True)
            return out

        def run_cpldask(rep):
            results = [dask_recipe(bias, output_dir=d, cache=False)
                       for d in dirs("cpldask", rep)]
            distributed.wait([r.future for r in results])
            for r in results:
                r.MASTER_BIAS  # raises the recipe's error, if any

        def run_threaded(rep):
            results = [threaded(bias, output_dir=str(d))
                       for d in dirs("python-cpl threaded", rep)]
            for r in results:
                r.MASTER_BIAS

        def run_serial(rep):
            for d in dirs("python-cpl serial", rep):
                serial(bias, output_dir=str(d)).MASTER_BIAS

        variants = [("cpldask", run_cpldask), ("python-cpl threaded", run_threaded),
                    ("python-cpl serial", run_serial)]
        for rep in range(reps):
            order = variants[rep % 3:] + variants[:rep % 3]
            for name, fn in order:
                c0 = children_cpu()
                with Timer() as t:
                    fn(rep)
                record(name, "wall", t.wall)
                record(name, "cpu", t.cpu)
                if name == "python-cpl serial":
                    record(name, "recipe cpu", children_cpu() - c0)
                log(f"muse_bias rep {rep + 1}/{reps} {name}: {n} runs in {t.wall:.1f} s, "
                    f"CPU {t.cpu:.1f} s")
                # every run starts with the same disk state: otherwise a later run pays
                # the write-back of the 1.6 GB of products each earlier one left dirty
                # (deleting a file drops its unwritten pages)
                shutil.rmtree(rep_dir(name, rep))

    serial_cpu = median(values["recipe cpu"]["python-cpl serial"])
    cores = SLOTS
    eff = {k: [serial_cpu / (cores * w) for w in v] for k, v in values["wall"].items()
           if k != "python-cpl serial"}
    wall = values["wall"]
    ratio_wall = median(wall["cpldask"]) / median(wall["python-cpl threaded"])
    rows = [
        row(f"wall of {n} muse_bias runs, 2 slots", "s", wall,
            ratio_of=("cpldask", "python-cpl threaded"), target="<= 1.02x python-cpl threaded",
            met=ratio_wall <= 1.02),
        row("parallel efficiency (serial CPU / (cores x wall))", "", eff,
            ratio_of=("cpldask", "python-cpl threaded"), target=">= 0.95",
            met=median(eff["cpldask"]) >= 0.95),
        row("CPU of the whole process tree", "s", values["cpu"],
            ratio_of=("cpldask", "python-cpl serial")),
        # efficiency = cores busy x (serial CPU / CPU in parallel): what the tool keeps
        # idle, and how much the recipes slow each other down on shared cores
        row("cores busy (process-tree CPU / (cores x wall))", "", {
            k: [c / (cores * w) for c, w in zip(values["cpu"][k], values["wall"][k])]
            for k in eff}, ratio_of=("cpldask", "python-cpl threaded")),
        row("serial recipe CPU / process-tree CPU in parallel", "", {
            k: [serial_cpu / c for c in values["cpu"][k]] for k in eff},
            ratio_of=("cpldask", "python-cpl threaded")),
    ]
    return common.result(
        "muse_bias", {"runs": n, "frames": len(bias), "slots": SLOTS, "reps": reps,
                      "serial_recipe_cpu_s": serial_cpu}, rows,
        notes=[f"sum of serial recipe CPU seconds (median): {serial_cpu:.1f} s for {n} runs"])
