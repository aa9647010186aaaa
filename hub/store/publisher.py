"""Publish straight into Redis with the hub's own script: no hub node in the way."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError, RedisError

from hub.config import Settings
from hub.errors import BadRequest, PayloadTooLarge
from hub.store.backend import Backend, redact
from hub.store.batch import PublishItem, at_index, read_items
from hub.store.cluster import SlotPool, sharded_script
from hub.store.failures import batch_failure, publish_failure
from hub.store.ids import check_chosen_id
from hub.store.keys import Keys, check_channels, check_event_type
from hub.store.lane import Lane
from hub.store.urls import CLUSTER_SCHEMES, check_plain_url

__all__ = ["PUBLISH_SCRIPT", "Extra", "Publishable", "Publisher", "SyncPublisher", "encode_data"]

#: One event of :meth:`Publisher.publish_many`: a publish object as the HTTP API takes
#: it (``{"channel": "news", "data": ..., "event": "update"}``), or one already read.
Publishable = Mapping[str, Any] | PublishItem
Call = tuple[list[str], list[bytes | str | int]]

#: The Lua source of the publish script (``hub/store/lua/publish.lua``).
PUBLISH_SCRIPT = (resources.files("hub.store") / "lua" / "publish.lua").read_text(encoding="utf-8")

#: Channels one publish may name; the hub's HTTP API applies its own HUB_MAX_CHANNELS.
MAX_PUBLISH_CHANNELS = 1000


def encode_data(data: Any) -> bytes:
    """A ``str`` is sent as it is, ``bytes`` too; any other value as compact JSON."""
    if isinstance(data, bytes):
        return data
    try:
        if isinstance(data, str):
            return data.encode("utf-8")
        # NaN and Infinity are not JSON: a browser's JSON.parse would reject the event.
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            "data contains a lone surrogate (not valid Unicode text); fix its encoding"
        ) from None
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"data must be a string or a JSON value: {exc}") from exc


@dataclass(frozen=True)
class Extra:
    """What a publish may carry beyond channels, data and type (the Mercure door's
    fields; a native publish may be private too)."""

    #: Delivered only to subscribers whose subscribe claims match one of its channels.
    private: bool = False
    #: The publisher's own id for the event (Mercure ``id``): sent to Mercure
    #: subscribers as the SSE ``id:`` and accepted back as their ``Last-Event-ID``.
    mercure_id: str | None = None
    #: Reconnect delay in ms sent along with the event to Mercure subscribers.
    retry: int | None = None
    #: False: announced to live subscribers but not kept in the hub-wide log, so it
    #: takes no room from the history that others resume from (subscription events).
    kept: bool = True
    #: The publisher's verified token subject, kept with the event in each channel's
    #: history (field ``s``): a worker reading requests can count them per subject.
    subject: str | None = None


def _cluster(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


class _Prepared:
    """Validated script keys and arguments for one publish; shared by both publishers."""

    def __init__(self, settings: Settings, max_channels: int) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.max_channels = max_channels

    def call(
        self,
        channels: str | Sequence[str],
        data: Any,
        event: str | None,
        extra: Extra | None = None,
    ) -> tuple[list[str], list[bytes | str | int]]:
        names = check_channels(
            [channels] if isinstance(channels, str) else channels, self.max_channels
        )
        event_type = check_event_type(event)
        payload = encode_data(data)
        if len(payload) > self.settings.max_payload:
            raise PayloadTooLarge(
                f"data is {len(payload)} bytes; the limit is {self.settings.max_payload} "
                "(HUB_MAX_PAYLOAD)"
            )
        extra = extra or Extra()
        if extra.mercure_id:
            check_chosen_id(extra.mercure_id)
        keys = [self.keys.clock, *(self.keys.stream(c) for c in names)]
        keys += [self.keys.log, self.keys.mercure_ids]
        ttl_ms = int(self.settings.history_ttl * 1000)
        args: list[bytes | str | int] = [event_type, payload, self.settings.history_size, ttl_ms]
        args += [
            extra.mercure_id or "",
            "" if extra.retry is None else extra.retry,
            "1" if extra.private else "",
            self.settings.log_size if extra.kept else 0,
            self.keys.mercure_all,
        ]
        args.extend(self.keys.live(c) for c in names)
        args.extend(self.keys.mercure(c) for c in names)
        args.extend(names)
        if extra.subject:
            args.append(extra.subject)
        return keys, args

    def calls(self, events: Iterable[Publishable], subject: str | None = None) -> list[Call]:
        """Every event of a batch checked, before any is sent; the first bad one is
        refused with its index. ``subject``: the publisher's, kept with each event."""
        calls = []
        for index, item in enumerate(read_items(events, self.settings.max_batch)):
            with at_index(index):
                extra = Extra(private=item.private, subject=subject)
                calls.append(self.call(item.channels, item.data, item.event, extra))
        return calls


def _ids(replies: Sequence[Any], failure: RedisError | None, where: str, total: int) -> list[str]:
    """The ids of a batch's events, or the error that says which were published."""
    if failure is None and not any(r is None or isinstance(r, Exception) for r in replies):
        return [r.decode() if isinstance(r, bytes) else str(r) for r in replies]
    raise batch_failure(replies, failure, where, total)


class Publisher:
    """Publishes events into Redis with the hub's atomic publish script (asyncio).

    >>> publisher = Publisher.from_url("redis://localhost:6379/0")
    >>> event_id = await publisher.publish("news", {"title": "hello"}, event="update")
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        settings: Settings | None = None,
        *,
        max_channels: int = MAX_PUBLISH_CHANNELS,
    ) -> None:
        self._client = client
        self._prepared = _Prepared(settings or Settings.from_env(), max_channels)
        # On a cluster (all keys in one slot) live messages go by sharded pub/sub.
        cluster = isinstance(client.connection_pool, SlotPool)
        self._source = sharded_script(PUBLISH_SCRIPT) if cluster else PUBLISH_SCRIPT
        self._script = client.register_script(self._source)
        self._where = (
            redact(settings.redis_url) if settings and settings.redis_url else "the backend"
        )
        # The script goes down a lane of its own when the server allows (hub/store/lane.py):
        # less than half the CPU per publish of a pooled redis-py call.
        self._lane = Lane.for_client(client)

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> Publisher:
        """A publisher with its own connection pool to the Redis at ``url`` (a server, or
        a Redis Cluster: ``redis+cluster://``)."""
        settings = (settings or Settings.from_env()).replace(redis_url=url)
        if _cluster(url):
            backend = Backend(url, key_prefix=settings.key_prefix)
            return cls(backend.command_client(), settings)
        check_plain_url(url)
        return cls(redis.asyncio.Redis.from_url(url), settings)

    async def publish(
        self,
        channels: str | Sequence[str],
        data: Any,
        *,
        event: str | None = None,
        extra: Extra | None = None,
    ) -> str:
        """Publish ``data`` to one channel or several (as one event); return the event id."""
        keys, args = self._prepared.call(channels, data, event, extra)
        try:
            if self._lane is None:
                result = await self._script(keys=keys, args=args)
            else:
                command = ("EVALSHA", self._script.sha, len(keys), *keys, *args)
                try:
                    result = await self._lane.call(*command)
                except NoScriptError:
                    # Not loaded on this server yet (a restart, a failover, SCRIPT FLUSH):
                    # nothing ran. Load it on the lane's own connection and run it.
                    await self._lane.call("SCRIPT", "LOAD", self._source)
                    result = await self._lane.call(*command)
        except RedisError as exc:
            raise publish_failure(exc, self._where) from exc
        return result.decode() if isinstance(result, bytes) else str(result)

    async def publish_many(
        self, events: Iterable[Publishable], *, subject: str | None = None
    ) -> list[str]:
        """Publish several events in one round trip to Redis; return their ids, in order.

        Each event is a publish object as ``POST /publish`` takes it:
        ``{"channel": "news", "data": ..., "event": "update"}`` (or ``"channels": [...]``,
        ``"private": true``). All are checked before any is sent: a bad one raises
        :class:`hub.errors.BadRequest` naming its index, and none is published. Each
        event is published atomically, in order, as by :meth:`publish`; the batch is not
        one transaction: should Redis fail midway, the error says which were published.
        At most ``HUB_MAX_BATCH`` events a call. ``subject``: the publisher's verified
        token subject, kept with each event (as :attr:`Extra.subject`).
        """
        calls = self._prepared.calls(events, subject)
        if self._lane is None:
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        await self._script(keys=keys, args=args, client=pipe)
                    replies = await pipe.execute(raise_on_error=False)
            except RedisError as exc:
                raise publish_failure(exc, self._where) from exc
            return _ids(replies, None, self._where, len(calls))
        commands = [("EVALSHA", self._script.sha, len(k), *k, *a) for k, a in calls]
        replies, failure = await self._lane.call_many(commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing and failure is None:
            # Not loaded on this server yet: those did not run. Load it and send them again.
            try:
                await self._lane.call("SCRIPT", "LOAD", self._source)
            except RedisError as exc:
                raise publish_failure(exc, self._where) from exc
            again, failure = await self._lane.call_many([commands[i] for i in missing])
            for n, i in enumerate(missing):
                # None: sent again, but the connection broke before its reply came.
                replies[i] = again[n] if n < len(again) else None
        return _ids(replies, failure, self._where, len(calls))

    async def aclose(self, *, close_client: bool = True) -> None:
        """Close the publisher's own connection, and the client unless told not to."""
        if self._lane is not None:
            await self._lane.aclose()
        if close_client:
            await self._client.aclose()


class SyncPublisher:
    """The blocking twin of :class:`Publisher`, for scripts and threaded code."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        settings: Settings | None = None,
        *,
        max_channels: int = MAX_PUBLISH_CHANNELS,
    ) -> None:
        self._client = client
        self._prepared = _Prepared(settings or Settings.from_env(), max_channels)
        cluster = isinstance(client, redis.RedisCluster)
        self._script = client.register_script(
            sharded_script(PUBLISH_SCRIPT) if cluster else PUBLISH_SCRIPT
        )
        self._where = (
            redact(settings.redis_url) if settings and settings.redis_url else "the backend"
        )

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> SyncPublisher:
        settings = (settings or Settings.from_env()).replace(redis_url=url)
        if _cluster(url):
            parsed = Backend(url, key_prefix=settings.key_prefix).cluster
            assert parsed is not None
            # redis-py's cluster client routes each call by its keys' (one) slot.
            nodes = [
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in parsed.nodes
            ]
            cluster = redis.RedisCluster(
                startup_nodes=nodes,
                username=parsed.username,
                password=parsed.password,
                ssl=parsed.tls,
            )
            return cls(cluster, settings)
        check_plain_url(url)
        return cls(redis.Redis.from_url(url), settings)

    def publish(
        self,
        channels: str | Sequence[str],
        data: Any,
        *,
        event: str | None = None,
        extra: Extra | None = None,
    ) -> str:
        """Publish ``data`` to one channel or several (as one event); return the event id."""
        keys, args = self._prepared.call(channels, data, event, extra)
        try:
            result = self._script(keys=keys, args=args)
        except RedisError as exc:
            raise publish_failure(exc, self._where) from exc
        return result.decode() if isinstance(result, bytes) else str(result)

    def publish_many(self, events: Iterable[Publishable]) -> list[str]:
        """Publish several events in one round trip; see :meth:`Publisher.publish_many`."""
        calls = self._prepared.calls(events)
        replies: list[Any] = []
        try:
            if isinstance(self._client, redis.RedisCluster):
                # redis-py's cluster pipeline refuses scripts: one call each, in order,
                # each reply (or error) in its place as the pipeline would give them.
                for keys, args in calls:
                    try:
                        replies.append(self._script(keys=keys, args=args))
                    except RedisError as exc:
                        replies.append(exc)
            else:
                with self._client.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        self._script(keys=keys, args=args, client=pipe)
                    replies = pipe.execute(raise_on_error=False)
        except RedisError as exc:
            raise publish_failure(exc, self._where) from exc
        return _ids(replies, None, self._where, len(calls))

    def close(self) -> None:
        self._client.close()
