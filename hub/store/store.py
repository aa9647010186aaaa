"""The store: what the rest of the hub asks of Redis, in one small interface.

Delivery and the doors publish, read history and the partitions' marks, follow live
messages (:class:`hub.store.shards.Shards`) and keep the Mercure door's index, chosen
ids and subscriptions through a :class:`Store`, and never touch a Redis client. Every
call here raises hub errors only (:mod:`hub.store.failures`). One Redis, a
Sentinel-named one and a Redis Cluster are the same interface: on a cluster the client
is redis-py's cluster client and reads go to the shard of their keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis, RedisCluster

from hub.config import Settings
from hub.store.backend import Backend
from hub.store.failures import translated
from hub.store.history import HistoryReader, hole_key, lost_upto, record_loss
from hub.store.ids import Key, parse_id
from hub.store.keys import PARTITIONS, Keys, partition_of
from hub.store.publisher import Publisher
from hub.store.rates import Rates
from hub.store.records import Event, entry_event
from hub.store.shards import Shards
from hub.store.subscriptions import SubscriptionRecords

__all__ = ["Store", "partitions_of"]

Client = Redis | RedisCluster


class Store:
    """One node's way into Redis (or the embedded backend)."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._redis: Client = backend.command_client()
        # History reads keep XRANGE replies raw; on a cluster that is a client of its own.
        self._reader: Client = (
            backend.cluster_client(raw_xrange=True) if backend.cluster else self._redis
        )
        self.publisher = Publisher(self._redis, settings, max_channels=settings.max_channels)
        #: Per-client allowances shared by every node (``HUB_PUBLISH_RATE``).
        self.rates = Rates(self._redis, self.keys)
        #: Where live messages come from (one Redis, or each master of a cluster).
        self.shards = Shards(backend)

    async def aclose(self) -> None:
        await self.rates.aclose()
        await self.publisher.aclose(close_client=False)
        await self.shards.aclose()
        if self._reader is not self._redis:
            await self._reader.aclose()
        if isinstance(self._redis, RedisCluster):
            await self._redis.aclose()
        else:
            await self._redis.aclose(close_connection_pool=True)

    async def ping(self) -> None:
        """Raise :class:`hub.errors.BackendUnavailable` unless Redis answers."""
        with translated("pinging Redis"):
            await self._redis.ping()

    async def now_ms(self) -> int:
        """Redis' clock, in ms (on a cluster, one master's)."""
        with translated("reading Redis' clock"):
            secs, micros = await self._redis.time()
        return int(secs) * 1000 + int(micros) // 1000

    # -- history -------------------------------------------------------------------------

    def history(
        self,
        channels: list[str],
        after: Key,
        *,
        strict: bool = True,
        expired_before: int | None = None,
        follows: Any = None,
        dedupe: bool = True,
        afters: dict[str, Key] | None = None,
        until: Key | None = None,
    ) -> HistoryReader:
        """The events of ``channels`` after ``after`` (see :class:`HistoryReader`)."""
        return HistoryReader(
            self._reader,
            self.keys,
            channels,
            after,
            strict=strict,
            expired_before=expired_before,
            follows=follows,
            dedupe=dedupe,
            afters=afters,
            until=until,
        )

    async def since(self, partitions: Sequence[int]) -> dict[int, int | None]:
        """When each partition's history began on this Redis (ms; ``None``: not yet)."""
        with translated("reading the partitions' marks"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for p in partitions:
                    pipe.hget(self.keys.meta(p), "since")
                replies = await pipe.execute()
        return {
            p: int(r) if r is not None else None for p, r in zip(partitions, replies, strict=True)
        }

    async def mark_since(self, now_ms: int, partitions: Sequence[int] = range(PARTITIONS)) -> None:
        """Note ``now_ms`` as the start of history where none is noted yet: a Redis that
        lost its data (or a new one) gets a start that cursors older than it predate."""
        with translated("marking the partitions' history"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for p in partitions:
                    pipe.hsetnx(self.keys.meta(p), "since", str(now_ms))
                await pipe.execute()

    async def holes(self, channels: Sequence[str], after: Key) -> list[str]:
        """The channels whose history has a hole after ``after``: trimmed past it, or
        events lost in a failover (hub/store/history.py)."""
        with translated("reading the partitions' marks"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel in channels:
                    p = partition_of(channel)
                    pipe.hget(self.keys.trimmed(p), channel)
                    pipe.hget(self.keys.lost(p), channel)
                marks = await pipe.execute()
        holed = []
        for i, channel in enumerate(channels):
            trimmed, lost = hole_key(marks[2 * i]), lost_upto(marks[2 * i + 1])
            if (trimmed is not None and trimmed > after) or (lost is not None and after < lost):
                holed.append(channel)
        return holed

    async def record_loss(self, channel: str, after: Key, upto: Key) -> None:
        """Note that ``channel``'s events ``(after, upto]`` are gone (a failover lost them)."""
        await record_loss(self._redis, self.keys, channel, after, upto)

    async def newest(self, channels: Sequence[str]) -> list[Key | None]:
        """The key of the newest event in each channel's history (``None``: empty)."""
        return [e.key if e is not None else None for e in await self.newest_events(channels)]

    async def newest_events(self, channels: Sequence[str]) -> list[Event | None]:
        """The newest event in each channel's history (``None``: empty)."""
        with translated("checking positions"):
            async with self._reader.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.xrevrange(self.keys.stream(channel), b"+", b"-", 1)
                lasts = await pipe.execute()
        newest: list[Event | None] = []
        for channel, last in zip(channels, lasts, strict=True):
            if not last:
                newest.append(None)
                continue
            raw_id, fields = last[0]
            flat = fields if isinstance(fields, list) else [x for kv in fields.items() for x in kv]
            newest.append(entry_event(raw_id, flat, channel))
        return newest

    async def busiest_channels(self, partitions: Sequence[int]) -> list[str]:
        """Each partition's channel with the highest index score: those most recently
        published to (give or take the index's refresh interval)."""
        with translated("reading the channel index"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for p in partitions:
                    pipe.zrange(self.keys.index(p), -1, -1)
                tops = cast(list[list[bytes]], await pipe.execute())
        return [name.decode() for top in tops for name in top]

    # -- the Mercure door ------------------------------------------------------------------

    async def active_channels(self, partitions: Sequence[int], after_ms: int) -> list[str]:
        """The channels of ``partitions`` that may have events from ``after_ms`` on (the
        index's scores run ahead of each channel's newest event)."""
        with translated("reading the channel index"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for p in partitions:
                    pipe.zrangebyscore(self.keys.index(p), after_ms, "+inf")
                pages = cast(list[list[bytes]], await pipe.execute())
        return [name.decode() for page in pages for name in page]

    async def chosen_id(self, mercure_id: str, partitions: Sequence[int]) -> list[Key]:
        """The events a publisher gave ``mercure_id``, in ``partitions`` (an id is unique
        within a partition; an event stored in several has a part in each)."""
        with translated("looking up an event id"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for p in partitions:
                    pipe.hget(self.keys.chosen_ids(p), mercure_id)
                mapped = await pipe.execute()
        return [parse_id(m) for m in mapped if m is not None]

    def subscription_records(self, node: str, ttl_ms: int) -> SubscriptionRecords:
        """Node ``node``'s records in the Mercure subscriptions registry."""
        return SubscriptionRecords(self._redis, self.keys, node, ttl_ms)


def partitions_of(channels: Sequence[str]) -> list[int]:
    """The partitions of ``channels``, each once, in order."""
    return list(dict.fromkeys(partition_of(c) for c in channels))
