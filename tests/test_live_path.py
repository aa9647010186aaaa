"""The live path of one node: streams that arrive while its connection is set up."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import cast

import pytest
import redis.asyncio

from hub import Publisher
from hub.delivery.sessions import Followed, Sessions
from support.hubs import Backends, StartHub
from support.redis_server import RedisServer
from support.sse import SSEStream

pytestmark = pytest.mark.anyio


async def test_streams_that_attach_while_the_live_connection_starts_all_go_live(
    redis_server: RedisServer, start_hub: StartHub
) -> None:
    # The first stream makes the node open its live connection. Redis then holds every
    # client for a moment (CLIENT PAUSE) while that connection subscribes, and the other streams
    # attach meanwhile: they were in neither the starting connection's list nor
    # subscribed by themselves, and waited out the confirmation timeout (found by the
    # Mercure chaos run).
    backends = Backends("redis", redis_server.url)
    hub = await start_hub(backends.settings(), backends.backend())
    admin = redis.asyncio.Redis.from_url(redis_server.url)
    publisher = Publisher(backends.backend().command_client(), backends.settings())
    first = SSEStream(hub.url, ["start-0"])
    later = [SSEStream(hub.url, [f"start-{i}"]) for i in range(1, 8)]
    try:
        opening = asyncio.ensure_future(first.__aenter__())
        await _live_connection_open(admin)
        await admin.execute_command("CLIENT", "PAUSE", "500", "ALL")
        await asyncio.sleep(0.1)
        await asyncio.gather(opening, *(s.__aenter__() for s in later))
        await _each_gets_its_own_event(publisher, [first, *later], "start")
    finally:
        await publisher.aclose()
        await admin.aclose()
        for stream in [first, *later]:
            await stream.close()


async def _each_gets_its_own_event(
    publisher: Publisher, streams: list[SSEStream], prefix: str
) -> None:
    """Stream n follows channel ``{prefix}-{n}``: one event to each, and each gets its
    own without having waited out a confirmation."""
    for n in range(len(streams)):
        await publisher.publish(f"{prefix}-{n}", f"to {n}")
    for n, stream in enumerate(streams):
        assert [e.data for e in await stream.wait_for(1, timeout=5)] == [f"to {n}"]
        assert not any("did not confirm" in c for c in stream.comments)


async def _live_connection_open(admin: redis.asyncio.Redis) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not any(c.get("name", "").endswith(":live") for c in await admin.client_list()):
        assert asyncio.get_running_loop().time() < deadline, "no live connection"
        await asyncio.sleep(0.001)


async def test_a_burst_of_streams_on_distinct_channels_each_get_their_own_events(
    redis_server: RedisServer, start_hub: StartHub
) -> None:
    # One channel per stream (an answer or a user each): every new channel used to
    # make the node look at all its channels twice, so a burst cost the square of its size.
    backends = Backends("redis", redis_server.url)
    hub = await start_hub(backends.settings(), backends.backend())
    publisher = Publisher(backends.backend().command_client(), backends.settings())
    streams = [SSEStream(hub.url, [f"own-{i}"]) for i in range(200)]
    try:
        await asyncio.gather(*(s.__aenter__() for s in streams))
        await _each_gets_its_own_event(publisher, streams, "own")
    finally:
        await publisher.aclose()
        for stream in streams:
            await stream.close()


async def test_only_a_shard_without_a_running_session_wakes_the_session_loop() -> None:
    sessions = Sessions(cast(Followed, _PathOnShards()))
    running = asyncio.get_running_loop().create_task(asyncio.sleep(30))
    sessions._tasks["a"] = running
    try:
        sessions.ask(["a", "a"])
        assert not sessions.wake.is_set()
        sessions.ask(["a", "b"])
        assert sessions.wake.is_set()
        sessions.wake.clear()
        sessions.ask([None])  # the slot map is not read yet: the loop reads it
        assert sessions.wake.is_set()
        sessions.wake.clear()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        sessions.ask(["a"])  # its session ended: the loop starts another
        assert sessions.wake.is_set()
    finally:
        running.cancel()


class _PathOnShards:
    """What :class:`Sessions` reads of its live path when it is made."""

    store = SimpleNamespace(shards=None)
