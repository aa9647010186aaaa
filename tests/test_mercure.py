"""The Mercure door, on both backends: subscribe, publish, ids, resume, selectors,
private updates, and pattern subscribers across nodes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from hub import Settings
from support.hubs import Backends, StartHub
from support.mercure import KEY, mercure_publish, mercure_stream, token, wide_subscriptions
from support.sse import SSEStream

pytestmark = pytest.mark.anyio
#: Also on a real Redis Cluster (tests/conftest.py).
RUNS_ON_CLUSTER = True

PUBLISHER = token(publish=["*"])


def _settings(backends: Backends, **changes: object) -> Settings:
    return backends.settings(jwt_key=KEY, anonymous=True, **changes)


async def test_form_publish_reaches_exact_topic_subscriber_with_its_id_type_and_retry(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    async with mercure_stream(hub.url, ["https://example.com/books/1"]) as stream:
        assert stream.status == 200
        response = await mercure_publish(
            hub.url,
            "https://example.com/books/1",
            "line one\nline two",
            bearer=PUBLISHER,
            type="book.updated",
            retry="1234",
        )
        assert response.headers["content-type"].startswith("text/plain")
        [event] = await stream.wait_for(1)
        assert event.id == response.text
        assert event.event == "book.updated"
        assert event.data == "line one\nline two"
        assert stream.retry == 1234


async def test_publisher_chosen_id_is_the_sse_id_and_resuming_from_it_is_exact(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    topic = "https://example.com/chat"
    async with mercure_stream(hub.url, [topic]) as live:
        first = await mercure_publish(hub.url, topic, "a", bearer=PUBLISHER, id="urn:msg:1")
        assert first.text == "urn:msg:1"
        await mercure_publish(hub.url, topic, "b", bearer=PUBLISHER, id="urn:msg:2")
        await mercure_publish(hub.url, topic, "c", bearer=PUBLISHER)
        events = await live.wait_for(3)
        assert [e.id for e in events[:2]] == ["urn:msg:1", "urn:msg:2"]
    async with mercure_stream(hub.url, [topic], last_event_id="urn:msg:1") as resumed:
        assert resumed.response_headers is not None
        assert resumed.response_headers["last-event-id"] == "urn:msg:1"
        events = await resumed.wait_for(2)
        assert [(e.id, e.data) for e in events] == [("urn:msg:2", "b"), (events[1].id, "c")]
    query = {"lastEventID": "urn:msg:2"}
    async with mercure_stream(hub.url, [topic], query=query) as by_query:
        assert [e.data for e in await by_query.wait_for(1)] == ["c"]


async def test_unknown_last_event_id_answers_earliest_then_live_only(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    await mercure_publish(hub.url, "t", "old", bearer=PUBLISHER)
    async with mercure_stream(hub.url, ["t"], last_event_id="urn:never") as stream:
        assert stream.response_headers is not None
        assert stream.response_headers["last-event-id"] == "earliest"
        await mercure_publish(hub.url, "t", "new", bearer=PUBLISHER)
        assert [e.data for e in await stream.wait_for(1)] == ["new"]


async def test_earliest_replays_retained_history_then_live_without_duplicates(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    for i in range(3):
        await mercure_publish(hub.url, "h", f"m{i}", bearer=PUBLISHER)
    async with mercure_stream(hub.url, ["h"], last_event_id="earliest") as stream:
        assert stream.response_headers is not None
        assert stream.response_headers["last-event-id"] == "earliest"
        await mercure_publish(hub.url, "h", "m3", bearer=PUBLISHER)
        events = await stream.wait_for(4)
        assert [e.data for e in events] == ["m0", "m1", "m2", "m3"]
        await asyncio.sleep(0.2)
        assert len(stream.events) == 4


async def test_no_cursor_answers_the_newest_id_as_last_event_id(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    await mercure_publish(hub.url, "n", "x", bearer=PUBLISHER, id="newest-one")
    async with mercure_stream(hub.url, ["n"]) as stream:
        assert stream.response_headers is not None
        assert stream.response_headers["last-event-id"] == "newest-one"
        assert "no-store" in stream.response_headers["cache-control"]


async def test_uri_template_and_star_select_matching_topics_only(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    template = "https://example.com/books/{id}"
    async with (
        mercure_stream(hub.url, [template]) as books,
        mercure_stream(hub.url, ["*"]) as everything,
    ):
        await mercure_publish(hub.url, "https://example.com/users/1", "user", bearer=PUBLISHER)
        await mercure_publish(hub.url, "https://example.com/books/7", "book", bearer=PUBLISHER)
        await mercure_publish(
            hub.url, "https://example.com/books/7/reviews", "review", bearer=PUBLISHER
        )
        # A native publish is a Mercure update too: a topic is a channel.
        async with httpx.AsyncClient() as client:
            native = await client.post(
                f"{hub.url}/publish",
                json={"channel": "https://example.com/books/8", "data": "native"},
                headers={"Authorization": f"Bearer {PUBLISHER}"},
            )
        assert native.status_code == 201
        assert [e.data for e in await books.wait_for(2)] == ["book", "native"]
        assert [e.data for e in await everything.wait_for(4)] == [
            "user",
            "book",
            "review",
            "native",
        ]
        await asyncio.sleep(0.2)
        assert len(books.events) == 2


@pytest.mark.parametrize("topics", [["https://example.com/one"], ["*"]], ids=["topic", "star"])
async def test_an_update_published_once_the_stream_opened_arrives_when_its_start_is_slow(
    backends: Backends, start_hub: StartHub, monkeypatch: pytest.MonkeyPatch, topics: list[str]
) -> None:
    # Finding where a live-only stream starts asks every shard for its clock; on a
    # loaded cluster that takes a while. Whatever it takes, an update the subscriber
    # publishes after its stream opened must reach it.
    hub = await start_hub(_settings(backends), backends.backend())
    broker = hub.broker
    start = broker.start

    async def slow_start(*args: Any) -> Any:
        await asyncio.sleep(0.3)
        return await start(*args)

    monkeypatch.setattr(broker, "start", slow_start)
    async with mercure_stream(hub.url, topics) as stream:
        await mercure_publish(hub.url, "https://example.com/one", "first", bearer=PUBLISHER)
        assert [e.data for e in await stream.wait_for(1)] == ["first"]


async def test_alternate_topics_match_too_and_the_update_arrives_once(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    async with (
        mercure_stream(hub.url, ["https://example.com/alt"]) as alternate,
        mercure_stream(hub.url, ["https://example.com/main", "https://example.com/alt"]) as both,
    ):
        await mercure_publish(
            hub.url,
            ["https://example.com/main", "https://example.com/alt"],
            "one update",
            bearer=PUBLISHER,
        )
        assert [e.data for e in await alternate.wait_for(1)] == ["one update"]
        assert [e.data for e in await both.wait_for(1)] == ["one update"]
        await asyncio.sleep(0.2)
        assert len(both.events) == 1


async def test_private_update_reaches_only_subscribers_whose_claims_match(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    topic = "https://example.com/users/42/inbox"
    allowed = token(subscribe=["https://example.com/users/{id}/inbox"])
    other = token(subscribe=["https://example.com/users/1/inbox"])
    async with (
        mercure_stream(hub.url, [topic]) as anonymous,
        mercure_stream(hub.url, [topic], bearer=allowed) as owner,
        mercure_stream(hub.url, ["*"], bearer=other) as stranger,
    ):
        await mercure_publish(hub.url, topic, "secret", bearer=PUBLISHER, private="on")
        await mercure_publish(hub.url, topic, "public", bearer=PUBLISHER)
        assert [e.data for e in await owner.wait_for(2)] == ["secret", "public"]
        assert [e.data for e in await anonymous.wait_for(1)] == ["public"]
        assert [e.data for e in await stranger.wait_for(1)] == ["public"]
        await asyncio.sleep(0.2)
        assert len(anonymous.events) == 1
        assert len(stranger.events) == 1
    # Replay honours the claims just the same.
    async with mercure_stream(hub.url, [topic], last_event_id="earliest") as replay:
        assert [e.data for e in await replay.wait_for(1)] == ["public"]
    async with mercure_stream(
        hub.url, [topic], bearer=allowed, last_event_id="earliest"
    ) as owner_replay:
        assert [e.data for e in await owner_replay.wait_for(2)] == ["secret", "public"]


async def test_template_subscriber_on_one_node_gets_updates_published_on_another(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    first = await start_hub(_settings(backends), backend)
    second = await start_hub(_settings(backends), backend)
    async with mercure_stream(first.url, ["/rooms/{room}"]) as stream:
        ids = [
            (await mercure_publish(second.url, f"/rooms/{i}", f"r{i}", bearer=PUBLISHER)).text
            for i in range(5)
        ]
        events = await stream.wait_for(5)
        # Five topics: each update in its place among its topic's (one each here); across
        # topics the order is the hub's key order, not necessarily the publishing order.
        assert sorted((e.id, e.data) for e in events) == sorted((ids[i], f"r{i}") for i in range(5))


async def test_firehose_goes_only_to_nodes_with_pattern_subscribers(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    hub = await start_hub(_settings(backends), backend)
    async with mercure_stream(hub.url, ["exact"]) as exact:
        await mercure_publish(hub.url, "exact", "x", bearer=PUBLISHER)
        await exact.wait_for(1)
        assert await wide_subscriptions(backends) == 0
        async with mercure_stream(hub.url, ["/t/{x}"]) as pattern:
            assert pattern.status == 200
            assert await wide_subscriptions(backends) == 1


async def test_native_private_publish_reaches_native_and_mercure_subscribers_with_claims(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    reader = token(subscribe=["orders"])
    async with (
        mercure_stream(hub.url, ["orders"], bearer=reader) as mercure_owner,
        mercure_stream(hub.url, ["orders"]) as mercure_anonymous,
    ):
        async with httpx.AsyncClient(timeout=10) as client:
            for private, data in ((True, "private order"), (False, "public order")):
                response = await client.post(
                    f"{hub.url}/publish",
                    json={"channel": "orders", "data": data, "private": private},
                    headers={"Authorization": f"Bearer {PUBLISHER}"},
                )
                assert response.status_code == 201, response.text
        assert [e.data for e in await mercure_owner.wait_for(2)] == [
            "private order",
            "public order",
        ]
        assert [e.data for e in await mercure_anonymous.wait_for(1)] == ["public order"]
    native_owner = SSEStream(hub.url, ["orders"], query_cursor="earliest")
    native_owner.headers["Authorization"] = f"Bearer {reader}"
    async with native_owner, SSEStream(hub.url, ["orders"], query_cursor="earliest") as plain:
        assert [e.data for e in await native_owner.wait_for(2)] == [
            "private order",
            "public order",
        ]
        assert [e.data for e in await plain.wait_for(1)] == ["public order"]
        assert native_owner.events[1].id == plain.events[0].id


async def test_token_expiry_ends_the_stream(backends: Backends, start_hub: StartHub) -> None:
    hub = await start_hub(_settings(backends), backends.backend())
    short = token(subscribe=["*"], expires_in=1.5)
    async with mercure_stream(hub.url, ["x"], bearer=short) as stream:
        assert stream.status == 200
        await stream.wait_ended(timeout=5)


async def test_recovery_after_history_was_trimmed_past_the_last_seen_event_closes_streams(
    redis_url: str,
) -> None:
    from hub.delivery.live import LivePath
    from hub.delivery.recovery import recover
    from hub.delivery.stats import Stats
    from hub.doors.mercure.fanout import MercureStream
    from hub.store import Store, parse_id

    backends = Backends("redis", redis_url)
    settings = backends.settings(history_size=5)
    store = Store(backends.backend(), settings)
    publisher = store.publisher
    live = LivePath(store, settings, Stats())
    try:
        kept, trimmed = [
            MercureStream(["t"], None, native=False, limit=1 << 20, on_cut_off=None)
            for _ in range(2)
        ]
        # A node that saw the event "seen", then lost its live connection while three
        # more were published: the history (5 entries) still holds all three.
        seen = parse_id(await publisher.publish("t", "seen"))
        [channel] = live.attach(kept)
        channel.seen = seen
        kept.go_live()  # a stream past its replay
        missed = [await publisher.publish("t", f"missed {i}") for i in range(3)]
        await recover(live, [channel], await store.now_ms())
        assert kept.closed is None
        batch = await kept.next_batch()
        assert batch is not None
        assert [line for line in batch.split(b"\n") if line.startswith(b"id: ")] == [
            f"id: {i}".encode() for i in missed
        ]
        live.detach(kept)
        # Then ten more while it was down again: the history now starts after its last.
        live.attach(trimmed)
        trimmed.go_live()
        for i in range(10):
            await publisher.publish("t", f"lost {i}")
        await recover(live, [channel], await store.now_ms())
        assert trimmed.closed == "gap"
    finally:
        await live.aclose()
        await store.aclose()
        backends.cleanup()
