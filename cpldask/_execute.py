"""Worker side: run one recipe call in its own process and install its products.

:func:`run_recipe` is the function every cpldask task executes. It

1. resolves the inputs (file paths, or products of upstream calls in the graph),
2. waits for a slot when the client set a limit (a ``distributed.Semaphore``),
3. runs the recipe in a recipe process (forked by the worker's fork server, see
   :mod:`cpldask._runner`) with a process group of its own, in a private call
   directory, killing the group on cancel, time-out or exit,
4. moves the products into ``output_dir`` only once the recipe has succeeded,
   without ever overwriting a product of a call that ran at the same time,
5. returns a small :class:`~cpldask._spec.RunRecord` — paths, not pixels.

Before that it hashes the inputs where they are (:mod:`cpldask._hashing`) and makes the
call's content key (:func:`content_key`): the product cache's key, and the name of the
run in its provenance. A cache entry is served only once verified, and stored only if
no input changed while the recipe ran (:mod:`cpldask._cache`).

Only :mod:`cpldask._spec`, :mod:`cpldask.errors`, :mod:`cpldask._hashing`,
:mod:`cpldask._cache` and :mod:`cpldask._runner` are used from cpldask: nothing here
imports the client side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from . import _cache, _fitsheader, _hashing, _runner, errors
from ._spec import (LOG_TOPIC, CallSpec, FileInput, MemoryInput, Product, ProductRef,
                    RunRecord)

#: how often a waiting worker thread looks for a cancel or a time-out (seconds)
POLL = 0.2
#: call directories in .cpldask-tmp younger than this are never taken for stale
STALE_AFTER = 60.0
TMP = ".cpldask-tmp"
#: in-memory input frames written by this worker, in the work directory
INPUTS = "inputs"
LOCK = ".cpldask.lock"


def run_recipe(spec: CallSpec, *deps) -> RunRecord:
    """Run the call ``spec``; ``deps`` are the upstream outcomes it references."""
    frames = _resolve(spec, deps)
    return _run(spec, frames, _hash_inputs(spec, frames, deps))


def _resolve(spec: CallSpec, deps) -> list[tuple[str, list[str]]]:
    """(tag, [paths]) for every input frame, checked to be readable here."""
    out = []
    for tag, item in spec.frames:
        if isinstance(item, FileInput):
            paths = [item.path]
        elif isinstance(item, MemoryInput):
            paths = [_materialize(deps[item.dep], item.digest, spec.work_dir)]
        else:
            paths = _dep_paths(deps[item.dep], item.tag, tag, spec.recipe)
        for path in paths:
            if not os.access(path, os.R_OK):
                raise errors.InputError(
                    f"{spec.recipe}: input {tag} {path!r} is missing or unreadable on "
                    f"worker {socket.gethostname()}")
        out.append((tag, paths))
    return out


def _materialize(data: bytes, digest: str, work_dir: str) -> str:
    """The file of an in-memory input frame on this worker: written once per content
    (under a temporary name, then renamed, so that calls sharing it never read a
    half-written file). Its time stamp is renewed on each use: files unused for
    ``work-dir-max-age`` are pruned like old call directories."""
    d = pathlib.Path(work_dir) / INPUTS
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{digest}.fits"
    try:
        os.utime(path)
    except FileNotFoundError:
        tmp = d / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def _dep_paths(value, want: str | None, tag: str, recipe: str) -> list[str]:
    if isinstance(value, RunRecord):
        paths = value.paths(want) or (value.paths() if len(value.tags) == 1 else [])
        if not paths:
            raise errors.InputError(
                f"{recipe}: the {value.recipe} result given for {tag} has no product "
                f"tagged {want!r}; it has {value.tags}. Pass one product, e.g. "
                f"result.{value.tags[0] if value.tags else 'TAG'}")
        return paths
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


@dataclasses.dataclass
class _Input:
    """One input frame as this worker found it: its files' identities and content
    hashes, or (a product of an upstream call) that call's content key."""

    tag: str
    paths: list[str]
    identities: list[tuple]
    hashes: list[str] | None  # None: an upstream product, known by ``upstream``
    upstream: str | None = None
    product: str | None = None


def _hash_inputs(spec: CallSpec, frames, deps) -> list[_Input]:
    """The inputs of a call, hashed here: a file by every byte of it (once per
    identity), a product of an upstream call by that call's content key and the
    product tag (it is what the upstream's inputs and recipe made of them)."""
    out, todo = [], []
    for (tag, item), (_, paths) in zip(spec.frames, frames):
        # a file, an in-memory frame this worker wrote, or another call's product
        dep = deps[item.dep] if isinstance(item, ProductRef) else None
        upstream = dep.provenance.get("key") if isinstance(dep, RunRecord) else None
        entry = _Input(tag, paths, [_hashing.identity(os.stat(p)) for p in paths], None,
                       upstream, item.tag if isinstance(item, ProductRef) else None)
        if upstream is None:
            todo.append(entry)
        out.append(entry)
    files = [p for e in todo for p in e.paths]
    try:
        hashes = iter(_hashing.file_hashes(files))
    except OSError as err:
        raise errors.InputError(f"{spec.recipe}: an input cannot be read on worker "
                                f"{socket.gethostname()}: {err}") from err
    for e in todo:
        e.hashes = [next(hashes) for _ in e.paths]
    return out


@dataclasses.dataclass(frozen=True)
class _Library:
    """The recipe library and what it loads, as this worker has them."""

    hash: str  # of every byte of each file
    identities: tuple  # of each file, to notice a rebuild


_LIBRARIES = _hashing.LRU(256)


def _library(recipe_file: str) -> _Library | None:
    """The recipe library, the shared libraries it loads (CPL, the pipeline's own,
    cfitsio, ...) and python-cpl's engine that runs it, as they are on disk now; None
    where the library the client loaded is not on this worker (the runner then
    searches the recipe path). See :func:`_server_for` for when this is asked."""
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
        known = _Library(_hashing.digest([os.path.basename(f) for f in files] + hashes),
                         identities)
        if not any(_hashing.young(st) for st in stats):
            _LIBRARIES.put(identities, known)
    return known


def content_key(spec: CallSpec, inputs: list[_Input], library: _Library | None) -> str | None:
    """The content key of a call: everything that can change its products.

    The client's description of the call (``spec.cache_key``: recipe, version, every
    parameter with its default, env, raw tags, list rule), the runner's version, the
    content of the recipe library and of every library it loads, and each input by
    the hash of its bytes or by its upstream call's content key. None when the
    library is not known here: such a call is neither looked up nor stored.
    """
    if library is None or not spec.cache_key:
        return None
    parts = [[i.tag, i.hashes] if i.upstream is None else [i.tag, i.upstream, i.product]
             for i in inputs]
    return _hashing.digest(["content", _hashing.ALGORITHM, _runner.RUNNER_VERSION,
                            spec.cache_key, library.hash, parts])


def _changed(inputs: list[_Input]) -> list[str]:
    """The input files whose identity changed since they were hashed."""
    out = []
    for i in inputs:
        for path, before in zip(i.paths, i.identities):
            try:
                if _hashing.identity(os.stat(path)) != before:
                    out.append(path)
            except OSError:
                out.append(path)
    return out


_WARNED = _hashing.LRU(1024)


def _warn(spec: CallSpec, text: str) -> None:
    """Tell the client's user (a :class:`~cpldask.errors.CacheWarning` there, see
    :func:`cpldask.result.listen_to_logs`) and this worker's log, once per text (a
    read-only cache would say the same for every call)."""
    import logging

    if _WARNED.get(text):
        return
    _WARNED.put(text, True)
    logging.getLogger("cpldask.cache").warning(text)
    try:
        from distributed.worker import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return  # not on a distributed worker
    worker.log_event(LOG_TOPIC, {"recipe": spec.recipe, "entries": [], "warning": text})


@contextlib.contextmanager
def _slot(spec: CallSpec):
    """Hold one lease of the client's slot semaphore while the recipe runs."""
    if spec.slots is None:
        yield
        return
    sem = _semaphore(*spec.slots)
    while not sem.acquire(timeout=POLL * 5):
        if _cancelled():
            raise _Cancelled()
    try:
        yield
    finally:
        sem.release()


_semaphores: dict[tuple, object] = {}


def _semaphore(name: str, leases: int):
    """This worker's handle on the cluster-wide slot semaphore ``name``, made once:
    a new ``distributed.Semaphore`` per call registers it with the scheduler again
    and starts a lease-refresh timer that is never stopped. One handle serves all
    the worker's threads (each acquire takes a lease of its own)."""
    from distributed import Semaphore

    key = (os.getpid(), name, leases)
    with _servers_lock:
        if key not in _semaphores:
            _semaphores[key] = Semaphore(max_leases=leases, name=name)
        return _semaphores[key]


class _Cancelled(Exception):
    """The task was cancelled by the client while it waited or ran."""


def _cancelled() -> bool:
    """True when the scheduler has told this worker to forget the running task."""
    try:
        from distributed.worker import get_worker, thread_state

        ts = get_worker().state.tasks.get(thread_state.key)
    except (ImportError, ValueError, AttributeError):
        return False  # not on a distributed worker (e.g. dask's threaded scheduler)
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _run(spec: CallSpec, frames, inputs: list[_Input]) -> RunRecord:
    base = pathlib.Path(spec.output_dir) / TMP if spec.output_dir else pathlib.Path(spec.work_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"{spec.recipe}: cannot create {base}: {err.strerror}; "
                      f"choose a writable output_dir or cpldask.work-dir") from err
    _prune(base, spec.work_max_age if not spec.output_dir else None)
    call_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{spec.recipe}-", dir=base))
    lock = _hold(call_dir)
    try:
        server, library = _server_for(_recipe_env(spec.omp_threads, dict(spec.env)),
                                      spec.recipe_file)
        key = content_key(spec, inputs, library)
        hit = None
        if spec.cache_dir and key is not None:
            hit, problem = _cache.lookup(spec.cache_dir, key)
            if problem:
                _warn(spec, f"{spec.recipe}: {problem}; the recipe runs instead")
        if hit is not None:
            try:
                products, report = _from_cache(spec, key, hit, call_dir)
            except OSError as err:  # removed meanwhile (a prune, another verify)
                _warn(spec, f"{spec.recipe}: the cache entry {key} went away while it "
                            f"was being served ({err}); the recipe runs instead")
                for _, name in hit["products"]:  # links into the entry: not the recipe's
                    with contextlib.suppress(OSError):
                        (call_dir / name).unlink()
                hit = None
        if hit is None:
            with _slot(spec):
                products, report = _execute(spec, frames, call_dir, base, server, library)
        prov = _provenance(spec, inputs, key, report, cache_hit=hit is not None)
        if hit is None and spec.cache_dir and key is not None:
            changed = _changed(inputs)
            if report.get("library_changed"):
                _warn(spec, f"{spec.recipe}: its library {spec.recipe_file} was rebuilt "
                            f"while the call started; its products are not kept in the "
                            f"cache")
            elif changed:
                _warn(spec, f"{spec.recipe}: input {changed[0]} changed while the recipe "
                            f"ran; its products are not kept in the cache")
            else:
                problem = _cache.store(spec.cache_dir, key,
                                       [(p.tag, p.path) for p in products], prov)
                if problem:
                    _warn(spec, f"{spec.recipe}: {problem}")
        if spec.output_dir:
            products = _install(products, pathlib.Path(spec.output_dir), spec.submitted,
                                provenance=prov)
        else:
            (call_dir / "provenance.json").write_text(json.dumps(prov, indent=1, default=str))
        return RunRecord(
            recipe=spec.recipe, key=_task_key(), products=products,
            input_len=spec.input_len, log=report["log"],
            stat={**report["stat"], "wall_time": report["end"] - report["start"],
                  "max_rss": report["max_rss"]},
            host=socket.gethostname(), worker=_worker_address(),
            start=report["start"], end=report["end"], call_dir=str(call_dir),
            output_dir=spec.output_dir, params=spec.params, provenance=prov,
            cache_hit=hit is not None)
    finally:
        lock.close()
        if spec.output_dir:
            shutil.rmtree(call_dir, ignore_errors=True)


def _execute(spec: CallSpec, frames, call_dir: pathlib.Path, base: pathlib.Path,
             server: "_ForkServer", library: _Library | None):
    """Run the recipe; (products in call_dir, the runner's report)."""
    try:
        report = _spawn(spec, frames, call_dir, server, library)
        log = report.get("log") or []
        # the messages the client's logging shows, as they would be with python-cpl:
        # of a failed call too (whose exception also carries its whole log); those
        # sent while the recipe ran are not sent again
        _forward_log(spec, _named(spec, log[report["forwarded"]:]))
        report["log"] = _named(spec, log)
        if report["kind"] != "ok":
            raise errors.from_report(report)
        return _collect(spec, report, call_dir), report
    except Exception as err:
        if _disk_full(call_dir):
            raise OSError(errno.ENOSPC, f"{spec.recipe}: no space left on the disk of "
                          f"{base} while the recipe ran (nothing was installed); free "
                          f"space and run the call again") from err
        raise


def _named(spec: CallSpec, log: list) -> list:
    """The recipe's log entries under the call's logger name (python-cpl's ``logname``:
    ``<logname>.<function>``), without those below its ``loglevel``."""
    base = spec.logname or f"cpl.{spec.recipe}"
    return [(f"{base}.{func}", level, func, msg, created)
            for _, level, func, msg, created in log if level >= spec.loglevel]


def _forward_log(spec: CallSpec, log: list) -> None:
    """Send the client the messages its logging would show (see
    :func:`cpldask.result.listen_to_logs`); the rest stays in the RunRecord."""
    entries = [e for e in log if e[1] >= spec.log_level]
    if not entries:
        return
    try:
        from distributed.worker import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return  # not on a distributed worker
    worker.log_event(LOG_TOPIC, {"recipe": spec.recipe, "entries": entries})


def _from_cache(spec: CallSpec, key: str, hit: dict, call_dir: pathlib.Path):
    """The products of an earlier identical run, without starting the recipe.

    Into an output_dir they are linked (or copied) through the call directory, so the
    usual install rules apply; without one, the result points into the cache entry.
    """
    entry = pathlib.Path(spec.cache_dir) / key
    products = []
    for tag, name in hit["products"]:
        path = entry / name
        if spec.output_dir:
            _cache._link_or_copy(path, call_dir / name)
            path = call_dir / name
        products.append(_product(tag, path))
    now = time.time()
    run = hit.get("run", {})
    report = {"log": [], "start": now, "end": now, "max_rss": 0,
              "stat": {"return_code": run.get("return_code", 0), "user_time": 0.0,
                       "sys_time": 0.0}}
    return products, report


def _provenance(spec: CallSpec, inputs: list[_Input], key: str | None, report: dict, *,
                cache_hit: bool) -> dict:
    """The provenance record of a call: the client's half (recipe, versions, every
    parameter, inputs), the content key and input hashes, and how the run went here."""
    prov = dict(spec.provenance)
    described = []
    for info, i in zip(prov.get("inputs", []), inputs):
        entry = dict(info)
        if "from" in entry:  # a product of an upstream call: known here only
            entry.update(path=i.paths, datamd5=[_datamd5(p) for p in i.paths])
            if i.upstream is not None:
                entry["from"] = i.upstream  # its content key, not its task key
        elif "in_memory" in entry:  # the file this worker wrote for an HDUList
            entry.update(path=i.paths[0])
        if i.hashes is not None:
            entry["hash"] = i.hashes if "from" in entry else i.hashes[0]
        described.append(entry)
    prov.update(
        key=key, hash=_hashing.ALGORITHM, inputs=described, cache_hit=cache_hit,
        run={"host": socket.gethostname(), "worker": _worker_address(),
             "start": report["start"], "end": report["end"],
             "wall_time": report["end"] - report["start"],
             "user_time": report["stat"]["user_time"], "sys_time": report["stat"]["sys_time"],
             "max_rss": report["max_rss"], "return_code": report["stat"]["return_code"]})
    return prov


def _datamd5(path: str) -> str | None:
    return _fitsheader.summary(path)[0].get("DATAMD5")


def _product(tag: str, path: pathlib.Path) -> Product:
    """A product file as the RunRecord describes it: path, size, header values, HDUs."""
    return Product(tag, str(path), path.stat().st_size, *_fitsheader.summary(str(path)))


def _spawn(spec: CallSpec, frames, call_dir: pathlib.Path, server: "_ForkServer",
           library: _Library | None) -> dict:
    """Run the recipe process for this call in ``server`` and return its report."""
    raw, calib = [], {}
    for tag, paths in frames:  # python-cpl takes raw frames as data, the rest as calib
        if tag in spec.raw_tags:
            raw.append((tag, paths))
        else:
            calib.setdefault(tag, []).extend(paths)
    job = {"recipe": spec.recipe, "version": spec.version,
           "recipe_path": list(spec.recipe_path), "recipe_file": spec.recipe_file,
           "params": [list(p) for p in spec.params],
           "raw": raw, "calib": calib,
           "call_dir": str(call_dir), "memory_limit": spec.memory_limit}
    job_file = call_dir / ".cpldask-job.json"
    job_file.write_text(json.dumps(job))
    env = _recipe_env(spec.omp_threads, dict(spec.env))
    if not spec.backtrace:
        env["PATH"] = f"{_no_gdb_dir(call_dir.parent)}:{env.get('PATH', '')}"
    library_changed = False
    while (proc := server.start(job_file, env, spec.recipe, spec.recipe_file)
           if server.alive() else None) is None:
        # that server died or was retired while the call waited (a rebuilt library):
        # the next one runs it, with what is on disk now; the content key names what
        # was there before, so if that differs the products are not cached
        server, now = _server_for(env, spec.recipe_file)
        library_changed |= now != library
    tail = _LogTail(spec, call_dir / _runner.RECIPE_LOG)
    try:
        _wait(proc, spec, tail)
    finally:
        proc.kill()
    report_file = call_dir / "report.json"
    if not report_file.exists():
        tail = (call_dir / _runner.LOG).read_text(errors="replace")[-2000:] \
            if (call_dir / _runner.LOG).exists() else ""
        if proc.returncode < 0:
            raise errors.crash(-proc.returncode, lines=[tail]) from None
        raise RuntimeError(f"{spec.recipe}: the recipe process ended with status "
                           f"{proc.returncode} without a report:\n{tail}")
    report = json.loads(report_file.read_text())
    report["forwarded"] = tail.read  # entries of report["log"] the client already has
    report["library_changed"] = library_changed
    return report


class _LogTail:
    """Sends the client the recipe's messages while it runs, as python-cpl's log
    thread hands them to :mod:`logging`: every :data:`POLL` seconds the lines CPL
    has added to the call's log file (it writes each message at once) are parsed and
    those the client's logging would show are sent (:func:`_forward_log`). A call
    that ends within one poll is not read here: its whole log goes with its end."""

    def __init__(self, spec: CallSpec, path: pathlib.Path):
        self.spec, self.path = spec, path
        self.offset = 0  # bytes of the file read so far (whole lines only)
        self.read = 0  # entries parsed so far: report["log"][:read]
        self.last: tuple | None = None

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:  # not yet opened, or read and removed at the end
            return
        whole = chunk[:chunk.rfind(b"\n") + 1]
        if not whole:
            return
        self.offset += len(whole)
        lines = whole.decode("ascii", errors="replace").splitlines(keepends=True)
        entries = _runner._parse_log(lines, self.spec.recipe, self.last)
        if entries:
            self.read += len(entries)
            self.last = entries[-1]
            _forward_log(self.spec, _named(self.spec, entries))


def _wait(proc: "_RecipeProcess", spec: CallSpec, tail: _LogTail) -> None:
    deadline = time.monotonic() + spec.timeout if spec.timeout else None
    while not proc.ended.wait(POLL):
        tail.poll()
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            raise errors.RecipeTimeout(spec.recipe, spec.timeout)
        if _cancelled():
            proc.kill()
            raise _Cancelled()


class _RecipeProcess:
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


class _ForkServer:
    """A fork server of this worker (``_runner.py --serve``), which starts recipe
    processes in milliseconds; see :mod:`cpldask._runner` for the protocol.

    ``omp_env`` is the OpenMP environment (``OMP_*``, ``GOMP_*``, ``KMP_*``) the
    server runs under: it keeps the recipe libraries it has run loaded, and with
    them the OpenMP runtime, which reads that environment once, when it loads.

    Loaded, a library cannot be loaded anew: ``dlopen`` hands back the loaded copy
    for the same path, the pipeline's and CPL's own libraries with it. ``libraries``
    holds the state of the files each recipe library was loaded with; once the
    recipe library is rebuilt the server is retired (:func:`_server_for`): it takes
    no more calls and ends when its running ones have."""

    def __init__(self, omp_env: tuple[tuple[str, str], ...]):
        env = {k: v for k, v in _worker_environ().items() if not k.startswith(_OMP_PREFIXES)}
        env.update(omp_env)
        env["OPENBLAS_NUM_THREADS"] = "1"  # keep the server single-threaded
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, _runner.__file__, "--serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, start_new_session=True)
        self.lock = threading.Lock()
        self.calls: dict[int, _RecipeProcess] = {}
        self.next_id = 0
        self.libraries: dict[str, _Library] = {}  # recipe file -> state at first use
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
              recipe_file: str) -> _RecipeProcess | None:
        """Start the job in a recipe process; None if this server was retired."""
        rp = _RecipeProcess()
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
_servers: dict[tuple, _ForkServer] = {}
_servers_lock = threading.Lock()


def _server(env: dict) -> _ForkServer:
    """The fork server of this worker process for the OpenMP environment of ``env``,
    started on first use (or again if it died). One call's OMP_NUM_THREADS=4 and
    another's =1 thus never share a loaded OpenMP runtime; usually a worker has one."""
    with _servers_lock:
        return _server_locked(env)


def _server_locked(env: dict) -> _ForkServer:
    omp_env = tuple(sorted((k, v) for k, v in env.items() if k.startswith(_OMP_PREFIXES)))
    key = (os.getpid(), omp_env)  # a forked copy of this process starts its own
    server = _servers.get(key)
    if server is None or server.retired or not server.alive():
        server = _servers[key] = _ForkServer(omp_env)
    return server


def _server_for(env: dict, recipe_file: str) -> tuple[_ForkServer, _Library | None]:
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
        library = _library(recipe_file)
        if known is not None:  # rebuilt since this server loaded it
            server.retire()
            server = _server_locked(env)
        if library is not None:
            server.libraries[recipe_file] = library
        return server, library


def warm_up(omp_threads: int | None) -> None:
    """Start this worker's fork server for calls with ``omp_threads`` OpenMP threads
    ahead of the first call (see :mod:`cpldask._cluster`)."""
    _server(_recipe_env(omp_threads))


class WarmUp(WorkerPlugin):
    """:func:`warm_up` on every worker of the embedded cluster as it joins, those
    added later included."""

    def __init__(self, omp_threads: int | None):
        self.omp_threads = omp_threads

    def setup(self, worker) -> None:
        warm_up(self.omp_threads)


def _recipe_env(omp_threads: int | None, call_env: dict | None = None) -> dict:
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


def _disk_full(path: pathlib.Path) -> bool:
    """Whether the filesystem of ``path`` is (nearly) full: a recipe that failed there
    most likely failed for that reason, which its own error rarely says."""
    usage = shutil.disk_usage(path)
    return usage.free < min(64 * 2**20, 0.01 * usage.total)


def _no_gdb_dir(base: pathlib.Path) -> pathlib.Path:
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


def _collect(spec: CallSpec, report: dict, call_dir: pathlib.Path) -> list[Product]:
    products = []
    for tag, name in report["products"]:
        path = call_dir / name
        if not path.exists():
            continue
        products.append(_product(tag, path))
    if spec.expect and not products:
        raise errors.NoProductsError(spec.recipe, spec.expect, errors.loglist(report["log"]))
    return products


def _install(products: list[Product], output_dir: pathlib.Path, since: float, *,
             provenance: dict) -> list[Product]:
    """Move finished products into ``output_dir``.

    A product replaces a file of the same name only if that file was installed before
    this call was made (``since``; python-cpl's documented overwrite by a later call).
    A file installed after that belongs to a concurrent call: this product then gets a
    numbered name instead, so every result keeps pointing at its own bytes. The
    directory lock makes the check and the rename one step for all writers.
    """
    installed = []
    with open(output_dir / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for p in products:
            src = pathlib.Path(p.path)
            dest = output_dir / src.name
            n = 0
            while dest.exists() and dest.stat().st_mtime >= since:
                n += 1
                dest = output_dir / f"{src.stem}-{n}{src.suffix}"
            os.replace(src, dest)
            now = time.time()
            os.utime(dest, (now, now))  # the install time tells later calls who came first
            installed.append(dataclasses.replace(p, path=str(dest)))
        if installed:  # the provenance record lives beside the products
            stem = pathlib.Path(installed[0].path).stem
            prov = {**provenance, "products": [(p.tag, p.path) for p in installed]}
            (output_dir / f"{stem}.provenance.json").write_text(
                json.dumps(prov, indent=1, default=str))
    return installed


def _hold(call_dir: pathlib.Path):
    """Lock a call directory for the life of the call (see :func:`_prune`)."""
    f = open(call_dir / ".cpldask-lock", "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


#: base directory -> when this process last pruned it
_pruned: dict[str, float] = {}
_prune_lock = threading.Lock()


def _prune(base: pathlib.Path, max_age: float | None) -> None:
    """Remove call directories left by interrupted runs (their lock is free) and,
    in the work directory, finished ones older than ``max_age``.

    At most once per ``STALE_AFTER`` per directory and worker process: a directory
    younger than that is never stale, and listing thousands of call directories on
    every call made a long batch quadratic. In a thread of its own: going through
    20 000 call directories takes 0.43 s on a quiet machine, which held up the call
    that started it (the likely cause of a 1.4 s gap between completions in a queue
    of 10 000 calls, where both workers prune at about the same time)."""
    now = time.time()
    with _prune_lock:
        if now - _pruned.get(str(base), -STALE_AFTER) < STALE_AFTER:
            return
        _pruned[str(base)] = now
    threading.Thread(target=_prune_now, args=(base, max_age, now), daemon=True,
                     name="cpldask-prune").start()


def _prune_now(base: pathlib.Path, max_age: float | None, now: float) -> None:
    if max_age is not None and (base / INPUTS).is_dir():
        for f in (base / INPUTS).iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - f.stat().st_mtime > max(max_age, STALE_AFTER):
                    f.unlink()
    for d in base.iterdir() if base.is_dir() else ():
        if not d.is_dir() or d.name.startswith(".") or "-" not in d.name:
            continue
        try:
            age = now - d.stat().st_mtime
        except FileNotFoundError:
            continue
        if age < STALE_AFTER:
            continue
        lock_file = d / ".cpldask-lock"
        try:
            with open(lock_file, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                unfinished = not (d / "report.json").exists()
                if unfinished or (max_age is not None and age > max_age):
                    shutil.rmtree(d, ignore_errors=True)
        except (BlockingIOError, FileNotFoundError, NotADirectoryError):
            continue  # a live call holds it, or it vanished meanwhile


def _task_key() -> str:
    try:
        from distributed.worker import thread_state

        return str(thread_state.key)
    except (ImportError, AttributeError):
        return ""


def _worker_address() -> str | None:
    try:
        from distributed.worker import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None
