"""Bad input and abusive clients: a clear 4xx/503 for each, and the node keeps serving.

Every test opens a healthy subscriber before the bad requests and checks, at the end,
that the node is still up and that subscriber still receives an event published then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from hub.doors.native import stream_params
from support.hubs import Backends, RunningHub, StartHub
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

WATCH = "watch"


@contextlib.asynccontextmanager
async def watched_hub(
    backends: Backends, start_hub: StartHub, **changes: Any
) -> AsyncIterator[tuple[RunningHub, SSEStream]]:
    """A hub with a healthy subscriber on ``watch``; on a clean exit, check both still work."""
    hub = await start_hub(backends.settings(**changes), backends.backend())
    async with SSEStream(hub.url, [WATCH]) as watcher:
        yield hub, watcher
        seen = len(watcher.events)
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{hub.url}/healthz")).status_code == 200
            response = await client.post(
                f"{hub.url}/publish", json={"channel": WATCH, "data": "still here"}
            )
        assert response.status_code == 201, response.text
        events = await watcher.wait_for(seen + 1)
        assert (events[-1].id, events[-1].data) == (response.json()["id"], "still here")
        assert not watcher.ended.is_set()


def assert_error(response: httpx.Response, status: int, code: str, hint: str) -> None:
    """``status`` with a JSON body ``{"error": code, "message": ...hint...}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    assert hint in body["message"], body


def _address(hub: RunningHub) -> tuple[str, int]:
    host, port = hub.url.removeprefix("http://").split(":")
    return host, int(port)


async def _readyz_connections(client: httpx.AsyncClient, url: str) -> int:
    response = await client.get(f"{url}/readyz")
    assert response.status_code == 200, response.text
    return int(response.json()["connections"])


async def wait_connections(url: str, count: int, timeout: float = 5) -> None:
    """Wait until ``/readyz`` reports ``count`` open streams."""
    async with httpx.AsyncClient(timeout=10) as client:
        seen = -1
        for _ in range(int(timeout / 0.05)):
            seen = await _readyz_connections(client, url)
            if seen == count:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} has {seen} open streams, expected {count}")


async def wait_sockets(hub: RunningHub, count: int, timeout: float = 5) -> None:
    """Wait until the server holds ``count`` TCP connections (streams or not)."""
    for _ in range(int(timeout / 0.05)):
        if len(hub.server.server_state.connections) == count:
            return
        await asyncio.sleep(0.05)
    held = len(hub.server.server_state.connections)
    raise AssertionError(f"the server holds {held} connections, expected {count}")


async def close_writer(writer: asyncio.StreamWriter, *, abort: bool = False) -> None:
    if abort:
        writer.transport.abort()
    else:
        writer.close()
    with contextlib.suppress(OSError):
        await asyncio.wait_for(writer.wait_closed(), 5)


# -- POST /publish ------------------------------------------------------------------------

LIMITS = {"max_channels": 3, "max_payload": 1024}


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


PUBLISH_CASES = [
    pytest.param(b'{"channel": "news", "data": ', 400, "not valid JSON", id="malformed-json"),
    pytest.param(b'{"channel": "news", "data": "\xff"}', 400, "not valid JSON", id="not-utf8"),
    pytest.param(b"", 400, "not valid JSON", id="empty-body"),
    pytest.param(_json(["news", "hi"]), 400, '{"channel": "news"', id="array"),
    pytest.param(_json("news"), 400, "must be a JSON object", id="string"),
    pytest.param(_json(42), 400, "must be a JSON object", id="number"),
    pytest.param(b"[" * 50_000, 400, "nested too deeply", id="deeply-nested"),
    pytest.param(
        b'{"channel": "n", "data": ' + b"9" * 5000 + b"}",
        400,
        "too many digits; send it as a string",
        id="huge-integer",
    ),
    pytest.param(
        _json({"channel": 5, "data": "x"}), 400, "must be a string, not int", id="channel-number"
    ),
    pytest.param(
        _json({"channels": "news", "data": "x"}),
        400,
        '"channels" must be a list',
        id="channels-not-list",
    ),
    pytest.param(
        _json({"channels": ["news", 7], "data": "x"}),
        400,
        "must be a string, not int",
        id="channels-with-number",
    ),
    pytest.param(
        _json({"channels": [], "data": "x"}), 400, "name at least one channel", id="no-channels"
    ),
    pytest.param(
        _json({"channel": "n", "data": "x", "event": 3}),
        400,
        "event must be a string, not int",
        id="event-number",
    ),
    pytest.param(_json({"data": "x"}), 400, 'give either "channel"', id="missing-channel"),
    pytest.param(
        _json({"channel": "a", "channels": ["b"], "data": "x"}),
        400,
        'give either "channel": "name" or "channels"',
        id="channel-and-channels",
    ),
    pytest.param(_json({"channel": "", "data": "x"}), 400, "must not be empty", id="empty-channel"),
    pytest.param(
        _json({"channel": "two words", "data": "x"}),
        400,
        "use letters, digits and punctuation",
        id="channel-whitespace",
    ),
    pytest.param(
        _json({"channel": "bell\x07", "data": "x"}),
        400,
        "use letters, digits and punctuation",
        id="channel-control-char",
    ),
    pytest.param(
        _json({"channel": "x" * 257, "data": "x"}),
        400,
        "longer than 256 bytes; use a shorter name",
        id="channel-too-long",
    ),
    pytest.param(
        _json({"channel": "é" * 129, "data": "x"}),  # 129 characters, 258 bytes
        400,
        "longer than 256 bytes",
        id="channel-too-long-in-bytes",
    ),
    pytest.param(
        _json({"channels": ["a", "b", "c", "d"], "data": "x"}),
        400,
        "at most 3 are allowed per request (HUB_MAX_CHANNELS)",
        id="too-many-channels",
    ),
    pytest.param(_json({"channel": "n"}), 400, '"data" is required', id="missing-data"),
    pytest.param(
        _json({"chanel": "n", "data": "x"}),
        400,
        "unknown field(s) ['chanel']; allowed: ['channel', 'channels', 'data', 'event', 'private']",
        id="unknown-field",
    ),
    pytest.param(
        _json({"channel": "n", "data": "x", "event": "hub.reset"}),
        400,
        "reserved for the hub's own signals",
        id="reserved-event",
    ),
    pytest.param(
        _json({"channel": "n", "data": "x", "event": "two\nlines"}),
        400,
        "must not contain CR, LF or NUL",
        id="event-newline",
    ),
    pytest.param(
        _json({"channel": "n", "data": "x", "event": ""}),
        400,
        "leave it out for the default 'message'",
        id="event-empty",
    ),
    pytest.param(
        b'{"channel": "n", "data": "x", "event": "\\ud800"}',
        400,
        "use valid Unicode text",
        id="event-lone-surrogate",
    ),
    pytest.param(
        _json({"channel": "n", "data": "x" * 2000}),
        413,
        "the limit is 1024 (HUB_MAX_PAYLOAD)",
        id="data-too-large",
    ),
]


@pytest.mark.parametrize(("body", "status", "hint"), PUBLISH_CASES)
async def test_bad_publish_gets_a_clear_error_and_the_node_keeps_serving(
    backends: Backends, start_hub: StartHub, body: bytes, status: int, hint: str
) -> None:
    async with watched_hub(backends, start_hub, **LIMITS) as (hub, watcher):
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{hub.url}/publish", content=body, headers={"Content-Type": "application/json"}
            )
        code = "payload_too_large" if status == 413 else "bad_request"
        assert_error(response, status, code, hint)
    # Nothing was published: the watcher saw only the final check's event.
    assert watcher.data() == ["still here"]


async def test_declared_oversized_body_is_refused_before_it_is_read(
    backends: Backends, start_hub: StartHub
) -> None:
    async with watched_hub(backends, start_hub, **LIMITS) as (hub, _watcher):
        reader, writer = await asyncio.open_connection(*_address(hub))
        try:
            # 100 MB announced, a few bytes sent: an answer proves the body was not awaited.
            writer.write(
                b"POST /publish HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000000\r\n\r\n"
                b'{"channel": "news", "data": "'
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
        finally:
            await close_writer(writer)
        assert lines[0].split(" ")[1] == "413", head
        answer = json.loads(body)
        assert answer["error"] == "payload_too_large"
        assert "the body is 100000000 bytes" in answer["message"]
        assert "raise HUB_MAX_PAYLOAD" in answer["message"]


# -- GET /events ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "hint"),
    [
        pytest.param("", "name at least one channel", id="no-channel"),
        pytest.param("?other=news", "name at least one channel", id="no-channel-param"),
        pytest.param("?channel=", "must not be empty", id="empty-channel"),
        pytest.param(
            "?channel=a%20b", "use letters, digits and punctuation", id="channel-whitespace"
        ),
        pytest.param(
            "?channel=ok&channel=%00", "use letters, digits and punctuation", id="channel-nul"
        ),
        pytest.param("?channel=" + "x" * 257, "use a shorter name", id="channel-too-long"),
        pytest.param(
            "?channel=a&channel=b&channel=c&channel=d",
            "at most 3 are allowed per request (HUB_MAX_CHANNELS)",
            id="too-many-channels",
        ),
    ],
)
async def test_bad_subscribe_gets_400_json_and_the_node_keeps_serving(
    backends: Backends, start_hub: StartHub, query: str, hint: str
) -> None:
    async with (
        watched_hub(backends, start_hub, **LIMITS) as (hub, _watcher),
        httpx.AsyncClient(timeout=10) as client,
    ):
        response = await client.get(f"{hub.url}/events{query}")
        assert_error(response, 400, "bad_request", hint)
        assert await _readyz_connections(client, hub.url) == 1  # the watcher only


# -- abusive connections ----------------------------------------------------------------


async def test_burst_of_connect_and_disconnect_leaves_no_stream_behind(
    backends: Backends, start_hub: StartHub
) -> None:
    async with watched_hub(backends, start_hub) as (hub, watcher):
        await wait_connections(hub.url, 1)
        address = _address(hub)
        gate = asyncio.Semaphore(50)
        channels = [WATCH, "burst-a", "burst-b", "burst-c"]

        async def cycle(i: int) -> None:
            async with gate:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 10)
                try:
                    channel = channels[i % len(channels)]
                    writer.write(
                        f"GET /events?channel={channel} HTTP/1.1\r\nHost: hub\r\n\r\n".encode()
                    )
                    await writer.drain()
                    if i % 3 == 1:  # wait for the first bytes of the answer
                        assert await asyncio.wait_for(reader.read(64), 10)
                finally:
                    # i % 3 == 2: a reset rather than an orderly close
                    await close_writer(writer, abort=i % 3 == 2)

        async def publish_meanwhile(client: httpx.AsyncClient) -> list[str]:
            ids = []
            for i in range(20):
                response = await client.post(
                    f"{hub.url}/publish", json={"channel": WATCH, "data": f"during-{i}"}
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
                await asyncio.sleep(0.05)
            return ids

        async with httpx.AsyncClient(timeout=10) as client:
            publisher = asyncio.create_task(publish_meanwhile(client))
            await asyncio.wait_for(asyncio.gather(*(cycle(i) for i in range(2000))), 60)
            ids = await asyncio.wait_for(publisher, 20)
        events = await watcher.wait_for(20)
        assert [(e.id, e.data) for e in events] == [
            (id_, f"during-{i}") for i, id_ in enumerate(ids)
        ]
        await wait_connections(hub.url, 1)
        await wait_sockets(hub, 1)  # the watcher's


async def test_half_open_connections_do_not_disturb_others_and_go_away_when_closed(
    backends: Backends, start_hub: StartHub
) -> None:
    async with watched_hub(backends, start_hub) as (hub, watcher):
        address = _address(hub)
        writers: list[asyncio.StreamWriter] = []
        try:
            for i in range(100):
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 10)
                writers.append(writer)
                if i % 2:
                    # A full request, then the client never reads a byte.
                    writer.write(
                        f"GET /events?channel={WATCH} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
                    )
                else:
                    # Half a request line, never finished.
                    writer.write(b"GET /events?chan")
                await writer.drain()
            await wait_connections(hub.url, 51)  # the watcher and the 50 full requests
            await wait_sockets(hub, 101)
            async with httpx.AsyncClient(timeout=10) as client:
                for i in range(10):
                    response = await client.post(
                        f"{hub.url}/publish", json={"channel": WATCH, "data": f"e{i}"}
                    )
                    assert response.status_code == 201, response.text
                async with SSEStream(hub.url, ["newcomer"]) as newcomer:
                    response = await client.post(
                        f"{hub.url}/publish", json={"channel": "newcomer", "data": "hi"}
                    )
                    assert response.status_code == 201, response.text
                    assert [e.data for e in await newcomer.wait_for(1)] == ["hi"]
            assert [e.data for e in await watcher.wait_for(10)] == [f"e{i}" for i in range(10)]
        finally:
            await asyncio.gather(*(close_writer(w) for w in writers))
        await wait_connections(hub.url, 1)
        await wait_sockets(hub, 1)  # the half-written requests are gone too


async def test_connection_limit_answers_503_with_retry_after_until_a_stream_closes(
    backends: Backends, start_hub: StartHub
) -> None:
    async with (
        watched_hub(backends, start_hub, max_connections=3) as (hub, _watcher),
        SSEStream(hub.url, ["a"]) as second,
        httpx.AsyncClient(timeout=10) as client,
    ):
        async with SSEStream(hub.url, ["b"]) as third:
            assert second.status == third.status == 200
            await wait_connections(hub.url, 3)
            response = await client.get(f"{hub.url}/events", params={"channel": "c"})
            assert_error(
                response,
                503,
                "too_many_connections",
                "this node has 3 open streams (HUB_MAX_CONNECTIONS); retry, or connect "
                "to another node",
            )
            assert 1 <= int(response.headers["retry-after"]) <= 60
            assert await _readyz_connections(client, hub.url) == 3
        await wait_connections(hub.url, 2)
        async with SSEStream(hub.url, ["c"]) as fourth:
            assert fourth.status == 200
            assert fourth.comments[:1] == ["connected"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"channel": "c", "data": "\\ud800"}', "lone surrogate"),
        ('{"channel": "c", "data": [NaN]}', "JSON value"),
        ('{"channel": "c", "data": Infinity}', "JSON value"),
        ('{"channel": "\\udc00x", "data": "x"}', "lone surrogate"),
    ],
)
async def test_publish_refuses_data_a_browser_could_not_decode(
    backends: Backends, start_hub: StartHub, body: str, fragment: str
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{hub.url}/publish", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert fragment in response.json()["message"]


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        (b"channel=news", []),
        (b"channel=a&channel=b&channel=a", []),
        (b"channel=a%20b&channel=c+d&channel=%E2%82%AC", []),
        (b"channel=&channel&=x&&channel=%zz", []),
        (b"channel=caf\xe9&lastEventId=1-0&lastEventId=2-0", []),
        (b"channel=a&lastEventId=1-0", [(b"last-event-id", b"5-0"), (b"last-event-id", b"6-0")]),
        (b"channel=a&lastEventId=1-0", [(b"last-event-id", b"")]),
        (b"channel=a;b&lastEventId=", [(b"accept", b"text/event-stream")]),
        (b"", []),
    ],
)
def test_stream_params_are_read_as_starlette_reads_them(
    query: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    scope: dict[str, Any] = {"type": "http", "query_string": query, "headers": headers}
    request = Request(scope)
    expected = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    assert stream_params(scope) == (request.query_params.getlist("channel"), expected)
