"""Live events written straight to the socket (uvicorn httptools) and through ASGI (h11):
the same stream either way."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from support.hubs import Backends, StartHub
from support.sse import SSEStream

pytestmark = pytest.mark.anyio


async def publish(url: str, channel: str, data: str) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/publish", json={"channel": channel, "data": data})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize(("http", "direct"), [("httptools", True), ("h11", False)])
async def test_live_resume_and_heartbeat_are_the_same_on_both_write_paths(
    backends: Backends, start_hub: StartHub, http: str, direct: bool
) -> None:
    hub = await start_hub(backends.settings(heartbeat=0.5), backends.backend(), http=http)
    async with SSEStream(hub.url, ["d"]) as stream:
        first = [await publish(hub.url, "d", f"m{i}") for i in range(5)]
        assert [e.id for e in await stream.wait_for(5)] == first
        assert [sub.direct for sub in hub.broker.live_path.subscribers] == [direct]
        await asyncio.sleep(1.6)  # idle: heartbeats arrive on either path
        assert "heartbeat" in stream.comments
        # a multi-line event is framed the same way
        await publish(hub.url, "d", "line one\nline two")
        event = (await stream.wait_for(6))[-1]
        assert event.data == "line one\nline two"
        cursor = stream.last_event_id
    missed = [await publish(hub.url, "d", f"late{i}") for i in range(3)]
    async with SSEStream(hub.url, ["d"], last_event_id=cursor) as resumed:
        assert [e.id for e in await resumed.wait_for(3)] == missed
        again = await publish(hub.url, "d", "live again")
        assert [e.id for e in await resumed.wait_for(4)][-1] == again


async def test_direct_stream_ends_with_the_retry_hint_on_shutdown(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(retry_ms=1234), backends.backend())
    async with SSEStream(hub.url, ["d"]) as stream:
        await publish(hub.url, "d", "before")
        await stream.wait_for(1)
        assert [sub.direct for sub in hub.broker.live_path.subscribers] == [True]
        await hub.stop()
        await asyncio.wait_for(stream.ended.wait(), 10)
    assert [e.data for e in stream.events] == ["before"]
    assert stream.retry is not None
    assert 1234 <= stream.retry <= 2468


async def test_mercure_streams_get_direct_writes_and_still_filter_per_subscriber(
    backends: Backends, start_hub: StartHub
) -> None:
    from support.mercure import KEY, mercure_publish, mercure_stream, token

    settings = backends.settings(jwt_key=KEY, anonymous=True)
    hub = await start_hub(settings, backends.backend(), http="httptools")
    publisher = token(publish=["*"])
    topic = "https://example.com/books/1"
    private_reader = token(subscribe=[topic])
    async with (
        mercure_stream(hub.url, [topic]) as anonymous,
        mercure_stream(hub.url, [topic], bearer=private_reader) as entitled,
    ):
        first = await mercure_publish(hub.url, topic, "public 1", bearer=publisher)
        await anonymous.wait_for(1)
        await entitled.wait_for(1)
        door_subs = hub.broker.live_path.subscribers
        assert [sub.direct for sub in door_subs] == [True, True]
        secret = await mercure_publish(
            hub.url, topic, "private", bearer=publisher, headers=None, private="on"
        )
        last = await mercure_publish(hub.url, topic, "public 2", bearer=publisher)
        assert [e.id for e in await entitled.wait_for(3)] == [first.text, secret.text, last.text]
        assert [e.id for e in await anonymous.wait_for(2)] == [first.text, last.text]
        await asyncio.sleep(0.2)
        assert [e.data for e in anonymous.events] == ["public 1", "public 2"]
