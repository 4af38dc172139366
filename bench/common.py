"""Shared machinery of the benchmarks: the context, clusters, CPU and memory probes,
statistics and the summary rows.

Every benchmark module has ``run(ctx) -> dict`` (see :func:`result`). The driver
(``run.py``) is the only process that runs python-cpl baselines; cpldask runs on its
embedded LocalCluster, started fresh by :meth:`Context.cluster` for each configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import statistics
import sys
import threading
import time
from typing import Any

import psutil

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
MUSE_PLUGINS = "/usr/lib/x86_64-linux-gnu/cpl/plugins"


# ---------------------------------------------------------------------------------
# Context
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Context:
    quick: bool
    tmp: pathlib.Path  # scratch space of this run (removed at the end)
    data_dir: pathlib.Path  # synthetic inputs kept between runs
    reps: int | None = None  # --reps: overrides every benchmark's default
    cascade: bool = False  # --cascade: run the cascade in --quick mode too
    options: dict = dataclasses.field(default_factory=dict)  # --set name=value
    _recipe_dir: pathlib.Path | None = None
    _tiny: pathlib.Path | None = None
    _bias: list[str] | None = None

    # -- sizes ----------------------------------------------------------------------
    def pick(self, name: str, quick, full):
        """A size of a benchmark: ``--set name=value`` wins, else quick or full."""
        if name in self.options:
            value = self.options[name]
            kind = type(full if full is not None else quick)
            if kind is list:
                default = full if full is not None else quick
                elem = type(default[0]) if default else str
                return [elem(v) for v in str(value).split(",")]
            return kind(value) if kind in (int, float) else value
        return quick if self.quick else full

    def repetitions(self, quick: int, full: int) -> int:
        return self.reps if self.reps is not None else (quick if self.quick else full)

    def scratch(self, name: str) -> pathlib.Path:
        d = self.tmp / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d

    # -- inputs ------------------------------------------------------------------------
    @property
    def recipe_dir(self) -> pathlib.Path:
        """Directory of the compiled C test recipe ``cpldask_test``."""
        if self._recipe_dir is None:
            sys.path.insert(0, str(ROOT / "tests" / "testrecipe"))
            from build import build  # noqa: E402  (tests/testrecipe/build.py)

            self._recipe_dir = self.data_dir / "testrecipe"
            build(self._recipe_dir)
        return self._recipe_dir

    @property
    def tiny_fits(self) -> str:
        """A tiny FITS file: the raw input of the test recipe (it reads nothing)."""
        if self._tiny is None:
            import numpy as np
            from astropy.io import fits

            path = self.data_dir / "tiny.fits"
            if not path.exists():
                fits.PrimaryHDU(np.zeros((4, 4), dtype="f4")).writeto(path)
            self._tiny = path
        return str(self._tiny)

    @property
    def bias_files(self) -> list[str]:
        """Three synthetic raw BIAS frames of IFU 1 (made once, kept in data_dir)."""
        if self._bias is None:
            from cpldask.instruments.muse import synthetic

            d = self.data_dir / "bias"
            files = sorted(d.glob("BIAS_*.fits")) if d.is_dir() else []
            if len(files) != 3:
                log("writing 3 synthetic BIAS frames (IFU 1) to", d)
                d.mkdir(parents=True, exist_ok=True)
                files = synthetic.write_bias(d, n=3, ifus=(1,), seed=11)
            self._bias = [str(f) for f in files]
        return self._bias

    @property
    def search_path(self) -> list[str]:
        return [MUSE_PLUGINS, str(self.recipe_dir)]

    # -- clusters ----------------------------------------------------------------------
    @contextlib.contextmanager
    def cluster(self, slots: int, n_workers: int | None = None):
        """A fresh embedded cpldask cluster with ``slots`` recipe slots (and
        ``set_maxthreads(slots)``, as a python-cpl user would call it); closed after."""
        import dask
        import cpldask

        cpldask.close()
        work = self.scratch(f"work-{slots}")
        with dask.config.set({"cpldask.local.slots": slots,
                              "cpldask.local.n-workers": n_workers or min(2, slots),
                              "cpldask.work-dir": str(work)}):
            client = cpldask.get_client()
            cpldask.Recipe.set_maxthreads(slots)
            try:
                yield client
            finally:
                cpldask.close()
                shutil.rmtree(work, ignore_errors=True)


def configure(ctx: Context) -> None:
    """Settings every benchmark runs under (in this process; workers inherit them)."""
    import dask
    import cpl
    import cpldask

    dask.config.set({
        # the product cache would serve repeated identical calls without running them
        "cpldask.cache.enabled": False,
        "cpldask.cache.dir": str(ctx.tmp / "cache"),
        "cpldask.work-dir": str(ctx.tmp / "work"),
        # other dashboards may hold :8787; a random port avoids the warning
        "cpldask.local.dashboard-address": "127.0.0.1:0",
        # gdb backtraces only matter for crashes, which a benchmark has none of
        "cpldask.backtrace": False,
    })
    cpldask.Recipe.path = ctx.search_path
    cpl.Recipe.path = ctx.search_path


def pcpl_recipe(ctx: Context, name: str, tmp: pathlib.Path, threaded: bool = False):
    """A python-cpl recipe whose temporary directories go to ``tmp``."""
    import cpl

    cpl.Recipe.path = ctx.search_path  # cpldask.Recipe(...) sets it too, under its lock
    r = cpl.Recipe(name, threaded=threaded)
    r.temp_dir = str(tmp)
    return r


# ---------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------
def cpu_tree() -> float:
    """CPU seconds (user + system) of this process and all its descendants, the
    children they have reaped included (python-cpl's recipe forks, cpldask's recipe
    processes, the LocalCluster's nannies and workers)."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def children_cpu() -> float:
    """CPU seconds of the children this process has reaped (python-cpl's recipes)."""
    t = os.times()
    return t.children_user + t.children_system


def rss() -> int:
    return psutil.Process().memory_info().rss


def pss_tree() -> int:
    """Memory of this process and all its descendants: the sum of their proportional
    set sizes (a page shared by k processes counts 1/k in each: forked recipe
    processes share the libraries and their parent's pages, which an RSS sum would
    count once per process)."""
    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total


class PeakRSS:
    """Samples this process's RSS every ``interval`` seconds while in the block;
    with ``tree``, the memory of its whole process tree (`pss_tree`: workers and
    recipe processes included)."""

    def __init__(self, interval: float = 0.02, *, tree: bool = False):
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()
        self._measure = pss_tree if tree else rss

    def __enter__(self):
        self.start = self.peak = self._measure()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._measure())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._measure())
        self.end = self._measure()


class Timer:
    """Wall clock (``wall``) and process-tree CPU (``cpu``) of a block."""

    def __enter__(self):
        self.cpu0 = cpu_tree()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = cpu_tree() - self.cpu0


# ---------------------------------------------------------------------------------
# Statistics and result rows
# ---------------------------------------------------------------------------------
def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values) -> list[float] | None:
    """(min, max) of the repetitions, for the table's ± column."""
    values = [v for v in values if v is not None]
    return [min(values), max(values)] if values else None


def ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def row(metric: str, unit: str, values: dict[str, list], *, ratio_of: tuple[str, str] | None = None,
        target: str | None = None, met: bool | None = None, note: str | None = None) -> dict:
    """One line of the summary: the median of each variant's repetitions, the ratio
    ``ratio_of[0] / ratio_of[1]`` of the medians, and whether the target was met."""
    med = {k: median(v) for k, v in values.items()}
    out = {"metric": metric, "unit": unit, "median": med,
           "range": {k: spread(v) for k, v in values.items()},
           "reps": {k: list(v) for k, v in values.items()}}
    if ratio_of is not None:
        out["ratio_of"] = list(ratio_of)
        out["ratio"] = ratio(med.get(ratio_of[0]), med.get(ratio_of[1]))
    if target is not None:
        out["target"] = target
        out["met"] = met
    if note:
        out["note"] = note
    return out


def result(name: str, params: dict, rows: list[dict], *, notes: list[str] | None = None,
           extra: dict | None = None) -> dict:
    return {"name": name, "params": params, "rows": rows, "notes": notes or [],
            **(extra or {})}


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    import subprocess

    import cpl
    import dask
    import distributed

    import cpldask

    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    cores = len(os.sched_getaffinity(0))
    where = pathlib.Path(cpldask.__file__).resolve().parent
    in_repo = where.is_relative_to(ROOT)  # else e.g. PYTHONPATH=<git archive of a commit>
    return {
        "python": sys.version.split()[0], "cores": cores,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "loadavg_start": os.getloadavg(),
        "cpldask": cpldask.__version__, "cpldask_path": str(where),
        "git_commit": git("rev-parse", "--short", "HEAD") if in_repo else f"external {where}",
        "git_dirty": bool(git("status", "--porcelain", "--", "cpldask")) if in_repo else False,
        "python_cpl": cpl.__version__, "dask": dask.__version__,
        "distributed": distributed.__version__,
        "cpl_version": _cpl_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        # 1: Linux shares the CPU fairly between sessions. cpldask's recipe processes
        # each lead a session of their own, python-cpl's run in the driver's: on a
        # machine busy with other sessions cpldask's recipes then get more CPU.
        "sched_autogroup": _read("/proc/sys/kernel/sched_autogroup_enabled"),
    }


def _read(path: str) -> str | None:
    with contextlib.suppress(OSError):
        return pathlib.Path(path).read_text().strip()
    return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def _cpl_version() -> str:
    import cpl

    with contextlib.suppress(Exception):
        cpl.Recipe.path = [MUSE_PLUGINS]
        return cpl.Recipe("muse_bias").cpl_version
    return ""
