"""Exceptions raised by cpldask.

``CplError`` and ``RecipeCrash`` are python-cpl's own classes, so code written for
python-cpl catches the same types. The others are cpldask's additions. This module is
imported on workers too: it rebuilds the exceptions from the plain report of a recipe
process (:mod:`cpldask.worker.runner`).
"""

from __future__ import annotations

import logging
import re
import signal as _signal
import time

import cpl
from cpl import CplError
from cpl.logger import LogList

__all__ = ["CplError", "RecipeCrash", "RecipeTimeout", "NoProductsError", "InputError",
           "CacheWarning", "MemoryRetryWarning"]


class RecipeCrash(cpl.RecipeCrash):
    """python-cpl's ``RecipeCrash`` (a subclass, so ``except cpl.RecipeCrash`` works).

    It adds what python-cpl's class lacks for travelling between processes: it pickles
    (python-cpl's rebuilds from ``str(self)``) and carries the recipe's ``log``.
    ``signal`` is the signal that killed the recipe process.
    """

    def __init__(self, lines, log=None):
        super().__init__(list(lines))
        self.log = log if log is not None else LogList()

    def __reduce__(self):
        return (type(self), (self.lines, self.log))


class RecipeTimeout(TimeoutError):
    """A recipe ran longer than its ``timeout``; its process was killed.

    Attributes
    ----------
    recipe : str
        Name of the recipe.
    timeout : float
        The limit in seconds.
    log : cpl.logger.LogList
        What the recipe logged until it was killed.
    """

    def __init__(self, recipe: str, timeout: float, log=None):
        super().__init__(
            f"{recipe} ran longer than its time limit of {timeout:g} s and was killed; "
            f"raise it with timeout=... on the call or the 'cpldask.timeout' config key"
        )
        self.recipe, self.timeout, self.log = recipe, timeout, log or LogList()

    def __reduce__(self):
        return (type(self), (self.recipe, self.timeout, self.log))


class NoProductsError(RuntimeError):
    """A recipe reported success but wrote none of the products it declares."""

    def __init__(self, recipe: str, expected, log=None):
        super().__init__(
            f"{recipe} reported success but wrote none of its declared products "
            f"{sorted(expected)}; see the recipe log (exception.log) for why"
        )
        self.recipe, self.expected, self.log = recipe, list(expected), log or LogList()

    def __reduce__(self):
        return (type(self), (self.recipe, self.expected, self.log))


class InputError(ValueError, CplError):
    """An input of a call is unusable: missing, unreadable or of the wrong tag.

    Raised on the client before any work is submitted (and on the worker for inputs
    that only exist there, e.g. products of an upstream call).

    It is also a python-cpl ``CplError``: python-cpl hands a missing file to the
    recipe, which then fails with a ``CplError``, so code written for python-cpl
    catches that type. Its ``log`` holds the one message that says what is wrong
    (level ERROR, logger ``cpldask.input``) — no recipe ran to log more.
    """

    def __init__(self, message: str):
        ValueError.__init__(self, message)
        CplError.__init__(self, None, None)
        self.msg = message
        self.log = loglist([("cpldask.input", logging.ERROR, "check_input", message,
                             time.time())])

    def __str__(self) -> str:
        return self.msg

    def __reduce__(self):
        return (type(self), (self.msg,))


class CacheWarning(UserWarning):
    """The product cache could not be used for a call, which ran its recipe instead: an
    entry was damaged (and removed), the cache directory is full or read-only, or an
    input changed while the recipe ran (its products were not kept)."""


class MemoryRetryWarning(UserWarning):
    """A recipe died for memory on one worker and is re-run once on a worker that
    offers more MEMORY (or could not be: the message says why and what to start)."""


#: what CPL, the C library and the recipes say when an allocation fails: CPL's own
#: "Could not allocate", glibc's "Cannot allocate memory" (ENOMEM), C++'s bad_alloc
_ALLOCATION = re.compile(r"(?i)(could not|cannot|can't|unable to|failed to) allocate|"
                         r"out of memory|memory allocation failed|bad_alloc")


def memory_failure(report: dict, oom_kills: int = 0) -> str | None:
    """Why the recipe process of ``report`` died for memory, or None if it did not.

    Memory it is when the runner hit a MemoryError under its address-space limit, the
    recipe's errors or log say an allocation failed, or the process was killed by
    SIGKILL while the kernel's OOM killer killed ``oom_kills`` processes (the
    ``oom_kill`` count of /proc/vmstat over the run).
    """
    kind = report.get("kind")
    if kind == "error" and str(report.get("message", "")).startswith("out of memory"):
        return str(report["message"])
    texts = [str(part) for e in report.get("errors") or () for part in e]
    texts += [str(entry[3]) for entry in report.get("log") or ()
              if len(entry) > 3 and entry[1] >= logging.ERROR]
    texts += [str(line) for line in report.get("backtrace") or ()]
    if kind in ("CplError", "RecipeCrash"):
        for text in texts:
            if _ALLOCATION.search(text):
                return text.strip()
    if kind == "RecipeCrash" and report.get("signal") == int(_signal.SIGKILL) \
            and oom_kills > 0:
        return "killed by the kernel's out-of-memory killer (SIGKILL)"
    return None


def loglist(entries) -> LogList:
    """Turn the runner's plain log entries into python-cpl's ``LogList`` of records."""
    out = LogList()
    for name, levelno, func, msg, created in entries or ():
        rec = logging.LogRecord(name, levelno, None, None, msg, None, None, func)
        rec.created = created
        out.append(rec)
    return out


def from_report(report: dict) -> Exception:
    """Rebuild the exception a recipe process reported (see :mod:`cpldask.worker.runner`)."""
    log = loglist(report.get("log"))
    kind = report["kind"]
    if kind == "CplError":
        err = CplError(report["retval"], [tuple(e) for e in report["errors"]] or None)
        err.log = log
        return err
    if kind == "RecipeCrash":
        return _crash(report.get("backtrace") or [], report.get("signal"), log)
    return RuntimeError(f"{report.get('recipe')}: {report.get('message')}")


def _crash(lines, sig, log) -> RecipeCrash:
    if not any(line.startswith("Received signal:") for line in lines) and sig is not None:
        lines = [f"Received signal: {int(sig)}\n", *lines]
    return RecipeCrash(lines, log)


def crash(sig: int | None, log=None, lines=()) -> RecipeCrash:
    """A ``RecipeCrash`` for a recipe process that died by signal ``sig``."""
    return _crash(list(lines), sig, loglist(log) if not isinstance(log, LogList) else log)


def signal_name(sig: int | None) -> str:
    try:
        return _signal.Signals(sig).name
    except (TypeError, ValueError):
        return str(sig)
