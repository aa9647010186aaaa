"""Mercure 1.0's subscriptions API and subscription events (draft-dunglas-mercure-08)
beside 0.24's on one hub, and the reserved ``mercure`` event type."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from hub.doors.mercure.api import is_modern
from hub.doors.mercure.reserved import addresses_hub
from hub.errors import BadRequest
from support.hubs import Backends, RunningHub, StartHub
from support.mercure import (
    KEY,
    access_token,
    mercure1_stream,
    mercure_publish,
    mercure_stream,
    token,
)
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

PATH = "/.well-known/mercure/subscriptions"
#: A 1.0 token that may subscribe to everything (and so read the whole API).
WATCHER_1 = access_token(subscribe=["*"])
#: A 0.24 token that may read the 0.24 API.
WATCHER_024 = token(subscribe=[PATH + "{/topic}{/subscriber}"])
BOOK = "https://example.com/books/1"
BOOKS = "https://example.com/books/:id"
NEWS = "https://example.com/news"


async def _get(hub: RunningHub, path: str, bearer: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(hub.url + path, headers={"Authorization": f"Bearer {bearer}"})


async def _listed(hub: RunningHub, bearer: str, count: int) -> httpx.Response:
    for _ in range(100):
        response = await _get(hub, PATH, bearer)
        if len(response.json()["subscriptions"]) == count:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} subscriptions, got {response.json()}")


async def test_each_protocol_lists_its_own_subscriptions_in_its_own_format(
    backends: Backends, start_hub: StartHub
) -> None:
    settings = backends.settings(jwt_key=KEY, anonymous=True, subscriptions=True)
    hub = await start_hub(settings, backends.backend())
    async with mercure1_stream(hub.url, [BOOK], [BOOKS]), mercure_stream(hub.url, [NEWS]):
        modern = await _listed(hub, WATCHER_1, 2)
        assert modern.headers["content-type"] == "application/json"
        link = modern.headers["link"]
        assert link.startswith(f'<{hub.url}/.well-known/mercure>; rel="mercure"; last-event-id="')
        assert link.endswith('; type="mercure"; content-type="application/json"')
        body = modern.json()
        assert (body["id"], body["type"]) == (PATH, "subscriptions")
        exact, pattern = body["subscriptions"]
        assert (exact["match_type"], exact["match"]) == ("exact", BOOK)
        assert (pattern["match_type"], pattern["match"]) == ("urlpattern", BOOKS)
        assert exact["subscriber"] == pattern["subscriber"]
        assert exact["id"] == (
            f"{PATH}/exact/{quote(BOOK, safe='')}/{quote(exact['subscriber'], safe='')}"
        )
        assert exact["type"] == "subscription"
        assert "@context" not in exact
        assert "topic" not in exact

        by_match = await _get(hub, f"{PATH}/urlpattern/{quote(BOOKS, safe='')}", WATCHER_1)
        assert by_match.json()["subscriptions"] == [pattern]
        single = await _get(hub, exact["id"], WATCHER_1)
        assert single.headers["content-type"] == "application/json"
        assert single.json() == exact
        assert "last-event-id=" in single.headers["link"]

        legacy = (await _listed(hub, WATCHER_024, 1)).json()
        assert legacy["type"] == "Subscriptions"
        assert "lastEventID" in legacy
        (news,) = legacy["subscriptions"]
        assert (news["type"], news["topic"]) == ("Subscription", NEWS)
        answered = await _get(hub, news["id"], WATCHER_024)
        assert answered.headers["content-type"].startswith("application/ld+json")
    await _listed(hub, WATCHER_1, 0)
    assert (await _get(hub, exact["id"], WATCHER_1)).status_code == 404


async def _about(stream: SSEStream, match: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    for _ in range(200):
        found = [(e.event, json.loads(e.data)) for e in stream.events if e.data.startswith("{")]
        found = [(kind, doc) for kind, doc in found if doc.get("match", doc.get("topic")) == match]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} events about {match}: {stream.events}")


async def test_1_0_subscription_events_come_as_mercure_events(
    backends: Backends, start_hub: StartHub
) -> None:
    settings = backends.settings(jwt_key=KEY, anonymous=True, subscriptions=True)
    hub = await start_hub(settings, backends.backend())
    async with mercure1_stream(hub.url, ["*"], bearer=WATCHER_1) as watcher:
        async with mercure1_stream(hub.url, [BOOK]), mercure_stream(hub.url, [NEWS]):
            await _about(watcher, BOOK, 1)
            await _about(watcher, NEWS, 1)
        (came_kind, came), (went_kind, went) = await _about(watcher, BOOK, 2)
        (_, legacy), _ = await _about(watcher, NEWS, 2)
    assert (came_kind, went_kind) == ("mercure", "mercure")
    assert came == {
        "id": f"{PATH}/exact/{quote(BOOK, safe='')}/{quote(came['subscriber'], safe='')}",
        "type": "subscription",
        "match_type": "exact",
        "match": BOOK,
        "subscriber": came["subscriber"],
        "active": True,
    }
    assert went == {**came, "active": False}
    # A 0.24 subscription's events keep 0.24's topic, JSON-LD shape and event type.
    assert legacy["@context"] == "https://mercure.rocks/"
    assert legacy["type"] == "Subscription"
    assert [e.event for e in watcher.events if NEWS in e.data] == ["message", "message"]


async def test_publishing_with_the_reserved_type_is_refused_while_1_0_is_served(
    start_hub: StartHub,
) -> None:
    both = await start_hub(Backends("embedded", None).settings(jwt_key=KEY, anonymous=True))
    publisher = access_token(publish=["*"])
    refused = await mercure_publish(both.url, BOOK, bearer=publisher, type="mercure", expect=400)
    assert "reserved" in refused.text
    # Whatever the publisher's token: a 0.24 one could forge events for 1.0 subscribers.
    await mercure_publish(both.url, BOOK, bearer=token(publish=["*"]), type="mercure", expect=400)
    await mercure_publish(both.url, BOOK, bearer=publisher, type="mercury")
    only_024 = Backends("embedded", None).settings(
        jwt_key=KEY, anonymous=True, mercure_protocols="0.24"
    )
    legacy = await start_hub(only_024)
    await mercure_publish(legacy.url, BOOK, bearer=token(publish=["*"]), type="mercure")


@pytest.mark.parametrize(
    ("parts", "modern_token", "protocols", "expected"),
    [
        ([], True, {"1.0", "0.24"}, True),
        ([], False, {"1.0", "0.24"}, False),
        (["exact", BOOK], False, {"1.0", "0.24"}, True),
        (["urlpattern", BOOKS, "urn:uuid:x"], False, {"1.0", "0.24"}, True),
        ([NEWS, "urn:uuid:x"], True, {"1.0", "0.24"}, False),
        ([NEWS], True, {"1.0", "0.24"}, False),
        # A 0.24-only hub reads every path as 0.24's, even a topic named "exact".
        (["exact", "urn:uuid:x"], True, {"0.24"}, False),
        ([], True, {"1.0"}, True),
        ([], False, {"0.24"}, False),
    ],
)
def test_the_subscriptions_api_reads_the_protocol_from_the_path_then_the_token(
    parts: list[str], modern_token: bool, protocols: set[str], expected: bool
) -> None:
    assert is_modern(parts, modern_token, frozenset(protocols)) is expected


@pytest.mark.parametrize(
    ("parts", "protocols"),
    [
        ([NEWS], {"1.0"}),
        ([NEWS, "urn:uuid:x"], {"1.0"}),
        (["exact", BOOK, "urn:uuid:x"], {"0.24"}),
        (["other", BOOK, "urn:uuid:x"], {"1.0", "0.24"}),
        (["exact", BOOK, "urn:uuid:x", "more"], {"1.0", "0.24"}),
    ],
)
def test_paths_no_served_protocol_has_are_refused(parts: list[str], protocols: set[str]) -> None:
    with pytest.raises(BadRequest):
        is_modern(parts, True, frozenset(protocols))


async def test_a_1_0_only_hub_answers_the_1_0_api_and_refuses_0_24_paths(
    start_hub: StartHub,
) -> None:
    settings = Backends("embedded", None).settings(
        jwt_key=KEY, anonymous=True, subscriptions=True, mercure_protocols="1.0"
    )
    hub = await start_hub(settings)
    body = (await _get(hub, PATH, WATCHER_1)).json()
    assert (body["type"], body["subscriptions"]) == ("subscriptions", [])
    assert (await _get(hub, f"{PATH}/{quote(NEWS, safe='')}", WATCHER_1)).status_code == 400


METADATA = "/.well-known/oauth-protected-resource/.well-known/mercure"


async def test_the_hub_describes_itself_as_a_protected_resource_while_it_serves_1_0(
    start_hub: StartHub,
) -> None:
    embedded = Backends("embedded", None)
    hub = await start_hub(embedded.settings(jwt_key=KEY, subscriptions=True))
    async with httpx.AsyncClient() as client:
        described = await client.get(hub.url + METADATA)
        assert described.json() == {
            "resource": f"{hub.url}/.well-known/mercure",
            "authorization_details_types_supported": ["https://mercure.rocks/authorization-detail"],
            "bearer_methods_supported": ["header"],
            "mercure_cookie": "__Secure-mercure_access_token",
            "mercure_subscriptions": True,
        }
        # Every Bearer challenge of the Mercure door points to it, not only a bare one.
        scoped = await client.get(
            hub.url + PATH, headers={"Authorization": f"Bearer {access_token(subscribe=['x'])}"}
        )
        assert scoped.status_code == 403
        challenge = scoped.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert challenge.endswith(f', resource_metadata="{hub.url}{METADATA}"')
    pinned = await start_hub(
        embedded.settings(jwt_key=KEY, jwt_audience="https://hub.example.com/.well-known/mercure")
    )
    only_024 = await start_hub(embedded.settings(jwt_key=KEY, mercure_protocols="0.24"))
    async with httpx.AsyncClient() as client:
        described = await client.get(pinned.url + METADATA)
        assert described.json()["resource"] == "https://hub.example.com/.well-known/mercure"
        assert "mercure_subscriptions" not in described.json()
        assert (await client.get(only_024.url + METADATA)).status_code == 404
        bare = await client.get(only_024.url + "/.well-known/mercure?topic=x")
        assert bare.headers["www-authenticate"] == 'Bearer realm="mercure"'


HUB_URL = "https://hub.example.com/.well-known/mercure"


@pytest.mark.parametrize(
    ("topic", "reserved"),
    [
        ("https://elsewhere.example/.well-known/mercure/subscriptions/exact/a/b", True),
        ("/.well-known/%6Dercure/subscriptions", True),
        ("/.well-known/x/%2E%2E/mercure/a", True),
        ("https://x/a/./b/../../.well-known/mercure", True),
        ("\\.well-known\\mercure\\a", True),
        ("mercure/subscriptions/a", True),  # relative: resolved against the hub's URL
        ("/.well-known/mercure/..", False),
        ("https://example.com/.well-known/mercure2", False),
        ("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", False),
        ("books/1", False),
    ],
)
def test_the_1_0_reserved_namespace_is_read_from_the_resolved_path(
    topic: str, reserved: bool
) -> None:
    assert addresses_hub(topic, HUB_URL) is reserved


async def test_1_0_publishers_get_400_for_the_hubs_topics_and_0_24_ones_keep_403(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(Backends("embedded", None).settings(jwt_key=KEY))
    modern, legacy = access_token(publish=["*"]), token(publish=["*"])
    for topic in ("*", "/.well-known/%6Dercure/x", "https://x/.well-known/mercure/x"):
        refused = await mercure_publish(hub.url, topic, bearer=modern, expect=400)
        assert "reserved" in refused.text
    await mercure_publish(hub.url, "urn:uuid:1", bearer=modern)
    await mercure_publish(hub.url, "https://x/.well-known/mercure/x", bearer=legacy, expect=403)
    await mercure_publish(hub.url, "/.well-known/%6Dercure/x", bearer=legacy)
