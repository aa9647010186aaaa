"""Reading channel history out of Redis Streams: merged across channels in key order,
each event once, and checked for holes.

A channel's history can have a hole after a client's cursor in three ways, and each
leaves a mark that a reader checks (``strict``) before it trusts what it reads:

- trimmed to ``HUB_HISTORY_SIZE`` or ``HUB_HISTORY_TTL``: the publish script notes the
  newest trimmed event in the partition's ``trimmed`` hash;
- lost in a failover: a node that had seen events Redis no longer has notes their range
  in the partition's ``lost`` hash (:func:`record_loss`);
- expired whole (``HUB_HISTORY_TTL`` with no publish for that long): the stream is gone
  and the cursor is older than the expiry horizon.

The ``trimmed`` mark is read again with every page after the first, which catches
trimming while a long history is being read.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any
from weakref import WeakKeyDictionary

from redis.asyncio import Redis, RedisCluster

from hub.store.failures import translated
from hub.store.ids import Key, channel_hash, format_key, parse_id
from hub.store.keys import Keys, partition_of
from hub.store.records import Event, entry_event

__all__ = ["HistoryReader", "hole_key", "lost_upto", "record_loss"]

#: The Lua source that records a loss range (``hub/store/lua/lost.lua``).
LOST_SCRIPT = (resources.files("hub.store") / "lua" / "lost.lua").read_text(encoding="utf-8")

Client = Redis | RedisCluster


def hole_key(value: bytes | None) -> Key | None:
    """The key of the newest trimmed event, from a ``trimmed`` hash value
    (``<entry id> <its first channel>``)."""
    if not value:
        return None
    raw, _, first = value.partition(b" ")
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq), channel_hash(first.decode())


def lost_upto(value: bytes | None) -> Key | None:
    """The newest key of a recorded loss, from a ``lost`` hash value (``<after> <upto>``)."""
    if not value:
        return None
    return parse_id(value.partition(b" ")[2])


async def record_loss(redis: Client, keys: Keys, channel: str, after: Key, upto: Key) -> None:
    """Note that ``channel``'s events in ``(after, upto]`` are gone (a failover lost
    them), and move its stream's last id to ``upto``'s, so that no later event reuses an
    id a client may already hold (see ``lua/lost.lua``)."""
    p = partition_of(channel)
    with translated("recording lost events"):
        await redis.eval(
            LOST_SCRIPT,
            2,
            keys.lost(p),
            keys.stream(channel),
            channel,
            format_key(after),
            format_key(upto),
        )


_raw_views: WeakKeyDictionary[Any, Client] = WeakKeyDictionary()


def _raw_xrange(redis: Client) -> Client:
    """A client sharing ``redis``'s connections whose XRANGE replies stay raw lists.

    redis-py turns each entry's fields into a dict (``pairs_to_dict``): a third of the
    hub's CPU when replaying a long history. The view shares the connections; the
    caller's own client keeps its callbacks."""
    if isinstance(redis, RedisCluster):
        return redis  # its own client (Backend.reader_client) has raw XRANGE already
    pool = redis.connection_pool
    view = _raw_views.get(pool)
    if view is None:
        view = Redis(connection_pool=pool)
        view.set_response_callback("XRANGE", _as_is)
        _raw_views[pool] = view
    return view


def _as_is(response: Any, **_options: Any) -> Any:
    return response


def _start(after: Key) -> bytes:
    """Where XRANGE starts for events after ``after``: at its entry id (events of other
    channels may share it and come after it), or at the start for the very beginning."""
    return b"-" if after[0] == 0 else f"{after[0]}-{after[1]}".encode()


class HistoryReader:
    """Iterates the events of ``channels`` after ``after``, in key order, each once.

    ``strict`` (every resume from a client's cursor) checks that each channel's history
    still reaches back to ``after``: a channel whose does not is listed in :attr:`gaps`
    (trimmed or expired) or :attr:`lost` (a failover lost events) and left out.
    ``follows``: the stream's channels (or topic selectors), which decide which part of
    an event stored in several partitions it gets (:meth:`Event.wanted_by`); by default,
    ``channels``. ``expired_before``: the expiry horizon in ms (``HUB_HISTORY_TTL``).
    ``until``: read no event from this key on (a replay of several channels, whose
    later events the live path delivers: see :meth:`hub.delivery.broker.Replay.run`).
    With ``dedupe=False`` an event stored on several of the channels comes once per
    channel, and every part of one stored in several partitions comes (a node's recovery
    needs every channel and part: each stream it delivers to decides for itself).
    """

    def __init__(
        self,
        redis: Client,
        keys: Keys,
        channels: list[str],
        after: Key,
        *,
        strict: bool = True,
        expired_before: int | None = None,
        follows: Callable[[str], bool] | None = None,
        page: int = 1000,
        dedupe: bool = True,
        afters: dict[str, Key] | None = None,
        until: Key | None = None,
    ) -> None:
        self.gaps: list[str] = []
        self.lost: list[str] = []
        self._redis = redis
        self._raw = _raw_xrange(redis)
        self._keys = keys
        self._after = after
        self._strict = strict
        self._expired_before = expired_before
        self._page = page
        self._dedupe = dedupe
        self._until = until
        wanted = set(channels)
        self._follows = follows or wanted.__contains__
        #: Where each channel's reading starts, when not at ``after`` (a node's recovery).
        self._afters = afters or {}
        self._next: dict[str, bytes] = {c: _start(self._afters.get(c, after)) for c in channels}
        self._last: dict[str, Key | None] = dict.fromkeys(channels)
        self._buffers: dict[str, deque[Event]] = {c: deque() for c in channels}
        self._done: set[str] = set()

    async def __aiter__(self) -> AsyncIterator[Event]:
        await self._fill(list(self._buffers), first=True)
        heap = [(buf[0].key, i, ch) for i, (ch, buf) in enumerate(self._buffers.items()) if buf]
        heapq.heapify(heap)
        yielded: Key = self._after
        while heap:
            _, i, channel = heapq.heappop(heap)
            buffer = self._buffers[channel]
            event = buffer.popleft()
            if not self._dedupe or event.key > yielded:
                yielded = max(yielded, event.key)
                yield event
            if not buffer and channel not in self._done:
                await self._fill([channel], first=False)
            if buffer:
                heapq.heappush(heap, (buffer[0].key, i, channel))

    async def _fill(self, channels: list[str], *, first: bool) -> None:
        keys = self._keys
        with translated("reading history"):
            async with self._raw.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.xrange(keys.stream(channel), self._next[channel], b"+", self._page)
                if self._strict:
                    for channel in channels:
                        p = partition_of(channel)
                        pipe.hget(keys.trimmed(p), channel)
                        if first:
                            pipe.hget(keys.lost(p), channel)
                replies = await pipe.execute()
        pages = replies[: len(channels)]
        marks = iter(replies[len(channels) :])
        for channel, page in zip(channels, pages, strict=True):
            if self._strict:
                trimmed = hole_key(next(marks))
                lost = lost_upto(next(marks)) if first else None
                after = self._afters.get(channel, self._after)
                if lost is not None and after < lost:
                    self._hole(channel, self.lost)
                    continue
                if trimmed is not None and trimmed > (self._last[channel] or after):
                    self._hole(channel, self.gaps)
                    continue
            if len(page) < self._page:
                self._done.add(channel)
            if not page:
                if first and self._last[channel] is None and await self._maybe_expired(channel):
                    self._hole(channel, self.gaps)
                continue
            buffer = self._buffers[channel]
            after = self._last[channel] or self._afters.get(channel, self._after)
            follows = self._follows
            until = self._until
            for raw_id, flat in page:
                event = entry_event(raw_id, flat, channel)
                if until is not None and event.key >= until:
                    self._done.add(channel)  # from here on the live path has them
                    break
                if event.key > after and (not self._dedupe or event.wanted_by(follows)):
                    buffer.append(event)
            last = page[-1][0]
            self._last[channel] = entry_event(last, page[-1][1], channel).key
            self._next[channel] = b"(" + last

    async def _maybe_expired(self, channel: str) -> bool:
        """A channel with nothing after the cursor may have lost everything to expiry:
        when its stream is gone and the cursor is older than the expiry horizon."""
        horizon = self._expired_before
        after = self._afters.get(channel, self._after)
        if not self._strict or horizon is None or after[0] >= horizon:
            return False
        with translated("reading history"):
            return not await self._redis.exists(self._keys.stream(channel))

    def _hole(self, channel: str, into: list[str]) -> None:
        into.append(channel)
        self._buffers[channel].clear()
        self._done.add(channel)
