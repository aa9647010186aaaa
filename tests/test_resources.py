"""Resource shape: Redis connections per node, and clients that cannot keep up."""

from __future__ import annotations

import asyncio
import gc
import weakref

import httpx
import pytest
import redis.asyncio

from support.hubs import Backends, StartHub
from support.sse import SSEStream

pytestmark = pytest.mark.anyio


async def _hub_connections(url: str, prefix: str) -> dict[str, int]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    counts: dict[str, int] = {}
    for entry in clients:
        name = entry.get("name", "")
        if name.startswith(f"hub-{prefix}"):
            role = name.rsplit(":", 1)[-1]
            counts[role] = counts.get(role, 0) + 1
    return counts


async def test_two_hundred_clients_share_one_live_redis_connection(
    redis_url: str, start_hub: StartHub
) -> None:
    backends = Backends("redis", redis_url)
    try:
        hub = await start_hub(backends.settings(), backends.backend(pool_size=2))
        async with SSEStream(hub.url, ["conn"]) as first:
            before = await _hub_connections(redis_url, backends.prefix)
            streams = [SSEStream(hub.url, ["conn", f"own-{i}"]) for i in range(200)]
            await asyncio.gather(*(s.__aenter__() for s in streams))
            try:
                async with httpx.AsyncClient() as client:
                    response = await client.post(
                        f"{hub.url}/publish", json={"channel": "conn", "data": "to all"}
                    )
                assert response.status_code == 201
                for stream in [first, *streams]:
                    assert [e.data for e in await stream.wait_for(1)] == ["to all"]
                after = await _hub_connections(redis_url, backends.prefix)
            finally:
                await asyncio.gather(*(s.close() for s in streams))
        assert before["live"] == after["live"] == 1
        assert after.get("cmd", 0) <= 2  # the pool's bound, whatever the number of clients
        assert after.get("pub", 0) <= 1  # the publisher's lane
    finally:
        backends.cleanup()


async def test_a_stream_whose_client_went_away_is_freed_without_the_cyclic_gc(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings())
    gc.disable()
    try:
        async with SSEStream(hub.url, ["freed"]):
            [sub] = hub.broker.live_path.subscribers
            # The response; the subscriber, its task and its transport hang off it.
            ref = weakref.ref(getattr(sub.on_cut_off, "__self__", None))
            del sub
        for _ in range(500):
            if ref() is None:
                break
            await asyncio.sleep(0.01)
        assert ref() is None
        assert hub.broker.stats.closed["client"] == 1
    finally:
        gc.enable()


async def test_stuck_client_is_cut_off_and_does_not_hold_back_others(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(client_buffer=256 * 1024), backends.backend())
    host, port = hub.url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    try:
        # A client that sends its request and then never reads a byte.
        writer.write(b"GET /events?channel=s HTTP/1.1\r\nHost: hub\r\n\r\n")
        await writer.drain()
        async with SSEStream(hub.url, ["s"]) as healthy, httpx.AsyncClient() as client:
            await _wait_connections(client, hub.url, 2)
            # ~10 MB in all: more than socket buffers can hide; one event is a small share
            # of the 256 KiB buffer, so the healthy reader has ample headroom.
            blob = "x" * 16 * 1024
            for i in range(600):
                response = await client.post(
                    f"{hub.url}/publish", json={"channel": "s", "data": f"{i}:{blob}"}
                )
                assert response.status_code == 201
            events = await healthy.wait_for(600, timeout=30)
            assert [e.data.split(":")[0] for e in events] == [str(i) for i in range(600)]
            await _wait_connections(client, hub.url, 1)
    finally:
        writer.close()


async def _wait_connections(client: httpx.AsyncClient, url: str, count: int) -> None:
    for _ in range(200):
        if (await client.get(f"{url}/readyz")).json().get("connections") == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the hub never got to {count} open streams")


async def test_an_idle_stream_holds_one_task_and_its_leaving_is_still_noticed(
    backends: Backends, start_hub: StartHub
) -> None:
    # The connection reports the client leaving (hub.protocol's lost_hook): no task per
    # stream waits on receive() for it, which was ~1.3 KiB of every idle stream.
    hub = await start_hub(backends.settings())
    streams = [SSEStream(hub.url, ["idle"]) for _ in range(20)]
    await asyncio.gather(*(s.__aenter__() for s in streams))
    try:
        watchers = [t for t in asyncio.all_tasks() if "EventStream._watch" in repr(t.get_coro())]
        assert watchers == []
    finally:
        await asyncio.gather(*(s.close() for s in streams))
    for _ in range(500):
        if hub.broker.stats.closed["client"] == 20:
            break
        await asyncio.sleep(0.01)
    assert hub.broker.stats.closed["client"] == 20
    assert not hub.broker.live_path.subscribers
