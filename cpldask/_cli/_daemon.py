"""``cpldask cluster start|status|stop``: a cluster that outlives the command.

``start`` runs a scheduler and its workers in a background process, the *server*:
the embedded cluster's workers (``--cluster local``) or a dask-jobqueue cluster
whose batch jobs adapt to the work (``--cluster slurm``, ``pbs``, ``sge``, ``lsf``,
with the ``cpldask.jobqueue.*`` settings). The server writes a scheduler file,
distributed's JSON (what ``distributed.Client(scheduler_file=...)``, ``dask worker
--scheduler-file`` and cpldask's ``cpldask.scheduler-file`` key read), with a
``cpldask`` section of its own (pid, host, system, slots, log); it runs until
``stop`` or a SIGTERM, then closes the cluster (its batch jobs are cancelled) and
removes the file. Later ``cpldask run/reduce --scheduler-file FILE``, and any
session with ``cpldask.scheduler-file`` set, join it.

Files, by default (``--scheduler-file`` or the ``cpldask.scheduler-file`` key move
them all)::

    ~/.cpldask/scheduler.json    the scheduler file
    ~/.cpldask/scheduler.log     the server's log (appended to)
    ~/.cpldask/scheduler-jobs/   the batch jobs' own logs (unless
                                 jobqueue.<system>.log-directory is set)

How ``start`` knows that the server is up: the server inherits a pipe on which it
writes ``pid N``, then ``ready ADDRESS`` once the scheduler file is written, or
``error MESSAGE``; the end of the pipe without either means it died, and its log
says why. The server is detached: a session of its own, and forked once more at its
start, so that it is no one's child but init's and can never take a terminal.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import dask.config
import distributed
from rich.console import Console

from .. import __version__, _cluster, _config
from ._batch import EXIT_FAILED, EXIT_OK, QUIET_LOGGING, max_slots, start_batch_cluster
from ._inputs import UsageError

__all__ = ["DEFAULT_FILE", "scheduler_file", "start", "status", "stop", "serve"]

#: where ``cluster start`` writes when neither --scheduler-file nor the
#: ``cpldask.scheduler-file`` key says: the home folder, shared by the login and
#: compute nodes of most clusters, and not cleaned as /tmp is
DEFAULT_FILE = "~/.cpldask/scheduler.json"

#: seconds a scheduler has to answer before status/stop/start call it gone
ANSWER_TIMEOUT = 5

#: the server's command line; -c rather than -m, so that the module the scheduler's
#: functions (_describe, _stop_server) are pickled from is this one, not __main__
_SERVE = "import sys; from cpldask._cli._daemon import serve; serve(sys.argv[1:])"

logger = logging.getLogger("cpldask.cluster-server")


def scheduler_file(option: str | None) -> pathlib.Path:
    """The scheduler file: ``option``, else ``cpldask.scheduler-file``, else
    :data:`DEFAULT_FILE`."""
    path = option or _config.get("scheduler-file") or DEFAULT_FILE
    return pathlib.Path(path).expanduser().absolute()


def log_file(path: pathlib.Path) -> pathlib.Path:
    """The server's log, beside its scheduler file."""
    return path.with_suffix(".log")


def _read(path: pathlib.Path) -> dict | None:
    """The scheduler file's content; None when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UsageError(f"{path}: {err.strerror}") from err
    try:
        doc = json.loads(text)
        if not isinstance(doc.get("address"), str):
            raise ValueError("no 'address'")
    except (ValueError, AttributeError) as err:
        raise UsageError(f"{path} is not a scheduler file (distributed's JSON with an "
                         f"'address'): {err}") from err
    return doc


def _connect(doc: dict) -> distributed.Client | None:
    """A client of the file's scheduler, or None when it does not answer."""
    try:
        return distributed.Client(doc["address"], timeout=ANSWER_TIMEOUT,
                                  set_as_default=False)
    except OSError:  # (TimeoutError is one)
        return None


def _file_option(path: pathlib.Path) -> str:
    """`` --scheduler-file PATH`` unless ``path`` is what the commands use anyway."""
    return "" if path == scheduler_file(None) else f" --scheduler-file {path}"


# -- cpldask cluster start --------------------------------------------------------------
def start(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``cpldask cluster start [--cluster SYSTEM] [--slots N] [--scheduler-file F]
    [--host H] [--interface I] [--timeout S]``."""
    path = scheduler_file(args.scheduler_file)
    doc = _read(path)
    if doc is not None:
        client = _connect(doc)
        if client is not None:
            client.close()
            raise UsageError(f"a cluster runs already: {path} names {doc['address']}; "
                             f"stop it first ('cpldask cluster stop{_file_option(path)}')"
                             " or give another --scheduler-file")
        err.print(f"cpldask: {path} named {doc['address']}, which no longer answers; "
                  "replacing it", markup=False, highlight=False, soft_wrap=True)
        path.unlink(missing_ok=True)
    if args.interface and args.cluster == "local":
        raise UsageError("--interface is for batch systems; the local cluster listens "
                         "on --host")
    if args.cluster == "local" and _config.get("local.tls"):
        raise UsageError("cpldask.local.tls: the temporary certificate of an embedded "
                         "cluster lives in its process only, so no later command could "
                         "join it; unset the key for 'cpldask cluster start'")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{path.parent}: cannot create ({exc.strerror})") from exc
    spec = {"system": args.cluster, "slots": args.slots, "host": args.host,
            "interface": args.interface, "scheduler_file": str(path)}
    log = log_file(path)
    messages = _launch(spec, log, args.timeout)
    if "ready" not in messages:
        _report_start_failure(messages, log, args.timeout, err)
        return EXIT_FAILED
    client = _connect(_read(path) or {"address": messages["ready"]})
    if client is None:  # it answered the server's own client a moment ago
        err.print(f"cpldask: the scheduler at {messages['ready']} does not answer; see "
                  f"{log}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_FAILED
    with client:
        facts = _facts(path, _read(path) or {}, client)
    out.print(f"started a {args.cluster} cluster (pid {facts['pid']}): "
              f"{facts['address']}", markup=False, highlight=False, soft_wrap=True)
    _print_facts(facts, out)
    out.print(f"join it:  cpldask run/reduce ... --scheduler-file {path}\n"
              f"          or the config key cpldask.scheduler-file={path}\n"
              f"stop it:  cpldask cluster stop{_file_option(path)}",
              markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK


def _server_env() -> dict[str, str]:
    """The server's environment: this one, with this session's dask configuration
    (as distributed hands it to its own subprocesses), so that a program that calls
    ``handle_args`` after ``dask.config.set(...)`` starts the server it configured."""
    env = dict(os.environ)
    config = _cluster.jsonable_config()
    # The console script keeps distributed's INFO lines off the user's terminal;
    # the server writes a log file, where workers and jobs coming and going belong,
    # and its batch jobs inherit its environment (their logs too). (The logging
    # section of the configuration files is read by the server itself.)
    if env.get("DASK_LOGGING") == QUIET_LOGGING:
        del env["DASK_LOGGING"]
        config.pop("logging", None)
    env["DASK_INTERNAL_INHERIT_CONFIG"] = dask.config.serialize(config)
    return env


def _launch(spec: dict, log: pathlib.Path, timeout: float) -> dict[str, str]:
    """Start the server and wait for its word: ``{'pid': ..., 'ready': address}``,
    or ``'error'``, ``'eof'`` (it died) or neither (no word within ``timeout``)."""
    read_end, write_end = os.pipe()
    try:
        with log.open("ab") as log_out:
            log_out.write(f"\n== cpldask {__version__}: cluster start {json.dumps(spec)} "
                          f"at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            log_out.flush()
            # a session of its own: Ctrl-C and a closed terminal stay here
            first = subprocess.Popen(
                [sys.executable, "-c", _SERVE, json.dumps(spec), str(write_end)],
                stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                pass_fds=(write_end,), start_new_session=True, env=_server_env())
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # the server holds the only writing end now
    messages: dict[str, str] = {}
    try:
        messages = _messages(read_end, timeout)
    except KeyboardInterrupt:
        _stop_starting(messages)
        raise
    finally:
        os.close(read_end)
        first.wait()  # exited as soon as it had forked the server
    if not {"ready", "error", "eof"} & messages.keys():
        _stop_starting(messages)  # no word in time: not left running unseen
    return messages


def _messages(fd: int, timeout: float) -> dict[str, str]:
    """The server's lines ``WORD REST`` as ``{WORD: REST}``, until ``ready`` or
    ``error``, the end of the pipe (``eof``), or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    messages: dict[str, str] = {}
    buffer = b""
    while not {"ready", "error", "eof"} & messages.keys():
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            messages["eof"] = ""
            break
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            word, _, rest = line.decode(errors="replace").partition(" ")
            messages[word] = rest
    return messages


def _stop_starting(messages: dict[str, str]) -> None:
    """Ask a server that has not said ready (or was interrupted) to stop."""
    pid = messages.get("pid")
    if pid:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


def _report_start_failure(messages: dict[str, str], log: pathlib.Path, timeout: float,
                          err: Console) -> None:
    if "error" in messages:
        why = messages["error"]
    elif "eof" in messages:
        why = "the server ended before its scheduler answered"
    else:
        why = f"no answer within {timeout:g} s (the server was told to stop)"
    err.print(f"cpldask: the cluster did not start: {why}\n  log: {log}", markup=False,
              highlight=False, soft_wrap=True)
    if "eof" not in messages:
        return
    try:  # the server said nothing: its last words are in the log
        tail = log.read_text(errors="replace").splitlines()[-12:]
    except OSError:
        tail = []
    for line in tail:
        err.print(f"    {line}", markup=False, highlight=False, soft_wrap=True,
                  style="dim")


# -- the server -------------------------------------------------------------------------
#: the cluster this process serves (the server's only one, set once by serve()),
#: for the functions that status and stop run on its scheduler
_serving: dict = {}


def serve(argv: list[str]) -> None:
    """The server: ``python -c ... SPEC_JSON PIPE_FD`` (see :func:`_launch`)."""
    spec, pipe_fd = json.loads(argv[0]), int(argv[1])
    if os.fork() > 0:  # the first process returns to `cluster start` at once
        os._exit(0)
    pipe = os.fdopen(pipe_fd, "w", buffering=1)
    pipe.write(f"pid {os.getpid()}\n")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: "
                                           "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    stopping = threading.Event()
    wake = _stop_on_signals(stopping)
    path = pathlib.Path(spec["scheduler_file"])
    cluster = close = None
    try:
        cluster, client, close, slots = _start_cluster(spec)
        if stopping.is_set():
            raise KeyboardInterrupt("stopped while starting")
        doc = _write_file(path, client, spec, slots)
    except BaseException as exc:  # noqa: BLE001  (the reason goes to `cluster start`)
        logger.exception("the cluster did not start")
        pipe.write(f"error {_reason(exc)}\n")
        if close is not None:
            close()
        sys.exit(1)
    _serving.update(cluster=cluster, system=spec["system"], slots=slots)
    logger.info("ready: %s, %s, up to %d slots, scheduler file %s",
                doc["address"], spec["system"], slots, path)
    pipe.write(f"ready {doc['address']}\n")
    pipe.close()
    while not stopping.is_set():
        # a signal writes to `wake`; else a look every 5 s at the scheduler
        if select.select([wake], [], [], 5.0)[0]:
            os.read(wake, 64)
        if cluster.scheduler.status.name != "running":
            logger.warning("the scheduler closed (a client's shutdown()?); stopping")
            break
    logger.info("stopping: closing the cluster%s", " and cancelling its jobs"
                if spec["system"] != "local" else "")
    try:
        close()
    finally:
        _remove_file(path, doc["id"])
        logger.info("stopped")


def _reason(exc: BaseException) -> str:
    """One line: the exception and, when it wraps others, the first one raised
    (distributed's "Cluster failed to start" hides an OSError of the bind)."""
    text = f"{type(exc).__name__}: {exc}"
    root = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    if root is not exc:
        text += f" (the first error: {type(root).__name__}: {root})"
    return " ".join(text.split())


def _stop_on_signals(stopping: threading.Event) -> int:
    """SIGTERM and SIGINT set ``stopping``; returns a file descriptor that becomes
    readable when a signal arrives (in whichever thread), to wake the main loop."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    return wake_read


def _start_cluster(spec: dict):
    """``(cluster, client, close, slots)`` of the cluster ``spec`` asks for."""
    # the server is no client of another cluster, whatever its environment says
    dask.config.set({"cpldask.scheduler-address": None, "cpldask.scheduler-file": None})
    system, host = spec["system"], spec["host"]
    if system == "local":
        cores = _cluster._cores()
        slots = int(spec["slots"] or _config.get("local.slots") or cores)
        setting = _config.get("omp-num-threads")
        omp = int(setting) if setting not in (None, "auto") else max(1, cores // slots)
        # Threads = slots exactly (2 workers for an even count, else 1), so that no
        # semaphore is needed: the one the embedded cluster would make for 3 slots
        # on 2x2 threads lives in this process, and joining clients would not see
        # it. Their calls name no OpenMP threads (the client does not know this
        # machine's cores): the workers' OMP_NUM_THREADS, which the Nanny sets from
        # pre-spawn-environ, is cores // slots as for the embedded cluster.
        n_workers = 2 if slots % 2 == 0 else 1
        settings = {"cpldask.local.slots": slots, "cpldask.local.n-workers": n_workers,
                    "distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": omp}
        if host:
            settings["cpldask.local.host"] = host
        dask.config.set(settings)  # this process's whole purpose: set for good
        client = _cluster.get_client()
        client.wait_for_workers(n_workers, timeout=120)
        return _cluster.embedded_cluster(), client, _cluster.close, slots
    options: dict = {}
    if host:
        options["scheduler_options"] = {"host": host}
    if spec["interface"]:
        options["interface"] = spec["interface"]
    # dask-jobqueue keeps only distributed's errors by default; in the server's log
    # the scheduler's INFO lines (workers, i.e. jobs, joining and leaving) belong
    options["silence_logs"] = "info"
    if not dask.config.get(f"jobqueue.{system}.log-directory", None):
        path = pathlib.Path(spec["scheduler_file"])
        options["log_directory"] = str(path.with_name(f"{path.stem}-jobs"))
    batch = start_batch_cluster(system, spec["slots"], **options)
    # ...but not the line per function a client runs on the scheduler (logged as
    # distributed.worker's: cpldask run asks which calls run every 0.5 s); this
    # process has no worker of its own
    logging.getLogger("distributed.worker").setLevel(logging.WARNING)
    return batch, batch.client, batch.close, max_slots(batch)


def _write_file(path: pathlib.Path, client: distributed.Client, spec: dict,
                slots: int) -> dict:
    """Write the scheduler file, whole or not at all, and refuse to replace one that
    another server wrote meanwhile."""
    info = client.scheduler_info()
    doc = {key: info[key] for key in ("type", "id", "address", "services", "started")
           if key in info}
    doc["workers"] = {}  # as distributed writes it: the address is what readers use
    doc["cpldask"] = {"pid": os.getpid(), "host": socket.gethostname(),
                      "system": spec["system"], "slots": slots,
                      "log": str(log_file(path)), "dashboard": client.dashboard_link,
                      "version": __version__}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    try:
        os.link(tmp, path)  # fails if the file exists: never two servers on one file
    except FileExistsError as err:
        raise FileExistsError(f"{path} appeared while this cluster started (another "
                              "'cpldask cluster start'?)") from err
    except OSError:  # a filesystem without hard links
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return doc


def _remove_file(path: pathlib.Path, scheduler_id: str) -> None:
    """Remove the scheduler file if it still names this server's scheduler."""
    try:
        if json.loads(path.read_text()).get("id") == scheduler_id:
            path.unlink()
    except (OSError, ValueError):
        pass


def _describe(dask_scheduler) -> dict:
    """Runs on the scheduler (in the server): what status shows beyond workers."""
    cluster = _serving.get("cluster")
    jobs = []
    if cluster is not None and _serving["system"] != "local":
        names = {str(ws.name): address for address, ws in dask_scheduler.workers.items()}
        for name, job in list(cluster.workers.items()):
            job_id = getattr(job, "job_id", None)
            if job_id:
                worker = names.get(str(name)) or next(
                    (a for n, a in names.items() if n.rsplit("-", 1)[0] == str(name)), None)
                jobs.append({"id": str(job_id), "worker": worker})
    jobs.sort(key=lambda job: (len(job["id"]), job["id"]))  # numbers, as squeue's
    states = collections.Counter(ts.state for ts in dask_scheduler.tasks.values())
    return {"jobs": jobs, "adapting": bool(getattr(cluster, "adapting", False)),
            "tasks": dict(states)}


def _stop_server(dask_scheduler) -> None:
    """Runs on the scheduler (in the server): stop the server, as SIGTERM does."""
    os.kill(os.getpid(), signal.SIGTERM)


# -- cpldask cluster status ---------------------------------------------------------------
def _facts(path: pathlib.Path, doc: dict, client: distributed.Client) -> dict:
    """What ``status`` shows, as JSON-able facts."""
    meta = doc.get("cpldask") or {}
    workers = client.scheduler_info(n_workers=-1)["workers"]
    try:
        server = client.run_on_scheduler(_describe) if meta else {}
    except Exception:  # noqa: BLE001  (a scheduler that cannot run cpldask code)
        server = {}
    info_started = doc.get("started")
    return {"scheduler_file": str(path), "address": client.scheduler.address,
            "dashboard": client.dashboard_link, "system": meta.get("system"),
            "pid": meta.get("pid"), "host": meta.get("host"), "log": meta.get("log"),
            "uptime_s": round(time.time() - info_started, 1) if info_started else None,
            "slots": meta.get("slots"),
            "slots_connected": sum(w.get("nthreads", 0) for w in workers.values()),
            "workers": len(workers), "jobs": server.get("jobs", []),
            "adapting": server.get("adapting"), "tasks": server.get("tasks", {})}


def _print_facts(facts: dict, out: Console) -> None:
    system = facts["system"] or "not started by cpldask"
    rows = [("scheduler", f"{facts['address']}  ({system}"
             + (f", pid {facts['pid']} on {facts['host']}" if facts["pid"] else "")
             + (f", up {_duration(facts['uptime_s'])}" if facts["uptime_s"] else "")
             + ")"),
            ("dashboard", facts["dashboard"] or "none")]
    slots = f"{facts['slots_connected']} connected"
    if facts["slots"]:
        slots += f", up to {facts['slots']}" + (" (adaptive)" if facts["adapting"] else "")
    rows += [("slots", slots), ("workers", str(facts["workers"]))]
    if facts["system"] not in (None, "local"):
        jobs = facts["jobs"]
        waiting = sum(1 for job in jobs if not job["worker"])
        rows.append(("jobs", f"{len(jobs)}"
                     + (f": {' '.join(job['id'] for job in jobs)}" if jobs else "")
                     + (f" ({waiting} not connected yet)" if waiting else "")))
    if facts["tasks"]:
        rows.append(("tasks", ", ".join(f"{n} {state}" for state, n
                                        in sorted(facts["tasks"].items()))))
    rows.append(("file", facts["scheduler_file"]))
    if facts["log"]:
        rows.append(("log", facts["log"]))
    for label, value in rows:
        out.print(f"{label:<10} {value}", markup=False, highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def status(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``cpldask cluster status [--scheduler-file F] [--json]``: exit status 1 when no
    cluster runs."""
    path = scheduler_file(args.scheduler_file)
    doc = _read(path)
    if doc is None:
        err.print(f"cpldask: no cluster: {path} does not exist (start one with 'cpldask "
                  f"cluster start{_file_option(path)}')", markup=False, highlight=False,
                  soft_wrap=True)
        return EXIT_FAILED
    client = _connect(doc)
    if client is None:
        err.print(f"cpldask: no cluster: {path} names {doc['address']}, which does not "
                  "answer (it ended without 'cpldask cluster stop'; that command removes "
                  "the file)", markup=False, highlight=False, soft_wrap=True)
        return EXIT_FAILED
    with client:
        facts = _facts(path, doc, client)
    if args.json:
        out.print_json(json.dumps(facts))
    else:
        _print_facts(facts, out)
    return EXIT_OK


# -- cpldask cluster stop -------------------------------------------------------------------
def stop(args: argparse.Namespace, out: Console, err: Console) -> int:
    """``cpldask cluster stop [--scheduler-file F] [--timeout S]``."""
    path = scheduler_file(args.scheduler_file)
    doc = _read(path)
    if doc is None:
        out.print(f"no cluster to stop: {path} does not exist", markup=False,
                  highlight=False, soft_wrap=True)
        return EXIT_OK
    meta = doc.get("cpldask") or {}
    pid = meta.get("pid") if meta.get("host") == socket.gethostname() else None
    client = _connect(doc)
    if client is None and not (pid and _alive(pid)):
        path.unlink(missing_ok=True)
        out.print(f"no cluster to stop: {doc['address']} does not answer; removed its "
                  f"file {path}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_OK
    jobs = []
    if client is not None:
        with client:
            jobs = _facts(path, doc, client)["jobs"]
            if not meta:  # a scheduler cpldask did not start: Dask's own way
                client.shutdown()
                path.unlink(missing_ok=True)
            elif not pid:  # on another host: through the scheduler
                client.run_on_scheduler(_stop_server)
    if pid:
        os.kill(pid, signal.SIGTERM)
    if not _wait_stopped(pid, path, doc.get("id"), args.timeout):
        err.print(f"cpldask: the cluster has not stopped within {args.timeout} s "
                  f"(server pid {pid}, {meta.get('host')}); see {meta.get('log')}",
                  markup=False, highlight=False, soft_wrap=True)
        return EXIT_FAILED
    cancelled = f"; jobs {' '.join(j['id'] for j in jobs)} cancelled" if jobs else ""
    out.print(f"stopped the {meta.get('system', 'Dask')} cluster at {doc['address']}"
              f"{cancelled}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie has ended: the server is no one's child
    but init's, which reaps it in its own time)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # (someone else's: not our server)
        return False
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc: the signal's answer
        return True
    return stat[stat.rindex(")") + 2] not in "ZX"


def _wait_stopped(pid: int | None, path: pathlib.Path, scheduler_id: str | None,
                  timeout: float) -> bool:
    """Wait for the server process to end (on this host) and its file to go."""
    deadline = time.monotonic() + timeout
    if pid and not _wait_process(pid, timeout):
        return False
    while time.monotonic() < deadline:  # another host's server: its file goes last
        try:
            if json.loads(path.read_text()).get("id") != scheduler_id:
                return True
        except (OSError, ValueError):
            return True
        time.sleep(0.2)
    return False


def _wait_process(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to end (a pidfd becomes readable
    then; without pidfds, Linux < 5.3, a look every 0.2 s)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)
