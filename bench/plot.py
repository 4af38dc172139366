"""Plot a benchmark run: ``python bench/plot.py [RESULTS.json ...] [-o docs/benchmarks.png]``.

Without a file, the newest ``bench/results/*.json`` is used. With several, their
benchmarks are merged (a later file's benchmark replaces an earlier one's; the title
names the first run). One panel per benchmark; bars are medians, whiskers the range
of the repetitions.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
COLORS = {"cpldask": "#1f77b4", "cpldask 1 worker": "#17becf", "python-cpl threaded": "#ff7f0e",
          "python-cpl serial": "#7f7f7f", "python-cpl": "#ff7f0e", "lower bound": "#2ca02c"}


def _find(res: dict, prefix: str) -> dict | None:
    for r in res.get("rows", []):
        if r["metric"].startswith(prefix):
            return r
    return None


def _bars(ax, r: dict, keys=None, fmt="{:.3g}", ylabel=None):
    keys = [k for k in (keys or r["median"]) if r["median"].get(k) is not None]
    meds = [r["median"][k] for k in keys]
    lo = [m - (r["range"][k] or [m, m])[0] for k, m in zip(keys, meds)]
    hi = [(r["range"][k] or [m, m])[1] - m for k, m in zip(keys, meds)]
    x = range(len(keys))
    ax.bar(x, meds, yerr=[lo, hi], capsize=3, color=[COLORS.get(k, "#9467bd") for k in keys])
    ax.set_xticks(list(x), [k.replace("python-cpl ", "python-cpl\n") for k in keys], fontsize=8)
    for xi, m in zip(x, meds):
        ax.annotate(fmt.format(m), (xi, m), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    if ylabel:
        ax.set_ylabel(ylabel)


def _missing(ax, title, res):
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    why = "not run" if res is None else "; ".join(res.get("notes", [])) or "no figures"
    ax.text(0.5, 0.5, why[:120], ha="center", va="center", wrap=True, fontsize=8)


def plot(report: dict, out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = report["benchmarks"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    (a1, a2, a3), (a4, a5, a6) = axes

    res = b.get("overhead")
    r = res and _find(res, "throughput")
    if r:
        _bars(a1, r, ylabel="calls/s")
        pc = _find(res, "per-call cost")["median"]
        a1.set_title(f"1. no-op calls, 2 slots ({res['params']['calls']} calls)\n"
                     + ", ".join(f"{k.replace('python-cpl', 'pcpl')}: {v:.0f} ms"
                                 for k, v in pc.items()) + " per call", fontsize=9)
    else:
        _missing(a1, "1. overhead", res)

    res = b.get("muse_bias")
    r = res and _find(res, "wall of")
    if r:
        _bars(a2, r, ylabel="wall [s]", fmt="{:.1f}")
        eff = _find(res, "parallel efficiency")["median"]
        a2.set_title(f"2. {res['params']['runs']} muse_bias runs, 2 slots\nefficiency "
                     + ", ".join(f"{k.replace('python-cpl', 'pcpl')} {v:.2f}"
                                 for k, v in eff.items()), fontsize=9)
    else:
        _missing(a2, "2. muse_bias", res)

    res = b.get("memory")
    r = res and _find(res, "client RSS growth per product")
    if r:
        p = res["params"]
        total = _find(res, "client RSS growth,")
        data = {"cpldask": total["median"]["cpldask"],
                "python-cpl": r["median"]["python-cpl"] * p["products"]}
        a3.bar([0, 1], list(data.values()), color=[COLORS["cpldask"], COLORS["python-cpl"]],
               hatch=["", "//"])
        a3.set_xticks([0, 1], ["cpldask", f"python-cpl\n(extrapolated\nfrom {p['pcpl_products']})"],
                      fontsize=8)
        for xi, m in enumerate(data.values()):
            a3.annotate(f"{m:.0f} MB", (xi, m), ha="center", va="bottom", fontsize=8)
        gb = _find(res, "products flowing")["median"]["cpldask"]
        a3.set_ylabel("client RSS growth [MB]")
        a3.set_title(f"3. client memory: {p['products']} products, {gb:.1f} GB flowing",
                     fontsize=9)
        a3.axhline(100, color="red", lw=0.8, ls="--")
    else:
        _missing(a3, "3. memory", res)

    res = b.get("scale")
    if res and res.get("sleep_walls"):
        ideal = res["sleep_ideal"]
        slots = sorted(int(n) for n in res["sleep_walls"])
        for name in ("cpldask", "python-cpl threaded"):
            ys = [res["sleep_walls"][str(n) if str(n) in res["sleep_walls"] else n][name] / ideal
                  for n in slots]
            a4.plot(slots, ys, "o-", color=COLORS[name], label=name)
        a4.axhline(1.0, color="green", lw=0.8, label="ideal")
        a4.axhline(1.1, color="red", lw=0.8, ls="--", label="target (ideal + 10 %)")
        a4.set_xscale("log", base=2)
        a4.set_xticks(slots, [str(s) for s in slots])
        a4.set_xlabel("slots")
        a4.set_ylabel("wall / ideal")
        q = _find(res, "submit ")
        sub = q["median"]["cpldask"] if q else None
        p = res["params"]
        a4.set_title(f"4. sleep {p['sleep']:g} s x {p['waves']} waves per slot; "
                     f"{p['queued']} queued calls\nsubmitted in {sub:.1f} s", fontsize=9)
        a4.legend(fontsize=7)
    else:
        _missing(a4, "4. scale", res)

    res = b.get("cascade")
    if res and res.get("rows"):
        walls = [r for r in res["rows"] if r["metric"].endswith(": wall")]
        names = [n for n in ("cpldask", "cpldask 1 worker", "python-cpl threaded",
                             "python-cpl serial", "lower bound")
                 if any(r["median"].get(n) is not None for r in walls)]
        w = 0.8 / len(names)
        for i, r in enumerate(walls):
            for j, name in enumerate(names):
                m = r["median"].get(name)
                if m is None:
                    continue
                x = i + (j - (len(names) - 1) / 2) * w
                a5.bar(x, m, w, color=COLORS[name], label=name if i == 0 else None)
                a5.annotate(f"{m:.0f}", (x, m), ha="center", va="bottom", fontsize=7)
        a5.set_xticks(range(len(walls)), [r["metric"].split(":")[0] for r in walls], fontsize=8)
        a5.set_ylabel("wall [s]")
        a5.set_title("5. the cascade, end to end on 2 cores", fontsize=9)
        a5.legend(fontsize=7)
    else:
        _missing(a5, "5. cascade", res)

    res = b.get("coldstart")
    if res and res.get("rows"):
        phases = [r for r in res["rows"] if r["metric"].startswith("  phase:")]
        variants = ["cpldask", "python-cpl"]
        bottom = [0.0, 0.0]
        for r in phases:
            vals = [r["median"].get(v) or 0.0 for v in variants]
            a6.bar([0, 1], vals, bottom=bottom, label=r["metric"].split(":")[1].strip())
            bottom = [b0 + v for b0, v in zip(bottom, vals)]
        for xi, tot in enumerate(bottom):
            a6.annotate(f"{tot:.1f} s", (xi, tot), ha="center", va="bottom", fontsize=8)
        a6.set_xticks([0, 1], variants)
        a6.set_ylabel("seconds from process start")
        a6.set_title("6. cold start: process start to first result", fontsize=9)
        a6.legend(fontsize=7)
    else:
        _missing(a6, "6. cold start", res)

    env = report["environment"]
    runs = report.get("merged") or [f"{report['started']}, cpldask {env['git_commit']}"
                                     f"{'+dirty' if env['git_dirty'] else ''}"]
    fig.suptitle(f"cpldask benchmarks — {env['cores']} cores, load {env['loadavg_start'][0]:.1f} "
                 f"at start{' (quick)' if report['quick'] else ''}\n"
                 + "\n".join(runs)
                 + ("\nmachine busy with other work: walls are not quiet-machine figures"
                    # (the benchmark itself keeps the load near the core count)
                    if env["loadavg_start"][0] > env["cores"] else ""),
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=pathlib.Path)
    parser.add_argument("-o", "--out", type=pathlib.Path,
                        default=HERE.parent / "docs" / "benchmarks.png")
    args = parser.parse_args(argv)
    paths = args.results
    if not paths:
        found = sorted((HERE / "results").glob("*.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            print("no bench/results/*.json: run bench/run.py first", file=sys.stderr)
            return 1
        paths = [found[-1]]
    report = json.loads(paths[0].read_text())
    if len(paths) > 1:  # name every run and the benchmarks it gave
        report["merged"] = []
        for path in paths:
            run = json.loads(path.read_text())
            report["benchmarks"].update(run["benchmarks"])
            report["merged"].append(f"{run['started'][:16]} {run['environment']['git_commit']}"
                                    f" ({', '.join(run['benchmarks'])})")
    print(plot(report, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
