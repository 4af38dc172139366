"""Client side: how long the calls still to run will take, from earlier runs.

Every finished call leaves a provenance record with its wall time (``run.wall_time``,
the recipe process's own clock): in the product cache (``<cache>/<key>/
provenance.json``) and beside its products in ``output_dir``
(``<product>.provenance.json``). A :class:`History` reads the newest of them once,
when first asked (at most ``cpldask.progress.history``), and learns from the calls
that finish while it is in use.

What makes two calls alike — :class:`Features` — is the recipe, then its
parameters (every value, defaults included) and the number of input frames. The
expected duration of a call is the median wall time of the most alike earlier runs:
the same recipe with the same parameters and as many inputs, else with the same
parameters, else with as many inputs, else any run of the recipe. Parameters come
first because they can change a run's length tenfold (MUSE's ``nifu=0``, all 24
IFUs in one process, against one IFU); the number of inputs next, because most
recipes read and combine every frame. That is scaled by the *pace* of the calls
finished since (:attr:`History.pace`: the same machine under another load). A recipe
never run before has no expectation (shown as "?") until a call of it finishes.

The time left of a set of calls (:func:`time_left`) is the larger of two lower
bounds on when the last one ends: the longest chain of unfinished calls through the
graph (a call starts when its inputs exist), and the work still to do shared by the
recipe slots. A running call counts with what is left of its expectation (none once
it has run longer than expected).

Examples
--------
>>> history = History([Run(Features("muse_bias", "{}", 3), 30.0, 0.0)])
>>> history.expected(Features("muse_bias", "{}", 3))
30.0
>>> time_left([Call("a", 30.0), Call("b", 60.0, deps=("a",))], slots=2).seconds
90.0
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["Features", "Run", "History", "Call", "TimeLeft", "time_left", "remaining",
           "format_seconds", "describe_left", "KEEP", "PACE_PRIOR"]

#: runs kept per kind of call (each of the four kinds of :meth:`History.expected`):
#: the newest, so that an estimate follows a machine that got faster
KEEP = 20
#: seconds of calls at the earlier runs' pace that :attr:`History.pace` starts from:
#: a call of one second that took twice as long says little of the next of ten
#: minutes; calls of several minutes say much
PACE_PRIOR = 30.0
PROVENANCE_SUFFIX = ".provenance.json"
CACHE_RECORD = "provenance.json"  # cpldask._cache.PROVENANCE (not imported: no cycle)


@dataclasses.dataclass(frozen=True)
class Features:
    """What makes two calls alike: recipe, parameters (canonical JSON), inputs.

    Examples
    --------
    >>> Features.of({"recipe": "muse_bias", "params": {"nifu": 1},
    ...              "inputs": [{"tag": "BIAS"}] * 3})
    Features(recipe='muse_bias', params='{"nifu": 1}', n_inputs=3)
    """

    recipe: str
    params: str
    n_inputs: int

    @classmethod
    def of(cls, provenance: Mapping) -> "Features | None":
        """The features of a call from its provenance record (the client's half of it
        is enough: recipe, params, inputs); None if it names no recipe."""
        recipe = provenance.get("recipe")
        if not isinstance(recipe, str):
            return None
        params = json.dumps(provenance.get("params") or {}, sort_keys=True, default=str)
        return cls(recipe, params, len(provenance.get("inputs") or ()))

    def kinds(self) -> tuple[tuple, ...]:
        """The keys this call is filed under, the most alike first."""
        return (("same", self.recipe, self.params, self.n_inputs),
                ("params", self.recipe, self.params),
                ("inputs", self.recipe, self.n_inputs),
                ("recipe", self.recipe))


@dataclasses.dataclass(frozen=True)
class Run:
    """One earlier run: its features, wall time (s) and end (epoch seconds)."""

    features: Features
    seconds: float
    end: float

    @classmethod
    def of(cls, provenance: Mapping) -> "Run | None":
        """The run a provenance record tells of; None for a call served from the
        product cache (it took no time, and says nothing of the recipe's) or a record
        without run times."""
        run = provenance.get("run")
        features = Features.of(provenance)
        if provenance.get("cache_hit") or not isinstance(run, Mapping) or features is None:
            return None
        seconds, end = run.get("wall_time"), run.get("end")
        if not isinstance(seconds, (int, float)) or not isinstance(end, (int, float)) \
                or seconds < 0:
            return None
        return cls(features, float(seconds), float(end))


class _Index:
    """Runs filed under each kind of call they are (:meth:`Features.kinds`), the
    newest :data:`KEEP` per kind."""

    def __init__(self) -> None:
        self.kinds: dict[tuple, collections.deque] = {}
        self.seen: set[tuple[str, float]] = set()

    def file(self, run: Run) -> None:
        # the same run is in the cache and beside its products: counted once
        ident = (run.features.recipe, run.end)
        if ident in self.seen:
            return
        self.seen.add(ident)
        for kind in run.features.kinds():
            self.kinds.setdefault(kind, collections.deque(maxlen=KEEP)).append(run)

    def median(self, features: Features) -> float | None:
        for kind in features.kinds():
            runs = self.kinds.get(kind)
            if runs:
                return statistics.median(r.seconds for r in runs)
        return None


class History:
    """Wall times of earlier runs, and the pace of the calls finished since.

    The expected duration of a call is the median of the most alike earlier runs
    (the newest :data:`KEEP` of each kind), times the *pace*: how much longer than
    the earlier runs expected the calls finished meanwhile (:meth:`add`) took — a
    loaded machine, a slower disk, bigger frames than last time make every call
    slower alike. A call of a recipe no earlier run knows is
    expected to take what the alike calls finished meanwhile took.

    Parameters
    ----------
    runs : iterable of Run
        Earlier runs known from the start.
    sources : sequence of (str, path)
        ``("cache", dir)``: a product cache; ``("output", dir)``: a folder of products
        with their ``*.provenance.json``. Read on the first :meth:`expected` or
        :meth:`add`, the newest ``limit`` records of all of them.
    limit : int
        Records read from ``sources`` at most.

    Examples
    --------
    >>> h = History.from_disk(cache_dir="~/.cache/cpldask", output_dirs=["reduced/bias"])
    >>> h.expected(Features("muse_bias", "{}", 3))       # doctest: +SKIP
    28.4
    """

    def __init__(self, runs: Iterable[Run] = (), *,
                 sources: Sequence[tuple[str, str | os.PathLike]] = (), limit: int = 0):
        self._earlier = _Index()
        self._now = _Index()  # the calls finished since (add)
        # (took, expected) of the calls finished meanwhile that earlier runs knew
        self._paced: collections.deque = collections.deque(maxlen=KEEP)
        self._sources = list(sources)
        self._limit = limit
        #: provenance files read from disk (the cost of the history: see docs/cli.md)
        self.loaded = 0
        for run in sorted(runs, key=lambda r: r.end):  # the deques keep the newest
            self._earlier.file(run)

    @classmethod
    def from_disk(cls, *, cache_dir: str | os.PathLike | None = None,
                  output_dirs: Iterable[str | os.PathLike] = (),
                  limit: int | None = None) -> "History":
        """A history to be read (lazily) from a product cache and output folders.

        ``limit`` defaults to the dask config key ``cpldask.progress.history``.
        """
        if limit is None:
            from . import _config

            limit = int(_config.get("progress.history"))
        sources = [("output", d) for d in dict.fromkeys(map(str, output_dirs))]
        if cache_dir is not None:
            sources.append(("cache", str(cache_dir)))
        return cls(sources=sources, limit=limit)

    def add(self, run: Run | None) -> None:
        """Learn from a call just finished (one of those being followed)."""
        self._load()
        if run is None or (run.features.recipe, run.end) in self._now.seen:
            return
        before = self._earlier.median(run.features)
        if before is not None:
            self._paced.append((run.seconds, before))
        self._now.file(run)

    @property
    def pace(self) -> float:
        """How much longer than the earlier runs expected the calls finished since
        took: the ratio of their sums, each sum starting at :data:`PACE_PRIOR`
        seconds (1 before the first call; kept within 1/10..10).

        Examples
        --------
        >>> h = History([Run(Features("muse_flat", "{}", 3), 60.0, 0.0)])
        >>> h.add(Run(Features("muse_flat", "{}", 3), 120.0, 1.0))
        >>> round(h.pace, 2)      # (30 + 120) / (30 + 60)
        1.67
        """
        took = PACE_PRIOR + sum(t for t, _ in self._paced)
        expected = PACE_PRIOR + sum(e for _, e in self._paced)
        return min(10.0, max(0.1, took / expected))

    def expected(self, features: Features | None) -> float | None:
        """The expected wall time (s) of a call, or None (see the class)."""
        self._load()
        if features is None:
            return None
        before = self._earlier.median(features)
        if before is None:
            return self._now.median(features)
        return before * self.pace

    def __len__(self) -> int:
        self._load()
        return len(self._earlier.seen) + len(self._now.seen)

    def _load(self) -> None:
        if not self._sources:
            return
        sources, self._sources = self._sources, []
        runs = []
        for path, _ in _newest(sources, self._limit):
            try:
                with open(path, encoding="utf-8") as f:
                    run = Run.of(json.load(f))
            except (OSError, ValueError, AttributeError):
                continue  # being written, removed meanwhile, or not a record
            self.loaded += 1
            if run is not None:
                runs.append(run)
        for run in sorted(runs, key=lambda r: r.end):  # the deques keep the newest
            self._earlier.file(run)


def _newest(sources: Sequence[tuple[str, str | os.PathLike]], limit: int
            ) -> list[tuple[str, float]]:
    """(path, mtime) of the newest ``limit`` provenance records in ``sources``.

    Only directory entries are listed and stat'ed here (a few microseconds each); the
    records themselves are read by the caller, at most ``limit`` of them.
    """
    found: list[tuple[str, float]] = []
    for kind, folder in sources:
        folder = os.path.expanduser(os.fspath(folder))
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            continue  # no cache yet, or no earlier products there
        for entry in entries:
            try:
                if kind == "cache":
                    # <key>/provenance.json; a cache lookup touches <key>/ (last use)
                    if entry.name.startswith(".") or not entry.is_dir():
                        continue
                    found.append((os.path.join(entry.path, CACHE_RECORD),
                                  entry.stat().st_mtime))
                elif entry.name.endswith(PROVENANCE_SUFFIX):
                    found.append((entry.path, entry.stat().st_mtime))
            except OSError:
                continue
    found.sort(key=lambda pm: pm[1], reverse=True)
    return found[:max(0, limit)]


@dataclasses.dataclass(frozen=True)
class Call:
    """One call as :func:`time_left` sees it.

    Attributes
    ----------
    key : str
        Its name among the calls (a task key).
    expected : float or None
        Its expected duration (s); None: unknown.
    elapsed : float or None
        How long it has been running (s); None: not started.
    done : bool
        Finished (or failed): nothing left.
    deps : tuple of str
        Keys of the calls whose products it takes (others are ignored).
    """

    key: str
    expected: float | None
    elapsed: float | None = None
    done: bool = False
    deps: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TimeLeft:
    """The estimate for a set of calls.

    Attributes
    ----------
    seconds : float or None
        Until the last call ends: ``max(path, work / slots)``; None when no
        unfinished call has an expectation. With ``unknown`` calls it is a lower
        bound (they count as taking no time).
    unknown : int
        Unfinished calls of recipes never timed before.
    path : float
        The longest chain of unfinished calls (s).
    work : float
        The sum of what is left of every unfinished call (s).
    slots : int
        Recipes that run at once.
    overdue : int
        Running calls already longer than expected (what is left of them is
        unknown: they count as ending now).
    """

    seconds: float | None
    unknown: int
    path: float
    work: float
    slots: int
    overdue: int = 0


def remaining(expected: float | None, elapsed: float | None) -> float | None:
    """What is left of a call's expected duration after ``elapsed`` seconds of it
    (0 once it has run longer than expected); None if nothing is expected."""
    if expected is None:
        return None
    return max(0.0, expected - (elapsed or 0.0))


def time_left(calls: Sequence[Call], slots: int) -> TimeLeft:
    """When the last of ``calls`` will end, in seconds from now.

    Parameters
    ----------
    calls : sequence of Call
        Every call followed; the finished ones only connect the graph.
    slots : int
        Recipes that run at once (the cluster's worker threads, or the
        ``set_maxthreads`` limit).

    Examples
    --------
    Two chains of 10 s + 20 s on one slot: the work decides; on two, the chain:

    >>> calls = [Call("a", 10.0), Call("b", 20.0, deps=("a",)),
    ...          Call("c", 10.0), Call("d", 20.0, deps=("c",))]
    >>> time_left(calls, slots=1).seconds, time_left(calls, slots=2).seconds
    (60.0, 30.0)
    """
    slots = max(1, int(slots))
    by_key = {c.key: c for c in calls}
    left = {c.key: 0.0 if c.done else remaining(c.expected, c.elapsed) for c in calls}
    unknown = sum(1 for c in calls if not c.done and c.expected is None)
    overdue = sum(1 for c in calls if not c.done and c.expected is not None
                  and c.elapsed is not None and c.elapsed > c.expected)
    work = sum(v for v in left.values() if v is not None)
    # the longest chain ending at each call: its own time left after its inputs'
    # (calls are visited inputs first, without recursion: graphs of thousands)
    finish: dict[str, float] = {}
    for start in by_key:
        stack = [start]
        while stack:
            key = stack[-1]
            if key in finish:
                stack.pop()
                continue
            todo = [d for d in by_key[key].deps if d in by_key and d not in finish
                    and d not in stack]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            before = max((finish[d] for d in by_key[key].deps if d in finish), default=0.0)
            finish[key] = before + (left[key] or 0.0)
    path = max(finish.values(), default=0.0)
    known = unknown < sum(1 for c in calls if not c.done)
    seconds = max(path, work / slots) if known else None
    return TimeLeft(seconds, unknown, path, work, slots, overdue)


def format_seconds(seconds: float) -> str:
    """A rounded duration for a display: ``'~4 s'``, ``'~40 s'``, ``'~3 min'``,
    ``'~1 h 05 min'`` (at least ``'~1 s'``).

    Examples
    --------
    >>> format_seconds(42), format_seconds(150), format_seconds(3900)
    ('~40 s', '~3 min', '~1 h 05 min')
    """
    # (halves up: Python's round() goes to the even neighbour, 2.5 min -> 2)
    if seconds < 9.5:
        return f"~{max(1, int(seconds + 0.5))} s"
    if seconds < 57.5:
        return f"~{int(seconds / 5 + 0.5) * 5} s"
    minutes = int(seconds / 60 + 0.5)
    if minutes < 60:
        return f"~{minutes} min"
    return f"~{minutes // 60} h {minutes % 60:02d} min"


def describe_left(estimate: TimeLeft) -> str:
    """The whole set's time left for a display.

    ``'~4 min left'``; ``'≥ ~4 min left (2 never timed)'`` when some calls' recipes
    have no earlier run (and ``'..., 1 running late'`` when a running call is over
    its expected time); ``'time left: ? (no earlier runs)'`` when none has.

    Examples
    --------
    >>> describe_left(TimeLeft(240.0, unknown=2, path=240.0, work=240.0, slots=1))
    '≥ ~4 min left (2 never timed)'
    """
    if estimate.seconds is None:
        return "time left: ? (no earlier runs)" if estimate.unknown else ""
    notes = []
    if estimate.unknown:
        notes.append(f"{estimate.unknown} never timed")
    if estimate.overdue:
        notes.append(f"{estimate.overdue} running late")
    text = f"{format_seconds(estimate.seconds)} left"
    return f"≥ {text} ({', '.join(notes)})" if notes else text
