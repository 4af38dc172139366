"""Following many recipe calls from a terminal: what ``run``, ``demo`` and ``reduce``
share.

A command submits its calls (threaded :class:`cpldask.Recipe` calls), wraps each
:class:`~cpldask.Result` in a :class:`Job` with a label, and hands the list to
:func:`monitor`, which

1. prints the dashboard link (and the one of cpldask's page of recipe runs),
2. shows live counts of queued, running, done and failed calls, the time left (from
   earlier runs of the same recipes: :mod:`cpldask._estimate`) and, per running
   call, its time left and its recipe's current message (on a terminal; in a log
   file, one line per finished call with the time left instead),
3. prints a summary table — label, status, duration, products, plus any columns
   the command adds — and, for each failure, its error and the recipe's last log
   lines,
4. returns the exit code: 0 only if every call succeeded.

Progress goes to standard error and the table to standard output, so that
``cpldask run ... > summary.txt`` keeps the table apart from the live display.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import distributed
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import _cluster
from .._progress import SHOWN_RUNNING, Job, Tracker, counts, describe_left
from ..recipe import Recipe
from ._inputs import UsageError, bad_input

__all__ = ["Job", "Column", "cluster", "require_jobqueue", "start_batch_cluster",
           "max_slots", "monitor", "CLUSTERS", "EXIT_OK", "EXIT_FAILED", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_FAILED = 1  # a recipe call failed: its error is in the report
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

#: DASK_LOGGING of the console script (see cpldask._cli._quiet): the whole logging
#: section of the embedded workers' (and their Nannies') config
QUIET_LOGGING = repr({"distributed": "warning", "distributed.worker": "critical",
                      "distributed.worker.memory": "warning"})

#: recipe log lines shown under a failed call
LOG_TAIL = 8
#: product paths listed per call in the table before "(+N more)"
MAX_PATHS = 3

#: colour of each state in the display and the table
STYLES = {"queued": "dim", "running": "cyan", "done": "green", "failed": "bold red",
          "cancelled": "yellow"}


#: an extra column of the summary table: header, and the cell of a successful job
Column = tuple[str, Callable[[Job], str]]


#: ``--cluster`` names: the embedded cluster, or a dask-jobqueue batch system
CLUSTERS = ("local", "slurm", "pbs", "sge", "lsf")


@contextlib.contextmanager
def cluster(args: argparse.Namespace, err: Console | None = None) -> Iterator[None]:
    """The cluster a command line names, for the calls made in the block.

    ``args.scheduler`` (an address) or ``args.scheduler_file`` (a scheduler file,
    e.g. from ``cpldask cluster start``): join that scheduler; ``args.cluster`` a batch
    system (``slurm``, ``pbs``, ``sge``, ``lsf``): start a dask-jobqueue cluster of up
    to ``args.slots`` (else ``cpldask.jobqueue.slots``) recipe slots, and cancel its
    jobs when the block ends, also on Ctrl-C or SIGTERM; otherwise (``local`` or
    nothing) the usual cpldask choice (``cpldask.get_client()``). ``args.slots``
    allows that many recipes at once (:func:`cpldask.Recipe.set_maxthreads`).

    Examples
    --------
    >>> with cluster(args, err):            # doctest: +SKIP
    ...     jobs = submit(recipe, calls)
    ...     code = monitor(jobs, title=recipe.name, out=out, err=err)

    Raises
    ------
    UsageError
        The scheduler cannot be reached, the batch cluster cannot start (or
        dask-jobqueue is missing), or ``slots`` is not a positive number.
    """
    scheduler, scheduler_file = args.scheduler, args.scheduler_file
    system, slots = args.cluster, args.slots
    client = batch = None
    if scheduler:
        try:
            # set_as_default: cpldask.get_client(), hence every Recipe call, uses it
            client = distributed.Client(scheduler, set_as_default=True, timeout="20s")
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"cannot connect to the scheduler at {scheduler!r}: "
                             f"{exc}") from exc
    elif scheduler_file:
        try:
            client = _cluster.join_scheduler_file(scheduler_file, set_as_default=True,
                                                  timeout="20s")
        except (OSError, ValueError) as exc:
            raise UsageError(f"--scheduler-file: {exc}") from exc
    try:
        with contextlib.ExitStack() as stack:
            if system not in (None, "local"):
                # the console script's quiet logging is for the embedded workers,
                # which print to the terminal; the batch jobs inherit this
                # environment (sbatch, qsub, bsub) and write their workers' messages
                # to their own logs, where they belong
                if os.environ.get("DASK_LOGGING") == QUIET_LOGGING:
                    del os.environ["DASK_LOGGING"]
                batch = start_batch_cluster(system, slots)
                stack.callback(_close_batch, batch, err)
                stack.enter_context(_terminate_as_interrupt())
                if err is not None:
                    n = max_slots(batch)
                    err.print(f"cpldask: {system} cluster at {batch.scheduler_address}: "
                              f"jobs for up to {n} recipe slot{'s' if n != 1 else ''} "
                              "start as calls wait", markup=False, highlight=False,
                              soft_wrap=True)
            if slots is not None:
                with bad_input():
                    Recipe.set_maxthreads(slots)
            yield
    finally:
        if client is not None:
            client.close()


def require_jobqueue(system: str | None) -> None:
    """Refuse a batch ``--cluster`` without dask-jobqueue, naming what to install.

    Raises
    ------
    UsageError
        ``system`` is a batch system and dask-jobqueue cannot be imported.
    """
    if system in (None, "local"):
        return
    from .. import cluster as batch_clusters

    try:
        batch_clusters._require_jobqueue()
    except ImportError as exc:
        raise UsageError(f"--cluster {system} needs dask-jobqueue: pip install "
                         "'cpldask[hpc]'") from exc


def start_batch_cluster(system: str, slots: int | None, **options):
    """A dask-jobqueue cluster of ``system`` (:func:`cpldask.cluster.jobqueue`) with
    the ``cpldask.jobqueue.*`` defaults, up to ``slots`` recipe slots; ``options``
    go to :func:`~cpldask.cluster.jobqueue` too.

    Raises
    ------
    UsageError
        dask-jobqueue is missing, or the cluster cannot start (a bad interface, a
        setting dask-jobqueue refuses).
    """
    require_jobqueue(system)
    from .. import cluster as batch_clusters

    try:
        return batch_clusters.jobqueue(system, slots=slots, **options)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"cannot start the {system} cluster: {exc} (its settings are "
                         f"the cpldask.jobqueue.* and jobqueue.{system}.* config "
                         "keys)") from exc


def max_slots(batch) -> int:
    """The most recipe slots a cpldask batch cluster adapts up to (its fixed size
    when it does not adapt)."""
    if batch.adapting:
        return batch.adaptive.maximum * batch.slots_per_job  # a worker per job
    return len(batch.worker_spec) * batch.slots_per_job


def _close_batch(batch, err: Console | None) -> None:
    # every job submitted and not yet closed, connected or still queued
    jobs = sorted({str(job.job_id) for job in list(batch.workers.values())
                   if getattr(job, "job_id", None)}, key=lambda j: (len(j), j))
    batch.close()  # cancels them
    if err is not None:
        err.print(f"cpldask: {batch.__class__.__name__} closed"
                  + (f", jobs {' '.join(jobs)} cancelled" if jobs else ""),
                  markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a batch system ending the job that runs this
    command) as Ctrl-C for the block, so that the batch cluster's jobs are cancelled
    rather than left to time out on their own. Main thread only (signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def monitor(jobs: Sequence[Job], *, title: str, out: Console, err: Console,
            label_header: str = "call", columns: Sequence[Column] = (),
            refresh: float = 0.5) -> int:
    """Follow ``jobs`` to their end, then print the summary; return the exit code.

    Parameters
    ----------
    jobs : sequence of Job
        The calls, already submitted.
    title : str
        What is running, e.g. ``'muse_bias'``.
    out, err : rich.console.Console
        Where the table goes, and where progress and failures go.
    label_header : str
        Header of the label column (``'SOF'``, ``'set'``).
    columns : sequence of Column
        Extra columns, filled for successful calls only.
    refresh : float
        Seconds between updates of the display.

    Returns
    -------
    int
        0 if every call succeeded, 1 if any failed, 130 if interrupted.
    """
    link, runs = _cluster.dashboard_link(), _cluster.dashboard_link(page="runs")
    err.print(Text.assemble(("cpldask", "bold"), f": {len(jobs)} {title} "
                            f"call{'s' if len(jobs) != 1 else ''}; dashboard: ",
                            (link or "none", "link " + link if link else "dim"),
                            *([", recipe runs: ", (runs, "link " + runs)] if runs else [])),
              soft_wrap=True)
    clock = min((job.submitted for job in jobs), default=time.monotonic())
    # the graph of the calls (a reduction's) is in their provenance: a call given
    # another's result names it there; `cpldask run`'s calls have no edges
    tracker = Tracker(jobs)
    try:
        if err.is_terminal:
            with Live(_progress(jobs, title, clock, tracker), console=err,
                      refresh_per_second=4) as live:
                _follow(tracker, refresh,
                        lambda _done: live.update(_progress(jobs, title, clock, tracker)))
        else:
            _follow(tracker, refresh, _log_lines(tracker, err))
    except KeyboardInterrupt:
        # the calls die with their futures anyway; cancelling kills the recipe
        # processes now rather than when the scheduler notices the client left
        for job in jobs:
            job.result.cancel()
        err.print("cpldask: interrupted; running recipes were cancelled")
        return EXIT_INTERRUPTED
    out.print(summary_table(jobs, label_header, columns))
    _report_failures(jobs, err)
    n = counts(jobs)
    # the sum of the calls' durations next to the wall time shows the parallelism
    busy = sum(job.duration or 0.0 for job in jobs)
    err.print(f"cpldask: {n['done']} done, {n['failed']} failed in "
              f"{time.monotonic() - clock:.1f} s (recipes ran {busy:.1f} s in total)",
              markup=False, highlight=False)
    again = ran_again(jobs)
    if again:
        err.print(f"cpldask: {again}", markup=False, highlight=False)
    return EXIT_OK if n["failed"] == 0 else EXIT_FAILED


def ran_again(jobs: Sequence[Job]) -> str:
    """The summary's line on calls that ran a second time: lost with their worker (a
    batch job ended or was killed while they ran: cpldask.retries) or, having died for
    memory, on a bigger worker (the provenance's ``memory_retry``); "" if none did."""
    from .. import _dashboard

    results = [job.result for job in jobs if job.result is not None]
    client = next((r.future.client for r in results if r.status != "pending"), None)
    lost = _dashboard.lost_calls(client, [r.key for r in results]) if client else {}
    memory = []
    for r in results:
        if r.status == "finished":
            with contextlib.suppress(Exception):
                if r.provenance.get("memory_retry"):
                    memory.append(r)
    parts = []
    if lost:
        parts.append(f"{len(lost)} call{'s' if len(lost) != 1 else ''} ran again after "
                     f"{'their' if len(lost) != 1 else 'its'} worker was lost (a job "
                     f"ended or was killed: {sum(lost.values())} time"
                     f"{'s' if sum(lost.values()) != 1 else ''})")
    if memory:
        parts.append(f"{len(memory)} call{'s' if len(memory) != 1 else ''} ran again on "
                     f"a bigger worker after running out of memory")
    return "; ".join(parts)


def _follow(tracker: Tracker, refresh: float,
            update: Callable[[list[Job]], None]) -> None:
    """Wait for all jobs, noting when each is seen running and done; call
    ``update(newly_done)`` after every change and at least every ``refresh`` s."""
    while not tracker.finished:
        tracker.wait(refresh)  # wakes as soon as one call ends
        update(tracker.poll())


def _progress(jobs: Sequence[Job], title: str, since: float,
              tracker: Tracker | None = None) -> Group:
    """The live display: a bar of finished calls, the count in each state, the time
    left (with a ``tracker``) and a line per running call."""
    n = counts(jobs)
    finished = n["done"] + n["failed"]
    now = time.monotonic()
    bar = Table.grid(padding=(0, 1))
    left = describe_left(tracker.time_left(now)) if tracker is not None \
        and finished < len(jobs) else ""
    bar.add_row(Text(title, style="bold"), ProgressBar(total=len(jobs), completed=finished,
                                                        width=30),
                f"{finished}/{len(jobs)}", Text(_clock(now - since), "dim"),
                Text(left, "bold", no_wrap=True, overflow="ellipsis"))
    states = Text("  ·  ").join(Text(f"{state} {k}", style=STYLES[state] if k else "dim")
                                for state, k in n.items())
    return Group(bar, states, *_current_messages(jobs, tracker, now))


def _current_messages(jobs: Sequence[Job], tracker: Tracker | None = None,
                      now: float | None = None) -> list[Text]:
    """A line per running call with its time left (with a ``tracker``) and its
    recipe's newest message (cpldask._logs: the messages of at least
    ``cpldask.live-log-level`` reach the client as it runs)."""
    running = [j for j in jobs if j.started is not None and j.ended is None]
    lines = []
    for job in running[:SHOWN_RUNNING]:
        message = job.result.current_message
        left = f"  {tracker.describe(job, now)}" if tracker is not None else ""
        lines.append(Text.assemble(("  ▸ ", STYLES["running"]), (job.label, "bold"),
                                   (left, STYLES["running"]),
                                   ("  " + (message or "…"), "dim"), no_wrap=True,
                                   overflow="ellipsis"))
    if len(running) > SHOWN_RUNNING:
        lines.append(Text(f"  + {len(running) - SHOWN_RUNNING} more running", "dim"))
    return lines


def _log_lines(tracker: Tracker, err: Console) -> Callable[[list[Job]], None]:
    """Without a terminal (a batch log): one line per finished call instead, with
    the time left for the others."""
    finished = 0
    jobs = tracker.jobs

    def update(done: list[Job]) -> None:
        nonlocal finished
        for job in done:
            finished += 1
            left = "" if finished == len(jobs) else describe_left(tracker.time_left())
            err.print(Text.assemble(f"[{finished}/{len(jobs)}] ",
                                    (f"{job.state:<9}", STYLES[job.state]),
                                    f"{_format_duration(job.duration):>9}  {job.label}",
                                    (f"  · {left}" if left else "", "dim")),
                      soft_wrap=True)

    return update


def summary_table(jobs: Sequence[Job], label_header: str = "call",
                  columns: Sequence[Column] = ()) -> Table:
    """Label, status, duration and products of every job, plus ``columns``."""
    table = Table(show_edge=False, header_style="bold")
    table.add_column(label_header, overflow="fold")
    table.add_column("status")
    table.add_column("duration", justify="right")
    table.add_column("products", overflow="fold")
    for header, _ in columns:
        table.add_column(Text(header), justify="right")  # Text: "[adu]" is no markup
    for job in jobs:
        state = job.state
        extra = [Text(cell(job)) if state == "done" else "" for _, cell in columns]
        status = Text(state, STYLES[state])
        if state == "done" and getattr(job.result.record, "cache_hit", False):
            status.append(" (cached)", "dim")  # products of an identical earlier run
        table.add_row(Text(job.label), status, _format_duration(job.duration),
                      Text(_products(job)) if state == "done" else "", *extra)
    return table


def _products(job: Job) -> str:
    paths = [_short(p) for paths in job.result.paths.values() for p in paths]
    if len(paths) > MAX_PATHS:
        paths = [*paths[:MAX_PATHS - 1], f"(+{len(paths) - MAX_PATHS + 1} more)"]
    return "\n".join(paths) or "(none)"


def _short(path: str) -> str:
    """A path relative to the current folder when it is below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _report_failures(jobs: Sequence[Job], err: Console) -> None:
    """For each failed call: its error and the last lines the recipe logged."""
    for job in jobs:
        if job.state == "cancelled":
            err.print(Text.assemble((job.label, "bold"), ": cancelled"), soft_wrap=True)
        if job.state != "failed":
            continue
        exc = job.result.exception()
        err.print(Text.assemble((job.label, "bold"), ": ",
                                (f"{type(exc).__name__}: {exc}", "red")), soft_wrap=True)
        # INFO and up, as esorex shows on the terminal by default
        log = [rec for rec in getattr(exc, "log", None) or [] if rec.levelno >= logging.INFO]
        for rec in log[-LOG_TAIL:]:
            # esorex's own format, so the lines look as they do in esorex.log
            err.print(Text(f"    [{rec.levelname:^7}] {rec.funcName}: {rec.getMessage()}",
                           "dim"), soft_wrap=True)


def _format_duration(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f} s"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{secs:02d}"
