"""The recipe process: ``python .../cpldask/_runner.py JOB.json`` runs one recipe call.

A worker starts one of these per call (see :mod:`cpldask._execute`), for three reasons:

* the environment, notably ``OMP_NUM_THREADS``, must be set *before* the recipe
  library (and its OpenMP runtime) is loaded — python-cpl's per-call ``env`` is too
  late for OpenMP;
* the process and the recipe child python-cpl forks from it share a fresh process
  group, so a cancel, a time-out or the death of the worker kills all of it and no
  recipe is left behind as an orphan;
* a memory limit (``RLIMIT_AS``) applies to this process and the recipe only.

The worker holds the write end of our stdin: when it dies, stdin reaches EOF and a
watchdog thread kills the process group. The outcome goes to ``report.json`` beside
the job file, written atomically; stdout and stderr go to a file the worker keeps for
diagnostics. Nothing here imports cpldask at all: the worker starts this file by its
path, so a recipe process loads python-cpl and nothing else.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import signal
import sys
import threading
import time


LOG = ".cpldask-runner.log"


def _watch_parent() -> None:
    """Kill our process group when the worker that started us goes away."""
    try:
        sys.stdin.buffer.read()
    finally:
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _log_entries(log) -> list:
    return [(r.name, r.levelno, r.funcName, str(r.msg), r.created) for r in log or ()]


def run(job: dict) -> dict:
    """Run the call described by ``job`` with python-cpl and describe its outcome."""
    import cpl  # loads astropy: after the rlimit, so the limit covers it too

    cpl.Recipe.path = job["recipe_path"]
    recipe = cpl.Recipe(job["recipe"], version=job["version"])
    raw = {}
    for tag, paths in job["raw"]:
        raw.setdefault(tag, []).extend(paths)
    start = time.time()
    report = {"recipe": job["recipe"], "start": start}
    try:
        res = recipe(raw, param=dict(job["params"]), calib=dict(job["calib"]),
                     output_dir=job["call_dir"], tag=job["tag"])
    except cpl.CplError as err:
        errors = [(e.code, e.msg, e.file, e.line, e.function) for e in err
                  if e.code is not None]
        report.update(kind="CplError", retval=err.retval, errors=errors,
                      log=_log_entries(err.log))
    except cpl.RecipeCrash as err:
        report.update(kind="RecipeCrash", backtrace=list(err.lines), signal=err.signal)
    except OSError as err:
        if str(err) != "Recipe crashed":
            raise
        # python-cpl's answer when the recipe child died without its crash handler:
        # only SIGKILL (the OOM killer, a kill -9) gets past that handler.
        report.update(kind="RecipeCrash", backtrace=[], signal=int(signal.SIGKILL))
    else:
        products = []
        for tag, value in res:
            for path in value if isinstance(value, list) else [value]:
                products.append((tag, os.path.basename(path)))
        report.update(kind="ok", products=products, log=_log_entries(res.log),
                      stat={"return_code": res.stat.return_code,
                            "user_time": res.stat.user_time,
                            "sys_time": res.stat.sys_time})
    report["end"] = time.time()
    # the recipe child has been reaped: its peak memory is in our children's usage
    report["max_rss"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return report


def main(argv: list[str]) -> int:
    job_file = pathlib.Path(argv[0])
    job = json.loads(job_file.read_text())
    threading.Thread(target=_watch_parent, daemon=True, name="watch-worker").start()
    if job.get("memory_limit"):
        limit = int(job["memory_limit"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        report = run(job)
    except MemoryError:
        report = {"kind": "error", "recipe": job["recipe"],
                  "message": f"out of memory under the limit of {job['memory_limit']} bytes"}
    except Exception as err:  # reported to the worker, which raises it with context
        report = {"kind": "error", "recipe": job["recipe"],
                  "message": f"{type(err).__name__}: {err}"}
    tmp = job_file.with_name("report.json.tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, job_file.with_name("report.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
