"""The scheduler's page of recipe runs: the cpldask calls queued, running, done and
failed, each with its current log line and its products, beside Dask's dashboard.

``cpldask.dashboard_link(page="runs")`` gives its address, ``<dashboard>/cpldask/runs``.
It is a plain HTML page (``_dashboard.html`` beside this file: no external resource,
it works offline) whose script reads ``cpldask/runs.json`` every second and redraws
its table.

What the page shows comes from the scheduler, through public SchedulerPlugin hooks
(:class:`RecipeRuns`):

* the runs and their states: the scheduler's tasks whose function is
  ``cpldask.worker.task.run_recipe`` (``update_graph``, ``transition``): *queued*
  (waiting for upstream calls, for a worker thread, or for a slot of
  ``set_maxthreads``), *running* (a worker thread runs it), *done*, *failed* (the
  error's first line), *cancelled*. The scheduler knows which worker holds a task,
  not whether a thread runs it yet (a worker is sent more tasks than it has
  threads): that comes with the worker's heartbeats (``WorkerState.executing``), or
  with the call's first log message, whichever is first;
* the current log line: the last recipe message the worker sent the client on the
  topic ``cpldask-log`` (with the task key; INFO and above while the recipe runs,
  ``cpldask.live-log-level``), which the scheduler hands to its plugins as it
  publishes it (``log_event``);
* the products with their paths on the worker's disk: an event on ``cpldask-runs``
  sent with the task's end (:func:`cpldask._logs.send_run_event`; the call's
  RunRecord stays on its worker); and from a call that waits a second or more for a
  slot of ``set_maxthreads``, when it waits and when it has one.

The client registers the plugin on whichever scheduler the session uses, the
embedded one or a remote one (:func:`install`, from ``cpldask.get_client``). The
scheduler unpickles it, as it unpickles the tasks themselves: cpldask must be
importable where the scheduler runs. Runs the scheduler has forgotten (their futures
released, or cancelled) stay on the page, the newest ``cpldask.dashboard.history``.

This module imports nothing of the client side: it runs in the scheduler.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import heapq
import logging
import pathlib
import time
import weakref

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado import web

from . import _compat, _config
from ._spec import LOG_TOPIC, RUNS_TOPIC

__all__ = ["RecipeRuns", "install", "has_page", "page_link", "PAGE", "DATA"]

logger = logging.getLogger(__name__)

#: the page and its data, under the dashboard's address (the Status page's folder)
PAGE, DATA = "cpldask/runs", "cpldask/runs.json"
#: the plugin's name on the scheduler
NAME = "cpldask-runs"
#: the function every cpldask task runs, by name: the scheduler imports no worker code
RUN_RECIPE = "cpldask.worker.task.run_recipe"
#: the states of a run, in the page's order
STATES = ("running", "queued", "failed", "done", "cancelled")
#: the characters of a log line or an error the page gets (the rest: the RunRecord)
TEXT_MAX = 500


@dataclasses.dataclass
class Run:
    """One recipe call as the page shows it (times: the scheduler's clock)."""

    key: str
    recipe: str
    submitted: float
    state: str = "queued"
    processing: float | None = None  # sent to a worker (maybe behind its other tasks)
    began: float | None = None  # a worker thread runs it
    waiting_for_slot: bool = False  # of set_maxthreads, on its worker
    ended: float | None = None
    worker: str | None = None
    line: list | None = None  # (logger name, level, function, message, created)
    products: list = dataclasses.field(default_factory=list)  # [tag, path]
    cache_hit: bool = False
    error: str | None = None
    lost: int = 0  # times its worker left while it ran (it was run again)


class RecipeRuns(SchedulerPlugin):
    """The recipe runs of one scheduler, and the page that shows them.

    Parameters
    ----------
    history : int
        Runs kept on the page after the scheduler has forgotten them.
    level : int
        The lowest level of a recipe message shown as a run's current log line (the
        client's logging may make lower ones travel too).

    Examples
    --------
    >>> client.register_plugin(RecipeRuns(history=1000), name=NAME)  # doctest: +SKIP
    """

    #: a second client of the same scheduler keeps the first one's plugin (and page)
    idempotent = True

    def __init__(self, *, history: int = 1000, level: int = logging.INFO) -> None:
        self.history_size = int(history)
        self.level = int(level)
        self.scheduler = None
        self.runs: dict[str, Run] = {}  # the runs the scheduler holds
        self.history: collections.OrderedDict[str, Run] = collections.OrderedDict()

    # -- the scheduler's hooks ---------------------------------------------------------
    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        for key, ts in list(scheduler.tasks.items()):  # calls made before it came
            if self._track(key, ts) is not None:
                self.transition(key, "released", ts.state, stimulus_id="cpldask-runs")
        # one pattern for any dashboard prefix (dask scheduler --dashboard-prefix)
        _compat.add_http_routes(scheduler, [
            (r"(?:/.*)?/" + PAGE, _PageHandler),
            (r"(?:/.*)?/" + DATA.replace(".", r"\."), _DataHandler, {"plugin": self})])

    def update_graph(self, scheduler, *, tasks=(), **kwargs) -> None:
        for key in tasks:
            if key not in self.runs:
                self._track(key, scheduler.tasks.get(key))

    def transition(self, key, start, finish, *args, stimulus_id=None, **kwargs) -> None:
        run = self.runs.get(key)
        if run is None:
            return
        now = time.time()
        if start == "processing" and finish == "released" and run.worker \
                and self.scheduler is not None and run.worker not in self.scheduler.workers:
            run.lost += 1  # its worker left (job ended, killed) while it ran
        if finish == "processing":  # running only once a worker thread takes it
            run.state, run.processing, run.began, run.ended = "queued", now, None, None
            run.waiting_for_slot = False
            ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
            if ts is not None and ts.processing_on is not None:
                run.worker = ts.processing_on.address
        elif finish in ("waiting", "queued", "no-worker"):  # again, after a lost worker
            run.state, run.processing, run.began, run.ended = "queued", None, None, None
            run.waiting_for_slot = False
        elif finish == "memory":
            run.state, run.ended = "done", now
        elif finish == "erred":
            run.state, run.ended, run.error = "failed", now, self._error(key)
        elif finish == "forgotten":
            if run.state in ("queued", "running"):
                run.state, run.ended = "cancelled", now
            self._retire(run)

    def log_event(self, topic: str, msg) -> None:
        if topic not in (LOG_TOPIC, RUNS_TOPIC) or not isinstance(msg, dict):
            return
        run = self.runs.get(msg.get("key"))
        if run is None:
            return
        run.worker = msg.get("worker") or run.worker  # added by the scheduler
        if topic == LOG_TOPIC:
            shown = [e for e in msg.get("entries") or () if e[1] >= self.level]
            if shown:
                run.line = list(shown[-1])
            if msg.get("entries") and not run.waiting_for_slot:  # the recipe runs
                self._running(run, time.time())
        elif msg.get("event") == "waiting" and run.state in ("queued", "running"):
            run.state, run.began, run.waiting_for_slot = "queued", None, True
        elif msg.get("event") == "start":
            run.waiting_for_slot = False
            self._running(run, time.time())
        elif msg.get("event") == "done":
            run.products = [list(p) for p in msg.get("products") or []]
            run.cache_hit = bool(msg.get("cache_hit"))

    def restart(self, scheduler) -> None:
        for run in list(self.runs.values()):
            self.transition(run.key, run.state, "forgotten", stimulus_id="restart")

    # -- bookkeeping ----------------------------------------------------------------------
    def _track(self, key, ts) -> Run | None:
        if not isinstance(key, str) or ts is None or _compat.task_function(ts) != RUN_RECIPE:
            return None
        # task keys are <recipe>-<hash> (cpldask._call): CPL recipe names have no '-'
        run = self.runs[key] = Run(key, key.partition("-")[0], time.time())
        self.history.pop(key, None)  # the same call made again
        return run

    @staticmethod
    def _running(run: Run, since: float) -> None:
        if run.state == "queued" and run.processing is not None:
            run.state, run.began = "running", since

    def _notice_running(self, now: float) -> None:
        """Calls that a worker thread has taken since, as its heartbeats say."""
        for run in self.runs.values():
            if run.state == "queued" and run.processing is not None \
                    and not run.waiting_for_slot:
                seconds = _compat.executing_for(self.scheduler.tasks.get(run.key))
                if seconds is not None:
                    self._running(run, now - seconds)

    def _retire(self, run: Run) -> None:
        del self.runs[run.key]
        self.history[run.key] = run
        while len(self.history) > self.history_size:
            self.history.popitem(last=False)

    def _error(self, key) -> str | None:
        ts = self.scheduler.tasks.get(key) if self.scheduler is not None else None
        if ts is None:
            return None
        text = (ts.exception_text or "").strip()
        blame = ts.exception_blame
        if blame is not None and blame is not ts:
            text = f"upstream call {blame.key} failed: {text}"
        return text[:TEXT_MAX]

    # -- what the page gets -------------------------------------------------------------
    def view(self, *, limit: int = 200) -> dict:
        """The page's data: the number of runs in each state, and the first ``limit``
        of each (running and queued: oldest first; the others: newest first)."""
        now = time.time()
        if self.scheduler is not None:
            self._notice_running(now)
        by_state: dict[str, list[Run]] = {s: [] for s in STATES}
        for run in [*self.runs.values(), *self.history.values()]:
            by_state[run.state].append(run)
        order = {"running": lambda r: r.began or 0.0, "queued": lambda r: r.submitted}
        rows = []
        for state in STATES:
            key = order.get(state, lambda r: -(r.ended or 0.0))
            rows += [self._row(r) for r in heapq.nsmallest(limit, by_state[state], key=key)]
        return {"now": now, "limit": limit,
                "counts": {s: len(v) for s, v in by_state.items()}, "runs": rows}

    def _row(self, run: Run) -> dict:
        row = dataclasses.asdict(run)
        ts = self.scheduler.tasks.get(run.key) if self.scheduler is not None else None
        if run.line is not None:
            name, level, func, text, created = run.line
            row["line"] = {"level": logging.getLevelName(level), "function": func,
                           "message": str(text)[:TEXT_MAX], "time": created}
        row["detail"] = _detail(run, ts)
        return row


def _detail(run: Run, ts) -> str:
    """What a queued or running call waits for, in words."""
    if run.state == "queued" and ts is not None:
        if ts.waiting_on:
            n = len(ts.waiting_on)
            return f"waiting for {n} upstream call{'s' if n != 1 else ''}"
        if ts.state == "no-worker":
            return "no worker can run it (the resources it asks for?)"
        if run.waiting_for_slot:
            return f"on {run.worker}, waiting for a slot (set_maxthreads)"
        if ts.state == "processing" and run.worker:
            return f"on {run.worker}, waiting for a thread"
        return "waiting for a worker thread"
    if run.state == "done" and run.cache_hit:
        return "from the product cache"
    return ""


# -- the HTTP side --------------------------------------------------------------------------
@functools.cache
def _page_html() -> bytes:
    return pathlib.Path(__file__).with_name("_dashboard.html").read_bytes()


class _PageHandler(web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(_page_html())


class _DataHandler(web.RequestHandler):
    def initialize(self, plugin: RecipeRuns) -> None:
        self.plugin = plugin

    def get(self) -> None:
        try:
            limit = max(1, int(self.get_argument("limit", "200")))
        except ValueError:
            raise web.HTTPError(400, "limit must be a whole number") from None
        self.set_header("Cache-Control", "no-store")
        self.write(self.plugin.view(limit=limit))  # a dict: tornado sends JSON


# -- the client side ------------------------------------------------------------------------
#: client -> whether its scheduler has the plugin (weak: a closed client is forgotten)
_installed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def install(client) -> None:
    """Register :class:`RecipeRuns` on ``client``'s scheduler, once per client, unless
    ``cpldask.dashboard.runs-page`` is false. A scheduler that cannot take it (no
    cpldask where it runs) costs the page only: a warning, and calls run as before."""
    if client in _installed:
        return
    _installed[client] = False
    if not _config.get("dashboard.runs-page"):
        return
    try:
        plugin = RecipeRuns(history=int(_config.get("dashboard.history")),
                            level=_config.log_level("live-log-level") or logging.INFO)
        client.register_plugin(plugin, name=NAME)
        _installed[client] = True
    except Exception as err:  # noqa: BLE001  (whatever the scheduler raised)
        logger.warning("cpldask: no page of recipe runs on the dashboard of %s (%s: %s); "
                       "install cpldask where the scheduler runs, or set "
                       "cpldask.dashboard.runs-page to false", client.scheduler.address,
                       type(err).__name__, err)


def lost_calls(client, keys) -> dict[str, int]:
    """How often each of these calls was lost with its worker (a batch job that ended
    or was killed while it ran) and run again: ``{key: times}``, those lost at least
    once; empty where the scheduler has no page of recipe runs."""
    if not has_page(client):
        return {}

    def count(dask_scheduler, keys):
        plugin = dask_scheduler.plugins.get(NAME)
        runs = {**plugin.history, **plugin.runs} if plugin is not None else {}
        return {k: runs[k].lost for k in keys if k in runs and runs[k].lost}

    try:
        return client.run_on_scheduler(count, keys=[str(k) for k in keys])
    except Exception:  # noqa: BLE001  (a summary line is not worth a failure)
        return {}


def has_page(client) -> bool:
    """Whether :func:`install` gave ``client``'s scheduler the page of recipe runs."""
    return _installed.get(client, False)


def page_link(dashboard_link: str, page: str) -> str:
    """The address of dashboard ``page`` ("runs": cpldask's; "status", "workers", ...:
    Dask's) given the Status page's ``dashboard_link``.

    Examples
    --------
    >>> page_link("http://127.0.0.1:8787/status", "runs")
    'http://127.0.0.1:8787/cpldask/runs'
    """
    base = dashboard_link[:-len("status")] if dashboard_link.endswith("/status") \
        else dashboard_link.rstrip("/") + "/"
    return base + (PAGE if page == "runs" else page)
