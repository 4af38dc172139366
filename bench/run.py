"""Run the cpldask benchmarks: cpldask and its python-cpl baselines in one process run.

    python bench/run.py --quick                  # CI smoke run, < 5 minutes
    python bench/run.py                          # the full run of docs/benchmarks.md
    python bench/run.py --only overhead scale    # some of them
    python bench/run.py --set scale.queued=2000  # change one size
    python bench/plot.py bench/results/<file>.json   # -> docs/benchmarks.png

Benchmarks (one module each, ``run(ctx) -> dict``): overhead, muse_bias, memory, scale,
cascade (full run, or --quick --cascade), coldstart, hashing. Each measures cpldask and its
baselines in this process (python-cpl in this driver process, cpldask on its embedded
LocalCluster), several repetitions, and reports medians and ratios. The table printed
at the end says which targets of issue 6 were met; the JSON has every repetition.
"""

from __future__ import annotations

import os
import sys

# python-cpl's recipes inherit the OpenMP settings of this process (libgomp reads
# OMP_NUM_THREADS when the first recipe library is loaded, here); cpldask gives each
# recipe cores // slots threads = 1 on 2 cores with 2 slots. One thread per recipe for
# everyone, unless the caller says otherwise, so that "2 slots" means 2 cores for all.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# shutdown chatter of the clusters started and closed for every configuration ("worker
# process still alive after 4 s") would bury the table; errors still show (--verbose:
# everything). Set before dask is imported, so the worker processes inherit it.
if "--verbose" not in sys.argv:
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
BENCHMARKS = ["overhead", "muse_bias", "memory", "scale", "cascade", "coldstart", "hashing"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, 1-2 repetitions, no cascade (CI smoke run)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    parser.add_argument("--skip", nargs="+", choices=BENCHMARKS, metavar="NAME", default=[],
                        help="leave these out")
    parser.add_argument("--cascade", action="store_true",
                        help="run the cascade benchmark in --quick mode too (2 IFUs)")
    parser.add_argument("--reps", type=int, help="repetitions of every benchmark")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a size, e.g. overhead.calls=300, scale.slots=1,2,4")
    parser.add_argument("--out", type=pathlib.Path,
                        help="JSON file (default bench/results/<timestamp>.json)")
    parser.add_argument("--data-dir", type=pathlib.Path,
                        default=pathlib.Path(tempfile.gettempdir()) / "cpldask-bench-data",
                        help="synthetic inputs, kept between runs (default: %(default)s)")
    parser.add_argument("--tmp", type=pathlib.Path, default=None,
                        help="scratch directory (default: a new one in the system temp dir)")
    parser.add_argument("--plot", action="store_true", help="also write docs/benchmarks.png")
    parser.add_argument("--label", default="",
                        help="a note stored with the results, e.g. 'before the fork server'")
    parser.add_argument("--verbose", action="store_true",
                        help="keep distributed's warnings (hidden by default)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    import common

    selected = args.only or [b for b in BENCHMARKS if b != "cascade" or not args.quick
                             or args.cascade]
    selected = [b for b in selected if b not in args.skip]
    options = dict(s.split("=", 1) for s in args.set)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="cpldask-bench-", dir=args.tmp))
    args.data_dir.mkdir(parents=True, exist_ok=True)
    ctx = common.Context(quick=args.quick, tmp=tmp, data_dir=args.data_dir.absolute(),
                         reps=args.reps, cascade=args.cascade, options=options)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or HERE / "results" / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    common.configure(ctx)
    report = {"command": " ".join(["python", "bench/run.py", *(argv if argv is not None
                                                               else sys.argv[1:])]),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick,
              "label": args.label,
              "environment": common.environment(), "benchmarks": {}}
    t_all = time.perf_counter()
    failed = []
    try:
        for name in selected:
            common.log(f"=== {name}")
            module = importlib.import_module(name)
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            try:
                res = module.run(ctx)
            except NotImplementedError as err:
                res = common.result(name, {}, [], notes=[f"not run: {err}"])
                res["skipped"] = str(err)
            except Exception as err:  # one broken benchmark must not lose the others
                traceback.print_exc()
                res = common.result(name, {}, [], notes=[f"failed: {type(err).__name__}: {err}"])
                res["error"] = f"{type(err).__name__}: {err}"
                failed.append(name)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            res["loadavg"] = {"before": load0, "after": os.getloadavg()}
            report["benchmarks"][name] = res
            out.write_text(json.dumps(report, indent=1, default=str))  # partial results too
            common.log(f"=== {name} done in {res['seconds']} s")
    finally:
        import cpldask

        cpldask.close()
        shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    report["environment"]["loadavg_end"] = os.getloadavg()
    out.write_text(json.dumps(report, indent=1, default=str))
    print(table(report))
    print(f"\nJSON: {out}")
    if args.plot:
        import plot

        print("plot:", plot.plot(report, HERE.parent / "docs" / "benchmarks.png"))
    return 1 if failed else 0


# ---------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------
def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        a = abs(v)
        return f"{v:.3g}" if a < 10 else f"{v:.0f}" if a >= 1000 else f"{v:.1f}"
    return str(v)


def table(report: dict) -> str:
    env = report["environment"]
    lines = [f"cpldask benchmarks  {report['started']}  {env['cores']} cores, "
             f"{env['cpu_model']}  load {env['loadavg_start'][0]:.1f} at start"
             f"  ({report.get('seconds', '?')} s{', quick' if report['quick'] else ''})",
             f"cpldask {env['git_commit']}{'+dirty' if env['git_dirty'] else ''}"
             f"{'  -- ' + report['label'] if report.get('label') else ''}"]
    # the benchmark itself keeps the load near the core count: more than that at the
    # start means other work was running
    busy = env["loadavg_start"][0]
    if busy > env["cores"]:
        lines.append(f"WARNING: load average {busy:.1f} at the start on {env['cores']} cores: other "
                     f"work competed for the CPU, so walls, ratios of walls and efficiencies "
                     f"are not the quiet-machine figures (CPU-time figures hold better)")
        if env.get("sched_autogroup") == "1":
            lines.append("WARNING: sched_autogroup=1: under load each cpldask recipe (a "
                         "session of its own) gets a CPU share like a whole session; "
                         "python-cpl's recipes share the driver's")
    lines.append("")
    head = f"{'benchmark':<10} {'metric':<44} {'cpldask':>9}  {'baselines':<46} {'ratio':>6}  {'target':<34} met"
    lines += [head, "-" * len(head)]
    for name, res in report["benchmarks"].items():
        if not res["rows"]:
            lines.append(f"{name:<10} {'; '.join(res['notes'])}")
            continue
        for r in res["rows"]:
            med = r["median"]
            main = next((k for k in med if k.startswith("cpldask")), None)
            base = ", ".join(f"{k} {fmt(v)}" for k, v in med.items() if k != main)
            met = {True: "yes", False: "NO", None: ""}[r.get("met")] if "target" in r else ""
            ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""
            metric = f"{r['metric']} [{r['unit']}]"
            lines.append(f"{name:<10} {metric:<44} {fmt(med.get(main)):>9}  {base:<46} "
                         f"{ratio:>6}  {r.get('target', ''):<34} {met}")
            name = ""
        for note in res["notes"]:
            lines.append(f"{'':<10}   note: {note}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
