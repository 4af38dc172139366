"""How background calls reach the scheduler: those made in a burst go as one graph.

Every ``Client.submit`` is one ``update-graph`` message, and the scheduler handles each
with a fixed cost: 5 000 one-task submits cost 0.64 ms of CPU each in the client's
process, the same tasks sent by ``Client.map`` in batches of 100 cost 0.065 ms
(distributed 2026.8, embedded cluster). The embedded scheduler runs in the client's
process, so that cost slowed the user's own loop that makes the calls, and it competes
with the recipes for the CPU.

So a background call with no upstream task does not submit its task itself. It gets
a :class:`Pending` ticket at once (the call returns at once, as before) and joins the
client's :class:`_Batch`, which sends everything waiting with one ``Client.map`` as
soon as the client's event loop is free: a few milliseconds later at most, in batches
that grow by themselves when the loop is busy. The futures ``Client.map`` returns fill
the tickets: cpldask never makes a :class:`distributed.Future` itself (distributed
says not to: a Future made before its task exists can release it).

The scheduler must learn of a task before any message that names it. Whatever hands a
batched call's future to other code therefore sends the batch first
(:meth:`Pending.sent`, :func:`flush`): ``Result.future``, a call that takes the result
as input, any call submitted on its own. ``Result.key`` and ``Result.status`` need no
future (the ticket knows the key; a waiting call is pending). The batch is sent under
the same lock that guards it, so a flush that finds it empty knows it has been sent.
"""

from __future__ import annotations

import threading
import weakref

import dask
import distributed

from .worker.task import run_recipe

#: a batch this large is sent by the call that fills it, without waiting for the loop
MAX_BATCH = 500


class Pending:
    """A background call waiting in its client's batch: its task key, and its
    :class:`distributed.Future` once the batch has been sent (from ``Client.map``:
    cpldask never makes a Future itself)."""

    __slots__ = ("key", "future", "_batch", "__weakref__")

    def __init__(self, key: str, batch: "_Batch"):
        self.key = key
        self.future: distributed.Future | None = None
        self._batch = batch

    def sent(self) -> distributed.Future:
        """The call's future, sending the batch first if it is still waiting."""
        if self.future is None:
            self._batch.flush()
        return self.future


class _Batch:
    """The background calls of one client waiting to be sent."""

    def __init__(self, client: distributed.Client):
        self._client = weakref.ref(client)
        self._lock = threading.Lock()
        self._calls: dict[str, tuple] = {}  # key -> (recipe._Call, [Pending]), in order
        self._resources: dict = {}
        # the futures this batch handed out, while someone holds them: an identical
        # call made later shares the future instead of sending its task again
        self._sent: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def add(self, call) -> Pending:
        """A ticket for ``call``'s future, which the batch's ``Client.map`` fills."""
        client = call.client
        with self._lock:
            if self._calls and call.resources != self._resources:
                self._send(client)  # one map per set of resources
            pending = Pending(call.key, self)
            known = self._sent.get(call.key)
            if known is not None and call.key in client.futures:
                pending.future = known  # an identical call was sent before
                return pending
            # an identical call waiting already: one task, two tickets
            self._calls.setdefault(call.key, (call, []))[1].append(pending)
            self._resources = call.resources
            if len(self._calls) == 1:
                client.loop.add_callback(self.flush)
            elif len(self._calls) >= MAX_BATCH:
                self._send(client)
        return pending

    def flush(self) -> None:
        """Send the waiting calls' tasks now."""
        client = self._client()
        with self._lock:
            if client is not None:
                self._send(client)

    def _send(self, client: distributed.Client) -> None:
        calls, self._calls = list(self._calls.values()), {}
        if calls:
            # keys given: the tasks keep their content keys (cache, shared calls; a
            # key the scheduler holds already gives a future of that task);
            # pure=False: map would otherwise tokenize every spec (0.3 ms per call)
            futures = client.map(run_recipe, [c.spec for c, _ in calls],
                                 key=[c.key for c, _ in calls],
                                 resources=self._resources or None, pure=False)
            for (call, tickets), future in zip(calls, futures):
                self._sent[call.key] = future
                for pending in tickets:
                    pending.future = future


_batches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_batches_lock = threading.Lock()


def batchable(call) -> bool:
    """Whether ``call`` can wait for a batch: no upstream task (its graph would need
    them), no ``dask.annotate`` around it (the batch is sent from another thread)."""
    return not call.deps and not dask.get_annotations()


def add(call) -> Pending:
    """Put ``call`` into its client's batch; the ticket of its future."""
    with _batches_lock:
        batch = _batches.get(call.client)
        if batch is None:
            batch = _batches[call.client] = _Batch(call.client)
    return batch.add(call)


def flush(client: distributed.Client) -> None:
    """Send ``client``'s waiting calls, so that a message naming them can follow."""
    batch = _batches.get(client)
    if batch is not None:
        batch.flush()
