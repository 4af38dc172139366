"""Client side: :class:`Result`, the frame-like handle of one recipe call.

It is what python-cpl's background ``Threaded`` result is — attribute access to the
products that waits for the recipe and raises the recipe's exception — on top of a
:class:`distributed.Future`, whose shape it follows (``status``, ``done()``,
``result()``, ``exception()``, ``cancel()``, ``add_done_callback``, ``await``).
"""

from __future__ import annotations

import html
import re

from typing import Any, Callable

import distributed
from astropy.io import fits

from . import _logs, _submit, _transfer, errors
from ._spec import RunRecord

__all__ = ["Result"]


class Result:
    """The products of a recipe call, available once the recipe has run.

    Reading a product (``res.MASTER_BIAS``, ``res['MASTER_BIAS']``, ``'TAG' in res``,
    ``len(res)``, iteration) waits for the recipe and raises its exception if it
    failed (:class:`cpl.CplError`, :class:`cpl.RecipeCrash`, ...). Products follow
    python-cpl's rules: an :class:`astropy.io.fits.HDUList` (opened lazily from the
    product file) when the call had no ``output_dir``, the file path when it had
    one, and a list of those where a tag has several frames.

    Examples
    --------
    >>> import cpldask as cpl
    >>> bias = cpl.Recipe('muse_bias', threaded=True)
    >>> res = bias(['b1.fits', 'b2.fits', 'b3.fits'], param={'nifu': 1})
    >>> res.status                        # returns at once
    'pending'
    >>> res.MASTER_BIAS[1].data.shape     # waits for the recipe
    (4112, 4096)
    """

    def __init__(self, call: distributed.Future | _submit.Pending, recipe: str, *,
                 output: str | None, defaults: dict | None = None,
                 described: dict | None = None):
        # a Future, or the ticket of a background call still waiting in its client's
        # batch (cpldask._submit), whose Future comes when the batch is sent
        self._call = call
        self._defaults = defaults or {}  # parameter defaults, for the display
        self.recipe = recipe
        self._path_products = output is not None
        self._output_dir = output
        # the client's half of the provenance record (recipe, every parameter, the
        # inputs, an upstream call's task key under "from"): what the time-left
        # estimate knows of a call before it runs (cpldask._estimate)
        self._described = described or {}
        self._record: RunRecord | None = None
        self._opened: dict[str, Any] = {}
        # the messages that reach this client while the recipe runs (cpldask._logs)
        self._live = _logs.live_log(call.key)

    # -- the Future interface -------------------------------------------------------
    @property
    def future(self) -> distributed.Future:
        """The call's :class:`distributed.Future` (for ``distributed.wait``,
        ``as_completed``, ``client.submit(f, res.future)``, ...)."""
        if isinstance(self._call, _submit.Pending):  # sent first: the scheduler must
            self._call = self._call.sent()           # know a task before it is named
        return self._call

    @property
    def key(self) -> str:
        """The Dask task key (``<recipe>-<token>``)."""
        return self._call.key

    @property
    def status(self) -> str:
        """``'pending'``, ``'finished'``, ``'error'``, ``'cancelled'`` or ``'lost'``
        (from this client's own state: asks nobody)."""
        call = self._call
        if isinstance(call, _submit.Pending):
            if call.future is None:
                return "pending"
            call = self._call = call.future
        return call.status

    def done(self) -> bool:
        """True once the recipe has finished, failed or was cancelled."""
        return self.future.done()

    def result(self, timeout: float | None = None) -> "Result":
        """Wait for the recipe and return this result; raise the recipe's exception."""
        self._get(timeout)
        return self

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the recipe and return its exception, or None."""
        return self.future.exception(timeout)

    def cancel(self) -> None:
        """Cancel the call; a running recipe process is killed within a second."""
        self.future.cancel()

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def add_done_callback(self, fn: Callable[["Result"], None]) -> None:
        """Call ``fn(self)`` when the recipe has finished (from another thread)."""
        self.future.add_done_callback(lambda _future: fn(self))

    def __await__(self):
        return self._await().__await__()

    async def _await(self) -> "Result":
        # Future.__await__ works on an asynchronous client only; polling its event
        # from here keeps ``await res`` usable from Jupyter with the ordinary client
        import asyncio

        while not self.done():
            await asyncio.sleep(0.05)
        return self.result()

    # -- a Dask collection of one future: distributed.progress(results),
    #    distributed.wait(results) and futures_of() accept results as they are ----------
    expr = None  # is_dask_collection() probes .expr: a miss must not wait for products

    def __dask_graph__(self) -> dict:
        return {self.key: self.future}

    def __dask_keys__(self) -> list:
        return [self.key]

    def __dask_tokenize__(self) -> str:
        return self.key

    # -- python-cpl's thread interface (the seed) -------------------------------------
    def join(self, timeout: float | None = None) -> None:
        """Wait until the recipe has ended (without raising its exception)."""
        try:
            distributed.wait(self.future, timeout=timeout)
        except distributed.TimeoutError:
            pass

    def is_alive(self) -> bool:
        """True while the recipe is queued or running."""
        return not self.done()

    # -- products ---------------------------------------------------------------------
    def _get(self, timeout=None) -> RunRecord:
        if self._record is None:
            try:
                self._record = self.future.result(timeout=timeout)
            except distributed.client.FutureCancelledError as err:
                raise distributed.client.FutureCancelledError(
                    self.key, f"{self.recipe} was cancelled") from err
        return self._record

    @property
    def record(self) -> RunRecord:
        """The worker's plain account of the run (paths, statistics, log)."""
        return self._get()

    @property
    def tags(self) -> set[str]:
        """Tags of the products (waits)."""
        return set(self._get().tags)

    def _value(self, tag: str):
        rec = self._get()
        if tag not in self._opened:
            client = self.future.client
            # a path where this client sees the product (fetched from its worker when
            # there is no shared filesystem: cpldask._transfer), or the HDUList
            opener = (lambda p: _transfer.local_file(p, rec, client)) \
                if self._path_products else (lambda p: _open(p, rec, client))
            self._opened[tag] = rec.shaped(tag, opener)
        return self._opened[tag]

    def __getitem__(self, tag: str):
        return self._value(tag)

    def __getattr__(self, tag: str):
        # only product tags (ESO's are upper case: MASTER_BIAS, PIXTABLE_OBJECT) wait
        # for the recipe; any other name is a plain miss, so that getattr(res,
        # 'compute', None) and other duck-typing probes return at once
        if not _TAG.fullmatch(tag):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {tag!r}")
        try:
            return self._value(tag)
        except KeyError:
            raise AttributeError(f"{self.recipe} produced no {tag!r}; its products are "
                                 f"{sorted(self.tags)}") from None

    def __contains__(self, tag: str) -> bool:
        return tag in self._get().tags

    def __len__(self) -> int:
        return len(self._get().tags)

    def __iter__(self):
        return iter([(tag, self._value(tag)) for tag in self._get().tags])

    def __dir__(self):
        extra = self._record.tags if self._record is not None else []
        return [*super().__dir__(), *extra]

    @property
    def log(self):
        """The recipe's log as python-cpl's ``LogList`` (``.info``, ``.warning``...)."""
        return errors.loglist(self._get().log)

    @property
    def log_so_far(self):
        """The recipe's messages received so far, as a python-cpl ``LogList``, without
        waiting: while it runs, those of at least ``cpldask.live-log-level`` (INFO; a
        call that ends within 0.2 s sends none), the whole log once it has finished.

        ``res.log`` waits for the recipe's end, as python-cpl's does.

        Examples
        --------
        >>> res = cpldask.Recipe("muse_flat", threaded=True)(flats, calib=calib)
        >>> [r.msg for r in res.log_so_far][-1:]          # doctest: +SKIP
        ['Found 48 slices']
        """
        if self._record is not None or (self.status == "finished" and self._get()):
            return errors.loglist(self._record.log)
        return errors.loglist(self._live.entries)

    @property
    def current_message(self) -> str | None:
        """The newest message of the running recipe (None before the first; see
        :attr:`log_so_far`)."""
        if self._record is not None:
            return self._record.log[-1][3] if self._record.log else None
        return self._live.last

    @property
    def stat(self) -> "Stat":
        """Run statistics: return_code, user_time, sys_time, wall_time, max_rss, as
        attributes (python-cpl's ``res.stat.user_time``) and items."""
        return Stat(self._get().stat)

    @property
    def dir(self) -> str:
        """The directory the products are in (python-cpl's ``Result.dir``)."""
        rec = self._get()
        return rec.output_dir or rec.call_dir

    @property
    def error(self) -> None:
        """python-cpl's ``Result.error``: None, since a failed call raises instead."""
        self._get()
        return None

    @property
    def provenance(self) -> dict:
        """How the products were made: recipe, versions, every parameter, inputs with
        checksums, host, times, memory, cache hit (see :mod:`cpldask.provenance`)."""
        rec = self.record
        return {**rec.provenance, "products": [(p.tag, p.path) for p in rec.products]}

    @property
    def paths(self) -> dict[str, list[str]]:
        """Product file paths by tag, whatever the ``output_dir`` rule: on this
        machine (a product on a worker's disk that this client does not see is fetched
        through that worker first, see :func:`cpldask._transfer.local_file`)."""
        rec = self._get()
        client = self.future.client
        return {tag: [_transfer.local_file(p, rec, client) for p in rec.products
                      if p.tag == tag] for tag in rec.tags}

    # -- display: from this client's own state, as distributed.Future's --------------
    def _known_record(self) -> RunRecord | None:
        """The record if this client has it; else None, and it is fetched in the
        background once the call has finished, for the next display."""
        if self._record is None and self.status not in ("error", "cancelled", "lost"):
            if not getattr(self, "_fetching", False):
                self._fetching = True
                self.add_done_callback(_fetch_record)
        return self._record

    def __repr__(self) -> str:
        status, rec, extra = self.status, None, ""
        if status == "finished":
            rec = self._known_record()
        if rec is not None:
            extra = f" products={rec.tags} {rec.end - rec.start:.1f}s"
        return f"<Result {self.recipe} status={status}{extra} key={self.key!r}>"

    def _repr_html_(self) -> str:
        """Jupyter's display: status, recipe, the parameters that differ from the
        defaults, products with shapes and paths, duration; on error the exception and
        the last lines of the recipe's log."""
        e = lambda v: html.escape(str(v))  # noqa: E731
        status = self.status
        colour = {"finished": "#2e7d32", "error": "#c62828", "pending": "#1565c0"}.get(
            status, "#616161")
        rows = [("status", f"<b style='color:{colour}'>{e(status)}</b>"),
                ("recipe", f"<b>{e(self.recipe)}</b>"),
                ("key", f"<code>{e(self.key)}</code>")]
        rec = self._known_record() if status == "finished" else None
        if rec is not None:
            changed = [(name.rsplit(".", 1)[-1], value) for name, value in rec.params
                       if name not in self._defaults or value != self._defaults[name]]
            rows.append(("parameters", e(", ".join(f"{k}={v!r}" for k, v in changed)
                                         or "all defaults")))
            for p in rec.products:
                shapes = "<br>".join(
                    e(f"{name or 'PRIMARY'} {chr(215).join(map(str, shape))} {dtype}")
                    for name, shape, dtype in getattr(p, "hdus", ()))
                rows.append((e(p.tag), (f"{shapes}<br>" if shapes else "")
                             + f"<code>{e(p.path)}</code>"))
            took = f"{rec.end - rec.start:.1f} s on {rec.host}"
            rows.append(("duration", e(took + (" (product cache)" if rec.cache_hit else ""))))
        elif status == "pending" and len(self._live):
            lines = [e[3] for e in self._live.entries[-5:]]
            rows.append(("log (so far)", "<pre style='margin:0'>" + e("\n".join(lines))
                         + "</pre>"))
        elif status == "error":
            err = self.future.exception()  # held by the client with the error status
            rows.append(("error", e(f"{type(err).__name__}: {err}")))
            log = [getattr(r, "msg", r) for r in list(getattr(err, "log", None) or [])[-8:]]
            if log:
                rows.append(("log", "<pre style='margin:0'>" + e("\n".join(map(str, log)))
                             + "</pre>"))
        cells = "".join(f"<tr><th style='text-align:left;vertical-align:top'>{a}</th>"
                        f"<td style='text-align:left'>{b}</td></tr>" for a, b in rows)
        return f"<table>{cells}</table>"


#: what a product tag looks like (ESO's PRO CATG values): upper case, digits, _
_TAG = re.compile(r"[A-Z][A-Z0-9_]*")


def _fetch_record(res: "Result") -> None:
    """Done callback (distributed's callback thread): keep the finished call's record,
    which ``repr`` then shows."""
    if res.future.status == "finished":
        try:
            res._get()
        except Exception:  # noqa: BLE001  (closed meanwhile: nothing to show)
            pass


class Stat(dict):
    """A call's run statistics: a dict that also reads as python-cpl's ``Stat``
    object (``stat.return_code``, ``stat.user_time``, ``stat.sys_time``,
    ``stat.memory_is_empty``), with cpldask's ``wall_time`` and ``max_rss`` (bytes).
    """

    def __init__(self, values: dict):
        super().__init__({"memory_is_empty": None, "mtrace": None, **values})

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no statistic {name!r}; there are {sorted(self)}") from None


def _open(product, record: RunRecord | None = None, client=None) -> fits.HDUList:
    """Open a product lazily: headers and pixels are read when first touched."""
    # -- issue 7 hook: a product on a disk this client cannot see (worker-local, no
    # shared filesystem) is read through the worker that wrote it (cpldask._transfer;
    # config cpldask.jobqueue.shared-filesystem). With a shared filesystem: no copy.
    if record is not None and client is not None:
        if _transfer.must_fetch(product, record, client):
            return _transfer.open_fetched(product, record, client)
    # -- end of issue 7 hook
    return fits.open(product.path, memmap=True)


def is_result(obj) -> bool:
    return isinstance(obj, Result)


