"""Worker side: the fork servers that start recipe processes, and what they loaded.

A worker keeps one fork server (``runner.py --serve``, see :mod:`cpldask.worker.runner`)
per OpenMP environment. It starts a recipe process in milliseconds, and keeps the
recipe libraries it has run loaded — so it also knows *which* library code a call ran
with (:class:`Library`), what the call's content key must name.

Imports nothing from the client side (see :mod:`cpldask.worker`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from .. import _hashing
from . import runner


@dataclasses.dataclass(frozen=True)
class Library:
    """The recipe library and what it loads, as this worker has them."""

    hash: str  # of every byte of each file
    identities: tuple  # of each file, to notice a rebuild


_LIBRARIES = _hashing.LRU(256)


def library_state(recipe_file: str) -> Library | None:
    """The recipe library, the shared libraries it loads (CPL, the pipeline's own,
    cfitsio, ...) and python-cpl's engine that runs it, as they are on disk now; None
    where the library the client loaded is not on this worker (the runner then
    searches the recipe path). See :func:`server_for` for when this is asked."""
    try:
        files = [recipe_file, *_hashing.shared_libraries(recipe_file)]
        engine = _hashing.engine_file()
        files += [engine] if engine else []
        stats = [os.stat(f) for f in files]
    except OSError:
        return None
    identities = tuple(_hashing.identity(st) for st in stats)
    known = _LIBRARIES.get(identities)
    if known is None:
        hashes = [_hashing.file_hash(f, st) for f, st in zip(files, stats)]
        known = Library(_hashing.digest([os.path.basename(f) for f in files] + hashes),
                         identities)
        if not any(_hashing.young(st) for st in stats):
            _LIBRARIES.put(identities, known)
    return known


class RecipeProcess:
    """A recipe process forked by the server: its pid, and its end: ``ended`` is set
    once it has written its report (it then exits by itself) or once it has exited
    without one (``returncode`` then says how)."""

    def __init__(self):
        self.started = threading.Event()
        self.ended = threading.Event()
        self.pid: int | None = None
        self.returncode: int | None = None

    def kill(self) -> None:
        """Kill its process group (the runner, the recipe, gdb) unless it has ended,
        and wait for the end."""
        self.started.wait()
        if self.pid is not None and not self.ended.is_set():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self.ended.wait()


class ForkServer:
    """A fork server of this worker (``runner.py --serve``), which starts recipe
    processes in milliseconds; see :mod:`cpldask._runner` for the protocol.

    ``omp_env`` is the OpenMP environment (``OMP_*``, ``GOMP_*``, ``KMP_*``) the
    server runs under: it keeps the recipe libraries it has run loaded, and with
    them the OpenMP runtime, which reads that environment once, when it loads.

    Loaded, a library cannot be loaded anew: ``dlopen`` hands back the loaded copy
    for the same path, the pipeline's and CPL's own libraries with it. ``libraries``
    holds the state of the files each recipe library was loaded with; once the
    recipe library is rebuilt the server is retired (:func:`server_for`): it takes
    no more calls and ends when its running ones have."""

    def __init__(self, omp_env: tuple[tuple[str, str], ...]):
        env = {k: v for k, v in _worker_environ().items() if not k.startswith(_OMP_PREFIXES)}
        env.update(omp_env)
        env["OPENBLAS_NUM_THREADS"] = "1"  # keep the server single-threaded
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, runner.__file__, "--serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, start_new_session=True)
        self.lock = threading.Lock()
        self.calls: dict[int, RecipeProcess] = {}
        self.next_id = 0
        self.libraries: dict[str, Library] = {}  # recipe file -> state at first use
        self.retired = False
        threading.Thread(target=self._read, daemon=True, name="cpldask-forkserver").start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def retire(self) -> None:
        """Take no more calls; end once the running ones have."""
        self.retired = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        with self.lock:
            if self.retired and not self.calls and not self.proc.stdin.closed:
                self.proc.stdin.close()  # EOF: the server exits

    def start(self, job_file: pathlib.Path, env: dict, recipe: str,
              recipe_file: str) -> RecipeProcess | None:
        """Start the job in a recipe process; None if this server was retired."""
        rp = RecipeProcess()
        with self.lock:
            if self.proc.stdin.closed:
                return None
            self.next_id += 1
            self.calls[self.next_id] = rp
            # the recipe process starts with the server's environment: only what the
            # call's differs in travels (a few variables, not the whole environment)
            line = json.dumps({"id": self.next_id, "job": str(job_file),
                               "env": {k: v for k, v in env.items() if self.env.get(k) != v},
                               "unset": [k for k in self.env if k not in env],
                               "recipe": recipe, "recipe_file": recipe_file})
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        return rp

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            rp = self.calls[msg["id"]]
            if "pid" in msg:
                rp.pid = msg["pid"]
                rp.started.set()
            elif "done" in msg:  # the report is written; the exit status follows
                rp.returncode = 0
                rp.ended.set()
            else:
                rp.returncode = os.waitstatus_to_exitcode(msg["status"])
                with self.lock:
                    del self.calls[msg["id"]]
                rp.ended.set()
                self._close_if_idle()
        # the server died: so did its recipe processes (they watch it)
        with self.lock:
            for rp in self.calls.values():
                rp.returncode = rp.returncode if rp.returncode is not None else -signal.SIGKILL
                rp.started.set()
                rp.ended.set()
            self.calls.clear()


#: environment variables read once per process, when a library loads: by OpenMP
#: runtimes, and CPL's memory mode (python-cpl's ``Recipe.memory_mode``), read when
#: the fork server initialises CPL; a call that sets another value gets its own server
_OMP_PREFIXES = ("OMP_", "GOMP_", "KMP_", "CPL_MEMORY_MODE")


_servers: dict[tuple, ForkServer] = {}


_servers_lock = threading.Lock()


def _server(env: dict) -> ForkServer:
    """The fork server of this worker process for the OpenMP environment of ``env``,
    started on first use (or again if it died). One call's OMP_NUM_THREADS=4 and
    another's =1 thus never share a loaded OpenMP runtime; usually a worker has one."""
    with _servers_lock:
        return _server_locked(env)


def _server_locked(env: dict) -> ForkServer:
    omp_env = tuple(sorted((k, v) for k, v in env.items() if k.startswith(_OMP_PREFIXES)))
    key = (os.getpid(), omp_env)  # a forked copy of this process starts its own
    server = _servers.get(key)
    if server is None or server.retired or not server.alive():
        server = _servers[key] = ForkServer(omp_env)
    return server


def server_for(env: dict, recipe_file: str) -> tuple[ForkServer, Library | None]:
    """The fork server for ``env`` and the state of the libraries it runs
    ``recipe_file`` with: what the call's content key must name.

    A server runs what it loaded, whatever happened on disk since. So the state is
    taken (every file looked at, new ones hashed) once per server and recipe
    library, and after that only the recipe library's own file is looked at, one
    ``stat`` per call: rebuilt, it retires the server (``dlopen`` would hand back the
    loaded copy) and a new server loads the files on disk now, whose state is taken
    anew. A library the recipe loads that is rebuilt alone is thus picked up by the
    next server (a new session, or with the recipe library's next rebuild), and
    products are always keyed by the code that made them."""
    with _servers_lock:
        server = _server_locked(env)
        known = server.libraries.get(recipe_file)
        if known is not None:
            try:
                if _hashing.identity(os.stat(recipe_file)) == known.identities[0]:
                    return server, known
            except OSError:
                pass
        library = library_state(recipe_file)
        if known is not None:  # rebuilt since this server loaded it
            server.retire()
            server = _server_locked(env)
        if library is not None:
            server.libraries[recipe_file] = library
        return server, library


def warm_up(omp_threads: int | None) -> None:
    """Start this worker's fork server for calls with ``omp_threads`` OpenMP threads
    ahead of the first call (see :mod:`cpldask._cluster`)."""
    _server(recipe_env(omp_threads))


class WarmUp(WorkerPlugin):
    """:func:`warm_up` on every worker of the embedded cluster as it joins, those
    added later included."""

    def __init__(self, omp_threads: int | None):
        self.omp_threads = omp_threads

    def setup(self, worker) -> None:
        warm_up(self.omp_threads)


def recipe_env(omp_threads: int | None, call_env: dict | None = None) -> dict:
    """The environment of a recipe process: the worker's, the OpenMP threads cpldask
    chose, then the call's own ``env`` (which wins, OMP_NUM_THREADS included). Also
    what picks a call's fork server, so that :func:`warm_up` starts the same one."""
    env = _worker_environ()
    if omp_threads:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    env.update(call_env or {})
    return env


def _worker_environ() -> dict:
    """This worker's environment, without the malloc setting Dask's nanny gives the
    workers it starts (``distributed.nanny.pre-spawn-environ``), which is for Python
    workers, not for recipes.

    ``MALLOC_TRIM_THRESHOLD_`` fixes glibc's thresholds, which otherwise grow with the
    program's allocations: a muse_bias run then maps and zeroes its large buffers
    anew each time, and took 1.3 s of system CPU instead of 0.93 (python-cpl with and
    without the variable: 4-8 % longer). glibc reads it when a process starts, so the
    fork server must start without it. Set to another value, it is the user's own.

    Nor the client's dask configuration that the embedded cluster hands its workers
    (``DASK_INTERNAL_INHERIT_CONFIG``, with a TLS key when TLS is on): it is for Dask."""
    env = dict(os.environ)
    env.pop("DASK_INTERNAL_INHERIT_CONFIG", None)
    nanny = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    name = "MALLOC_TRIM_THRESHOLD_"
    if name in nanny and env.get(name) == str(nanny[name]):
        del env[name]
    return env


def no_gdb_dir(base: pathlib.Path) -> pathlib.Path:
    """A directory whose ``gdb`` fails at once: python-cpl then skips the backtrace."""
    d = base / ".cpldask-nogdb"
    gdb = d / "gdb"
    if not gdb.exists():
        d.mkdir(exist_ok=True)
        # a name of this thread's own: the first calls in a new directory all get here
        # at once, from several threads of a worker too
        tmp = d / f"gdb.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text("#!/bin/sh\nexit 1\n")
        tmp.chmod(0o755)
        os.replace(tmp, gdb)
    return d
