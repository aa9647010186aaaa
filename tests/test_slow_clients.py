"""Clients that hold connections without finishing a request: half a header, a body that
trickles in, too many connections from one address. Each is bounded by a setting; a
real client is served meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from support.hubs import Backends, StartHub
from support.net import wait_ready
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

HALF_A_HEAD = b"GET /events?channel=news HTTP/1.1\r\nHost: hub\r\nLast-Event-"


@pytest.fixture
def embedded() -> Backends:
    return Backends("embedded", None)


@contextlib.asynccontextmanager
async def raw_connections(
    url: str, count: int, first_bytes: bytes
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """``count`` connections that each sent ``first_bytes`` and then nothing."""
    host, port = url.removeprefix("http://").split(":")
    made: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(host, int(port))
            if first_bytes:
                writer.write(first_bytes)
            made.append((reader, writer))
        yield made
    finally:
        for _reader, writer in made:
            writer.close()


async def answer_then_close(reader: asyncio.StreamReader) -> bytes:
    """What the hub wrote before it closed the connection (waits for the close)."""
    with anyio.fail_after(30):
        return await reader.read()


async def test_connections_that_never_finish_their_headers_are_closed(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(anonymous=True, header_timeout=1), embedded.backend())
    served_first = b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n" + HALF_A_HEAD
    streamed_first = b"GET /events?channel=news HTTP/1.1\r\nHost: hub\r\n\r\n" + HALF_A_HEAD
    async with (
        raw_connections(hub.url, 300, HALF_A_HEAD) as halves,
        raw_connections(hub.url, 100, b"") as silent,
        raw_connections(hub.url, 1, served_first) as [(kept_alive, _)],
        raw_connections(hub.url, 1, streamed_first) as [(streaming, _)],
    ):
        # Meanwhile a real client is served.
        async with SSEStream(hub.url, ["news"]) as stream:
            assert stream.status == 200
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{hub.url}/healthz")).status_code == 200
        answers = await asyncio.gather(*(answer_then_close(r) for r, _ in halves + silent))
        # On a kept-alive connection the next request's head has its own deadline.
        second = await answer_then_close(kept_alive)
        # Behind a stream still being sent, an answer would land inside the stream.
        stream = await answer_then_close(streaming)
    assert stream.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"408" not in stream
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.count(b"HTTP/1.1 408 Request Timeout\r\n") == 1
    said = answers[: len(halves)]
    assert all(a.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for a in said), said[:3]
    assert b"HUB_HEADER_TIMEOUT" in said[0]
    # A connection that sent nothing (a browser's spare one) is closed without a word.
    assert set(answers[len(halves) :]) == {b""}


async def test_a_body_that_trickles_in_is_answered_408(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(body_timeout=1), embedded.backend())
    head = (
        b"POST /publish HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    async with raw_connections(hub.url, 1, head + b'{"channel"') as [(reader, writer)]:
        writer.write(b': "news", ')  # a little more, then nothing
        answer = await answer_then_close(reader)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"HUB_BODY_TIMEOUT" in answer
    # A body that arrives in time, in pieces, is published.
    async with raw_connections(hub.url, 1, head[:-2]) as [(reader, writer)]:
        body = b'{"channel": "news", "data": "slow but steady"}'.ljust(100)
        writer.write(b"\r\n" + body[:20])
        await asyncio.sleep(0.2)
        writer.write(body[20:])
        answer = await reader.readuntil(b"\r\n")
    assert answer.startswith(b"HTTP/1.1 201 ")


async def test_connections_per_address_are_limited_when_asked(
    embedded: Backends, start_hub: StartHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await start_hub(
        embedded.settings(anonymous=True, max_connections_per_ip=2), embedded.backend()
    )
    async with SSEStream(hub.url, ["a"]) as first, SSEStream(hub.url, ["b"]) as second:
        assert (first.status, second.status) == (200, 200)
        async with httpx.AsyncClient() as client:
            refused = await client.get(f"{hub.url}/healthz")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert "HUB_MAX_CONNECTIONS_PER_IP" in refused.json()["message"]
    assert "refused 1 requests from addresses over HUB_MAX_CONNECTIONS_PER_IP=2" in caplog.text
    # The streams' connections are gone: the address may connect again.
    await wait_ready(hub.url)
