"""HubClient against real hubs (embedded and Redis backends), plus scripted answers for
what a live hub cannot be made to do on cue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

from hub import (
    BackendUnavailable,
    BadRequest,
    ConfigError,
    Event,
    HubClient,
    HubError,
    PayloadTooLarge,
    Publisher,
)
from hub.client import _reconnect_delay
from hub.delivery.broker import Broker
from support.hubs import Backends, RunningHub, StartHub
from support.net import free_port

pytestmark = pytest.mark.anyio


class Collector:
    """Runs ``client.subscribe`` in the background and keeps what it yields."""

    def __init__(
        self, client: HubClient, channels: str | list[str], *, last_event_id: str | None = None
    ) -> None:
        self.events: list[Event] = []
        self._stream = client.subscribe(channels, last_event_id=last_event_id)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop subscribing (the stream's connection closes); safe to call twice."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._stream.aclose()

    async def _run(self) -> None:
        try:
            async for event in self._stream:
                self.events.append(event)
                self._changed.set()
        finally:
            self._changed.set()

    async def wait_for(self, count: int) -> list[Event]:
        """Wait (10 s at most) until ``count`` events have arrived."""
        assert self._task is not None
        with anyio.fail_after(10):
            while len(self.events) < count:
                if self._task.done():
                    self._task.result()
                    raise AssertionError(f"subscribe ended after {len(self.events)} events")
                self._changed.clear()
                await self._changed.wait()
        return self.events

    def data(self) -> list[str]:
        return [e.data for e in self.events]


async def drain(stream: AsyncIterator[Event], into: list[Event] | None = None) -> None:
    async for event in stream:
        if into is not None:
            into.append(event)


def broker_of(hub: RunningHub) -> Broker:
    broker: Broker = hub.server.hub_app.state.broker
    return broker


def abort_streams(hub: RunningHub) -> None:
    """Break every open connection of the hub, which keeps running (a network failure)."""
    for connection in list(hub.server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()


async def until(condition: Callable[[], bool]) -> None:
    """Wait (5 s at most) for a condition on hub state that has no event to wait on."""
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


# -- publish ----------------------------------------------------------------------------


async def test_publish_returns_the_id_that_subscribers_receive(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with HubClient(hub.url) as client:
        cursor = await client.publish("news", "before")
        async with Collector(client, ["news", "sport"], last_event_id=cursor) as stream:
            ids = [
                await client.publish("news", "plain"),
                await client.publish("sport", {"score": [1, 0]}, event="goal"),
                await client.publish(["news", "sport"], "to both"),
                await client.publish("news", "line one\nline two"),
                await client.publish("news", ""),
            ]
            events = await stream.wait_for(5)
    assert [e.id for e in events] == ids
    assert [(e.event, e.data) for e in events] == [
        ("message", "plain"),
        ("goal", '{"score":[1,0]}'),
        ("message", "to both"),
        ("message", "line one\nline two"),
        ("message", ""),
    ]


async def test_publish_with_a_bad_channel_raises_bad_request_with_the_hub_message(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with HubClient(hub.url) as client:
        with pytest.raises(BadRequest, match="whitespace") as caught:
            await client.publish("has space", "x")
        assert type(caught.value) is BadRequest
        with pytest.raises(BadRequest, match="reserved"):
            await client.publish("news", "x", event="hub.fake")
        with pytest.raises(BadRequest, match="at least one channel"):
            await client.publish([], "x")


async def test_publish_over_the_size_limit_raises_payload_too_large(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(max_payload=1024), backends.backend())
    async with HubClient(hub.url) as client:
        with pytest.raises(PayloadTooLarge, match="HUB_MAX_PAYLOAD"):
            await client.publish("big", "x" * 2048)
        assert await client.publish("big", "x" * 1000)


async def test_publish_to_a_hub_that_is_not_running_raises_backend_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with HubClient(url) as client:
        with pytest.raises(BackendUnavailable, match=f"could not reach the hub at {url}") as caught:
            await client.publish("news", "x")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_publish_while_redis_is_down_raises_backend_unavailable(
    redis_server: Any, start_hub: StartHub
) -> None:
    backends = Backends("redis", redis_server.url)
    hub = await start_hub(backends.settings(), backends.backend())
    async with HubClient(hub.url) as client:
        await client.publish("news", "while up")
        redis_server.stop()
        with pytest.raises(BackendUnavailable, match="nothing was published"):
            await client.publish("news", "while down")


async def test_publish_to_something_that_is_not_a_hub_raises_hub_error(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with HubClient(f"{hub.url}/not-here") as client:
        with pytest.raises(HubError, match="HTTP 404") as caught:
            await client.publish("news", "x")
    assert not isinstance(caught.value, BadRequest)


@pytest.mark.parametrize("data", [object(), float("nan"), b"raw bytes"])
async def test_publish_of_data_that_is_not_json_raises_bad_request_before_sending(
    data: object,
) -> None:
    # Nothing listens there: reaching the network would raise BackendUnavailable instead.
    async with HubClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(BadRequest, match="JSON value"):
            await client.publish("news", data)


@pytest.mark.parametrize("url", ["localhost:8000", "127.0.0.1:8000", "ftp://hub", "http://"])
def test_a_url_that_is_not_http_is_refused_at_once(url: str) -> None:
    with pytest.raises(ConfigError, match="http://host:port"):
        HubClient(url)


# -- subscribe ---------------------------------------------------------------------------


async def test_subscribe_to_a_bad_channel_raises_bad_request_without_retrying(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    # A retry would wait 30 s and trip the deadline.
    async with HubClient(hub.url, retry=30) as client:
        for channels, message in [(["bad channel"], "whitespace"), ([], "at least one")]:
            with anyio.fail_after(5), pytest.raises(BadRequest, match=message):
                await drain(client.subscribe(channels))


async def test_subscribe_yields_hub_reset_then_live_events(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with HubClient(hub.url) as client:
        await client.publish("r", "old")
        async with Collector(client, "r", last_event_id="garbage") as stream:
            (reset,) = await stream.wait_for(1)
            live = await client.publish("r", "new")
            events = await stream.wait_for(2)
    assert reset.event == "hub.reset"
    assert json.loads(reset.data)["reason"] == "invalid"
    assert (events[1].id, events[1].data) == (live, "new")


async def test_heartbeats_and_retry_hints_are_not_yielded_as_events(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(heartbeat=0.05), backends.backend())
    async with HubClient(hub.url) as client:
        cursor = await client.publish("h", "before")
        async with Collector(client, "h", last_event_id=cursor) as stream:
            await client.publish("h", "first")
            await stream.wait_for(1)
            await anyio.sleep(0.3)  # several heartbeats after an id: no empty events
            await client.publish("h", "second")
            await stream.wait_for(2)
            await anyio.sleep(0.1)
    assert stream.data() == ["first", "second"]


async def test_subscribe_keeps_trying_while_the_node_is_full_then_gets_in(
    backends: Backends, start_hub: StartHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await start_hub(backends.settings(max_connections=1), backends.backend())
    broker = broker_of(hub)
    # The hub asks for Retry-After: 5; max_retry keeps the test short.
    async with HubClient(hub.url, retry=0.02, max_retry=0.1) as client:
        cursor = await client.publish("f", "before")
        async with Collector(client, "f", last_event_id=cursor) as first:
            await until(lambda: broker.connections == 1)
            async with Collector(client, "f", last_event_id=cursor) as second:
                await client.publish("f", "while full")
                await first.wait_for(1)
                await anyio.sleep(0.3)  # refused a few times meanwhile
                assert second.events == []
                await first.close()
                assert [e.data for e in await second.wait_for(1)] == ["while full"]
    assert any("HUB_MAX_CONNECTIONS" in r.getMessage() for r in caplog.records)


async def test_subscribe_resumes_after_the_hub_ends_the_stream_without_gaps(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    hub = await start_hub(backends.settings(retry_ms=300), backend)
    broker = broker_of(hub)
    publisher = Publisher(backend.command_client(), backends.settings())
    try:
        async with HubClient(hub.url) as client:
            cursor = await client.publish("n", "before")
            async with Collector(client, "n", last_event_id=cursor) as stream:
                ids = [await publisher.publish("n", f"seen-{i}") for i in range(3)]
                await stream.wait_for(3)
                broker.close_all("test")
                await until(lambda: broker.connections == 0)
                ids += [await publisher.publish("n", f"missed-{i}") for i in range(3)]
                # Still away: only a Last-Event-ID on the reconnect can bring these back.
                assert broker.connections == 0
                await stream.wait_for(6)
                assert broker.connections == 1
                ids.append(await publisher.publish("n", "live"))
                events = await stream.wait_for(7)
                await anyio.sleep(0.1)
    finally:
        await publisher.aclose()
    assert [e.id for e in stream.events] == ids
    assert [e.data for e in events] == [
        *(f"seen-{i}" for i in range(3)),
        *(f"missed-{i}" for i in range(3)),
        "live",
    ]


async def test_subscribe_sees_every_event_once_in_order_across_repeated_drops(
    backends: Backends, start_hub: StartHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.client")
    backend = backends.backend()
    hub = await start_hub(backends.settings(retry_ms=20), backend)
    broker = broker_of(hub)
    # Published straight into the backend: the hub's only connections are the stream's.
    publisher = Publisher(backend.command_client(), backends.settings())
    total = 150
    published: list[str] = []
    drops: dict[int, Callable[[], None]] = {
        30: lambda: broker.close_all("test"),
        70: lambda: abort_streams(hub),
        110: lambda: abort_streams(hub),
        130: lambda: broker.close_all("test"),
    }

    async def produce() -> None:
        for i in range(total):
            published.append(await publisher.publish("p", str(i)))
            await anyio.sleep(0.002)

    got: list[Event] = []
    try:
        cursor = await publisher.publish("p", "start")
        async with (
            HubClient(hub.url) as client,
            contextlib.aclosing(client.subscribe("p", last_event_id=cursor)) as stream,
        ):
            producer = asyncio.create_task(produce())
            with anyio.fail_after(15):
                async for event in stream:
                    got.append(event)
                    if len(got) in drops:
                        drops[len(got)]()
                    if len(got) == total:
                        break
                await producer
    finally:
        await publisher.aclose()
    assert [e.data for e in got] == [str(i) for i in range(total)]
    assert [e.id for e in got] == published
    reconnects = [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]
    assert len(reconnects) == len(drops), reconnects
    assert sum("the hub ended the stream" in m for m in reconnects) == 2, reconnects
    assert sum("lost the connection" in m for m in reconnects) == 2, reconnects


# -- what a live hub cannot be made to answer on cue ---------------------------------------

_SSE = {"content-type": "text/event-stream; charset=utf-8"}


async def test_subscribe_retries_outages_and_resumes_from_the_last_complete_event() -> None:
    requests: list[httpx.Request] = []
    answers: list[httpx.Response | httpx.TransportError] = [
        httpx.ConnectError("connection refused"),
        httpx.Response(503, json={"error": "backend_unavailable", "message": "Redis is down"}),
        httpx.Response(
            200,
            headers=_SSE,
            content=b": connected\nretry: 10\n\nid: 1-0\ndata: one\n\n: heartbeat\n\n"
            b"id: 1-1\nevent: update\ndata: a\r\ndata: b\r\n\r\n",
        ),
        httpx.Response(
            200,
            headers=_SSE,
            content=b'id: 2-0\nevent: hub.reset\ndata: {"reason":"x"}\n\n'
            b"event: hub.note\ndata: no id\n\nid: 2-1\ndata: two\n\n"
            b"id: 2-2\ndata: cut short",
        ),
        httpx.Response(400, json={"error": "bad_request", "message": "go away"}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        answer = answers[len(requests) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    got: list[Event] = []
    async with http, HubClient("http://hub.test", retry=0.01, max_retry=0.05, http=http) as client:
        with anyio.fail_after(5), pytest.raises(BadRequest, match="go away"):
            await drain(client.subscribe(["a", "b"]), got)
    assert got == [
        Event("1-0", "message", "one"),
        Event("1-1", "update", "a\nb"),
        Event("2-0", "hub.reset", '{"reason":"x"}'),
        Event(None, "hub.note", "no id"),
        Event("2-1", "message", "two"),
    ]
    assert [r.headers.get("last-event-id") for r in requests] == [None, None, None, "1-1", "2-1"]
    assert all(r.url.params.get_list("channel") == ["a", "b"] for r in requests)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(404, text="Not Found"), BadRequest),
        (httpx.Response(200, html="<html>a login page</html>"), HubError),
    ],
)
async def test_subscribe_raises_on_answers_that_retrying_cannot_fix(
    answer: httpx.Response, error: type[HubError]
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return answer

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with http, HubClient("http://hub.test", retry=30, http=http) as client:
        with anyio.fail_after(5), pytest.raises(error, match="a hub"):
            await drain(client.subscribe("a"))
    assert calls == 1


def test_reconnect_delay_follows_the_hint_then_backs_off_up_to_the_cap() -> None:
    for _ in range(50):
        assert 3.0 <= _reconnect_delay(3.0, 0, 30) <= 3.6  # the stream ended: the hint
        assert 3.0 <= _reconnect_delay(3.0, 1, 30) <= 3.6  # one failure: the hint
        assert 6.0 <= _reconnect_delay(3.0, 2, 30) <= 7.2
        assert 12.0 <= _reconnect_delay(3.0, 3, 30) <= 14.4
        assert _reconnect_delay(3.0, 50, 30) == 30
        assert _reconnect_delay(0.0, 0, 30) == 0  # the hub asked for an immediate retry
        assert 1.0 <= _reconnect_delay(0.0, 2, 30) <= 1.2  # but failures still back off
