"""The recipe process: runs one recipe call with python-cpl's engine and reports back.

A worker starts one process per call (see :mod:`cpldask.worker.task`), for three reasons:

* the environment, notably ``OMP_NUM_THREADS``, must be in place *before* the recipe
  library (and its OpenMP runtime) is loaded — python-cpl's per-call ``env`` is too
  late for OpenMP; the fork server a call goes to runs under the call's OpenMP
  environment (one server per distinct one);
* the process and the recipe child python-cpl forks from it share a fresh process
  group, so a cancel, a time-out or the death of the worker kills all of it and no
  recipe is left behind as an orphan;
* a memory limit (``RLIMIT_AS``) applies to this process and the recipe only.

Recipe processes are forked from a fork server (:func:`serve`), so that a call pays
neither for a fresh interpreter nor for loading the recipe library, which the server
keeps loaded. The engine is python-cpl's C extension alone (:func:`_engine`): it loads
the recipe, sets parameters and frames, forks the recipe child (with python-cpl's crash
handler and gdb backtrace) and returns products, errors and timings. python-cpl's
Python layer is not loaded here: it imports astropy, which made every process the
server forks ~10 times larger and a no-op call cost 24 ms of CPU instead of 10 (see
docs/benchmarks.md). What that layer did per call is done below, with python-cpl's
rules: parameters converted to their CPL type, frames with absolute paths, the CPL
message log turned into log records, a crash read from python-cpl's backtrace file.

The outcome goes to ``report.json`` beside the job file, written atomically; stdout
and stderr go to a log file the worker keeps for diagnostics. Nothing here imports
cpldask: the worker starts this file by its path. ``python runner.py JOB.json`` runs
one job without the server (for debugging).
"""

from __future__ import annotations

import datetime
import fcntl
import importlib.machinery
import importlib.util
import json
import os
import pathlib
import re
import resource
import select
import signal
import sys
import time
from stat import S_ISFIFO


#: Part of every content key (cpldask.worker.task.content_key): raise it with any change
#: here that changes what a recipe makes of the same call (how parameters are
#: converted, how frames are given, the recipe's environment), so that no product
#: cached by the earlier runner is served for the new one.
RUNNER_VERSION = 1

LOG = ".cpldask-runner.log"
#: CPL's message log of the call (python-cpl reads it from a FIFO with a thread; a
#: file read once the recipe has ended costs neither), removed once read
RECIPE_LOG = ".cpldask-recipe.log"
#: written by python-cpl's crash handler in the recipe child, in its working directory
BACKTRACE = "recipe.backtrace-unprocessed"
#: CPL's message line: "10:35:25 [WARNING] muse_bias: [tid=000] text" (python-cpl's
#: pattern); lines that do not match continue the message before them
_LOG_LINE = re.compile(r"(\d\d):(\d\d):(\d\d)\s\[\s*(\w+)\s*\]\s(\w+):"
                       r"(\s\[tid=(\d+)\])?\s(.+)")
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "OFF": 51}


_ENGINE = None


def _engine():
    """python-cpl's C extension ``cpl.CPL_recipe``, loaded without the ``cpl`` package
    (whose ``__init__`` imports astropy)."""
    global _ENGINE
    if _ENGINE is None:
        spec = importlib.util.find_spec("cpl")  # finds the package, does not import it
        dirs = list(spec.submodule_search_locations or []) if spec else []
        for path in (os.path.join(d, "CPL_recipe" + suffix) for d in dirs
                     for suffix in importlib.machinery.EXTENSION_SUFFIXES):
            if os.path.isfile(path):
                loader = importlib.machinery.ExtensionFileLoader("cpl.CPL_recipe", path)
                module = importlib.util.module_from_spec(
                    importlib.util.spec_from_loader("cpl.CPL_recipe", loader))
                loader.exec_module(module)
                _ENGINE = module
                break
        else:
            raise ImportError(f"python-cpl's engine (cpl/CPL_recipe*.so) is not installed "
                              f"for {sys.executable}: pip install python-cpl")
    return _ENGINE


#: (recipe name, library file) -> (engine recipe, {parameter full name: Python type}).
#: Loading a recipe library (and the CPL libraries it links) costs ~6 ms of CPU; loaded
#: once in the fork server, every forked recipe process has it for free. The server's
#: environment holds the call's OpenMP settings (the worker keeps one server per OpenMP
#: environment), so the OpenMP runtime that loads with the library reads the right ones.
_loaded: dict[tuple[str, str | None], tuple[object, dict[str, type | None]]] = {}


def _load(name: str, recipe_file: str | None, version=None, path=()) -> tuple:
    """The loaded recipe ``name`` and its parameter types, from ``recipe_file`` where
    this node has that file, else found on ``path`` (python-cpl's search)."""
    key = (name, recipe_file)
    if key not in _loaded:
        engine = _engine()
        # python-cpl's memory mode 0 (no CPL memory accounting) unless the user set one
        os.environ.setdefault("CPL_MEMORY_MODE", "0")
        filename = recipe_file if recipe_file and os.path.isfile(recipe_file) \
            else _find(engine, name, version, path)
        recipe = engine.recipe(filename, name)
        _loaded[key] = (recipe, {p[2]: p[7] for p in recipe.params()})
    return _loaded[key]


def _find(engine, name: str, version, path) -> str:
    """The library holding recipe ``name`` on ``path``: the given version (number or
    string) if there, else the newest (python-cpl's ``Recipe.get_recipefilename``)."""
    best, best_version = None, -1
    for root, _, files in (w for p in path for w in os.walk(p)):
        for lib in sorted(os.path.join(root, f) for f in files if f.endswith(".so")):
            for rname, number, string in engine.list(lib) or ():
                if rname != name:
                    continue
                if version is not None and version in (number, string):
                    return lib
                if number > best_version:
                    best, best_version = lib, number
    if best is None:
        raise OSError(f"recipe {name!r} not found at path {list(path)}")
    return best


def _typed(types: dict, name: str, value):
    """``value`` as the CPL type of parameter ``name`` (python-cpl's conversion: the
    engine silently skips a value of the wrong type)."""
    if name not in types:
        raise ValueError(f"the recipe has no parameter {name!r}")
    ptype = types[name]
    if ptype is bool and isinstance(value, str):
        value = {"true": True, "false": False, "yes": True, "no": False}.get(value.lower(), value)
    return ptype(value) if ptype is not None else value


def read_log(path: str, recipe: str) -> list:
    """CPL's message log as (logger name, level, function, message, time) entries, as
    python-cpl's LogServer makes its records (loggers ``cpl.<recipe>.<function>``)."""
    try:
        with open(path, encoding="ascii", errors="replace") as lines:
            entries = parse_log(lines, recipe)
        os.remove(path)
    except FileNotFoundError:
        return []  # the recipe child died before CPL opened its log
    return entries


def parse_log(lines, recipe: str, last: tuple | None = None) -> list:
    """Entries of ``lines``; ``last`` is the entry before them (a message that the
    first lines continue), when a log is read in pieces while the recipe runs."""
    entries: list = []
    today, now = datetime.date.today(), time.time()
    for line in lines:
        m = _LOG_LINE.match(line)
        if m is not None:
            h, mi, s, level, func = m.groups()[:5]
            created = datetime.datetime.combine(
                today, datetime.time(int(h), int(mi), int(s))).timestamp()
            if created > now:  # logged before midnight
                created -= 86400
            entries.append((f"cpl.{recipe}.{func}", _LEVELS.get(level, 0), func,
                            m.group(8), created))
        elif entries or last is not None:
            name, level, func, _, created = entries[-1] if entries else last
            entries.append((name, level, func, line.rstrip(), created))
    return entries


def _crash_signal(lines: list[str]) -> int | None:
    """The signal python-cpl's crash handler recorded (None: memory corruption)."""
    for line in lines:
        if line.startswith("Received signal:"):
            return int(line.split(":")[1])
    return None


def run(job: dict) -> dict:
    """Run the call described by ``job`` and describe its outcome."""
    recipe, types = _load(job["recipe"], job.get("recipe_file"), job.get("version"),
                          job["recipe_path"])
    params = [(name, _typed(types, name, value)) for name, value in job["params"]]
    frames = [(tag, os.path.abspath(path)) for tag, paths in [*job["raw"], *job["calib"].items()]
              for path in paths]
    call_dir = job["call_dir"]
    # CPL refuses a log name over 72 characters (and the recipe then fails on the
    # error left behind): the log is named relative to the call directory, which is
    # this process's working directory and the recipe's
    os.chdir(call_dir)
    report = {"recipe": job["recipe"], "start": time.time()}
    try:
        # the child logs everything (level 0, DEBUG) to the file: the worker filters
        products, errors, stat = recipe.run(call_dir, params, frames, [], RECIPE_LOG, 0, 0, 0)
    except OSError as err:
        if str(err) != "Recipe crashed":
            raise
        products = errors = stat = None  # the child died before sending its outcome
    report["end"] = time.time()
    report["log"] = read_log(RECIPE_LOG, job["recipe"])
    if os.path.exists(BACKTRACE):  # python-cpl's crash handler ran (and gdb, if allowed)
        os.replace(BACKTRACE, "recipe.backtrace")  # (in the call directory, our cwd)
        with open("recipe.backtrace", errors="replace") as bt:
            lines = bt.readlines()
        report.update(kind="RecipeCrash", backtrace=lines, signal=_crash_signal(lines))
    elif stat is None:
        # no handler ran: only SIGKILL (the OOM killer, a kill -9) gets past it
        report.update(kind="RecipeCrash", backtrace=[], signal=int(signal.SIGKILL))
    elif stat[0]:
        report.update(kind="CplError", retval=stat[0], errors=[list(e) for e in errors])
    else:
        report.update(kind="ok", products=[(tag, os.path.basename(f)) for tag, f in products],
                      stat={"return_code": stat[0], "user_time": stat[1],
                            "sys_time": stat[2]})
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
# A worker keeps one of these (``python runner.py --serve``) per OpenMP environment:
# it has loaded python-cpl's engine and loads each recipe library on first use,
# with the OpenMP runtime reading the server's own environment, which holds the calls'
# OMP_* settings. A fork of it starts a recipe process in milliseconds. It stays
# single-threaded (it never runs a recipe itself) so that forking it is safe.
#
# Protocol, one JSON object per line. In (stdin): {"id", "job", "env" (the variables
# to set), "unset" (those to remove), "recipe", "recipe_file"}. Out (stdout):
# {"id", "pid"} once the process is forked; {"id", "done"}, written by the recipe
# process itself, once its report is written; {"id", "status"} (as os.waitpid gives
# it) once it has exited. EOF on stdin means the worker is gone: every recipe process
# group is killed. Each recipe process holds the read end of a pipe from this server,
# whose EOF makes the kernel kill its group when the server dies (:func:`_die_with`).


def _preload(request: dict) -> None:
    """Load the request's recipe library in the server, once; a failure (or a library
    this node does not have) is left for the recipe process to meet and report."""
    recipe_file = request.get("recipe_file")
    if (request.get("recipe"), recipe_file) in _loaded or not recipe_file \
            or not os.path.isfile(recipe_file):
        return
    try:
        _load(request["recipe"], recipe_file)
    except Exception:  # noqa: BLE001  (the recipe process reports it properly)
        pass


def _child(request: dict, lifeline: int, inherited: list[int]) -> None:
    """In a forked child: become a recipe process and run the job. Never returns."""
    code = 1
    try:
        for fd in inherited:  # the server's pipes: siblings' lifelines, its wake-up
            os.close(fd)
        os.setsid()  # our own process group: one killpg ends us, the recipe and gdb
        _die_with(lifeline)
        notify = os.dup(1)  # the server's stdout: the worker reads our "done" there
        job_file = pathlib.Path(request["job"])
        out = os.open(job_file.with_name(LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        _set_environ(request["env"], request["unset"])  # before a library (OpenMP) loads
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        execute(job_file)
        # The report is written: the worker can go on without waiting for this
        # process to exit and the server to reap it (~0.7 ms on a 2-core VM). One
        # short write to a pipe is atomic: it never mixes with the server's lines.
        os.write(notify, json.dumps({"id": request["id"], "done": True}).encode() + b"\n")
        code = 0
    finally:
        os._exit(code)


def _die_with(fd: int) -> None:
    """Have the kernel SIGKILL our whole process group once the pipe ``fd`` reaches
    EOF, i.e. once its writer (the fork server, or the worker) is gone.

    The pipe is put in asynchronous mode, owned by our process group, with SIGKILL
    as its signal: closing the last write end of a pipe signals its owner (Linux
    ``pipe_release``). It replaces a watchdog thread reading the pipe, whose start
    alone cost 0.36 ms of every call."""
    fcntl.fcntl(fd, fcntl.F_SETOWN, -os.getpgrp())
    fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGKILL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    # a writer gone before the line above sent no signal: look once (a pipe at EOF is
    # readable and reads nothing; the caller never writes to it otherwise)
    if select.select([fd], [], [], 0)[0] and not os.read(fd, 1):
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _set_environ(changes: dict, unset: list) -> None:
    """Change ``os.environ`` (the server's, inherited) into the call's environment."""
    for name in unset:
        os.environ.pop(name, None)
    os.environ.update(changes)


def _warm() -> None:
    """Do once in the server what every recipe process does first, so that each
    fork inherits it done: the lazy imports and caches behind the log parser (the
    ascii codec, datetime), JSON and the resource module. In each fork they cost
    0.3 ms of CPU, on top of copying the pages they write."""
    with open(os.devnull, encoding="ascii", errors="replace") as f:
        f.read()
    parse_log(["00:00:00 [    INFO] warm: up\n", "more\n"], "warm")
    json.loads(json.dumps({"warm": [1.0, "up"]}))
    resource.getrusage(resource.RUSAGE_CHILDREN)


def serve() -> None:
    _engine()  # loaded once here, inherited by every fork
    _warm()

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
    if S_ISFIFO(os.fstat(0).st_mode):
        # started by a program holding a pipe to our stdin: its EOF means that the
        # program is gone, and the recipe goes with it (from a terminal: nothing)
        os.setsid()
        _die_with(0)
    execute(pathlib.Path(argv[0]))
    return 0


if __name__ == "__main__":
    # started by its path: Python put this file's directory first on sys.path, where
    # its sibling modules (task.py, install.py...) would shadow any top-level module
    # of those names that python-cpl or a recipe's Python imports
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    sys.exit(main(sys.argv[1:]))
