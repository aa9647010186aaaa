"""The contract: every semantic of the hub, once on the embedded backend, once on Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from hub import Publisher, SyncPublisher
from hub.store.keys import Keys
from support.hubs import Backends, StartHub
from support.sse import SSEStream

pytestmark = pytest.mark.anyio
#: Also on a real Redis Cluster (tests/conftest.py).
RUNS_ON_CLUSTER = True


async def publish(url: str, channel: str | list[str], data: object, **extra: object) -> str:
    body: dict[str, object] = {"data": data, **extra}
    body["channels" if isinstance(channel, list) else "channel"] = channel
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/publish", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# -- 1. delivery: every subscriber, once, in publish order ------------------------------


async def test_published_event_reaches_every_subscriber_once_in_order(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(hub.url, ["news"]) as first, SSEStream(hub.url, ["news"]) as second:
        ids = [await publish(hub.url, "news", f"m{i}") for i in range(20)]
        for stream in (first, second):
            events = await stream.wait_for(20)
            assert [e.data for e in events] == [f"m{i}" for i in range(20)]
            assert [e.id for e in events] == ids


async def test_event_on_several_channels_reaches_a_client_of_both_once(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(hub.url, ["a", "b"]) as both, SSEStream(hub.url, ["b"]) as only_b:
        shared = await publish(hub.url, ["a", "b"], "to both")
        after = await publish(hub.url, "a", "only a")
        events = await both.wait_for(2)
        assert [(e.id, e.data) for e in events] == [(shared, "to both"), (after, "only a")]
        assert [e.data for e in await only_b.wait_for(1)] == ["to both"]
        await asyncio.sleep(0.2)
        assert len(both.events) == 2
        assert len(only_b.events) == 1


async def test_client_sees_only_its_channels(backends: Backends, start_hub: StartHub) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(hub.url, ["mine"]) as stream:
        await publish(hub.url, "other", "not for you")
        await publish(hub.url, "mine", "for you")
        assert [e.data for e in await stream.wait_for(1)] == ["for you"]


async def test_event_frames_carry_type_and_split_multiline_data(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(hub.url, ["x"]) as stream:
        await publish(hub.url, "x", "line one\nline two\r\nline three", event="update")
        await publish(hub.url, "x", {"n": 1, "tags": ["a", "b"]})
        first, second = await stream.wait_for(2)
    assert first.event == "update"
    assert first.data == "line one\nline two\nline three"
    assert second.event == "message"
    assert second.data == '{"n":1,"tags":["a","b"]}'  # compact JSON for non-string data


async def test_stream_opens_with_comment_retry_hint_and_no_cache_headers(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(heartbeat=0.2, retry_ms=1234), backends.backend())
    async with SSEStream(hub.url, ["x"]) as stream:
        await asyncio.sleep(0.7)
        assert stream.comments[0] == "connected"
        assert stream.comments.count("heartbeat") >= 2
        assert stream.retry == 1234
        headers = stream.response_headers
        assert headers is not None
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache"
        assert headers["x-accel-buffering"] == "no"


async def test_publisher_writes_straight_into_redis_for_http_subscribers(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    settings = backends.settings()
    hub = await start_hub(settings, backend)
    publisher = Publisher(backend.command_client(), settings)
    try:
        async with SSEStream(hub.url, ["direct"]) as stream:
            event_id = await publisher.publish("direct", "from python", event="note")
            (event,) = await stream.wait_for(1)
    finally:
        await publisher.aclose()
    assert (event.id, event.event, event.data) == (event_id, "note", "from python")


# -- 2. resume with Last-Event-ID: exactly what was missed, then live -------------------


async def test_resume_with_last_event_id_gets_exactly_what_was_missed(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(hub.url, ["a", "b"]) as stream:
        await publish(hub.url, "a", "seen-1")
        await publish(hub.url, "b", "seen-2")
        await stream.wait_for(2)
        cursor = stream.last_event_id
    missed = [
        await publish(hub.url, "a", "missed-a"),
        await publish(hub.url, ["a", "b"], "missed-ab"),
        await publish(hub.url, "b", "missed-b"),
    ]
    await publish(hub.url, "c", "never subscribed")
    async with SSEStream(hub.url, ["a", "b"], last_event_id=cursor) as resumed:
        events = await resumed.wait_for(3)
        assert [e.id for e in events] == missed
        live = await publish(hub.url, "b", "live")
        events = await resumed.wait_for(4)
        assert [e.data for e in events] == ["missed-a", "missed-ab", "missed-b", "live"]
        assert events[3].id == live


async def test_resume_covers_a_channel_the_client_had_seen_nothing_on(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(hub.url, ["busy", "quiet"]) as stream:
        await publish(hub.url, "busy", "b1")
        await stream.wait_for(1)
        cursor = stream.last_event_id
    await publish(hub.url, "quiet", "q1")
    await publish(hub.url, "busy", "b2")
    async with SSEStream(hub.url, ["busy", "quiet"], last_event_id=cursor) as resumed:
        assert [e.data for e in await resumed.wait_for(2)] == ["q1", "b2"]


async def test_resume_on_another_hub_node_misses_nothing(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    first = await start_hub(backends.settings(), backend)
    second = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(first.url, ["n"]) as stream:
        await publish(second.url, "n", "1")
        await stream.wait_for(1)
        cursor = stream.last_event_id
    await publish(first.url, "n", "2")
    await publish(second.url, "n", "3")
    async with SSEStream(second.url, ["n"], last_event_id=cursor) as resumed:
        assert [e.data for e in await resumed.wait_for(2)] == ["2", "3"]
        await publish(first.url, "n", "4")
        assert [e.data for e in await resumed.wait_for(3)] == ["2", "3", "4"]


async def test_resume_while_publishing_at_full_speed_has_no_gap_or_duplicate(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    hub = await start_hub(backends.settings(), backend)
    publisher = Publisher(backend.command_client(), backends.settings())
    total = 400
    published: list[str] = []

    async def produce() -> None:
        for i in range(total):
            published.append(await publisher.publish(["p", "q"] if i % 7 == 0 else "p", str(i)))

    try:
        async with SSEStream(hub.url, ["p"]) as stream:
            producer = asyncio.create_task(produce())
            await stream.wait_for(50)
            cursor = stream.last_event_id
            got = [e.data for e in stream.events]
        async with SSEStream(hub.url, ["p"], last_event_id=cursor) as resumed:
            await producer
            await resumed.wait_for(total - len(got))
            got += [e.data for e in resumed.events]
    finally:
        await publisher.aclose()
    assert got == [str(i) for i in range(total)]


async def test_query_cursor_is_used_on_first_connect_and_header_wins(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    first = await publish(hub.url, "c", "1")
    second = await publish(hub.url, "c", "2")
    await publish(hub.url, "c", "3")
    async with SSEStream(hub.url, ["c"], query_cursor=first) as by_query:
        assert [e.data for e in await by_query.wait_for(2)] == ["2", "3"]
    async with SSEStream(hub.url, ["c"], query_cursor=first, last_event_id=second) as both:
        assert [e.data for e in await both.wait_for(1)] == ["3"]
        await asyncio.sleep(0.2)
        assert len(both.events) == 1


async def test_earliest_replays_all_retained_history(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(history_size=3), backends.backend())
    for i in range(5):
        await publish(hub.url, "e", str(i))
    async with SSEStream(hub.url, ["e"], query_cursor="earliest") as stream:
        assert [e.data for e in await stream.wait_for(3)] == ["2", "3", "4"]
        await asyncio.sleep(0.2)
        assert all(not e.event.startswith("hub.") for e in stream.events)


# -- 3. cursors that cannot be honoured: hub.reset, then live; never an error status ----


async def test_resume_after_trimmed_history_sends_reset(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(history_size=5), backends.backend())
    cursor = await publish(hub.url, "t", "seen")
    for i in range(10):
        await publish(hub.url, "t", f"lost-{i}")
    async with SSEStream(hub.url, ["t"], last_event_id=cursor) as stream:
        (reset,) = await stream.wait_for(1)
        assert stream.status == 200
        assert reset.event == "hub.reset"
        assert json.loads(reset.data)["reason"] == "expired"
        assert json.loads(reset.data)["channels"] == ["t"]
        live = await publish(hub.url, "t", "after reset")
        events = await stream.wait_for(2)
        assert (events[1].id, events[1].data) == (live, "after reset")


async def test_a_trimmed_channel_resets_alone_and_the_others_resume_exactly(
    backends: Backends, start_hub: StartHub
) -> None:
    # Found building the chaos checker: the replay stopped at the first trimmed channel;
    # the reset, naming only that one, moved the cursor past the others' events too.
    hub = await start_hub(backends.settings(history_size=3), backends.backend())
    cursor = await publish(hub.url, "trimmed", "seen")
    kept = [await publish(hub.url, "intact", "b1")]
    for i in range(5):
        await publish(hub.url, "trimmed", f"lost-{i}")
    kept.append(await publish(hub.url, "intact", "b2"))
    async with SSEStream(hub.url, ["trimmed", "intact"], last_event_id=cursor) as stream:
        events = await stream.wait_for(3)
        assert [(e.id, e.data) for e in events[:2]] == list(zip(kept, ["b1", "b2"], strict=True))
        assert events[2].event == "hub.reset"
        assert json.loads(events[2].data)["channels"] == ["trimmed"]
        live = [await publish(hub.url, c, f"live {c}") for c in ("intact", "trimmed")]
        events = await stream.wait_for(5)
        assert [e.id for e in events[3:]] == live


async def test_resume_within_trimmed_history_bound_is_exact(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(history_size=5), backends.backend())
    cursor = await publish(hub.url, "t", "seen")
    for i in range(4):
        await publish(hub.url, "t", f"m{i}")
    async with SSEStream(hub.url, ["t"], last_event_id=cursor) as stream:
        assert [e.data for e in await stream.wait_for(4)] == ["m0", "m1", "m2", "m3"]


@pytest.mark.parametrize(
    ("cursor", "reason"),
    [
        ("garbage", "invalid"),
        ("12-x", "invalid"),
        ("1" * 80, "invalid"),
        ("99999999999999-0", "unknown"),
    ],
)
async def test_unusable_cursor_sends_reset_then_goes_live(
    backends: Backends, start_hub: StartHub, cursor: str, reason: str
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    await publish(hub.url, "g", "before")
    async with SSEStream(hub.url, ["g"], last_event_id=cursor) as stream:
        (reset,) = await stream.wait_for(1)
        assert stream.status == 200
        assert (reset.event, json.loads(reset.data)["reason"]) == ("hub.reset", reason)
        await publish(hub.url, "g", "live")
        assert [e.data for e in await stream.wait_for(2)][1:] == ["live"]


async def test_reset_moves_the_cursor_so_the_next_reconnect_is_clean(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    await publish(hub.url, "r", "old")
    async with SSEStream(hub.url, ["r"], last_event_id="garbage") as stream:
        await stream.wait_for(1)
        cursor = stream.last_event_id
    await publish(hub.url, "r", "new")
    async with SSEStream(hub.url, ["r"], last_event_id=cursor) as again:
        assert [(e.event, e.data) for e in await again.wait_for(1)] == [("message", "new")]


async def test_resume_after_redis_lost_its_data_sends_reset(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    hub = await start_hub(backends.settings(), backend)
    cursor = await publish(hub.url, "w", "before the loss")
    client = backend.command_client()
    try:
        keys = [k async for k in client.scan_iter(match=f"{backends.prefix}*")]
        await client.delete(*keys)
    finally:
        await client.aclose()
    await asyncio.sleep(0.002)  # the new history starts in a later millisecond
    await publish(hub.url, "w", "after the loss")
    async with SSEStream(hub.url, ["w"], last_event_id=cursor) as stream:
        (reset,) = await stream.wait_for(1)
        assert (reset.event, json.loads(reset.data)["reason"]) == ("hub.reset", "history_lost")


# -- 4. bounded history -----------------------------------------------------------------


async def test_history_is_capped_per_channel(backends: Backends, start_hub: StartHub) -> None:
    backend = backends.backend()
    hub = await start_hub(backends.settings(history_size=10), backend)
    for i in range(25):
        await publish(hub.url, "capped", str(i))
    client = backend.command_client()
    try:
        assert await client.xlen(Keys(backends.prefix).stream("capped")) == 10
    finally:
        await client.aclose()


async def test_history_older_than_ttl_expires_and_old_cursor_gets_reset(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    hub = await start_hub(backends.settings(history_ttl=0.3), backend)
    cursor = await publish(hub.url, "aging", "seen")
    await publish(hub.url, "aging", "will expire unseen")
    await asyncio.sleep(0.5)
    client = backend.command_client()
    try:
        assert await client.exists(Keys(backends.prefix).stream("aging")) == 0
    finally:
        await client.aclose()
    async with SSEStream(hub.url, ["aging"], last_event_id=cursor) as stream:
        (reset,) = await stream.wait_for(1)
        assert (reset.event, json.loads(reset.data)["reason"]) == ("hub.reset", "expired")


# -- subscription requests that cannot be served ----------------------------------------


async def test_events_without_channel_is_a_clear_400(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{hub.url}/events")
    assert response.status_code == 400
    assert "channel" in response.json()["message"]


async def test_events_with_too_many_channels_is_a_clear_400(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(max_channels=3), backends.backend())
    async with httpx.AsyncClient() as client:
        ok = await client.get(f"{hub.url}/readyz")
        response = await client.get(f"{hub.url}/events?channel=a&channel=b&channel=c&channel=d")
    assert ok.status_code == 200
    assert response.status_code == 400
    assert "HUB_MAX_CHANNELS" in response.json()["message"]


async def test_sync_publisher_writes_straight_into_redis(
    redis_url: str, start_hub: StartHub
) -> None:
    backends = Backends("redis", redis_url)
    try:
        settings = backends.settings()
        hub = await start_hub(settings, backends.backend())
        publisher = SyncPublisher.from_url(redis_url, settings)
        try:
            async with SSEStream(hub.url, ["sync", "other"]) as stream:
                # A blocking client, as in a script or a thread: keep it off the event loop.
                first = await asyncio.to_thread(publisher.publish, "sync", "one")
                second = await asyncio.to_thread(
                    publisher.publish, ["sync", "other"], {"n": 2}, event="pair"
                )
                events = await stream.wait_for(2)
        finally:
            publisher.close()
        assert [(e.id, e.event, e.data) for e in events] == [
            (first, "message", "one"),
            (second, "pair", '{"n":2}'),
        ]
    finally:
        backends.cleanup()


async def test_a_client_that_lost_its_stream_before_any_event_resumes_from_where_it_joined(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    await publish(hub.url, "join", "before joining")
    async with SSEStream(hub.url, ["join"]) as stream:
        await asyncio.sleep(0.1)
        assert stream.events == []
        cursor = stream.last_event_id  # what EventSource would send on its reconnect
    assert cursor is not None
    missed = await publish(hub.url, "join", "while away")
    async with SSEStream(hub.url, ["join"], last_event_id=cursor) as resumed:
        assert [(e.id, e.data) for e in await resumed.wait_for(1)] == [(missed, "while away")]
        await asyncio.sleep(0.2)
        assert len(resumed.events) == 1


async def test_an_event_published_as_soon_as_the_headers_arrive_reaches_the_client(
    backends: Backends, start_hub: StartHub
) -> None:
    # A browser fires `open` on the response headers, and pages publish from onopen.
    hub = await start_hub(backends.settings(), backends.backend())
    async with httpx.AsyncClient(timeout=5) as client:
        for i in range(10):
            channel = f"open{i}"
            async with client.stream("GET", f"{hub.url}/events?channel={channel}") as response:
                assert response.status_code == 200
                await publish(hub.url, channel, "from onopen")
                data = [line async for line in _until_data(response)]
                assert data[-1] == "data: from onopen"


async def _until_data(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        yield line
        if line.startswith("data: "):
            return
