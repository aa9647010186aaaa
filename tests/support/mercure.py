"""Helpers for the Mercure tests: tokens, form publishes, Mercure streams."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import redis.asyncio

from hub.store.keys import Keys

from .hubs import Backends
from .sse import SSEStream

KEY = "a-test-secret-that-is-long-enough-for-hs256"


def token(
    publish: Sequence[str] | None = None,
    subscribe: Sequence[str] | None = None,
    *,
    key: str = KEY,
    expires_in: float | None = 3600,
    algorithm: str = "HS256",
) -> str:
    mercure: dict[str, Any] = {}
    if publish is not None:
        mercure["publish"] = list(publish)
    if subscribe is not None:
        mercure["subscribe"] = list(subscribe)
    claims: dict[str, Any] = {"mercure": mercure}
    if expires_in is not None:
        claims["exp"] = int(time.time() + expires_in)
    return jwt.encode(claims, key, algorithm=algorithm)


def mercure_stream(
    base_url: str,
    topics: Sequence[str],
    *,
    bearer: str | None = None,
    last_event_id: str | None = None,
    query: dict[str, str] | None = None,
) -> SSEStream:
    stream = SSEStream(base_url, [], last_event_id=last_event_id)
    params = [("topic", t) for t in topics] + list((query or {}).items())
    stream.url = f"{base_url}/.well-known/mercure?{urlencode(params)}"
    if bearer is not None:
        stream.headers["Authorization"] = f"Bearer {bearer}"
    return stream


async def mercure_publish(
    base_url: str,
    topics: str | Sequence[str],
    data: str = "",
    *,
    bearer: str | None = None,
    expect: int = 200,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    form = [("topic", t) for t in ([topics] if isinstance(topics, str) else topics)]
    form.append(("data", data))
    form += list(fields.items())
    sent = dict(headers or {})
    if bearer is not None:
        sent["Authorization"] = f"Bearer {bearer}"
    async with httpx.AsyncClient(cookies=cookies) as client:
        response = await client.post(
            f"{base_url}/.well-known/mercure",
            content=urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded", **sent},
        )
    assert response.status_code == expect, response.text
    return response


#: Mercure 1.0's authorization_details entry type.
DETAIL = "https://mercure.rocks/authorization-detail"


def access_token(
    publish: Sequence[str] | None = None,
    subscribe: Sequence[str] | None = None,
    *,
    patterns: Sequence[str] = (),
    payload: Any = None,
    key: str = KEY,
    typ: str | None = "at+jwt",
    expires_in: float | None = 3600,
    details: list[dict[str, Any]] | None = None,
) -> str:
    """A Mercure 1.0 token (RFC 9068 ``at+jwt``, with ``aud`` and ``iss`` as the 1.0
    conformance suite's): ``publish``/``subscribe`` exact selectors, ``patterns`` URL
    Patterns granted to subscribe, or ``details`` as given."""
    if details is None:
        details = []
        if publish is not None:
            details.append(_detail("publish", [{"match": m} for m in publish]))
        if subscribe is not None or patterns:
            topics = [{"match": m} for m in subscribe or ()]
            topics += [{"match": p, "match_type": "urlpattern"} for p in patterns]
            entry = _detail("subscribe", topics)
            if payload is not None:
                entry["payload"] = payload
            details.append(entry)
    claims: dict[str, Any] = {
        "aud": "https://localhost/.well-known/mercure",
        "iss": "https://localhost",
        "authorization_details": details,
    }
    if expires_in is not None:
        claims["exp"] = int(time.time() + expires_in)
    headers = {"typ": typ} if typ is not None else None
    return jwt.encode(claims, key, algorithm="HS256", headers=headers)


def _detail(action: str, topics: list[dict[str, str]]) -> dict[str, Any]:
    return {"type": DETAIL, "actions": [action], "topics": topics}


def mercure1_stream(
    base_url: str,
    match: Sequence[str] = (),
    urlpattern: Sequence[str] = (),
    *,
    bearer: str | None = None,
    cookie: str | None = None,
    last_event_id: str | None = None,
    query: dict[str, str] | None = None,
) -> SSEStream:
    """A Mercure 1.0 subscription: ``match=`` (exact) and ``match_urlpattern=``."""
    stream = SSEStream(base_url, [], last_event_id=last_event_id)
    params = [("match", m) for m in match] + [("match_urlpattern", p) for p in urlpattern]
    params += list((query or {}).items())
    stream.url = f"{base_url}/.well-known/mercure?{urlencode(params)}"
    if bearer is not None:
        stream.headers["Authorization"] = f"Bearer {bearer}"
    if cookie is not None:
        stream.headers["Cookie"] = f"__Secure-mercure_access_token={cookie}"
    return stream


async def wide_subscriptions(backends: Backends) -> int:
    """How many subscriptions to every channel the hub of ``backends`` holds: pattern
    subscriptions on one Redis (counted on the node's own live connection, since other
    tests share the server), the firehose of partition 0 on a cluster."""
    if backends.kind == "embedded":
        client = backends.backend().command_client()
        try:
            return int(await client.execute_command("PUBSUB", "NUMPAT"))
        finally:
            await client.aclose()
    assert backends.url is not None
    if backends.kind == "cluster":
        firehose = Keys(backends.prefix).firehose(0)
        ports = backends.url.removeprefix("redis+cluster://").split(",")
        seed = redis.asyncio.RedisCluster(host="127.0.0.1", port=int(ports[0].split(":")[1]))
        try:
            await seed.initialize()
            node = seed.get_node_from_key(firehose)
            assert node is not None
            plain = redis.asyncio.Redis(host=node.host, port=node.port)
            _, count = await plain.execute_command("PUBSUB", "SHARDNUMSUB", firehose)
            await plain.aclose()
            return int(count)
        finally:
            await seed.aclose()
    client = redis.asyncio.Redis.from_url(backends.url)
    try:
        connections = await client.client_list()
    finally:
        await client.aclose()
    name = f"hub-{backends.prefix}:live"
    return sum(int(c.get("psub", 0)) for c in connections if c.get("name") == name)
