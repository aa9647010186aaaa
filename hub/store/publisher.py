"""Publish straight into Redis with the hub's own script: no hub node in the way."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import redis
import redis.asyncio
from redis.exceptions import NoScriptError, RedisError

from hub.config import Settings
from hub.store.backend import Backend, redact
from hub.store.calls import Call, Calls, Extra, Publishable, encode_data
from hub.store.cluster import ClusterLanes, is_cluster_client
from hub.store.failures import batch_failure, publish_failure
from hub.store.lane import Lane
from hub.store.parts import Plan, Replies, in_batches, in_order
from hub.store.urls import CLUSTER_SCHEMES, check_plain_url

__all__ = ["PUBLISH_SCRIPT", "Extra", "Publishable", "Publisher", "SyncPublisher", "encode_data"]

#: The Lua source of the publish script (``hub/store/lua/publish.lua``).
PUBLISH_SCRIPT = (resources.files("hub.store") / "lua" / "publish.lua").read_text(encoding="utf-8")
#: On a Redis Cluster live messages go by sharded pub/sub, within the slot's shard.
SHARDED_SCRIPT = PUBLISH_SCRIPT.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")

#: Channels one publish may name; the hub's HTTP API applies its own HUB_MAX_CHANNELS.
MAX_PUBLISH_CHANNELS = 1000


def _cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def _event_id(reply: Any, call: Call) -> str:
    raw = reply if isinstance(reply, bytes) else str(reply).encode()
    return (raw + call.suffix).decode()


def _results(
    events: Sequence[list[Call]], replies: Sequence[Any], failure: RedisError | None, where: str
) -> list[str]:
    """The ids of a batch's events (each the id of its first part), or the error that
    says which events were published."""
    if failure is None and len(replies) == len(events):
        # The common case, each event one call and each reply an id: no slicing.
        ids = []
        for calls, reply in zip(events, replies, strict=True):
            if len(calls) != 1 or reply is None or isinstance(reply, Exception):
                break
            ids.append(_event_id(reply, calls[0]))
        else:
            return ids
    per_event: list[Any] = []
    position = 0
    for calls in events:
        mine = list(replies[position : position + len(calls)])
        position += len(calls)
        if len(mine) < len(calls) or any(r is None for r in mine):
            per_event.append(None)  # no reply for some part: it may or may not have run
        elif any(isinstance(r, Exception) for r in mine):
            per_event.append(next(r for r in mine if isinstance(r, Exception)))
        else:
            per_event.append(_event_id(mine[0], calls[0]))
    if failure is None and all(isinstance(r, str) for r in per_event):
        return per_event
    raise batch_failure(per_event, failure, where, len(events))


class Publisher:
    """Publishes events into Redis with the hub's atomic publish script (asyncio).

    >>> publisher = Publisher.from_url("redis://localhost:6379/0")
    >>> event_id = await publisher.publish("news", {"title": "hello"}, event="update")
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.RedisCluster,
        settings: Settings | None = None,
        *,
        max_channels: int = MAX_PUBLISH_CHANNELS,
    ) -> None:
        self._client = client
        cluster = is_cluster_client(client)
        self._calls = Calls(settings or Settings.from_env(), max_channels, cluster=cluster)
        self._source = SHARDED_SCRIPT if cluster else PUBLISH_SCRIPT
        self._script = client.register_script(self._source)
        self._where = (
            redact(settings.redis_url) if settings and settings.redis_url else "the backend"
        )
        # The script goes down a lane of its own (on a cluster, one per shard) when the
        # server allows (hub/store/lane.py): less than half the CPU per publish of a
        # pooled redis-py call.
        self._lanes: ClusterLanes | None = None
        self._lane: Lane | None = None
        if isinstance(client, redis.asyncio.RedisCluster):
            self._lanes = ClusterLanes.for_client(client, role="pub")
        else:
            self._lane = Lane.for_client(client)

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> Publisher:
        """A publisher with its own connections to the Redis at ``url`` (a server, or
        a Redis Cluster: ``redis+cluster://``)."""
        settings = (settings or Settings.from_env()).replace(redis_url=url)
        if _cluster_url(url):
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
        """Publish ``data`` to one channel or several (as one event); return the event id.

        Channels in different partitions (docs/production.md) are published to
        partition by partition, each atomically (hub/store/parts.py); should Redis fail
        in between, the error says so."""
        calls = self._calls.event(channels, data, event, extra)
        if len(calls) == 1:
            call = calls[0]
            try:
                reply = await self._run(call)
            except RedisError as exc:
                raise publish_failure(exc, self._where) from exc
            return _event_id(reply, call)
        replies, failure = await self._drive(in_order(calls))
        return _results([calls], replies, failure, self._where)[0]

    async def publish_many(
        self, events: Iterable[Publishable], *, subject: str | None = None
    ) -> list[str]:
        """Publish several events in one round trip to Redis (on a cluster, an event of
        several partitions takes its own: hub/store/parts.py); return their ids, in order.

        Each event is a publish object as ``POST /publish`` takes it:
        ``{"channel": "news", "data": ..., "event": "update"}`` (or ``"channels": [...]``,
        ``"private": true``). All are checked before any is sent: a bad one raises
        :class:`hub.errors.BadRequest` naming its index, and none is published. Each
        event is published atomically, in order, as by :meth:`publish`; the batch is not
        one transaction: should Redis fail midway, the error says which were published.
        At most ``HUB_MAX_BATCH`` events a call. ``subject``: the publisher's verified
        token subject, kept with each event (as :attr:`Extra.subject`).
        """
        events_calls = self._calls.batch(events, subject)
        replies, failure = await self._drive(in_batches(events_calls, cluster=self._calls.cluster))
        return _results(events_calls, replies, failure, self._where)

    async def _drive(self, plan: Plan) -> Replies:
        """Run ``plan``'s round trips (hub/store/parts.py); its replies."""
        calls = next(plan)
        while True:
            try:
                calls = plan.send(await self._run_many(calls))
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def _command(self, call: Call) -> tuple[Any, ...]:
        return ("EVALSHA", self._script.sha, len(call.keys), *call.keys, *call.args)

    async def _run(self, call: Call) -> Any:
        """One call: its reply, or a redis-py error."""
        if self._lane is None and self._lanes is None:
            return await self._script(keys=call.keys, args=call.args)
        if self._lanes is not None:
            # Through the cluster's router: it follows MOVED and ASK, and loads the script.
            [reply], failure = await self._lanes.run_many(
                [(call.keys[0], self._command(call))], self._source
            )
            if isinstance(reply, RedisError):
                raise reply
            if failure is not None or reply is None:
                raise failure or RedisError("no reply")
            return reply
        command = self._command(call)
        lane = self._lane
        assert lane is not None
        try:
            return await lane.call(*command)
        except NoScriptError:
            # Not loaded on this server yet (a restart, a failover, SCRIPT FLUSH): nothing
            # ran. Load it on the lane's own connection and run it.
            await lane.call("SCRIPT", "LOAD", self._source)
            return await lane.call(*command)

    async def _run_many(self, calls: list[Call]) -> tuple[list[Any], RedisError | None]:
        """Several calls in one round trip (per shard): their replies in order (errors in
        their place, ``None`` where none came), and why the rest did not come."""
        if self._lanes is not None:
            return await self._lanes.run_many(
                [(call.keys[0], self._command(call)) for call in calls], self._source
            )
        if self._lane is None:
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for call in calls:
                        await self._script(keys=call.keys, args=call.args, client=pipe)  # type: ignore[arg-type]
                    replies = await pipe.execute(raise_on_error=False)
            except RedisError as exc:
                return [], exc
            return list(replies), None
        commands = [self._command(call) for call in calls]
        replies, failure = await self._lane.call_many(commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing and failure is None:
            # Not loaded on this server yet: those did not run. Load it and send them again.
            try:
                await self._lane.call("SCRIPT", "LOAD", self._source)
            except RedisError as exc:
                return replies, exc
            again, failure = await self._lane.call_many([commands[i] for i in missing])
            for n, i in enumerate(missing):
                # None: sent again, but the connection broke before its reply came.
                replies[i] = again[n] if n < len(again) else None
        return replies, failure

    async def aclose(self, *, close_client: bool = True) -> None:
        """Close the publisher's own connections, and the client unless told not to."""
        if self._lane is not None:
            await self._lane.aclose()
        if self._lanes is not None:
            await self._lanes.aclose()
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
        cluster = isinstance(client, redis.RedisCluster)
        self._calls = Calls(settings or Settings.from_env(), max_channels, cluster=cluster)
        self._script = client.register_script(SHARDED_SCRIPT if cluster else PUBLISH_SCRIPT)
        self._where = (
            redact(settings.redis_url) if settings and settings.redis_url else "the backend"
        )

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> SyncPublisher:
        settings = (settings or Settings.from_env()).replace(redis_url=url)
        if _cluster_url(url):
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
        calls = self._calls.event(channels, data, event, extra)
        return self._publish([calls])[0]

    def publish_many(self, events: Iterable[Publishable]) -> list[str]:
        """Publish several events in one round trip; see :meth:`Publisher.publish_many`."""
        return self._publish(self._calls.batch(events))

    def _publish(self, events: list[list[Call]]) -> list[str]:
        plan = in_batches(events, cluster=self._calls.cluster)
        calls = next(plan)
        # A lone event of one call raises its error; any other's goes in its place.
        single = len(events) == 1 and len(events[0]) == 1
        try:
            while True:
                try:
                    calls = plan.send(self._run_many(calls, single=single))
                except StopIteration as done:
                    replies, failure = done.value
                    break
        except RedisError as exc:
            raise publish_failure(exc, self._where) from exc
        return _results(events, replies, failure, self._where)

    def _run_many(self, calls: list[Call], *, single: bool) -> Replies:
        """Several calls in order, each reply (or error) in its place (``single``: the
        one call of a lone event, which raises its error)."""
        if isinstance(self._client, redis.RedisCluster) or len(calls) == 1:
            # redis-py's cluster pipeline refuses scripts: one call each, in order,
            # each reply (or error) in its place as the pipeline would give them.
            replies: list[Any] = []
            for call in calls:
                try:
                    replies.append(self._script(keys=call.keys, args=call.args))
                except RedisError as exc:
                    if single:
                        raise
                    replies.append(exc)
            return replies, None
        with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                self._script(keys=call.keys, args=call.args, client=pipe)
            return list(pipe.execute(raise_on_error=False)), None

    def close(self) -> None:
        self._client.close()
