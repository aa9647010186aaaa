"""Reading channel history out of Redis Streams, merged across channels, checked for gaps.

Each stream entry records ``p``, the id of the previous event on its channel. A reader
that starts after id ``X`` and finds a first entry whose ``p`` is later than ``X`` knows
the events in between were trimmed away: it reports a gap instead of silently skipping
them. The same check runs at each page boundary, which catches trimming that happens
while a long history is being read.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

from redis.asyncio import Redis

from hub.errors import BackendUnavailable
from hub.store.failures import translated
from hub.store.ids import EventId, format_id, parse_id, stream_id
from hub.store.keys import Keys
from hub.store.records import entry_fields

__all__ = ["Clock", "ClockReads", "Entry", "HistoryReader", "read_clock", "record_loss"]

#: The Lua source that records a loss range in the clock hash (``hub/store/lua/lost.lua``).
LOST_SCRIPT = (resources.files("hub.store") / "lua" / "lost.lua").read_text(encoding="utf-8")


class Clock(NamedTuple):
    """The publish clock as read from Redis."""

    #: The last id handed out, ``(0, 0)`` before the first publish.
    head: EventId
    #: When this Redis started keeping hub history (ms), ``None`` before the first publish.
    since: int | None
    #: The Redis server's time, in ms.
    now_ms: int
    #: Ids ``(after, upto]`` a node saw live that this Redis no longer has (a failover
    #: lost them), or ``None``.
    lost: tuple[EventId, EventId] | None = None


async def read_clock(redis: Redis, keys: Keys) -> Clock:
    """Read the publish clock and the server's time in one round trip."""
    with translated("reading the publish clock"):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.clock, "ms", "n", "since", "lost_after", "lost_upto")
            pipe.time()
            (ms, n, since, lost_after, lost_upto), (secs, micros) = await pipe.execute()
    head = (int(ms), int(n)) if ms is not None else (0, 0)
    lost = None
    if lost_after is not None and lost_upto is not None:
        lost = (parse_id(lost_after), parse_id(lost_upto))
    return Clock(
        head, int(since) if since is not None else None, secs * 1000 + micros // 1000, lost
    )


class ClockReads:
    """:func:`read_clock` shared by the streams that open together.

    Every stream opening reads the clock once its subscription is confirmed; one read
    each was 40% of the hub's CPU under connection churn (py-spy, bench S6). A read
    here serves every caller that was waiting when its request was sent, and only
    those: a caller that arrives while a read is in flight waits for the next one. So
    each caller still gets the clock as Redis had it after the call began, which is
    what makes an id read after confirming a subscription safe to start a stream from.
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._waiting: list[asyncio.Future[Clock]] = []
        self._task: asyncio.Task[None] | None = None
        #: The last clock read, and the loop time its request was sent.
        self.latest: tuple[float, Clock] | None = None

    async def read(self) -> Clock:
        """The clock, read by a request sent after this call began."""
        loop = asyncio.get_running_loop()
        # One future per caller: a caller that is cancelled cancels only its own.
        waiter: asyncio.Future[Clock] = loop.create_future()
        self._waiting.append(waiter)
        if self._task is None:
            self._task = loop.create_task(self._run())
        return await waiter

    def close(self) -> None:
        """Stop reading (shutdown); callers still waiting get :class:`BackendUnavailable`."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        batch: list[asyncio.Future[Clock]] = []
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                sent_at = loop.time()
                try:
                    clock = await read_clock(self._redis, self._keys)
                except Exception as exc:
                    for waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                else:
                    self.latest = (sent_at, clock)
                    for waiter in batch:
                        if not waiter.done():
                            waiter.set_result(clock)
                batch = []
        finally:
            self._task = None
            for waiter in batch + self._waiting:
                if not waiter.done():
                    waiter.set_exception(BackendUnavailable("the hub is shutting down"))
            self._waiting = []


async def record_loss(redis: Redis, keys: Keys, after: EventId, upto: EventId) -> None:
    """Note in Redis that events ``(after, upto]`` are gone (see ``lua/lost.lua``)."""
    with translated("recording lost events"):
        await redis.eval(LOST_SCRIPT, 1, keys.clock, format_id(after), format_id(upto))


class Entry(NamedTuple):
    # A tuple, not a frozen dataclass: one is made per replayed event, and a frozen
    # dataclass's __init__ showed in replay profiles.
    id: EventId
    raw_id: bytes
    event: bytes
    data: bytes
    channel: str


_raw_views: WeakKeyDictionary[Any, Redis] = WeakKeyDictionary()


def _raw_xrange(redis: Redis) -> Redis:
    """A client on the same connection pool whose XRANGE replies stay raw lists.

    redis-py turns each entry's fields into a dict (``pairs_to_dict``): a third of the
    hub's CPU when replaying a long history. The view is per pool and shares its
    connections; the caller's own client keeps its callbacks.
    """
    pool = redis.connection_pool
    view = _raw_views.get(pool)
    if view is None:
        view = Redis(connection_pool=pool)
        view.set_response_callback("XRANGE", _as_is)
        _raw_views[pool] = view
    return view


def _as_is(response: Any, **_options: Any) -> Any:
    return response


class HistoryReader:
    """Iterates the events of ``channels`` after ``after``, in id order, each id once.

    ``strict`` (every resume from a client's cursor) checks that history still reaches
    back to ``after``; channels where it does not are listed in :attr:`gaps` and left
    out. With ``dedupe=False`` an event stored on several of the channels comes once per
    channel (the node's recovery needs to know every channel it belongs to).
    ``expired_before`` is the oldest id age-based trimming may have kept: a channel
    whose retained history starts from scratch after a cursor older than that may have
    lost events to expiry, and is reported as a gap too.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        channels: list[str],
        after: EventId,
        *,
        strict: bool = True,
        expired_before: EventId | None = None,
        page: int = 1000,
        dedupe: bool = True,
    ) -> None:
        self.gaps: list[str] = []
        self._redis = redis
        self._raw = _raw_xrange(redis)
        self._keys = keys
        self._after = after
        self._strict = strict
        self._expired_before = expired_before
        self._page = page
        self._dedupe = dedupe
        start = b"(" + format_id(after).encode() if after > (0, 0) else b"-"
        self._next: dict[str, bytes] = dict.fromkeys(channels, start)
        self._last: dict[str, bytes | None] = dict.fromkeys(channels)
        self._buffers: dict[str, deque[Entry]] = {c: deque() for c in channels}
        self._done: set[str] = set()

    async def __aiter__(self) -> AsyncIterator[Entry]:
        await self._fill(list(self._buffers))
        if len(self._buffers) == 1:
            # One channel (the common resume): its stream is already in id order and
            # starts after the cursor, so there is nothing to merge or skip.
            [(channel, buffer)] = self._buffers.items()
            while buffer:
                while buffer:
                    yield buffer.popleft()
                if channel not in self._done:
                    await self._fill([channel])
            return
        heap = [(buf[0].id, i, ch) for i, (ch, buf) in enumerate(self._buffers.items()) if buf]
        heapq.heapify(heap)
        yielded: EventId = self._after
        while heap:
            _, i, channel = heapq.heappop(heap)
            buffer = self._buffers[channel]
            entry = buffer.popleft()
            if entry.id > yielded or not self._dedupe:
                yielded = entry.id
                yield entry
            if not buffer and channel not in self._done:
                await self._fill([channel])
            if buffer:
                heapq.heappush(heap, (buffer[0].id, i, channel))

    async def _fill(self, channels: list[str]) -> None:
        with translated("reading history"):
            async with self._raw.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.xrange(self._keys.stream(channel), self._next[channel], b"+", self._page)
                pages = await pipe.execute()
        for channel, page in zip(channels, pages, strict=True):
            if len(page) < self._page:
                self._done.add(channel)
            if not page:
                if self._last[channel] is None and await self._maybe_expired(channel):
                    self._gap(channel)
                continue
            first_prev = entry_fields(page[0][1])[2]
            if not self._continuous(channel, first_prev):
                self._gap(channel)
                continue
            buffer = self._buffers[channel]
            for raw_id, flat in page:
                event, data, _prev = entry_fields(flat)
                buffer.append(Entry(stream_id(raw_id), raw_id, event, data, channel))
            last = page[-1][0]
            self._last[channel] = last
            self._next[channel] = b"(" + last

    def _continuous(self, channel: str, prev: bytes) -> bool:
        last = self._last[channel]
        if last is not None:
            return prev == last  # page boundary: nothing trimmed while we were reading
        if not self._strict:
            return True
        if prev:
            return parse_id(prev) <= self._after
        # First event of the channel's retained history: continuous unless the whole
        # stream expired (age limit) since the cursor was handed out.
        return self._expired_before is None or self._after >= self._expired_before

    async def _maybe_expired(self, channel: str) -> bool:
        if not self._strict or self._expired_before is None or self._after >= self._expired_before:
            return False
        with translated("reading history"):
            return not await self._redis.exists(self._keys.stream(channel))

    def _gap(self, channel: str) -> None:
        self.gaps.append(channel)
        self._buffers[channel].clear()
        self._done.add(channel)
