"""Mercure's subscriptions API and subscription events, across two nodes on one Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from support.hubs import Backends, RunningHub, StartHub
from support.mercure import KEY, mercure_stream, token
from support.sse import SSEStream

pytestmark = pytest.mark.anyio
#: Also on a real Redis Cluster (tests/conftest.py).
RUNS_ON_CLUSTER = True

PATH = "/.well-known/mercure/subscriptions"
WATCHER = token(subscribe=[PATH + "{/topic}{/subscriber}"])


async def _get(hub: RunningHub, path: str, bearer: str | None = WATCHER) -> httpx.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with httpx.AsyncClient() as client:
        return await client.get(hub.url + path, headers=headers)


async def _listed(hub: RunningHub, count: int) -> dict[str, Any]:
    for _ in range(100):
        body: dict[str, Any] = (await _get(hub, PATH)).json()
        if len(body["subscriptions"]) == count:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} subscriptions, got {body['subscriptions']}")


async def test_subscriptions_of_every_node_are_listed_and_go_when_they_end(
    backends: Backends, start_hub: StartHub
) -> None:
    backend = backends.backend()
    settings = backends.settings(jwt_key=KEY, anonymous=True, subscriptions=True)
    first = await start_hub(settings, backend)
    second = await start_hub(settings, backend)
    async with (
        mercure_stream(first.url, ["https://example.com/a"]),
        mercure_stream(second.url, ["https://example.com/{x}"]),
    ):
        body = await _listed(first, 2)
        assert body["type"] == "Subscriptions"
        assert body["id"] == PATH
        topics = [s["topic"] for s in body["subscriptions"]]
        assert topics == ["https://example.com/a", "https://example.com/{x}"]
        assert all(s["active"] for s in body["subscriptions"])
        one = body["subscriptions"][0]
        by_topic = await _get(second, f"{PATH}/{quote(one['topic'], safe='')}")
        assert [s["subscriber"] for s in by_topic.json()["subscriptions"]] == [one["subscriber"]]
        single = await _get(second, one["id"])
        assert single.status_code == 200
        assert single.json()["subscriber"] == one["subscriber"]
        assert single.headers["content-type"].startswith("application/ld+json")
    await _listed(first, 0)
    assert (await _get(first, one["id"])).status_code == 404


async def test_subscription_events_reach_subscribers_allowed_to_see_them(
    backends: Backends, start_hub: StartHub
) -> None:
    settings = backends.settings(jwt_key=KEY, anonymous=True, subscriptions=True)
    hub = await start_hub(settings, backends.backend())
    topic = PATH + "{/topic}{/subscriber}"
    async with (
        mercure_stream(hub.url, [topic], bearer=WATCHER) as watcher,
        mercure_stream(hub.url, [topic]) as anonymous,
    ):
        async with mercure_stream(hub.url, ["https://example.com/watched"]):
            await _watched(watcher, 1)
        came, went = await _watched(watcher, 2)
        assert came["active"] is True
        assert (went["subscriber"], went["active"]) == (came["subscriber"], False)
        assert (
            came["id"] == f"{PATH}/{quote(WATCHED, safe='')}/{quote(came['subscriber'], safe='')}"
        )
        await asyncio.sleep(0.2)
        assert anonymous.events == []


WATCHED = "https://example.com/watched"


async def _watched(stream: SSEStream, count: int) -> list[dict[str, Any]]:
    """Subscription events about WATCHED (the watchers' own subscriptions come too)."""
    for _ in range(200):
        found = [json.loads(e.data) for e in stream.events]
        found = [f for f in found if f["topic"] == WATCHED]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} events about {WATCHED}: {stream.events}")


async def test_subscriptions_api_needs_matching_claims(
    backends: Backends, start_hub: StartHub
) -> None:
    settings = backends.settings(jwt_key=KEY, anonymous=True, subscriptions=True)
    hub = await start_hub(settings, backends.backend())
    assert (await _get(hub, PATH, bearer=None)).status_code == 401
    assert (await _get(hub, PATH, bearer=token(subscribe=["/other"]))).status_code == 403
    assert (await _get(hub, PATH)).status_code == 200
