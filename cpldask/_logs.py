"""Both ends of the log channel: recipe messages from the workers to the client's
:mod:`logging`, as python-cpl hands them over while its recipe runs.

Worker end, :func:`send`: the worker running a call publishes the messages the
client's logging would show as a Dask event on the topic :data:`LOG_TOPIC` (and the
warnings of the product cache), while the recipe runs and at its end.

Client end, :func:`listen_to_logs`: the client subscribes to the topic and replays
each message under ``<logname>.<function>`` (python-cpl's ``cpl.<recipe>.<function>``)
with the time the recipe wrote it. A worker sends the messages at or above
:func:`log_threshold`, computed on the client when the call is made, and while the
recipe runs also those of at least ``cpldask.live-log-level`` (INFO): these feed the
call's :class:`LiveLog` (``Result.log_so_far``, a running Result in Jupyter, the CLI's
current message) but not logging. Nothing travels for a short call (under one 0.2 s
poll) whose messages nobody would see.

This module imports nothing but the standard library, Dask and :mod:`cpldask._spec`:
the worker side uses it (see :mod:`cpldask.worker`).
"""

from __future__ import annotations

import collections
import logging
import threading
import warnings
import weakref

from . import _compat
from ._spec import LOG_TOPIC, RUNS_TOPIC

__all__ = ["send", "send_run_event", "listen_to_logs", "log_threshold", "LiveLog",
           "live_log"]


# -- worker end ------------------------------------------------------------------------
def send(recipe: str, entries: list, *, threshold: int = logging.NOTSET,
         warning: str | None = None, category: str = "cache") -> None:
    """Publish ``entries`` (``(logger name, level, function, message, created)``) of
    the call of ``recipe`` this worker thread runs, and a product-cache ``warning``,
    to the client, which hands those of at least ``threshold`` to logging. Outside a
    distributed worker (dask's threaded scheduler), nothing is sent."""
    if not entries and warning is None:
        return
    worker = _this_worker()
    if worker is None:
        return
    msg: dict = {"recipe": recipe, "key": _compat.running_task_key(), "entries": entries,
                 "threshold": threshold}
    if warning is not None:
        msg.update(warning=warning, category=category)
    worker.log_event(LOG_TOPIC, msg)


def send_run_event(recipe: str, event: str, *, products: list | None = None,
                   cache_hit: bool = False) -> None:
    """Tell the scheduler's page of recipe runs (:mod:`cpldask._dashboard`) about the
    call of ``recipe`` this worker thread runs: ``"done"`` with its ``products``
    (``[tag, path]`` each) once they are installed (it travels with the task's end);
    ``"waiting"`` when it has waited a second for a slot of ``set_maxthreads``, and
    ``"start"`` once it has one. On the topic :data:`RUNS_TOPIC`, to which no client
    subscribes. Outside a distributed worker, nothing is sent."""
    worker = _this_worker()
    if worker is None:
        return
    msg: dict = {"recipe": recipe, "key": _compat.running_task_key(), "event": event}
    if products is not None:
        msg.update(products=products, cache_hit=cache_hit)
    worker.log_event(RUNS_TOPIC, msg)


def _this_worker():
    """The distributed worker running this thread; None outside one (dask's threaded
    scheduler)."""
    try:
        from distributed.worker import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


# -- client end ------------------------------------------------------------------------
def listen_to_logs(client) -> None:
    """Replay the messages workers :func:`send` through ``client``'s logging (once per
    client, however many recipes use it)."""
    if client not in _listening:
        client.subscribe_topic(LOG_TOPIC, _replay_event)
        _listening.add(client)


#: the clients already listening; weak, so a closed client is forgotten
_listening: weakref.WeakSet = weakref.WeakSet()


def log_threshold(logname: str) -> int:
    """The lowest level of a message to ``logname`` (``cpl.<recipe>``) that the
    client's logging would emit somewhere; above ``CRITICAL`` when none would be.

    python-cpl sets the root logger to DEBUG and gives ``cpl`` a NullHandler, so by
    default every message is "enabled" and none is shown: then nothing is sent.

    Examples
    --------
    >>> import logging
    >>> shown = logging.getLogger("cpl.example")
    >>> shown.propagate = False
    >>> shown.addHandler(logging.StreamHandler())
    >>> shown.setLevel(logging.INFO)
    >>> log_threshold("cpl.example") == logging.INFO
    True
    """
    logger = logging.getLogger(logname)
    levels, found, node = [], False, logger
    while node is not None:
        found = found or bool(node.handlers)
        # logging's NullHandler, or python-cpl's own class of that name
        levels += [h.level for h in node.handlers if type(h).__name__ != "NullHandler"]
        node = node.parent if node.propagate else None
    if not found and logging.lastResort is not None:  # Python's fallback to stderr
        levels.append(logging.lastResort.level)
    if not levels:
        return logging.CRITICAL + 1
    return max(logger.getEffectiveLevel(), min(levels))


def _replay_event(event: tuple) -> None:
    _, msg = event  # (time, message); the scheduler adds the worker to the message
    entries = msg["entries"]
    live = _live.get(msg.get("key"))
    if live is not None:
        live.extend(entries)
    threshold = msg.get("threshold", logging.NOTSET)
    replay([e for e in entries if e[1] >= threshold])
    if msg.get("warning"):  # the cache was not used (see cpldask.worker.task._warn),
        # or a recipe that died for memory runs again on a bigger worker
        from . import errors  # python-cpl's exceptions: only when needed

        category = errors.MemoryRetryWarning if msg.get("category") == "memory" \
            else errors.CacheWarning
        warnings.warn(msg["warning"], category, stacklevel=2)


def replay(entries) -> None:
    """Hand log ``entries`` to :mod:`logging`, each with the time the recipe wrote it."""
    for name, levelno, func, msg, created in entries:
        logger = logging.getLogger(name)  # <logname>.<function>
        if logger.isEnabledFor(levelno):
            rec = logger.makeRecord(logger.name, levelno, func, 0, msg, None, None, func)
            rec.created = created
            logger.handle(rec)


# -- the live view of a running call ---------------------------------------------------
class LiveLog:
    """The messages of one running call received so far (the last :attr:`maxlen`),
    shared by the :class:`~cpldask.Result` objects of that call.

    Examples
    --------
    >>> live = live_log("muse_bias-0123")
    >>> live.extend([("cpl.muse_bias.muse_bias", 20, "muse_bias", "Combining 3 images", 0.0)])
    >>> live.last
    'Combining 3 images'
    """

    #: entries kept per call: the newest (a 24-IFU muse_scipost logs thousands)
    maxlen = 1000

    def __init__(self) -> None:
        self._entries: collections.deque = collections.deque(maxlen=self.maxlen)

    def extend(self, entries) -> None:
        self._entries.extend(tuple(e) for e in entries)

    @property
    def entries(self) -> list[tuple]:
        return list(self._entries)

    @property
    def last(self) -> str | None:
        """The newest message, or None before the first."""
        return self._entries[-1][3] if self._entries else None

    def __len__(self) -> int:
        return len(self._entries)


#: task key -> its live log, while a Result of that call exists (weak: a forgotten call
#: leaves nothing behind)
_live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_live_lock = threading.Lock()


def live_log(key: str) -> LiveLog:
    """The live log of the call ``key``, made on first use; the caller keeps it alive."""
    with _live_lock:
        live = _live.get(key)
        if live is None:
            live = _live[key] = LiveLog()
        return live
