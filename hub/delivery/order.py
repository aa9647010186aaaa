"""Key order across channels: when a stream that follows several channels may get an event.

Each channel's events reach a node in that channel's order, so a stream on one channel
gets each event the moment it arrives. A stream on several channels must get them in key
order (hub/store/ids.py): its single cursor says "every event up to here, none after".
Events of different channels arrive out of key order (two channels stamp the same
millisecond independently; on a cluster, shards race), so those streams get an event
only once no event with a smaller key can still arrive from any shard.

That moment is known per shard as its *safe time*: every event that shard stamped before
millisecond ``safe`` has reached this node. A live message raises it (Redis stamps an
event with its clock, and the connection delivers in the order Redis ran the
publishes), and so does a probe: ``TIME`` asked on the live connection itself, whose
reply arrives after every message published before it (hub/store/pubsub.py). An event is
released to ordered streams when its millisecond is below the safe time of every shard
those streams need; the cost is up to a millisecond of waiting, plus a probe's round
trip on a shard that has fallen silent.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Collection
from typing import Any

from hub.store import Key

__all__ = ["Order"]

#: Seconds between probes of a shard whose safe time holds an event back.
PROBE_AGAIN = 0.001


class Order:
    """The pending events of ordered streams, released in key order as shards pass them.

    ``release`` is called with each released item, in key order. ``probe(shard)`` asks a
    shard for its time (the live path answers with :meth:`advance` when it comes back).
    """

    def __init__(
        self,
        release: Callable[[Any], None],
        probe: Callable[[str], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._release = release
        self._probe = probe
        self._loop = loop or asyncio.get_running_loop()
        #: Per shard: every event it stamped before this millisecond has arrived.
        self.safe: dict[str, int] = {}
        #: Shards whose channels have ordered streams now: the ones releases wait for.
        self._needed: dict[str, int] = {}
        self._pending: list[tuple[Key, int, Any]] = []
        self._seq = itertools.count()
        self._waiters: list[tuple[int, int, frozenset[str], asyncio.Future[None]]] = []
        self._probing: set[str] = set()
        self._again: asyncio.TimerHandle | None = None

    # -- which shards count --------------------------------------------------------------

    def need(self, shard: str, delta: int) -> None:
        """A channel of ``shard`` gained (+1) or lost (-1) its first or last ordered stream."""
        count = self._needed.get(shard, 0) + delta
        if count > 0:
            self._needed[shard] = count
        else:
            self._needed.pop(shard, None)
            self._flush()

    def forget(self, shard: str) -> None:
        """``shard`` has no live connection any more (or its probe failed): its safe time
        starts over, and it is probed again once it has one."""
        self.safe.pop(shard, None)
        self._probing.discard(shard)

    def probe_failed(self, shard: str) -> None:
        """A probe of ``shard`` came to nothing (its connection is going)."""
        self._probing.discard(shard)

    # -- what moves it -------------------------------------------------------------------

    def add(self, key: Key, item: Any) -> None:
        """Hold ``item`` (an event for ordered streams) until its key may go out."""
        heapq.heappush(self._pending, (key, next(self._seq), item))
        if key[0] >= self.watermark():
            self._chase()
        else:
            self._flush()

    def advance(self, shard: str, ms: int) -> None:
        """Every event ``shard`` stamped before ``ms`` has arrived."""
        self._probing.discard(shard)
        if ms > self.safe.get(shard, -1):
            self.safe[shard] = ms
            self._flush()
        if self._pending or self._waiters:
            self._chase()

    def watermark(self, shards: Collection[str] | None = None) -> int:
        """The millisecond below which every event of ``shards`` (default: the needed
        ones) has arrived; -1 when one of them has no safe time yet."""
        names = self._needed if shards is None else shards
        if not names:
            return 1 << 62
        return min(self.safe.get(s, -1) for s in names)

    async def passed(self, ms: int, shards: Collection[str]) -> None:
        """Return once every event of ``shards`` stamped at ``ms`` or before has arrived,
        and those of ordered streams have been released."""
        if self._passed(ms, shards):
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._waiters, (ms, next(self._seq), frozenset(shards), waiter))
        self._chase()
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()

    # -- inside ----------------------------------------------------------------------------

    def _passed(self, ms: int, shards: Collection[str]) -> bool:
        # Pending events go out once every needed shard has passed them, not only these.
        return min(self.watermark(shards), self.watermark()) > ms

    def _flush(self) -> None:
        mark = self.watermark()
        pending = self._pending
        while pending and pending[0][0][0] < mark:
            _key, _n, item = heapq.heappop(pending)
            self._release(item)
        waiters = self._waiters
        if waiters:
            keep = []
            for entry in waiters:
                ms, _n, shards, waiter = entry
                if waiter.done():
                    continue
                if self._passed(ms, shards):
                    waiter.set_result(None)
                else:
                    keep.append(entry)
            heapq.heapify(keep)
            self._waiters = keep

    def _lagging(self) -> set[str]:
        """Shards whose safe time holds something back."""
        lagging: set[str] = set()
        if self._pending:
            first = self._pending[0][0][0]
            lagging.update(s for s in self._needed if self.safe.get(s, -1) <= first)
        for ms, _n, shards, waiter in self._waiters:
            if not waiter.done():
                lagging.update(s for s in (*shards, *self._needed) if self.safe.get(s, -1) <= ms)
        return lagging

    def _chase(self) -> None:
        """Probe the shards that hold things back, now and every PROBE_AGAIN while they do
        (a probe in the same millisecond as the event does not pass it)."""
        lagging = self._lagging()
        for shard in lagging - self._probing:
            self._probing.add(shard)
            self._probe(shard)
        if lagging and self._again is None:
            self._again = self._loop.call_later(PROBE_AGAIN, self._retry)

    def _retry(self) -> None:
        self._again = None
        if self._pending or self._waiters:
            self._chase()

    def close(self) -> None:
        if self._again is not None:
            self._again.cancel()
            self._again = None
        for _ms, _n, _shards, waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters = []
