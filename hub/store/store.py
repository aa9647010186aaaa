"""The store: what the rest of the hub asks of Redis, in one small interface.

Delivery and the doors publish, read the clock and history, follow live messages
and keep the Mercure door's log and subscriptions through a :class:`Store`, and
never touch a Redis client. Every call here raises hub errors only
(:mod:`hub.store.failures`). A second layout (Redis Cluster, sharded pub/sub) is a
second implementation of this interface, not a change to its callers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from hub.config import Settings
from hub.store.backend import Backend
from hub.store.failures import translated
from hub.store.history import Clock, ClockReads, HistoryReader, read_clock, record_loss
from hub.store.ids import EventId, format_id, parse_id, stream_id
from hub.store.keys import Keys
from hub.store.publisher import Publisher
from hub.store.pubsub import LiveConnection, OnMessage, OnSubscribed, open_live
from hub.store.rates import Rates
from hub.store.records import Update
from hub.store.subscriptions import SubscriptionRecords

__all__ = ["Follower", "Store"]

#: Log entries read per round trip.
_LOG_PAGE = 500


class Follower:
    """A dedicated connection for live messages (one per live path: pub/sub connections
    carry nothing else). Opened again after each failure; closed with the node."""

    def __init__(self, backend: Backend, key_prefix: str | None = None) -> None:
        self._client = backend.live_client(key_prefix)

    async def open(self, on_message: OnMessage, on_subscribed: OnSubscribed) -> LiveConnection:
        """A fresh live connection; its ``lost`` future says when it broke, and why."""
        with translated("opening the live connection"):
            return await open_live(self._client, on_message, on_subscribed)

    async def aclose(self) -> None:
        await self._client.aclose(close_connection_pool=True)


class Store:
    """One node's way into Redis (or the embedded backend)."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._redis = backend.command_client(settings.key_prefix)
        self.publisher = Publisher(self._redis, settings, max_channels=settings.max_channels)
        #: Clock reads shared by the streams that open together.
        self.clock = ClockReads(self._redis, self.keys)
        #: Per-client allowances shared by every node (``HUB_PUBLISH_RATE``).
        self.rates = Rates(self._redis, self.keys)

    async def aclose(self) -> None:
        self.clock.close()
        await self.rates.aclose()
        await self.publisher.aclose(close_client=False)
        await self._redis.aclose(close_connection_pool=True)

    def follower(self) -> Follower:
        """A new live connection source (see :class:`Follower`)."""
        return Follower(self.backend, self.settings.key_prefix)

    async def ping(self) -> None:
        """Raise :class:`hub.errors.BackendUnavailable` unless Redis answers."""
        with translated("pinging Redis"):
            await self._redis.ping()

    async def read_clock(self) -> Clock:
        """The publish clock, read now (not shared with other callers)."""
        return await read_clock(self._redis, self.keys)

    async def record_loss(self, after: EventId, upto: EventId) -> None:
        """Note that events ``(after, upto]`` are gone (a failover lost them)."""
        await record_loss(self._redis, self.keys, after, upto)

    def history(
        self,
        channels: list[str],
        after: EventId,
        *,
        strict: bool = True,
        expired_before: EventId | None = None,
        dedupe: bool = True,
    ) -> HistoryReader:
        """The events of ``channels`` after ``after`` (see :class:`HistoryReader`)."""
        return HistoryReader(
            self._redis,
            self.keys,
            channels,
            after,
            strict=strict,
            expired_before=expired_before,
            dedupe=dedupe,
        )

    async def newest(self, history_keys: Sequence[str]) -> tuple[list[EventId | None], int]:
        """The newest id in each history stream (``None``: empty), and Redis' time (ms)."""
        with translated("checking positions"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in history_keys:
                    pipe.xrevrange(key, b"+", b"-", 1)
                pipe.time()
                *lasts, (secs, micros) = await pipe.execute()
        newest = [stream_id(last[0][0]) if last else None for last in lasts]
        return newest, int(secs) * 1000 + int(micros) // 1000

    # -- the Mercure door's log ------------------------------------------------------

    async def read_log(self, after: EventId) -> AsyncIterator[Update]:
        """Every event of the hub-wide log after ``after``, in id order."""
        start = b"(" + format_id(after).encode() if after > (0, 0) else b"-"
        while True:
            with translated("reading the log"):
                page: list[tuple[bytes, dict[bytes, bytes]]] = cast(
                    Any, await self._redis.xrange(self.keys.log, start, b"+", _LOG_PAGE)
                )
            for raw_id, fields in page:
                yield Update.from_entry(raw_id, fields)
            if len(page) < _LOG_PAGE:
                return
            start = b"(" + page[-1][0]

    async def log_oldest(self) -> EventId | None:
        """The id of the oldest event still in the log (``None``: it is empty)."""
        with translated("reading the log"):
            first: list[tuple[bytes, Any]] = cast(
                Any, await self._redis.xrange(self.keys.log, b"-", b"+", 1)
            )
        return stream_id(first[0][0]) if first else None

    async def log_newest(self) -> Update | None:
        """The newest event in the log (``None``: it is empty)."""
        with translated("reading the log"):
            last: list[tuple[bytes, dict[bytes, bytes]]] = cast(
                Any, await self._redis.xrevrange(self.keys.log, b"+", b"-", 1)
            )
        return Update.from_entry(last[0][0], last[0][1]) if last else None

    async def chosen_id(self, mercure_id: str) -> EventId | None:
        """The hub id of the event a publisher gave ``mercure_id`` (``None``: unknown)."""
        with translated("looking up an event id"):
            mapped = await self._redis.hget(self.keys.mercure_ids, mercure_id)
        return parse_id(mapped) if mapped is not None else None

    def subscription_records(self, node: str, ttl_ms: int) -> SubscriptionRecords:
        """Node ``node``'s records in the Mercure subscriptions registry."""
        return SubscriptionRecords(self._redis, self.keys, node, ttl_ms)
