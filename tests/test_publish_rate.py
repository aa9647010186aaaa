"""HUB_PUBLISH_RATE: per token subject (per address without one), on both doors,
counted in Redis so that every node shares one allowance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from hub import ConfigError, Settings
from hub.store import Store
from support.hubs import Backends, RunningHub, StartHub
from support.mercure import KEY

pytestmark = pytest.mark.anyio

TOPIC = "https://example.com/books/1"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as made:
        yield made


def token(subject: str | None) -> str:
    claims: dict[str, Any] = {"mercure": {"publish": ["*"]}}
    if subject is not None:
        claims["sub"] = subject
    return jwt.encode(claims, KEY, "HS256")


async def publish(
    client: httpx.AsyncClient, hub: RunningHub, bearer: str | None, *, door: str = "native"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    if door == "native":
        return await client.post(
            f"{hub.url}/publish", json={"channel": "a", "data": "x"}, headers=headers
        )
    return await client.post(
        f"{hub.url}/.well-known/mercure", data={"topic": TOPIC, "data": "x"}, headers=headers
    )


def test_publish_rate_is_read_as_count_per_period() -> None:
    assert Settings().publish_limit() is None
    assert Settings(publish_rate="10").publish_limit() == (10, 1.0)
    assert Settings(publish_rate="10/s").publish_limit() == (10, 1.0)
    assert Settings(publish_rate="600/min").publish_limit() == (600, 60.0)
    assert Settings.from_env({"HUB_PUBLISH_RATE": "5/h"}).publish_limit() == (5, 3600.0)
    for bad in ("0/s", "-1/s", "ten/s", "10/fortnight", "1.5/s"):
        with pytest.raises(ConfigError, match="N/s, N/min or N/h"):
            Settings(publish_rate=bad)


async def test_the_allowance_is_a_burst_then_a_steady_rate(backends: Backends) -> None:
    store = Store(backends.backend(), backends.settings())
    try:
        waits = [await store.rates.spend("sub:a", 20, 3600) for _ in range(21)]
        assert waits[:20] == [0.0] * 20
        # One unit comes back every 180 s.
        assert 170 < waits[20] <= 180
        assert await store.rates.spend("sub:b", 20, 3600) == 0.0  # someone else's
        # Refilled at the rate (here 10/s): whoever waits what it was told gets one.
        wait = 0.0
        for _ in range(100):
            wait = await store.rates.spend("sub:c", 10, 1.0)
            if wait:
                break
        assert 0 < wait <= 0.1
        await asyncio.sleep(wait + 0.01)  # Redis and this loop read different clocks
        assert await store.rates.spend("sub:c", 10, 1.0) == 0.0
    finally:
        await store.aclose()


async def test_beyond_the_rate_a_subject_gets_429_with_retry_after_on_both_doors(
    client: httpx.AsyncClient, start_hub: StartHub
) -> None:
    embedded = Backends("embedded", None)
    settings = embedded.settings(jwt_key=KEY, publish_rate="3/min")
    hub = await start_hub(settings, embedded.backend())
    alice = token("alice")
    assert (await publish(client, hub, alice)).status_code == 201
    assert (await publish(client, hub, alice, door="mercure")).status_code == 200
    assert (await publish(client, hub, alice)).status_code == 201
    for door in ("native", "mercure"):
        refused = await publish(client, hub, alice, door=door)
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert "HUB_PUBLISH_RATE=3/min" in refused.json()["message"]
        # A unit comes back every 20 s; the last one was spent just now.
        assert 10 <= int(refused.headers["Retry-After"]) <= 20
    metrics = (await client.get(f"{hub.url}/metrics")).text
    assert "hub_publishes_rate_limited_total 2.0" in metrics
    # Another subject has an allowance of its own.
    assert (await publish(client, hub, token("bob"))).status_code == 201
    # A token without sub counts against the client's address, as does no token at all
    # (refused with 401 before anything is counted).
    assert (await publish(client, hub, None)).status_code == 401
    for _ in range(3):
        assert (await publish(client, hub, token(None))).status_code == 201
    assert (await publish(client, hub, token(None))).status_code == 429


async def test_without_authorization_the_rate_is_per_address(
    client: httpx.AsyncClient, start_hub: StartHub
) -> None:
    embedded = Backends("embedded", None)
    hub = await start_hub(embedded.settings(publish_rate="2/h"), embedded.backend())
    assert (await publish(client, hub, None)).status_code == 201
    assert (await publish(client, hub, None, door="mercure")).status_code == 200
    refused = await publish(client, hub, None)
    assert refused.status_code == 429
    assert "addr:127.0.0.1" in refused.json()["message"]


async def test_behind_a_trusted_proxy_the_rate_is_per_forwarded_address(
    client: httpx.AsyncClient, start_hub: StartHub
) -> None:
    # The test's client is on 127.0.0.1, which FORWARDED_ALLOW_IPS trusts by default:
    # X-Forwarded-For names the address the allowance is counted for.
    embedded = Backends("embedded", None)
    hub = await start_hub(embedded.settings(publish_rate="1/h"), embedded.backend())

    async def publish_from(address: str) -> httpx.Response:
        return await client.post(
            f"{hub.url}/publish",
            json={"channel": "a", "data": "x"},
            headers={"X-Forwarded-For": f"{address}, 127.0.0.1"},
        )

    assert (await publish_from("203.0.113.7")).status_code == 201
    refused = await publish_from("203.0.113.7")
    assert refused.status_code == 429
    assert "addr:203.0.113.7" in refused.json()["message"]
    assert (await publish_from("198.51.100.2")).status_code == 201


async def test_every_event_of_a_batch_counts(
    client: httpx.AsyncClient, start_hub: StartHub
) -> None:
    embedded = Backends("embedded", None)
    hub = await start_hub(embedded.settings(publish_rate="3/min"), embedded.backend())
    url = f"{hub.url}/publish"
    pair = [{"channel": "a", "data": n} for n in range(2)]
    assert (await client.post(url, json=pair)).status_code == 201
    assert (await publish(client, hub, None)).status_code == 201
    refused = await client.post(url, json=pair)
    assert refused.status_code == 429
    # More than the whole allowance at once can never pass: said so, not "retry".
    embedded = Backends("embedded", None)
    other = await start_hub(embedded.settings(publish_rate="3/min"), embedded.backend())
    four = [{"channel": "a", "data": n} for n in range(4)]
    too_many = await client.post(f"{other.url}/publish", json=four)
    assert too_many.status_code == 400
    assert "batches of at most 3" in too_many.json()["message"]
    # A whole allowance at once passes (on a fresh hub: the refusal spent a unit).
    embedded = Backends("embedded", None)
    third = await start_hub(embedded.settings(publish_rate="3/min"), embedded.backend())
    assert (await client.post(f"{third.url}/publish", json=four[:3])).status_code == 201


async def test_two_nodes_on_one_redis_share_one_allowance(
    client: httpx.AsyncClient, start_hub: StartHub, redis_url: str
) -> None:
    shared = Backends("redis", redis_url)
    try:
        settings = shared.settings(jwt_key=KEY, publish_rate="4/min")
        a = await start_hub(settings, shared.backend())
        b = await start_hub(settings, shared.backend())
        carol = token("carol")
        answers = [
            await publish(client, hub, carol, door=door)
            for hub, door in [(a, "native"), (b, "mercure"), (b, "native"), (a, "mercure")]
        ]
        assert [r.status_code for r in answers] == [201, 200, 201, 200]
        # Each node has served two: only a count shared through Redis refuses these.
        assert (await publish(client, a, carol)).status_code == 429
        assert (await publish(client, b, carol, door="mercure")).status_code == 429
    finally:
        shared.cleanup()
