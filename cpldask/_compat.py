"""The one place where cpldask leans on parts of dask/distributed that are not
their stable public API. Everything here is small, says which version it was written
against (distributed 2026.8), and what breaks if that part changes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import os
import signal
import sys

# dask's graph nodes: the module is private (underscored) although every graph is made
# of them since dask 2024.11 (recipe.py builds a call's node from them)
from dask._task_spec import Task, TaskRef  # noqa: F401  (re-exported)
from distributed.deploy.subprocess import SubprocessWorker

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_parent() -> None:  # pragma: no cover  (runs in the forked child)
    """In the child between fork and exec: the kernel sends SIGKILL when the thread
    that started it (the cluster's event loop in the user's process) ends — a user
    process killed with SIGKILL leaves no worker behind."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class SubprocessNanny(SubprocessWorker):
    """distributed's :class:`~distributed.deploy.subprocess.SubprocessWorker` (a
    ``dask spec`` process, here running a Nanny) started the way an embedded cluster
    in a user's script needs it.

    distributed's own ``_start`` takes the user's environment as it is. This one

    * passes ``env``: the client's dask configuration (``DASK_INTERNAL_INHERIT_CONFIG``,
      how distributed hands config to its own subprocesses) and quiet logging;
    * starts the process in a session of its own, so that Ctrl-C in the user's
      terminal reaches the user's script, which then closes the cluster in order,
      instead of every worker printing its own KeyboardInterrupt;
    * gives it a parent-death signal, so it never outlives the user's process.

    Relies on ``SubprocessWorker._start`` being the hook that creates
    ``self.process`` (distributed 2022.12 to 2026.8).
    """

    def __init__(self, scheduler: str, *, name=None, worker_kwargs: dict | None = None,
                 env: dict | None = None) -> None:
        super().__init__(scheduler, worker_class="distributed.Nanny", name=name,
                         worker_kwargs=worker_kwargs)
        self.env = dict(env or {})

    async def _start(self) -> None:
        spec = {"cls": self.worker_class, "opts": self.worker_kwargs}
        cmd = [sys.executable, "-m", "dask", "spec", self.scheduler,
               "--spec", json.dumps(spec)]
        self.process = await asyncio.create_subprocess_exec(
            *cmd, env={**os.environ, **self.env}, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)

    async def close(self) -> None:
        """Ask the Nanny to close (``dask spec`` closes its servers on SIGTERM: the
        worker says goodbye to the scheduler, its recipe processes end with it);
        distributed's ``close`` kills whatever is left after ``grace`` seconds. Killed
        at once, the scheduler would log each broken connection to the user's
        terminal after the cluster has closed."""
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self.grace)
            except asyncio.TimeoutError:
                pass
        await super().close()

    #: seconds a Nanny has to close before it is killed
    grace = 10.0


# -- the task a worker thread runs -------------------------------------------------------
# distributed has no public "which task am I, and is it still wanted" for code inside a
# task: ``distributed.worker.thread_state.key`` is set by the worker around each task,
# and ``Worker.state.tasks`` is its state machine's table (distributed 2022.6 to 2026.8).
# If either goes, a cancelled call runs to its end instead of being killed at once, and
# RunRecord.key is empty: both are checked by tests/test_failures.py and test_core.py.
def running_task_key() -> str | None:
    """The key of the task this worker thread runs; None outside a worker task."""
    try:
        from distributed.worker import thread_state

        return str(thread_state.key)
    except (ImportError, AttributeError):
        return None


def running_task_state() -> str | None:
    """The worker's state of the task this thread runs (``"executing"``...,
    ``"forgotten"`` once the scheduler has told the worker to drop it); None outside a
    distributed worker (e.g. dask's threaded scheduler)."""
    try:
        from distributed.worker import get_worker, thread_state

        ts = get_worker().state.tasks.get(thread_state.key)
    except (ImportError, ValueError, AttributeError):
        return None
    return "forgotten" if ts is None else ts.state


# -- dask-jobqueue clusters -----------------------------------------------------------
# Written against dask-jobqueue 0.9.0 on distributed 2026.8. cpldask's own cluster
# classes (cpldask/_jobqueue.py) need nothing private: their jobs' sizes come from
# cpldask's options, their adaptive scaler is the one `adapt()` returns. Only a
# dask-jobqueue cluster made without cpldask, scaled by `set_maxthreads`
# (cpldask.cluster.scale_to_slots), needs this.

def adaptive_of(cluster):
    """The adaptive scaler of a distributed cluster someone else started, or None.

    distributed keeps the scaler that ``Cluster.adapt()`` made in the private
    ``Cluster._adaptive`` (set to None in ``Cluster.__init__``; distributed 2.x to
    2026.8); there is no public way to ask a cluster whether it adapts. Should it be
    renamed, this returns None: ``set_maxthreads(n)`` on an adaptive dask-jobqueue
    cluster made without cpldask then scales it to the jobs for ``n`` slots, and the
    scaler, still running, undoes that on its next tick (tests/test_jobqueue.py's
    ``test_set_maxthreads_on_a_plain_dask_jobqueue_cluster`` notices).
    """
    return getattr(cluster, "_adaptive", None)


def keep_ctrl_c() -> None:
    """Give Ctrl-C back its KeyboardInterrupt after dask-jobqueue was imported.

    dask-jobqueue 0.9.0's ``dask_jobqueue/runner.py`` sets ``signal.signal(SIGINT,
    lambda *_: sys.exit())`` when it is imported, in the main thread (for its own
    runners; dask/dask-jobqueue#696, fixed by #697 after 0.9.0). Ctrl-C then raises
    SystemExit, which nothing treats as an interrupt: ``cpldask run --cluster slurm``
    exited with status 0, its running calls neither cancelled nor reported. Only
    that handler is undone (recognised by its module), so a program's own SIGINT
    handler stays; with a fixed dask-jobqueue this does nothing
    (tests/test_slurm.py's Ctrl-C test notices if the handler moves elsewhere).
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # (dask-jobqueue sets it only from the main thread as well)
    handler = signal.getsignal(signal.SIGINT)
    if getattr(handler, "__module__", None) == "dask_jobqueue.runner":
        signal.signal(signal.SIGINT, signal.default_int_handler)


# -- the scheduler: cpldask's dashboard page (cpldask/_dashboard.py) ---------------------
# A SchedulerPlugin sees task keys and states through public hooks; three things it
# needs have no public API (distributed 2024.11 to 2026.8). Should one change, the
# page lists no run (``task_function``), is not served (``add_http_routes``), or shows
# a call running only once it logs (``executing_for``): all checked by
# tests/test_dashboard.py.
def task_function(ts) -> str | None:
    """``module.qualname`` of the function a scheduler's task (a ``TaskState``) runs;
    None for data or an unknown kind of node.

    ``TaskState.run_spec`` is a ``dask._task_spec.Task`` since dask 2024.11 (the
    scheduler unpickles the graph), whose ``func`` is the function itself.
    """
    func = getattr(getattr(ts, "run_spec", None), "func", None)
    if func is None:
        return None
    return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', '')}"


def add_http_routes(scheduler, routes: list[tuple]) -> None:
    """Serve tornado ``routes`` from ``scheduler``'s HTTP server (its dashboard).

    ``Scheduler.http_application`` is the tornado ``Application`` every route of
    ``distributed.scheduler.http.routes`` and the Bokeh dashboard hang from (set by
    ``ServerNode.start_http_server``, distributed 2.x to 2026.8). Adding routes to it
    after the server started is tornado's public ``Application.add_handlers``; the
    config key is read only when a scheduler starts, so it cannot reach a scheduler
    that is already running elsewhere.
    """
    scheduler.http_application.add_handlers(r".*$", routes)


def executing_for(ts) -> float | None:
    """Seconds the worker holding a scheduler's task has been running it, as of that
    worker's last heartbeat (every 0.5 s on a small cluster, more on a large one); None
    while it waits there for a thread, or once it has ended.

    The scheduler has no "task started" transition: a worker is sent more tasks than
    it has threads, and says which it executes only in its heartbeats, kept in
    ``WorkerState.executing`` (documented, but "unused" by the scheduler itself,
    distributed 2022.x to 2026.8).
    """
    ws = getattr(ts, "processing_on", None)
    executing = getattr(ws, "executing", None) or {}
    return executing.get(ts)


# -- products between workers (cpldask/worker/fetch.py) ----------------------------------
# distributed has no public way to add a request handler to a running worker, nor to
# make a worker-to-worker request from inside a task. ``Server.handlers`` is the dict
# of operations a worker's comm dispatches (``handle_comm``: ``handler(**msg)``, a
# coroutine awaited), ``Worker.rpc`` its pool of connections to other servers
# (``await worker.rpc(address).<op>(**msg)``), ``Worker.loop`` the tornado IOLoop the
# worker runs on (distributed 2022.x to 2026.8). Should one change, a downstream call
# whose input is on another worker's disk fails with an error naming the fetch
# (tests/test_nofs.py notices); calls on a shared filesystem never use them.
def add_worker_handler(worker, op: str, handler) -> None:
    """Serve ``op`` from ``worker``'s port with the coroutine function ``handler``."""
    worker.handlers.setdefault(op, handler)


def worker_request(worker, address: str, op: str, **msg):
    """A concurrent future of ``op(**msg)`` on the server at ``address``, sent from
    ``worker``'s event loop (callable from a task thread; ``.result()`` waits)."""
    async def call():
        return await getattr(worker.rpc(address), op)(**msg)

    return asyncio.run_coroutine_threadsafe(call(), worker.loop.asyncio_loop)


# -- a batch job's worker that drains before its job ends (cpldask.worker.jobend) -----
# Written against distributed 2026.8. A worker leaves through the scheduler's
# retire_workers (a public Scheduler handler; Worker.scheduler is the worker's rpc to
# it): with close_workers=False, remove=False it only marks the worker
# closing_gracefully (no new tasks; the running ones go on, unlike a paused worker,
# which distributed's memory monitor un-pauses) and moves its results elsewhere. The
# count of running tasks is in the worker's state machine (Worker.state). If these
# change, the drain test of tests/test_failures.py fails.
def executing_count(worker) -> int:
    """How many tasks ``worker`` is running now."""
    return int(worker.state.executing_count)


def worker_closing_gracefully(worker) -> bool:
    """Whether ``worker`` is marked closing_gracefully (it takes no new task)."""
    from distributed.core import Status

    return worker.status == Status.closing_gracefully


async def retire_this_worker(worker, *, close: bool, reason: str) -> None:
    """Ask the scheduler to retire ``worker``: its results move to other workers; with
    ``close`` it is then removed and closed (its Nanny too: the job's process ends)."""
    import time

    await worker.scheduler.retire_workers(workers=[worker.address], close_workers=close,
                                          remove=close,
                                          stimulus_id=f"{reason}-{time.time()}")


def has_worker_plugin(dask_scheduler, *, name: str) -> bool:
    """Whether the scheduler gives its workers the plugin registered as ``name``
    (run on the scheduler by ``Client.run_on_scheduler``). ``Scheduler.worker_plugins``
    is the dict, name to pickled plugin, from which every joining worker gets its
    plugins (distributed 2023.x to 2026.8); not public API."""
    return name in getattr(dask_scheduler, "worker_plugins", {})
