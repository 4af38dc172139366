"""How background calls reach the scheduler: those made in a burst go as one graph.

Every ``Client.submit`` is one ``update-graph`` message, and the scheduler handles each
with a fixed cost: 5 000 one-task submits cost 0.64 ms of CPU each in the client's
process, the same tasks sent by ``Client.map`` in batches of 100 cost 0.065 ms
(distributed 2026.8, embedded cluster). The embedded scheduler runs in the client's
process, so that cost slowed the user's own loop that makes the calls, and it competes
with the recipes for the CPU.

So a background call with no upstream task does not submit its task itself. It gets
its :class:`distributed.Future` at once (the call returns at once, as before) and joins
the client's :class:`_Batch`, which sends everything waiting with one ``Client.map``
as soon as the client's event loop is free: a few milliseconds later at most, in
batches that grow by themselves when the loop is busy.

The scheduler must learn of a task before any message that names it. Whatever hands a
batched call's future to other code therefore sends the batch first
(:func:`flush`): ``Result.future``, a call that takes the result as input, any call
submitted on its own. The batch is sent under the same lock that guards it, so a flush
that finds it empty knows it has been sent.
"""

from __future__ import annotations

import threading
import weakref

import dask
import distributed

from ._execute import run_recipe

#: a batch this large is sent by the call that fills it, without waiting for the loop
MAX_BATCH = 500


class _Batch:
    """The background calls of one client waiting to be sent."""

    def __init__(self, client: distributed.Client):
        self._client = weakref.ref(client)
        self._lock = threading.Lock()
        self._calls: list = []  # recipe._Call, in call order
        self._resources: dict = {}

    def add(self, call) -> distributed.Future:
        """The future of ``call``'s task, which is sent with the batch."""
        client = call.client
        with self._lock:
            if self._calls and call.resources != self._resources:
                self._send(client)  # one map per set of resources
            known = call.key in client.futures  # an identical call was made before
            future = distributed.Future(call.key, client)  # before the send: no release
            if not known:
                self._calls.append(call)
                self._resources = call.resources
                if len(self._calls) == 1:
                    client.loop.add_callback(self.flush)
                elif len(self._calls) >= MAX_BATCH:
                    self._send(client)
        return future

    def flush(self) -> None:
        """Send the waiting calls' tasks now."""
        client = self._client()
        with self._lock:
            if client is not None:
                self._send(client)

    def _send(self, client: distributed.Client) -> None:
        calls, self._calls = self._calls, []
        if calls:
            # keys given: the tasks keep their content keys (cache, shared calls);
            # pure=False: map would otherwise tokenize every spec (0.3 ms per call)
            client.map(run_recipe, [c.spec for c in calls], key=[c.key for c in calls],
                       resources=self._resources or None, pure=False)


_batches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_batches_lock = threading.Lock()


def batchable(call) -> bool:
    """Whether ``call`` can wait for a batch: no upstream task (its graph would need
    them), no ``dask.annotate`` around it (the batch is sent from another thread)."""
    return not call.deps and not dask.get_annotations()


def add(call) -> distributed.Future:
    """Put ``call`` into its client's batch; its future."""
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
