"""How the hub's HTTP protocol keeps connections: HTTP/1.0 clients that ask for
keep-alive (ApacheBench, some proxies and scripts) get it for responses with a
length, as nginx gives it; everything else as uvicorn does. Small publishes are
answered by the connection itself (hub/small_posts.py), in order with the rest."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from support.hubs import Backends, RunningHub, StartHub
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

PUBLISH = (
    b"POST /publish HTTP/1.0\r\nHost: hub\r\n%sContent-Type: application/json\r\n"
    b'Content-Length: 29\r\n\r\n{"channel": "a", "data": "x"}'
)


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


def _post(channel: str, data: str = "x", head: bytes = b"") -> bytes:
    body = json.dumps({"channel": channel, "data": data}).encode()
    return (
        b"POST /publish HTTP/1.1\r\nHost: hub\r\n%bContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (head, len(body), body)
    )


async def _embedded_hub(start_hub: StartHub) -> tuple[RunningHub, int]:
    embedded = Backends("embedded", None)
    hub = await start_hub(embedded.settings(), embedded.backend())
    return hub, int(hub.url.rsplit(":", 1)[1])


async def test_http10_keep_alive_is_honoured_for_responses_with_a_length(
    start_hub: StartHub,
) -> None:
    _, port = await _embedded_hub(start_hub)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(3):  # one connection, three publishes
            writer.write(PUBLISH % b"Connection: Keep-Alive\r\n")
            head, body = await _answer(reader)
            assert head.startswith(b"HTTP/1.1 201 ")
            assert b"connection: keep-alive" in head.lower()
            assert body.startswith(b'{"id":"')
        writer.write(PUBLISH % b"")  # no keep-alive asked: closed after the answer
        head, _ = await _answer(reader)
        assert b"connection: close" in head.lower()
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_a_connection_that_carries_a_stream_ignores_what_the_client_sends_after_it(
    start_hub: StartHub,
) -> None:
    # An event stream lasts as long as its connection: no request is served after it
    # there, and bytes the client sends meanwhile (a pipelined request, junk) neither
    # disturb the stream nor get an answer written into it. The connection closes when
    # the stream ends.
    hub, port = await _embedded_hub(start_hub)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /events?channel=a HTTP/1.1\r\nHost: hub\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)  # the preamble
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n" + b"\x00junk" * 2000)
        publisher, publishing = await asyncio.open_connection("127.0.0.1", port)
        publishing.write(PUBLISH % b"")
        await _answer(publisher)
        publishing.close()
        chunk = await asyncio.wait_for(reader.readuntil(b"data: x\n"), 5)
        assert b"HTTP/1.1" not in chunk
        hub.broker.close_all("shutdown")
        rest = await asyncio.wait_for(reader.read(), 5)  # the end, then nothing
        assert b"HTTP/1.1" not in rest
    finally:
        writer.close()


async def test_requests_pipelined_behind_publishes_are_answered_in_order(
    start_hub: StartHub,
) -> None:
    # Small publishes (answered off the connection), a GET and a large publish (through
    # uvicorn's request cycle) sent in one write: each answer in its place, and the
    # events stored in the order they were sent.
    hub, port = await _embedded_hub(start_hub)
    large = "y" * 100_000
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            _post("order", "1")
            + b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n"
            + _post("order", "2")
            + _post("order", large)
            + _post("order", "4")
        )
        answers = [await _answer(reader) for _ in range(5)]
    finally:
        writer.close()
    assert [head.split(b" ")[1] for head, _ in answers] == [b"201", b"200", b"201", b"201", b"201"]
    assert json.loads(answers[1][1])["status"] == "ok"
    ids = [json.loads(body)["id"] for head, body in answers if head.startswith(b"HTTP/1.1 201")]
    async with SSEStream(hub.url, ["order"], last_event_id="earliest") as stream:
        stored = await stream.wait_for(4)
    assert [event.data for event in stored] == ["1", "2", large, "4"]
    assert [event.id for event in stored] == ids


async def test_a_publish_whose_client_hangs_up_before_the_answer_is_published_once(
    start_hub: StartHub,
) -> None:
    hub, port = await _embedded_hub(start_hub)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post("gone", "left early"))
    writer.close()
    await writer.wait_closed()
    async with SSEStream(hub.url, ["gone"], last_event_id="earliest") as stream:
        await stream.wait_for(1)
        # And the node goes on answering on new connections.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(_post("gone", "second"))
            head, _ = await _answer(reader)
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 201 ")
        await stream.wait_for(2)
    assert stream.data() == ["left early", "second"]


async def test_a_publish_that_expects_100_continue_gets_it_then_its_answer(
    start_hub: StartHub,
) -> None:
    _, port = await _embedded_hub(start_hub)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = _post("asks", head=b"Expect: 100-continue\r\n")
        head_end = request.index(b"\r\n\r\n") + 4
        writer.write(request[:head_end])
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(request[head_end:])
        head, body = await _answer(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 201 ")
    assert body.startswith(b'{"id":"')


def _stream_start(port: int, request: bytes) -> bytes:
    """What the first read of a stream's connection holds."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def _chunks(body: bytes) -> list[bytes]:
    """The whole chunks at the start of a chunked body."""
    chunks = []
    while b"\r\n" in body:
        size, _, rest = body.partition(b"\r\n")
        length = int(size, 16)
        if len(rest) < length + 2:
            break
        assert rest[length : length + 2] == b"\r\n"
        chunks.append(rest[:length])
        body = rest[length + 2 :]
    return chunks


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /events?channel=a HTTP/1.1\r\nHost: hub\r\n\r\n",
        b"GET /events?channel=a HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n",
        b"GET /events?channel=a HTTP/1.0\r\nHost: hub\r\n\r\n",
    ],
    ids=["http11", "http11-close", "http10"],
)
async def test_a_stream_head_comes_with_its_first_chunk_framed_as_uvicorn_frames_it(
    start_hub: StartHub, request_line: bytes
) -> None:
    # The head and the stream's first chunk leave in one write (hub/delivery/writer.py): the
    # first read a client makes holds both, with uvicorn's own framing. A stream's
    # connection ends with it, so its head says so whatever the request asked.
    _, port = await _embedded_hub(start_hub)
    first = await asyncio.to_thread(_stream_start, port, request_line)
    head, _, body = first.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"http/1.1 200 ok"
    assert b"transfer-encoding: chunked" in lines
    assert b"content-type: text/event-stream; charset=utf-8" in lines
    assert any(line.startswith(b"date: ") for line in lines)
    assert b"connection: close" in lines
    assert not any(line.startswith(b"content-length") for line in lines)
    chunks = _chunks(body)
    assert chunks, first
    assert chunks[0].endswith(b"\n\n")  # the stream's preamble, whole
