"""Batch publish: a JSON array or NDJSON to ``POST /publish``, ``publish_many`` on the
publishers and the HTTP client, and ``hub publish`` reading NDJSON from stdin.

A batch answers its ids in order, every event reaches its subscribers in that order,
and a bad item refuses the whole batch with its index: nothing of it is published.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import jwt
import pytest
import redis.asyncio

from hub import BadRequest, HubClient, HubError, Publisher, Settings, SyncPublisher
from hub.store.failures import batch_failure
from hub.store.ids import parse_id
from hub.store.keys import Keys
from support.hubs import Backends, StartHub
from support.redis_server import RedisServer
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

_SCRIPT = Path(sys.executable).with_name("hub")
HUB = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hub"]


async def post(url: str, content: bytes, content_type: str = "application/json") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{url}/publish", content=content, headers={"Content-Type": content_type}
        )


def ndjson(*items: object) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


async def nothing_before_marker(url: str, stream: SSEStream) -> None:
    """The next event on ``stream`` is a marker published now: a refused batch before it
    published nothing."""
    response = await post(url, json.dumps({"channel": "a", "data": "marker"}).encode())
    assert response.status_code == 201
    (first,) = await stream.wait_for(1)
    assert first.data == "marker"


async def test_batch_answers_ids_in_order_and_subscribers_get_them_in_order(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    batch = [
        {"channel": "a", "data": "one"},
        {"channels": ["a", "b"], "data": {"n": 2}, "event": "pair"},
        {"channel": "b", "data": "three"},
    ]
    async with SSEStream(hub.url, ["a", "b"]) as both, SSEStream(hub.url, ["b"]) as only_b:
        response = await post(hub.url, json.dumps(batch).encode())
        assert response.status_code == 201, response.text
        ids = response.json()["ids"]
        events = await both.wait_for(3)
        assert [(e.id, e.event, e.data) for e in events] == [
            (ids[0], "message", "one"),
            (ids[1], "pair", '{"n":2}'),
            (ids[2], "message", "three"),
        ]
        assert [e.id for e in await only_b.wait_for(2)] == ids[1:]
    assert ids == sorted(ids, key=parse_id)


BAD_ITEMS = [
    ("not an object", 400, "event 2: a publish object must be a JSON object"),
    ({"channel": "a b", "data": "x"}, 400, "event 2: channel name 'a b' contains whitespace"),
    ({"channel": "a", "data": "x", "event": "hub.x"}, 400, "event 2: event types starting"),
    ({"channel": "a", "data": "x" * 2000}, 413, "event 2: data is 2000 bytes; the limit is 1024"),
    ({"chanel": "a", "data": "x"}, 400, "event 2: unknown field(s) ['chanel']"),
    ({"channel": "a", "data": "x", "private": "yes"}, 400, 'event 2: "private" must be'),
    ({"channel": "/.well-known/mercure/x", "data": "x"}, 403, "event 2: "),
]


async def test_a_bad_item_refuses_the_whole_batch_and_names_its_index(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(max_payload=1024), backends.backend())
    good = {"channel": "a", "data": "good"}
    async with SSEStream(hub.url, ["a"]) as stream, httpx.AsyncClient() as client:
        for bad, status, message in BAD_ITEMS:
            for body, kind in [
                (json.dumps([good, good, bad, good]).encode(), "application/json"),
                (ndjson(good, good, bad, good), "application/x-ndjson"),
            ]:
                response = await client.post(
                    f"{hub.url}/publish", content=body, headers={"Content-Type": kind}
                )
                assert response.status_code == status, (bad, kind, response.text)
                assert response.json()["message"].startswith(message), response.text
        await nothing_before_marker(hub.url, stream)


async def test_batch_size_and_body_size_are_bounded_with_the_setting_to_raise(
    start_hub: StartHub,
) -> None:
    embedded = Backends("embedded", None)
    settings = embedded.settings(max_batch=3, max_batch_bytes=2048, max_payload=4096)
    hub = await start_hub(settings, embedded.backend())
    four = [{"channel": "a", "data": str(i)} for i in range(4)]
    big = [{"channel": "a", "data": "x" * 1500}, {"channel": "a", "data": "y" * 1500}]
    cases = [
        (json.dumps(four).encode(), "application/json", 400, "HUB_MAX_BATCH)"),
        (ndjson(*four), "application/x-ndjson", 400, "HUB_MAX_BATCH)"),
        (json.dumps(big).encode(), "application/json", 413, "HUB_MAX_BATCH_BYTES"),
        (ndjson(*big), "application/x-ndjson", 413, "HUB_MAX_BATCH_BYTES"),
        (b"[]", "application/json", 400, "the batch is empty"),
        (b"", "application/x-ndjson", 400, "the batch is empty"),
        (ndjson(four[0]) + b"\n" + ndjson(four[1]), "application/x-ndjson", 400, "event 1: an"),
    ]
    async with SSEStream(hub.url, ["a"]) as stream:
        for body, kind, status, message in cases:
            response = await post(hub.url, body, kind)
            assert response.status_code == status, (body[:60], response.text)
            assert message in response.json()["message"]
        # A single event may still be as large as HUB_MAX_PAYLOAD allows.
        response = await post(hub.url, json.dumps({"channel": "a", "data": "z" * 4000}).encode())
        assert response.status_code == 201
        assert (await stream.wait_for(1))[0].data == "z" * 4000


async def test_ndjson_arriving_in_pieces_is_published_in_order(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    body = ndjson(*({"channel": "a", "data": f"m{i}"} for i in range(50)))

    async def pieces() -> AsyncIterator[bytes]:
        # Lines split across chunks, as a large body arrives.
        for start in range(0, len(body), 37):
            yield body[start : start + 37]

    async with SSEStream(hub.url, ["a"]) as stream, httpx.AsyncClient() as client:
        response = await client.post(
            f"{hub.url}/publish",
            content=pieces(),
            headers={"Content-Type": "application/x-ndjson; charset=utf-8"},
        )
        assert response.status_code == 201, response.text
        ids = response.json()["ids"]
        events = await stream.wait_for(50)
    assert [(e.id, e.data) for e in events] == [(ids[i], f"m{i}") for i in range(50)]


async def test_publisher_publish_many_publishes_in_order_or_nothing(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    settings = backends.settings(max_batch=10)
    hub = await start_hub(settings, backend)
    publisher = Publisher(backend.command_client(), settings)
    try:
        async with SSEStream(hub.url, ["a", "b"]) as stream:
            with pytest.raises(BadRequest, match=r"^event 1: a channel name must not be empty"):
                await publisher.publish_many(
                    [{"channel": "a", "data": 1}, {"channel": "", "data": 2}]
                )
            with pytest.raises(BadRequest, match=r"at most 10 events \(HUB_MAX_BATCH\)"):
                await publisher.publish_many({"channel": "a", "data": i} for i in range(11))
            await nothing_before_marker(hub.url, stream)
            ids = await publisher.publish_many(
                [{"channel": "a", "data": "x"}, {"channels": ["a", "b"], "data": [1], "event": "e"}]
            )
            events = await stream.wait_for(3)  # the marker, then both
    finally:
        await publisher.aclose()
    assert [(e.id, e.event, e.data) for e in events[1:]] == [
        (ids[0], "message", "x"),
        (ids[1], "e", "[1]"),
    ]


async def test_a_batch_redis_refuses_in_part_says_which_events_were_published(
    backends: Backends,
) -> None:
    backend = backends.backend()
    settings = backends.settings()
    client = backend.command_client()
    # A key of the wrong type where a channel's history should be: Redis refuses that
    # event's script; the events around it are published.
    await client.set(Keys(settings.key_prefix).stream("broken"), "not a stream")
    publisher = Publisher(client, settings)
    batch = [{"channel": c, "data": "x"} for c in ("a", "broken", "b")]
    try:
        with pytest.raises(HubError, match=r"^2 of 3 events were published \(index 0, 2\)"):
            await publisher.publish_many(batch)
    finally:
        await publisher.aclose()


def test_batch_failure_counts_published_refused_and_unknown_events() -> None:
    from redis.exceptions import ResponseError

    from hub.store.lane import InFlightLost

    broke = InFlightLost("the connection broke")
    error = batch_failure(["1-0", "1-1", ResponseError("x"), "1-3", None], broke, "r", 8)
    assert str(error).startswith("3 of 8 events were published (index 0-1, 3), 4 may or may not")


async def test_publish_many_loads_the_script_on_a_redis_that_lost_it(
    redis_server: RedisServer,
) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    publisher = Publisher(client, Settings(redis_url=redis_server.url, key_prefix="t:"))
    try:
        first = await publisher.publish_many([{"channel": "a", "data": 1}])
        await client.script_flush()
        ids = await publisher.publish_many([{"channel": "a", "data": i} for i in range(3)])
        entries = await client.xrange(Keys("t:").stream("a"))
    finally:
        await publisher.aclose()
    # An event's id is its entry id in the channel's stream, and the channel's part.
    assert [e[0].decode() for e in entries] == [i.partition(".")[0] for i in first + ids]


async def test_sync_publisher_and_hub_client_publish_many(
    redis_url: str, start_hub: StartHub
) -> None:
    backends = Backends("redis", redis_url)
    try:
        settings = backends.settings()
        hub = await start_hub(settings, backends.backend())
        publisher = SyncPublisher.from_url(redis_url, settings)
        try:
            async with SSEStream(hub.url, ["a"]) as stream, HubClient(hub.url) as client:
                direct = await asyncio.to_thread(
                    publisher.publish_many,
                    [{"channel": "a", "data": "s1"}, {"channel": "a", "data": "s2"}],
                )
                through = await client.publish_many([{"channel": "a", "data": "h1"}])
                with pytest.raises(BadRequest, match=r"event 1: .*must be a string"):
                    await client.publish_many(
                        [{"channel": "a", "data": 1}, {"channel": 5, "data": 2}]
                    )
                events = await stream.wait_for(3)
        finally:
            publisher.close()
        assert [(e.id, e.data) for e in events] == list(
            zip(direct + through, ["s1", "s2", "h1"], strict=True)
        )
    finally:
        backends.cleanup()


async def test_a_token_must_allow_every_channel_of_the_batch(start_hub: StartHub) -> None:
    embedded = Backends("embedded", None)
    hub = await start_hub(embedded.settings(jwt_key="k" * 32), embedded.backend())
    token = jwt.encode({"mercure": {"publish": ["news"]}}, "k" * 32, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    batch = [{"channel": "news", "data": 1}, {"channel": "sports", "data": 2}]
    async with httpx.AsyncClient() as client:
        refused = await client.post(f"{hub.url}/publish", json=batch, headers=headers)
        anonymous = await client.post(f"{hub.url}/publish", json=batch[:1])
        allowed = await client.post(f"{hub.url}/publish", json=batch[:1], headers=headers)
    assert refused.status_code == 403
    assert refused.json()["message"].startswith("event 1: the token's publish selectors")
    assert anonymous.status_code == 401
    assert allowed.status_code == 201
    assert embedded.backend().embedded


async def run_cli(stdin: bytes, *args: str, prefix: str = "hub:") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_KEY_PREFIX"] = prefix
    process = await asyncio.create_subprocess_exec(
        *HUB,
        "publish",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    with anyio.fail_after(20):
        out, err = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_hub_publish_reads_ndjson_from_stdin_in_batches(start_hub: StartHub) -> None:
    embedded = Backends("embedded", None)
    hub = await start_hub(embedded.settings(), embedded.backend())
    lines = ndjson(*({"channel": "a", "data": f"m{i}"} for i in range(5)))
    async with SSEStream(hub.url, ["a"]) as stream:
        code, out, err = await run_cli(lines + b"\n", "--url", hub.url, "--batch", "2")
        assert (code, err) == (0, "")
        ids = out.split()
        events = await stream.wait_for(5)
        assert [(e.id, e.data) for e in events] == [(ids[i], f"m{i}") for i in range(5)]
        bad = ndjson({"channel": "a", "data": "n0"}, {"channel": "a", "data": "n1"})
        bad += ndjson({"channel": "b c", "data": "n2"})
        code, out, err = await run_cli(bad, "--url", hub.url, "--batch", "2")
        published = len(out.split())
        assert code == 2
        assert "line 3: channel name 'b c'" in err
        assert f"the {published} events before line" in err or "nothing was published" in err
        more = await stream.wait_for(5 + published)
        assert [e.data for e in more[5:]] == ["n0", "n1"][:published]


async def test_hub_publish_from_stdin_straight_into_redis(redis_url: str) -> None:
    backends = Backends("redis", redis_url)
    try:
        settings = backends.settings()
        lines = ndjson({"channel": "a", "data": "r0"}, {"channels": ["a", "b"], "data": "r1"})
        code, out, err = await run_cli(lines, "--redis-url", redis_url, prefix=settings.key_prefix)
        assert (code, err) == (0, "")
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            entries = await client.xrange(Keys(settings.key_prefix).stream("a"))
        finally:
            await client.aclose()
        assert [e[0].decode() for e in entries] == [i.partition(".")[0] for i in out.split()]
    finally:
        backends.cleanup()
