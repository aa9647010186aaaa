"""What a security review did to a running hub, each now refused or harmless: requests
that froze the event loop, a publisher moving another topic's cursors, memory and
history exhaustion, credentials for every origin, and the smaller holes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable
from urllib.parse import quote, urlencode, urlsplit

import httpx
import pytest

from hub import ConfigError, Settings, create_app
from hub.doors import topics
from hub.doors.topics import MAX_TEMPLATE_BYTES
from hub.store import partition_of
from support.hubs import Backends, StartHub
from support.mercure import KEY, mercure_publish, mercure_stream, token
from support.processes import HubProcesses
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

PUBLISHER = token(publish=["*"])


@pytest.fixture
def embedded() -> Backends:
    return Backends("embedded", None)


async def _healthz_seconds(url: str) -> float:
    async with httpx.AsyncClient() as client:
        started = time.perf_counter()
        response = await client.get(f"{url}/healthz", timeout=30)
        assert response.status_code == 200
        return time.perf_counter() - started


async def _while_answering_health(url: str, work: asyncio.Task[object]) -> float:
    """The slowest ``/healthz`` answer while ``work`` runs (and at least once after).

    The hub must be another process: one sharing the test's event loop would freeze
    the clock's reader too."""
    slowest = 0.0
    while True:
        slowest = max(slowest, await _healthz_seconds(url))
        if work.done():
            return slowest
        await asyncio.sleep(0.01)


# -- one request must not freeze the node ----------------------------------------------


async def test_template_subscriber_and_a_long_topic_publish_leave_the_node_answering(
    hubs: HubProcesses,
) -> None:
    # With Python's re this one subscriber and one publish froze the node for 14 s.
    hub = await hubs.start(env={"HUB_JWT_KEY": KEY, "HUB_ANONYMOUS": "1"})
    topic = "a" * 250
    async with (
        mercure_stream(hub.url, ["{+a0}{+a1}{+a2}{+a3}X"]) as pattern,
        mercure_stream(hub.url, [topic]) as exact,
    ):
        publish = asyncio.create_task(mercure_publish(hub.url, topic, "long", bearer=PUBLISHER))
        assert await _while_answering_health(hub.url, publish) < 1.0
        assert [e.data for e in await exact.wait_for(1)] == ["long"]
        await mercure_publish(hub.url, "aX", "short", bearer=PUBLISHER)
        # The template subscriber got the topic it matches, and not the long one.
        assert [e.data for e in await pattern.wait_for(1)] == ["short"]


async def test_publisher_limited_to_a_template_is_refused_at_once_for_a_crafted_topic(
    hubs: HubProcesses,
) -> None:
    hub = await hubs.start(env={"HUB_JWT_KEY": KEY})
    limited = token(publish=["https://example.com/books/{id}"])
    crafted = "https://example.com/books/" + "," * 200 + "!"
    publish = asyncio.create_task(
        mercure_publish(hub.url, crafted, "x", bearer=limited, expect=403)
    )
    assert await _while_answering_health(hub.url, publish) < 1.0
    await publish
    await mercure_publish(hub.url, "https://example.com/books/1", "ok", bearer=limited)


async def test_unauthenticated_subscribe_is_refused_before_any_template_is_compiled(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(jwt_key=KEY), embedded.backend())
    before = dict(topics._cache)
    selectors = [f"/t{i}/{{" + ",".join(f"v{j}" for j in range(30)) + "}" for i in range(10)]
    async with mercure_stream(hub.url, selectors) as stream:
        assert stream.status == 401
    assert set(topics._cache) - set(before) == set()


async def test_oversized_templates_are_a_400_that_names_the_limit(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(jwt_key=KEY, anonymous=True), embedded.backend())
    many = "{" + ",".join(f"v{i}" for i in range(40)) + "}"
    long = "/" + "a" * MAX_TEMPLATE_BYTES + "{id}"
    async with httpx.AsyncClient() as client:
        for selector, expected in ((many, "variables"), (long, "bytes")):
            url = f"{hub.url}/.well-known/mercure?{urlencode({'topic': selector})}"
            response = await client.get(url)
            assert response.status_code == 400
            assert expected in response.json()["message"]


def _raw_request(url: str, head: bytes, chunk: bytes, total: int) -> bytes:
    """Send ``head`` then ``chunk`` repeatedly (up to ``total`` bytes) without ending
    the headers; return what the server answered."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server closed the connection: what it said is below
        answer = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        return answer


async def test_oversized_request_headers_get_431_and_cost_no_memory(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(anonymous=True), embedded.backend())
    head = b"GET /events?channel=news HTTP/1.1\r\nHost: x\r\nLast-Event-ID: "
    # 50 MB of one header was accepted before; now the connection ends at the limit.
    answer = await asyncio.to_thread(_raw_request, hub.url, head, b"1" * 65536, 50 << 20)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"HUB_MAX_HEADER_BYTES" in answer
    assert await _healthz_seconds(hub.url) < 1.0
    # A request just under the limit is served.
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{hub.url}/healthz", headers={"X-Pad": "a" * 12_000})
        assert response.status_code == 200


async def test_header_limit_is_a_setting(embedded: Backends, start_hub: StartHub) -> None:
    hub = await start_hub(embedded.settings(max_header_bytes=4096), embedded.backend())
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{hub.url}/healthz", headers={"X-Pad": "a" * 6000})
    assert response.status_code == 431
    assert response.json()["error"] == "headers_too_large"


# -- one topic's publisher must not move another topic's cursor -----------------------


async def test_a_chosen_id_that_another_update_holds_is_refused_and_resume_stays_exact(
    backends: Backends, start_hub: StartHub
) -> None:
    # Chosen ids are unique per partition (the unit a publish touches atomically), and
    # a subscriber's cursor is looked up only in the partitions of its own topics.
    hub = await start_hub(backends.settings(jwt_key=KEY, anonymous=True), backends.backend())
    a = "https://ex.com/a"
    near = _topic_where(lambda t: partition_of(t) == partition_of(a))
    far = _topic_where(lambda t: partition_of(t) != partition_of(a))
    other_publisher = token(publish=[near, far])
    await mercure_publish(hub.url, a, "A1", bearer=PUBLISHER, id="a-1")
    await mercure_publish(hub.url, a, "A2", bearer=PUBLISHER)
    refused = await mercure_publish(
        hub.url, near, "B", bearer=other_publisher, id="a-1", expect=409
    )
    assert "taken" in refused.json()["message"]
    await mercure_publish(hub.url, far, "C", bearer=other_publisher, id="a-1")
    await mercure_publish(hub.url, a, "A3", bearer=PUBLISHER)
    async with mercure_stream(hub.url, [a], last_event_id="a-1") as stream:
        assert stream.response_headers is not None
        assert stream.response_headers["last-event-id"] == "a-1"
        assert [e.data for e in await stream.wait_for(2)] == ["A2", "A3"]
    # Following both: which "a-1" the client had last cannot be told, so the hub says
    # so (earliest) rather than guess and skip or repeat events.
    async with mercure_stream(hub.url, [a, far], last_event_id="a-1") as both:
        assert both.response_headers is not None
        assert both.response_headers["last-event-id"] == "earliest"


def _topic_where(wanted: Callable[[str], bool]) -> str:
    return next(t for i in range(10_000) if wanted(t := f"https://ex.com/b{i}"))


async def test_a_chosen_id_shaped_like_a_hub_id_is_refused(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(jwt_key=KEY, anonymous=True), backends.backend())
    first = await mercure_publish(hub.url, "https://ex.com/a", "A1", bearer=PUBLISHER)
    refused = await mercure_publish(
        hub.url, "https://ex.com/b", "B", bearer=PUBLISHER, id=first.text, expect=409
    )
    assert "hub event id" in refused.json()["message"]
    refused = await mercure_publish(
        hub.url, "https://ex.com/b", "B", bearer=PUBLISHER, id="9999999999999-0", expect=409
    )
    await mercure_publish(hub.url, "https://ex.com/a", "A2", bearer=PUBLISHER)
    async with mercure_stream(hub.url, ["https://ex.com/a"], last_event_id=first.text) as stream:
        assert [e.data for e in await stream.wait_for(1)] == ["A2"]


async def test_a_cursor_from_the_future_gets_earliest_not_silence(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(jwt_key=KEY, anonymous=True), embedded.backend())
    await mercure_publish(hub.url, "t", "old", bearer=PUBLISHER)
    async with mercure_stream(hub.url, ["t"], last_event_id="99999999999999-0") as stream:
        assert stream.response_headers is not None
        assert stream.response_headers["last-event-id"] == "earliest"
        await mercure_publish(hub.url, "t", "new", bearer=PUBLISHER)
        assert [e.data for e in await stream.wait_for(1)] == ["new"]


async def test_a_cursor_is_echoed_as_the_hub_spells_it(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(jwt_key=KEY, anonymous=True), embedded.backend())
    first = await mercure_publish(hub.url, "t", "one", bearer=PUBLISHER)
    await mercure_publish(hub.url, "t", "two", bearer=PUBLISHER)
    # A CR LF after the id broke the response header: no answer, a traceback per request.
    query = {"lastEventID": first.text + "\r\n"}
    async with mercure_stream(hub.url, ["t"], query=query) as stream:
        assert stream.status == 200
        assert stream.response_headers is not None
        assert stream.response_headers["last-event-id"] == first.text
        assert [e.data for e in await stream.wait_for(1)] == ["two"]


# -- one client must not exhaust the history others resume from -----------------------


async def test_subscription_events_do_not_push_history_out_of_the_log(
    backends: Backends, start_hub: StartHub
) -> None:
    # Each channel keeps its own history: the registry's events fill the registry
    # topics' history, never the one a "news" subscriber resumes from.
    settings = backends.settings(jwt_key=KEY, anonymous=True, subscriptions=True, history_size=20)
    hub = await start_hub(settings, backends.backend())
    marker = await mercure_publish(hub.url, "news", "marker", bearer=PUBLISHER)
    selectors = [f"/churn/{i}" for i in range(10)]
    watcher = token(subscribe=["/.well-known/mercure/subscriptions{/topic}{/subscriber}"])
    watch = mercure_stream(
        hub.url, ["/.well-known/mercure/subscriptions{/topic}{/subscriber}"], bearer=watcher
    )
    async with watch:
        for _ in range(5):  # 100 subscription events, five times a channel's history
            async with mercure_stream(hub.url, selectors):
                pass
        # Every event came and went: the watcher saw them all live.
        await watch.wait_for(100)
    await mercure_publish(hub.url, "news", "after", bearer=PUBLISHER)
    async with mercure_stream(hub.url, ["news"], last_event_id=marker.text) as resumed:
        assert resumed.response_headers is not None
        assert resumed.response_headers["last-event-id"] == marker.text
        assert [e.data for e in await resumed.wait_for(1)] == ["after"]


async def test_one_connection_limit_counts_native_and_mercure_streams(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(anonymous=True, max_connections=2), embedded.backend())
    async with (
        mercure_stream(hub.url, ["a"]),
        mercure_stream(hub.url, ["b"]),
        SSEStream(hub.url, ["c"]) as native,
    ):
        assert native.status == 503
    async with SSEStream(hub.url, ["c"]) as native, mercure_stream(hub.url, ["d"]) as mercure:
        assert native.status == 200
        assert mercure.status == 200
        async with mercure_stream(hub.url, ["e"]) as third:
            assert third.status == 503


# -- credentials, reserved topics, names, claims ---------------------------------------


async def test_cors_star_allows_reads_without_credentials_only(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(
        embedded.settings(jwt_key=KEY, anonymous=True, cors_origins="*"), embedded.backend()
    )
    evil = {"Origin": "https://evil.example"}
    async with httpx.AsyncClient() as client:
        preflight = await client.options(
            f"{hub.url}/publish",
            headers={**evil, "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-credentials" not in preflight.headers
        async with client.stream("GET", f"{hub.url}/events?channel=news", headers=evil) as stream:
            assert stream.status_code == 200
            assert "access-control-allow-credentials" not in stream.headers
    cookie = {"mercureAuthorization": PUBLISHER}
    refused = await mercure_publish(hub.url, "t", "x", cookies=cookie, headers=evil, expect=401)
    assert "HUB_CORS_ORIGINS" in refused.json()["message"]


def test_cors_star_beside_named_origins_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="mixes"):
        create_app(Settings(cors_origins="* https://app.example"))


async def test_reserved_topics_are_refused_on_every_door(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(jwt_key=KEY, anonymous=True), embedded.backend())
    reserved = "/.well-known/mercure/subscriptions/x/y"
    async with httpx.AsyncClient() as client:
        native = await client.post(
            f"{hub.url}/publish",
            json={"channel": reserved, "data": "forged", "private": True},
            headers={"Authorization": f"Bearer {PUBLISHER}"},
        )
    assert native.status_code == 403
    assert "reserved" in native.json()["message"]
    await mercure_publish(hub.url, reserved, "forged", bearer=PUBLISHER, expect=403)


async def test_native_channels_are_exact_names_even_with_braces(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(jwt_key=KEY), embedded.backend())
    stream = SSEStream(hub.url, ["{+x}"])
    stream.url += "&" + urlencode({"authorization": token(subscribe=["*"])})
    async with stream:
        assert stream.status == 200
        async with httpx.AsyncClient() as client:
            for channel in ("other", "{+x}"):
                response = await client.post(
                    f"{hub.url}/publish",
                    json={"channel": channel, "data": channel},
                    headers={"Authorization": f"Bearer {PUBLISHER}"},
                )
                assert response.status_code == 201
        await stream.wait_for(1)
        await asyncio.sleep(0.2)
        assert stream.data() == ["{+x}"]


def _signed(payload: str) -> str:
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(payload.encode())
    signature = b64(hmac.new(KEY.encode(), signing, hashlib.sha256).digest())
    return (signing + b"." + signature).decode()


@pytest.mark.parametrize("exp", ["1e400", "1e23", "-1e400"])
async def test_out_of_range_token_claims_are_401_not_500(
    embedded: Backends, start_hub: StartHub, exp: str
) -> None:
    hub = await start_hub(embedded.settings(jwt_key=KEY), embedded.backend())
    bad = _signed('{"mercure": {"publish": ["*"], "subscribe": ["*"]}, "exp": ' + exp + "}")
    await mercure_publish(hub.url, "t", "x", bearer=bad, expect=401)
    async with mercure_stream(hub.url, ["t"], bearer=bad) as stream:
        assert stream.status == 401
    stream = SSEStream(hub.url, ["t"])
    stream.url += f"&authorization={quote(bad)}"
    async with stream:
        assert stream.status == 401


def test_signed_helper_matches_pyjwt() -> None:
    import jwt

    made = _signed(json.dumps({"exp": 2_000_000_000}))
    assert jwt.decode(made, KEY, algorithms=["HS256"]) == {"exp": 2_000_000_000}
