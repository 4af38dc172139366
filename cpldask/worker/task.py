"""Worker side: run one recipe call in its own process and install its products.

:func:`run_recipe` is the function every cpldask task executes. It

1. resolves the inputs (file paths, or products of upstream calls in the graph),
2. waits for a slot when the client set a limit (a ``distributed.Semaphore``),
3. runs the recipe in a recipe process (forked by the worker's fork server, see
   :mod:`cpldask.worker.runner`) with a process group of its own, in a private call
   directory, killing the group on cancel, time-out or exit,
4. moves the products into ``output_dir`` only once the recipe has succeeded,
   without ever overwriting a product of a call that ran at the same time,
5. returns a small :class:`~cpldask._spec.RunRecord` — paths, not pixels.

Before that it hashes the inputs where they are (:mod:`cpldask._hashing`) and makes the
call's content key (:func:`content_key`): the product cache's key, and the name of the
run in its provenance. A cache entry is served only once verified, and stored only if
no input changed while the recipe ran (:mod:`cpldask._cache`).

Only :mod:`cpldask._spec`, :mod:`cpldask.errors`, :mod:`cpldask._hashing`,
:mod:`cpldask._cache` and :mod:`cpldask.worker.runner` are used from cpldask: nothing here
imports the client side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import pathlib
import shutil
import socket
import tempfile
import threading
import time

from .. import _cache, _compat, _hashing, _logs, errors
from .._spec import CallSpec, FileInput, MemoryInput, ProductRef, RunRecord
from . import fetch, forkserver, install, jobend, runner


#: how often a waiting worker thread looks for a cancel or a time-out (seconds)
POLL = 0.2


def run_recipe(spec: CallSpec, *deps) -> RunRecord:
    """Run the call ``spec``; ``deps`` are the upstream outcomes it references."""
    fetched = fetch.Fetched()
    frames = _resolve(spec, deps, fetched)
    try:
        return _run(spec, frames, _hash_inputs(spec, frames, deps), fetched)
    except _OutOfMemory as oom:
        return _on_bigger_worker(spec, deps, oom)


class _OutOfMemory(Exception):
    """The recipe died for memory (``why``); ``error`` is what the call raises if it
    cannot run again on a bigger worker."""

    def __init__(self, error: Exception, why: str, limit: int | None):
        super().__init__(why)
        self.error, self.why, self.limit = error, why, limit


def _oom_kills() -> int:
    """The kernel's count of processes its out-of-memory killer killed (0 where
    /proc/vmstat does not say)."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _worker_memory_limit() -> int | None:
    """``cpldask.worker-memory-limit`` as this worker's configuration has it: the
    address-space limit of the recipes it runs (a small node's share)."""
    import dask.config
    import dask.utils

    value = dask.config.get("cpldask.worker-memory-limit", None)
    if value is None:
        return None
    return int(value) if isinstance(value, (int, float)) else dask.utils.parse_bytes(value)


def _on_bigger_worker(spec: CallSpec, deps, oom: _OutOfMemory) -> RunRecord:
    """Run a call whose recipe died for memory once more, on a worker that offers more
    MEMORY than this one (the smallest such), and tell the user. Its products'
    provenance says so (``memory_retry``). Not when the call set its own
    ``memory_limit`` (the limit is the call's, not the worker's), nor twice, nor when
    no worker offers more: then the call fails with the recipe's own error."""
    from distributed import get_worker, worker_client

    try:
        me = get_worker().address
    except ValueError:  # dask's threaded scheduler: no other worker
        raise oom.error from None
    fmt = _format_bytes
    if spec.memory_retry is not None or spec.memory_limit is not None:
        raise oom.error from None
    with worker_client() as client:  # (the thread leaves the worker's pool meanwhile)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        mine = (workers.get(me, {}).get("resources") or {}).get("MEMORY", 0)
        bigger = sorted(m for a, w in workers.items() if a != me
                        for m in [(w.get("resources") or {}).get("MEMORY", 0)] if m > mine)
        where = f"worker {me} (MEMORY {fmt(mine)})" if mine else f"worker {me}"
        if not bigger:
            _logs.send(spec.recipe, [], category="memory", warning=(
                f"{spec.recipe} died for memory on {where}: {oom.why}; no worker offers "
                f"more MEMORY, so it is not run again: start bigger workers (e.g. a "
                f"cpldask.cluster.slurm(memory_per_slot=...) pool) and run it again"))
            raise oom.error from None
        retry = {"worker": me, "memory": mine, "limit": oom.limit, "error": oom.why,
                 "to_memory": bigger[0], "key": _task_key()}
        _logs.send(spec.recipe, [], category="memory", warning=(
            f"{spec.recipe} died for memory on {where}: {oom.why}; it runs once more "
            f"on a worker offering MEMORY {fmt(bigger[0])}"))
        future = client.submit(run_recipe, dataclasses.replace(spec, memory_retry=retry),
                               *deps, key=f"{_task_key()}-bigger",
                               resources={"MEMORY": bigger[0]}, pure=False)
        record = future.result()
    record.key = retry["key"]  # the call's own task, whose outcome this is
    return record


def _format_bytes(n: float) -> str:
    import dask.utils

    return dask.utils.format_bytes(int(n))


def _resolve(spec: CallSpec, deps, fetched: fetch.Fetched | None = None
             ) -> list[tuple[str, list[str]]]:
    """(tag, [paths]) for every input frame, checked to be readable here; an upstream
    product on another worker's disk is fetched from there (:mod:`.fetch`)."""
    out = []
    for tag, item in spec.frames:
        if isinstance(item, FileInput):
            paths = [item.path]
        elif isinstance(item, MemoryInput):
            paths = [_materialize(deps[item.dep], item.digest, spec.work_dir)]
        elif isinstance(deps[item.dep], RunRecord):
            record = deps[item.dep]
            paths = [fetch.local_path(p, record, spec.work_dir, fetched, recipe=spec.recipe)
                     for p in _dep_products(record, item.tag, tag, spec.recipe)]
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
    d = pathlib.Path(work_dir) / install.INPUTS
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{digest}.fits"
    try:
        os.utime(path)
    except FileNotFoundError:
        tmp = d / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


def _dep_products(record: RunRecord, want: str | None, tag: str, recipe: str) -> list:
    """The products of ``record`` tagged ``want`` (all, when it made only one tag)."""
    products = [p for p in record.products if want is None or p.tag == want]
    if not products and len(record.tags) == 1:
        products = list(record.products)
    if not products:
        raise errors.InputError(
            f"{recipe}: the {record.recipe} result given for {tag} has no product "
            f"tagged {want!r}; it has {record.tags}. Pass one product, e.g. "
            f"result.{record.tags[0] if record.tags else 'TAG'}")
    return products


def _dep_paths(value, want: str | None, tag: str, recipe: str) -> list[str]:
    if isinstance(value, RunRecord):
        return [p.path for p in _dep_products(value, want, tag, recipe)]
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


def content_key(spec: CallSpec, inputs: list[_Input], library: forkserver.Library | None) -> str | None:
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
    return _hashing.digest(["content", _hashing.ALGORITHM, runner.RUNNER_VERSION,
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
    :mod:`cpldask._logs`) and this worker's log, once per text (a read-only cache
    would say the same for every call)."""
    import logging

    if _WARNED.get(text):
        return
    _WARNED.put(text, True)
    logging.getLogger("cpldask.cache").warning(text)
    _logs.send(spec.recipe, [], warning=text)


@contextlib.contextmanager
def _slot(spec: CallSpec):
    """Hold one lease of the client's slot semaphore while the recipe runs."""
    if spec.slots is None:
        yield
        return
    sem = _semaphore(*spec.slots)
    waited = False
    while not sem.acquire(timeout=POLL * 5):
        if _cancelled():
            raise _Cancelled()
        if not waited:  # the page of recipe runs shows the call as waiting, not running
            _logs.send_run_event(spec.recipe, "waiting")
            waited = True
    if waited:
        _logs.send_run_event(spec.recipe, "start")
    try:
        yield
    finally:
        sem.release()


_semaphores: dict[tuple, object] = {}  # one per limit a client set: a handful
_semaphores_lock = threading.Lock()


def _semaphore(name: str, leases: int):
    """This worker's handle on the cluster-wide slot semaphore ``name``, made once:
    a new ``distributed.Semaphore`` per call registers it with the scheduler again
    and starts a lease-refresh timer that is never stopped. One handle serves all
    the worker's threads (each acquire takes a lease of its own)."""
    from distributed import Semaphore

    key = (os.getpid(), name, leases)
    with _semaphores_lock:
        if key not in _semaphores:
            _semaphores[key] = Semaphore(max_leases=leases, name=name)
        return _semaphores[key]


class _Cancelled(Exception):
    """The task was cancelled by the client while it waited or ran."""


def _cancelled() -> bool:
    """True when the scheduler has told this worker to forget the running task."""
    state = _compat.running_task_state()
    return state is not None and state in ("cancelled", "released", "forgotten")


def _run(spec: CallSpec, frames, inputs: list[_Input],
         fetched: fetch.Fetched | None = None) -> RunRecord:
    base = pathlib.Path(spec.output_dir) / install.TMP if spec.output_dir else pathlib.Path(spec.work_dir)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"{spec.recipe}: cannot create {base}: {err.strerror}; "
                      f"choose a writable output_dir or cpldask.work-dir") from err
    install.prune(base, spec.work_max_age if not spec.output_dir else None)
    call_dir = pathlib.Path(tempfile.mkdtemp(prefix=f"{spec.recipe}-", dir=base))
    lock = install.hold(call_dir)
    try:
        server, library = forkserver.server_for(forkserver.recipe_env(spec.omp_threads, dict(spec.env)),
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
        done = None
        if hit is None and spec.cache_dir and spec.output_dir and key is not None:
            # a run of this very call finished here before (a reduction interrupted and
            # run again, its cache entry pruned or on another node's disk): its products
            # are there, intact, under its record. Like the cache, only when earlier
            # products may be served (cache=False runs every recipe)
            found = _cache.installed(spec.output_dir, key)
            if found:
                done, pairs = found[0]
                products = [install.product_of(tag, pathlib.Path(path)) for tag, path in pairs]
                report = _served_report(done)
        if hit is None and done is None:
            jobend.refuse_if_late(spec)  # not started where the job ends first
            with _slot(spec):
                products, report = _execute(spec, frames, call_dir, base, server, library)
        prov = _provenance(spec, inputs, key, report,
                           cache_hit=hit is not None or done is not None)
        if fetched is not None and fetched.files:  # inputs copied from other workers
            prov["fetched"] = fetched.files
        if done is not None:
            prov["reused"] = "output_dir"
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
        if spec.output_dir and done is None:
            products = install.install_products(products, pathlib.Path(spec.output_dir), spec.submitted,
                                provenance=prov)
        else:
            (call_dir / "provenance.json").write_text(json.dumps(prov, indent=1, default=str))
        # the identity of each file where it is now tells a downstream call on another
        # worker whether it sees this very file; if not, it fetches it from here
        products = [fetch.identified(p) for p in products]
        fetch.serve()
        # the products where they are now, for the scheduler's page of recipe runs
        # (the RunRecord stays on this worker until a client asks for it)
        _logs.send_run_event(spec.recipe, "done", products=[[p.tag, p.path] for p in products],
                             cache_hit=hit is not None)
        return RunRecord(
            recipe=spec.recipe, key=_task_key(), products=products,
            input_len=spec.input_len, log=report["log"],
            stat={**report["stat"], "wall_time": report["end"] - report["start"],
                  "max_rss": report["max_rss"]},
            host=socket.gethostname(), worker=_worker_address(),
            start=report["start"], end=report["end"], call_dir=str(call_dir),
            output_dir=spec.output_dir, params=spec.params, provenance=prov,
            cache_hit=hit is not None or done is not None)
    finally:
        lock.close()
        if spec.output_dir:
            shutil.rmtree(call_dir, ignore_errors=True)


def _execute(spec: CallSpec, frames, call_dir: pathlib.Path, base: pathlib.Path,
             server: "forkserver.ForkServer", library: forkserver.Library | None):
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
            error = errors.from_report(report)
            why = errors.memory_failure(report, report.get("oom_kills", 0))
            if why is not None:
                raise _OutOfMemory(error, why, report.get("memory_limit"))
            raise error
        return install.collect(spec, report, call_dir), report
    except Exception as err:
        if install.disk_full(call_dir):
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
    """Send the client the messages its logging would show (see :mod:`cpldask._logs`);
    the rest stays in the RunRecord."""
    _logs.send(spec.recipe, [e for e in log if e[1] >= spec.log_level],
               threshold=spec.log_level)


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
            _cache.link_or_copy(path, call_dir / name)
            path = call_dir / name
        products.append(install.product_of(tag, path))
    return products, _served_report(hit)


def _served_report(record: dict) -> dict:
    """The report of a call served without running the recipe (from the cache, or
    from its output_dir): no log, no time, the return code of the run that made it."""
    now = time.time()
    return {"log": [], "start": now, "end": now, "max_rss": 0,
            "stat": {"return_code": record.get("run", {}).get("return_code", 0),
                     "user_time": 0.0, "sys_time": 0.0}}


def _provenance(spec: CallSpec, inputs: list[_Input], key: str | None, report: dict, *,
                cache_hit: bool) -> dict:
    """The provenance record of a call: the client's half (recipe, versions, every
    parameter, inputs), the content key and input hashes, and how the run went here."""
    prov = dict(spec.provenance)
    described = []
    for info, i in zip(prov.get("inputs", []), inputs):
        entry = dict(info)
        if "from" in entry:  # a product of an upstream call: known here only
            entry.update(path=i.paths, datamd5=[install.datamd5(p) for p in i.paths])
            if i.upstream is not None:
                entry["from"] = i.upstream  # its content key, not its task key
        elif "in_memory" in entry:  # the file this worker wrote for an HDUList
            entry.update(path=i.paths[0])
        if i.hashes is not None:
            entry["hash"] = i.hashes if "from" in entry else i.hashes[0]
        described.append(entry)
    if spec.memory_retry is not None:  # the first run died for memory: where, why
        prov["memory_retry"] = dict(spec.memory_retry)
    prov.update(
        key=key, hash=_hashing.ALGORITHM, inputs=described, cache_hit=cache_hit,
        run={"host": socket.gethostname(), "worker": _worker_address(),
             "start": report["start"], "end": report["end"],
             "wall_time": report["end"] - report["start"],
             "user_time": report["stat"]["user_time"], "sys_time": report["stat"]["sys_time"],
             "max_rss": report["max_rss"], "return_code": report["stat"]["return_code"]})
    return prov


def _spawn(spec: CallSpec, frames, call_dir: pathlib.Path, server: "forkserver.ForkServer",
           library: forkserver.Library | None) -> dict:
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
           "call_dir": str(call_dir),
           # the call's own limit, or this worker's (a small node's), the lower
           "memory_limit": min((m for m in (spec.memory_limit, _worker_memory_limit())
                                if m is not None), default=None)}
    job_file = call_dir / ".cpldask-job.json"
    job_file.write_text(json.dumps(job))
    env = forkserver.recipe_env(spec.omp_threads, dict(spec.env))
    if not spec.backtrace:
        env["PATH"] = f"{forkserver.no_gdb_dir(call_dir.parent)}:{env.get('PATH', '')}"
    library_changed = False
    while (proc := server.start(job_file, env, spec.recipe, spec.recipe_file)
           if server.alive() else None) is None:
        # that server died or was retired while the call waited (a rebuilt library):
        # the next one runs it, with what is on disk now; the content key names what
        # was there before, so if that differs the products are not cached
        server, now = forkserver.server_for(env, spec.recipe_file)
        library_changed |= now != library
    tail = _LogTail(spec, call_dir / runner.RECIPE_LOG)
    oom_kills = _oom_kills()
    try:
        _wait(proc, spec, tail)
    finally:
        proc.kill()
    oom_kills = _oom_kills() - oom_kills
    report_file = call_dir / "report.json"
    if not report_file.exists():
        tail = (call_dir / runner.LOG).read_text(errors="replace")[-2000:] \
            if (call_dir / runner.LOG).exists() else ""
        if proc.returncode < 0:
            error = errors.crash(-proc.returncode, lines=[tail])
            if -proc.returncode == 9 and oom_kills:  # the whole process, OOM-killed
                raise _OutOfMemory(error, "the recipe process was killed by the "
                                   "kernel's out-of-memory killer", job["memory_limit"])
            raise error from None
        raise RuntimeError(f"{spec.recipe}: the recipe process ended with status "
                           f"{proc.returncode} without a report:\n{tail}")
    report = json.loads(report_file.read_text())
    report["forwarded"] = tail.read  # entries of report["log"] the client already has
    report["library_changed"] = library_changed
    report.update(oom_kills=oom_kills, memory_limit=job["memory_limit"])
    return report


class _LogTail:
    """Sends the client the recipe's messages while it runs, as python-cpl's log
    thread hands them to :mod:`logging`: every :data:`POLL` seconds the lines CPL
    has added to the call's log file (it writes each message at once) are parsed and
    sent: those the client's logging would show, and those of at least the call's
    ``live_level`` for the client's live view (``Result.log_so_far``). A call that
    ends within one poll is not read here: its whole log goes with its end."""

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
        entries = runner.parse_log(lines, self.spec.recipe, self.last)
        if entries:
            self.read += len(entries)
            self.last = entries[-1]
            live = self.spec.live_level
            least = self.spec.log_level if live is None else min(live, self.spec.log_level)
            _logs.send(self.spec.recipe, [e for e in _named(self.spec, entries)
                                          if e[1] >= least],
                       threshold=self.spec.log_level)


def _wait(proc: "forkserver.RecipeProcess", spec: CallSpec, tail: _LogTail) -> None:
    deadline = time.monotonic() + spec.timeout if spec.timeout else None
    while not proc.ended.wait(POLL):
        tail.poll()
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            raise errors.RecipeTimeout(spec.recipe, spec.timeout)
        if _cancelled():
            proc.kill()
            raise _Cancelled()


def _task_key() -> str:
    return _compat.running_task_key() or ""


def _worker_address() -> str | None:
    try:
        from distributed.worker import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None
