"""The recipe process: runs one recipe call with python-cpl and reports back.

A worker starts one process per call (see :mod:`cpldask._execute`), for three reasons:

* the environment, notably ``OMP_NUM_THREADS``, must be in place *before* the recipe
  library (and its OpenMP runtime) is loaded — python-cpl's per-call ``env`` is too
  late for OpenMP; the fork server a call goes to runs under the call's OpenMP
  environment (one server per distinct one);
* the process and the recipe child python-cpl forks from it share a fresh process
  group, so a cancel, a time-out or the death of the worker kills all of it and no
  recipe is left behind as an orphan;
* a memory limit (``RLIMIT_AS``) applies to this process and the recipe only.

Recipe processes are forked from a fork server (:func:`serve`), so that a call pays
neither for a fresh interpreter and the astropy import nor for loading the recipe
library, which the server keeps loaded. The outcome
goes to ``report.json`` beside the job file, written atomically; stdout and stderr go
to a log file the worker keeps for diagnostics. Nothing here imports cpldask: the
worker starts this file by its path, so the server loads python-cpl and nothing else.
``python _runner.py JOB.json`` runs one job without the server (for debugging).
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
    recipe = _loaded.get((job["recipe"], job.get("recipe_file")))
    if recipe is not None:
        pass  # loaded by the fork server before it forked us
    elif os.path.isfile(job.get("recipe_file") or ""):
        # the client's library, where this node sees it: searching the path instead
        # opens every plugin library on it (~15-45 ms for the 27 of MUSE, per call)
        recipe = cpl.Recipe(job["recipe"], filename=job["recipe_file"])
    else:
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
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    report["max_rss"] = children.ru_maxrss * 1024
    me = resource.getrusage(resource.RUSAGE_SELF)  # this process, without the recipe
    report["cpu"] = {"runner": me.ru_utime + me.ru_stime,
                     "recipe": children.ru_utime + children.ru_stime}
    return report


def execute(job_file: pathlib.Path) -> None:
    """Run the job in ``job_file`` and write ``report.json`` beside it."""
    job = json.loads(job_file.read_text())
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


# -- the fork server -----------------------------------------------------------------
# A worker keeps one of these (``python _runner.py --serve``) per OpenMP environment:
# it has imported python-cpl and astropy and loads each recipe library on first use,
# with the OpenMP runtime reading the server's own environment, which holds the calls'
# OMP_* settings. A fork of it starts a recipe process in milliseconds. It stays
# single-threaded (it never runs a recipe itself) so that forking it is safe.
#
# Protocol, one JSON object per line. In (stdin): {"id", "job", "env", "recipe",
# "recipe_file"}. Out (stdout):
# {"id", "pid"} once the process is forked, {"id", "status"} (as os.waitpid gives it)
# once it has ended. EOF on stdin means the worker is gone: every recipe process group
# is killed. Each recipe process watches a pipe from this server and kills its own
# group when the server dies.


#: (recipe name, library file) -> python-cpl recipe, loaded in the fork server. Loading
#: a recipe library (and the CPL libraries it links) costs ~6 ms of CPU; loaded once in
#: the server, every forked recipe process has it for free. The server's environment
#: holds the call's OpenMP settings (the worker keeps one server per OpenMP
#: environment), so the OpenMP runtime that loads with the library reads the right ones.
_loaded: dict[tuple[str, str], object] = {}


def _preload(request: dict) -> None:
    """Load the request's recipe library in the server, once; a failure is left for
    the recipe process to meet and report."""
    import cpl

    key = (request.get("recipe"), request.get("recipe_file"))
    if key in _loaded or not key[1] or not os.path.isfile(key[1]):
        return
    try:
        _loaded[key] = cpl.Recipe(key[0], filename=key[1])
    except Exception:  # noqa: BLE001  (the recipe process reports it properly)
        pass


def _child(request: dict, lifeline: int, inherited: list[int]) -> None:
    """In a forked child: become a recipe process and run the job. Never returns."""
    code = 1
    try:
        for fd in inherited:  # the server's pipes: siblings' lifelines, its wake-up
            os.close(fd)
        os.setsid()  # our own process group: one killpg ends us, the recipe and gdb
        job_file = pathlib.Path(request["job"])
        out = os.open(job_file.with_name(LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.clear()
        os.environ.update(request["env"])  # before any recipe library (OpenMP) loads
        os.chdir(job_file.parent)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        threading.Thread(target=_watch_fd, args=(lifeline,), daemon=True).start()
        execute(job_file)
        code = 0
    finally:
        os._exit(code)


def _watch_fd(fd: int) -> None:
    """Kill our process group once ``fd`` reaches EOF (its writer is gone)."""
    try:
        while os.read(fd, 1024):
            pass
    finally:
        os.killpg(os.getpgrp(), signal.SIGKILL)


def serve() -> None:
    import select

    import cpl  # noqa: F401  (imported once here, inherited by every fork)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below
    children: dict[int, tuple[str, int]] = {}  # pid -> (request id, lifeline write end)
    stdin = sys.stdin.buffer
    pending = b""

    def send(msg: dict) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    while True:
        ready, _, _ = select.select([stdin, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        while children:  # reap whatever has ended
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in children:
                rid, w = children.pop(pid)
                os.close(w)
                send({"id": rid, "status": status})
        if stdin in ready:
            data = os.read(stdin.fileno(), 65536)
            if not data:  # the worker is gone: take every recipe with it
                for pid in children:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except OSError:
                        pass
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                _preload(request)
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    _child(request, r, [w, wake_r, wake_w,
                                        *(fd for _, fd in children.values())])
                os.close(r)
                children[pid] = (request["id"], w)
                send({"id": request["id"], "pid": pid})


def main(argv: list[str]) -> int:
    if argv == ["--serve"]:
        serve()
        return 0
    threading.Thread(target=_watch_parent, daemon=True, name="watch-worker").start()
    execute(pathlib.Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
