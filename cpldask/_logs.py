"""Both ends of the log channel: recipe messages from the workers to the client's
:mod:`logging`, as python-cpl hands them over while its recipe runs.

Worker end, :func:`send`: the worker running a call publishes the messages the
client's logging would show as a Dask event on the topic :data:`LOG_TOPIC` (and the
warnings of the product cache), while the recipe runs and at its end.

Client end, :func:`listen_to_logs`: the client subscribes to the topic and replays
each message under ``<logname>.<function>`` (python-cpl's ``cpl.<recipe>.<function>``)
with the time the recipe wrote it. A worker sends only messages at or above
:func:`log_threshold`, computed on the client when the call is made: nothing travels
for a call whose messages nobody would see.

This module imports nothing but the standard library, Dask and :mod:`cpldask._spec`:
the worker side uses it (see :mod:`cpldask.worker`).
"""

from __future__ import annotations

import logging
import warnings
import weakref

from ._spec import LOG_TOPIC

__all__ = ["send", "listen_to_logs", "log_threshold"]


# -- worker end ------------------------------------------------------------------------
def send(recipe: str, entries: list, *, warning: str | None = None) -> None:
    """Publish ``entries`` (``(logger name, level, function, message, created)``) of
    a call of ``recipe``, and a product-cache ``warning``, to the client. Outside a
    distributed worker (dask's threaded scheduler), nothing is sent."""
    if not entries and warning is None:
        return
    try:
        from distributed.worker import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return  # not on a distributed worker
    msg: dict = {"recipe": recipe, "entries": entries}
    if warning is not None:
        msg["warning"] = warning
    worker.log_event(LOG_TOPIC, msg)


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
    >>> logging.basicConfig(level=logging.INFO)
    >>> log_threshold("cpl.muse_bias") == logging.INFO
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
    replay(msg["entries"])
    if msg.get("warning"):  # the cache was not used (see cpldask.worker.task._warn)
        from .errors import CacheWarning  # python-cpl's exceptions: only when needed

        warnings.warn(msg["warning"], CacheWarning, stacklevel=2)


def replay(entries) -> None:
    """Hand log ``entries`` to :mod:`logging`, each with the time the recipe wrote it."""
    for name, levelno, func, msg, created in entries:
        logger = logging.getLogger(name)  # <logname>.<function>
        if logger.isEnabledFor(levelno):
            rec = logger.makeRecord(logger.name, levelno, func, 0, msg, None, None, func)
            rec.created = created
            logger.handle(rec)
