"""Client side: following running recipe calls, with the time left.

:class:`Tracker` is what a progress display knows of a set of calls — which of them
run since when (asked of the scheduler), what each is expected to take and the time
left for all (:mod:`cpldask._estimate`, from earlier runs of the same recipes). The
terminal display of ``cpldask run`` / ``reduce`` (:mod:`cpldask._cli._batch`) and the
notebook display, :func:`progress`, are both drawn from it.

The graph of the calls needs no telling: a call given another's :class:`Result` as
input names that call's task key in its provenance (``inputs[i]["from"]``).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import distributed

from . import _cluster, _config
from ._estimate import (Call, Features, History, Run, TimeLeft, describe_left, format_seconds,
                        remaining, time_left as _time_left)
from .result import Result

__all__ = ["Job", "Tracker", "progress", "counts"]

log = logging.getLogger("cpldask.progress")

#: seconds between two questions to the scheduler about its worker threads
SLOTS_EVERY = 5.0
#: running calls a display lists with their current message (the first ones)
SHOWN_RUNNING = 8


@dataclasses.dataclass(eq=False)
class Job:
    """One submitted recipe call, as a display follows it.

    Attributes
    ----------
    label : str
        How the call is named in the display and the table (a SOF, a data set).
    result : cpldask.Result
        The pending call.
    submitted, started, ended : float
        Client-side :func:`time.monotonic` instants: when the call was made, when it
        was first seen on a worker, when it was seen done.
    """

    label: str
    result: Result
    submitted: float = dataclasses.field(default_factory=time.monotonic)
    started: float | None = None
    ended: float | None = None

    @property
    def state(self) -> str:
        """``'queued'``, ``'running'``, ``'done'``, ``'failed'`` or ``'cancelled'``."""
        status = self.result.status
        if status == "finished":
            return "done"
        if status == "cancelled":
            return "cancelled"
        if status in ("error", "lost"):
            return "failed"
        return "running" if self.started is not None else "queued"

    @property
    def duration(self) -> float | None:
        """Seconds the call took: the recipe's own run time if it succeeded, else
        from when it was seen running (or submitted) to when it ended."""
        if self.state == "done":
            record = self.result.record
            return record.end - record.start
        if self.ended is None:
            return None
        return self.ended - (self.started if self.started is not None else self.submitted)


def counts(jobs: Sequence[Job]) -> dict[str, int]:
    """Jobs per state (a cancelled call counts as failed)."""
    out = dict.fromkeys(("queued", "running", "done", "failed"), 0)
    for job in jobs:
        state = job.state
        out["failed" if state == "cancelled" else state] += 1
    return out


class Tracker:
    """Which of ``jobs`` run since when, and how long they and all of them have left.

    Parameters
    ----------
    jobs : sequence of Job
        The calls, submitted.
    history : History, optional
        Earlier runs. Default: the product cache's and the calls' output folders'
        provenance records (:meth:`History.from_disk`), read at the first estimate.
    client : distributed.Client, optional
        Where the calls run (default: cpldask's client).

    Examples
    --------
    >>> tracker = Tracker([Job("bias", res)])
    >>> tracker.poll()                    # doctest: +SKIP
    >>> describe_left(tracker.time_left())   # doctest: +SKIP
    '~2 min left'
    """

    def __init__(self, jobs: Sequence[Job], *, history: History | None = None,
                 client: distributed.Client | None = None):
        self.jobs = list(jobs)
        self.client = client if client is not None else _cluster.get_client()
        if history is None:
            history = History.from_disk(
                cache_dir=_config.cache_dir(),
                output_dirs=[j.result._output_dir for j in self.jobs
                             if getattr(j.result, "_output_dir", None)])
        self.history = history
        self._running = _Running(self.client)
        self._features = {id(j): Features.of(getattr(j.result, "_described", {}))
                          for j in self.jobs}
        self._slots: tuple[float, int] | None = None  # (when asked, slots)

    # -- following ------------------------------------------------------------------
    def poll(self) -> list[Job]:
        """Note which calls were seen running or done since the last poll; learn the
        durations of those that finished. Returns the newly finished jobs."""
        now = time.monotonic()
        now_running = self._running()
        newly_done = []
        for job in self.jobs:
            if job.ended is not None:
                continue
            if job.started is None and job.result.key in now_running:
                job.started = now
            if job.result.done():
                job.ended = now
                newly_done.append(job)
                if job.result.status == "finished":
                    self.history.add(Run.of(job.result.record.provenance))
        return newly_done

    def wait(self, timeout: float) -> None:
        """Return once a call ends, or after ``timeout`` seconds."""
        pending = [j.result.future for j in self.jobs if j.ended is None]
        if not pending:
            return
        try:
            distributed.wait(pending, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass

    @property
    def finished(self) -> bool:
        return all(j.ended is not None for j in self.jobs)

    # -- estimates -------------------------------------------------------------------
    def expected(self, job: Job) -> float | None:
        """The call's expected duration (s) from earlier runs, or None."""
        return self.history.expected(self._features.get(id(job)))

    def left(self, job: Job, now: float | None = None) -> float | None:
        """What is left of the call's expected duration (s); None if unknown."""
        if job.ended is not None:
            return 0.0
        elapsed = None if job.started is None else (now or time.monotonic()) - job.started
        return remaining(self.expected(job), elapsed)

    def time_left(self, now: float | None = None) -> TimeLeft:
        """Until the last call ends (see :func:`cpldask._estimate.time_left`)."""
        now = now or time.monotonic()
        calls = []
        for job in self.jobs:
            inputs = getattr(job.result, "_described", {}).get("inputs") or ()
            calls.append(Call(
                job.result.key, self.expected(job),
                elapsed=None if job.started is None else now - job.started,
                done=job.ended is not None or job.result.done(),
                deps=tuple(str(i["from"]) for i in inputs if "from" in i)))
        return _time_left(calls, self.slots())

    def slots(self) -> int:
        """Recipes that run at once (asked of the scheduler every few seconds: a
        batch-system cluster grows and shrinks)."""
        now = time.monotonic()
        if self._slots is None or now - self._slots[0] > SLOTS_EVERY:
            try:
                self._slots = (now, _cluster.recipe_slots(self.client))
            except (OSError, TimeoutError) as err:  # the scheduler went away
                log.debug("cannot ask the scheduler for its threads: %s", err)
                self._slots = (now, self._slots[1] if self._slots else 1)
        return self._slots[1]

    def describe(self, job: Job, now: float | None = None) -> str:
        """A running call's time left for a display: ``'~40 s left'``, ``'? left'``
        (never run before), or ``'over the usual ~30 s'`` once it runs longer."""
        expected = self.expected(job)
        if expected is None:
            return "? left"
        left = self.left(job, now)
        if job.started is not None and left == 0.0:
            return f"over the usual {format_seconds(expected)}"
        return f"{format_seconds(left)} left"


class _Running:
    """Which tasks the workers run now (as of their last heartbeat).

    A call waiting on its worker for a slot (:func:`cpldask.Recipe.set_maxthreads`
    below the worker threads) counts as running too: only the task is visible here.
    """

    def __init__(self, client: distributed.Client):
        self.client = client
        self.ask_scheduler = True

    def __call__(self) -> set:
        if self.ask_scheduler:
            try:
                return set(self.client.run_on_scheduler(_executing_keys))
            except Exception:  # noqa: BLE001
                # a scheduler that refuses to run functions or cannot import
                # cpldask: not worth asking again at every refresh
                self.ask_scheduler = False
        # what the scheduler assigned to workers: may include a few tasks that
        # wait there behind the running ones
        return {key for keys in self.client.processing().values() for key in keys}


def _executing_keys(dask_scheduler) -> list:
    """Runs on the scheduler: the tasks workers report executing. (The scheduler's
    "processing" tasks include some queued on a worker behind the running ones.)"""
    return [ts.key for ws in dask_scheduler.workers.values() for ts in ws.executing]


# -- the notebook display ---------------------------------------------------------------
def jobs_of(calls: Any) -> tuple[str, list[Job]]:
    """(a title, the jobs) of a :class:`~cpldask.Result`, an iterable of them, or a
    submitted reduction (anything with ``steps`` whose ``result`` is set)."""
    steps = getattr(calls, "steps", None)
    if steps is not None:
        if any(getattr(s, "result", None) is None for s in steps):
            raise ValueError("submit() the reduction before following its progress")
        instrument = getattr(calls, "instrument", "")
        return (f"{instrument} reduction".strip(),
                [Job(s.label, s.result) for s in steps])
    results = [calls] if isinstance(calls, Result) else list(calls)
    if not results or not all(isinstance(r, Result) for r in results):
        raise TypeError("cpldask.progress takes a cpldask.Result, a list of them or a "
                        "submitted reduction")
    names = [r.recipe for r in results]
    seen: dict[str, int] = {}
    jobs = []
    for res in results:
        seen[res.recipe] = seen.get(res.recipe, 0) + 1
        label = res.recipe if names.count(res.recipe) == 1 else f"{res.recipe} #{seen[res.recipe]}"
        jobs.append(Job(label, res))
    title = names[0] if len(set(names)) == 1 else f"{len(results)} recipe calls"
    return title, jobs


#: colour of each state in the notebook display (the terminal's in _cli/_batch.py)
_HTML_COLOURS = {"queued": "#888", "running": "#0aa", "done": "#2a2", "failed": "#c22"}


def to_html(tracker: Tracker, title: str, since: float) -> str:
    """The notebook display: a bar, the counts, the time left, the running calls."""
    jobs = tracker.jobs
    n = counts(jobs)
    finished = n["done"] + n["failed"]
    now = time.monotonic()
    clock = time.strftime("%H:%M:%S", time.gmtime(now - since))
    left = "" if tracker.finished else describe_left(tracker.time_left(now))
    states = " · ".join(
        f'<span style="color:{_HTML_COLOURS[s] if k else "#aaa"}">{s} {k}</span>'
        for s, k in n.items())
    rows = []
    running = [j for j in jobs if j.started is not None and j.ended is None]
    for job in running[:SHOWN_RUNNING]:
        message = job.result.current_message or "…"
        rows.append(f'<div style="white-space:nowrap;overflow:hidden;text-overflow:'
                    f'ellipsis">▸ <b>{html.escape(job.label)}</b> '
                    f'<span style="color:#0aa">{html.escape(tracker.describe(job, now))}'
                    f'</span> <span style="color:#888">{html.escape(message)}</span></div>')
    if len(running) > SHOWN_RUNNING:
        rows.append(f'<div style="color:#888">+ {len(running) - SHOWN_RUNNING} more '
                    f'running</div>')
    return (f'<div style="font-family:monospace;font-size:90%"><div><b>'
            f'{html.escape(title)}</b> <progress value="{finished}" max="{len(jobs)}" '
            f'style="width:16em;vertical-align:middle"></progress> {finished}/{len(jobs)}'
            f' <span style="color:#888">{clock}</span> <b>{html.escape(left)}</b></div>'
            f'<div>{states}</div>{"".join(rows)}</div>')


def progress(calls: Result | Iterable[Result] | Any, *, refresh: float = 0.5) -> None:
    """Show the progress of recipe calls in a notebook, with the time left.

    A bar of finished calls, the count in each state, the time left for all of them
    (from the durations of earlier runs of the same recipes: the product cache's
    and the output folders' provenance records) and, for each running call, its
    expected time left and its recipe's newest message. It updates itself until the
    last call ends; the cell returns at once. Without a Jupyter kernel or ipywidgets
    (the ``notebooks`` extra) it is :func:`distributed.progress` of the calls.

    Parameters
    ----------
    calls : Result, iterable of Result, or Reduction
        Background calls (``threaded=True``), or a submitted
        :class:`cpldask.workflow.Reduction` (its steps' labels are shown).
    refresh : float
        Seconds between updates.

    Examples
    --------
    >>> red = cpldask.reduce("raw/", output_dir="reduced/", wait=False)  # doctest: +SKIP
    >>> cpldask.progress(red)                                           # doctest: +SKIP
    """
    title, jobs = jobs_of(calls)
    try:
        import ipywidgets
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        ipywidgets = None
    shell = get_ipython() if ipywidgets is not None else None
    if shell is None or not hasattr(shell, "kernel"):
        distributed.progress([j.result.future for j in jobs])
        return
    tracker = Tracker(jobs)
    since = min(j.submitted for j in jobs)
    widget = ipywidgets.HTML(value=to_html(tracker, title, since))
    display(widget)

    def follow() -> None:
        try:
            while not tracker.finished:
                tracker.wait(refresh)
                tracker.poll()
                widget.value = to_html(tracker, title, since)
        except Exception:  # noqa: BLE001  (a display must not take the kernel down)
            log.exception("cpldask.progress stopped")

    threading.Thread(target=follow, daemon=True, name="cpldask-progress").start()
