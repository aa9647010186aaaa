"""Mercure's subscriptions API and subscription events, correct across nodes.

State lives in Redis: each node keeps its own subscriptions in a hash
(``{prefix}subscriptions:{node}``) that expires ``NODE_TTL`` seconds after the node's
last heartbeat, and announces itself in ``{prefix}subscription-nodes`` (node ->
expiry). A node that dies takes its subscriptions with it within ``NODE_TTL``
seconds, with nobody to clean up after it. Every write is one call of
``hub/store/lua/subscriptions.lua``, made by one supervised task per node from a queue, so a
stream never waits for it.

When a Mercure subscriber comes or goes, a private update with its subscription
(``"active": true`` or ``false``) is published to
``/.well-known/mercure/subscriptions/{topic}/{subscriber}`` for each of its topic
selectors: subscribers whose claims match those topics see who is listening. A node
that dies publishes no ``"active": false``; its entries just expire. These events are
announced live but not kept in the hub-wide log: connections coming and going must not
push the history others resume from out of ``HUB_LOG_SIZE``.

Enabled with ``HUB_SUBSCRIPTIONS=1`` (off by default: it costs a publish per topic
per connect and disconnect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from importlib import resources
from typing import Any, cast
from urllib.parse import quote, unquote

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.config import Settings
from hub.errors import BadRequest, Forbidden, NotFound, Unauthorized
from hub.store.keys import Keys
from hub.store.publisher import Extra, Publisher

__all__ = ["PATH", "Registry", "subscriptions_endpoint"]

logger = logging.getLogger("hub")

SCRIPT = (resources.files("hub.store") / "lua" / "subscriptions.lua").read_text(encoding="utf-8")
PATH = "/.well-known/mercure/subscriptions"
#: Seconds a node's subscriptions outlive its last heartbeat...
NODE_TTL = 15.0
#: ...and seconds between heartbeats.
HEARTBEAT_EVERY = 5.0
_CONTEXT = "https://mercure.rocks/"


def subscription_id(topic: str, subscriber: str) -> str:
    return f"{PATH}/{quote(topic, safe='')}/{quote(subscriber, safe='')}"


def subscription(topic: str, subscriber: str, active: bool) -> dict[str, Any]:
    return {
        "id": subscription_id(topic, subscriber),
        "type": "Subscription",
        "topic": topic,
        "subscriber": subscriber,
        "active": active,
    }


class Registry:
    """This node's side of the subscriptions registry (run :meth:`run` supervised)."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings, publisher: Publisher) -> None:
        self.node = uuid.uuid4().hex
        self._redis = redis
        self._keys = keys
        self._publisher = publisher
        self._script = redis.register_script(SCRIPT)
        self._queue: asyncio.Queue[tuple[str, str, list[str]]] = asyncio.Queue()
        self._ttl_ms = int(NODE_TTL * 1000)

    def added(self, subscriber: str, topics: list[str]) -> None:
        self._queue.put_nowait(("add", subscriber, topics))

    def removed(self, subscriber: str, topics: list[str]) -> None:
        self._queue.put_nowait(("remove", subscriber, topics))

    async def run(self) -> None:
        """Apply queued changes in order; heartbeat while there are none."""
        await self._call("alive", [])
        while True:
            try:
                op, subscriber, topics = await asyncio.wait_for(self._queue.get(), HEARTBEAT_EVERY)
            except asyncio.TimeoutError:
                await self._call("alive", [])
                continue
            active = op == "add"
            entries = [subscription(t, subscriber, active) for t in topics]
            if active:
                args = [x for e in entries for x in (e["id"], json.dumps(e))]
            else:
                args = [e["id"] for e in entries]
            await self._call(op, args)
            for entry in entries:
                await self._announce(entry)

    async def _call(self, op: str, args: list[str]) -> None:
        keys = [self._keys.subscriptions(self.node), self._keys.subscription_nodes]
        await self._script(keys=keys, args=[self.node, self._ttl_ms, op, *args])

    async def _announce(self, entry: dict[str, Any]) -> None:
        body = json.dumps({"@context": _CONTEXT, **entry})
        try:
            await self._publisher.publish(entry["id"], body, extra=Extra(private=True, kept=False))
        except BadRequest as exc:
            # A selector too long for a topic once URL-encoded: the API still lists it.
            logger.debug("no subscription event for %s: %s", entry["id"][:80], exc)

    async def all(self) -> list[dict[str, Any]]:
        """Every live subscription, on every node."""
        now_ms = await self._now_ms()
        nodes = cast(
            list[bytes],
            await self._redis.zrangebyscore(self._keys.subscription_nodes, now_ms, "+inf"),
        )
        if not nodes:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.hvals(self._keys.subscriptions(node.decode()))
            pages = cast(list[list[bytes]], await pipe.execute())
        found = [json.loads(raw) for page in pages for raw in page]
        return sorted(found, key=lambda e: (e["topic"], e["subscriber"]))

    async def _now_ms(self) -> int:
        secs, micros = await self._redis.time()
        return int(secs) * 1000 + int(micros) // 1000


async def subscriptions_endpoint(request: Request) -> Response:
    """``GET /.well-known/mercure/subscriptions[/{topic}[/{subscriber}]]``."""
    from hub.doors.mercure.door import MercureDoor  # the door imports this module

    door: MercureDoor = request.app.state.mercure
    registry = door.registry
    if registry is None:
        raise NotFound("the subscriptions API is off; run the hub with HUB_SUBSCRIPTIONS=1")
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    claims = door.auth.subscriber(request)
    if claims is None:
        raise Unauthorized("the subscriptions API needs a subscriber JWT")
    if claims.subscribe is None or not claims.subscribe.match(path):
        raise Forbidden(
            f"the token's mercure.subscribe selectors do not match {path[:120]!r}; add "
            f"a selector such as '{PATH}{{/topic}}{{/subscriber}}'"
        )
    parts = [unquote(p) for p in path[len(PATH) :].split("/") if p]
    if len(parts) > 2:
        raise BadRequest(f"use {PATH}, {PATH}/{{topic}} or {PATH}/{{topic}}/{{subscriber}}")
    entries = await registry.all()
    last = await door.newest_id()
    if len(parts) == 2:
        for entry in entries:
            if entry["topic"] == parts[0] and entry["subscriber"] == parts[1]:
                return _ld({"@context": _CONTEXT, **entry, "lastEventID": last})
        return JSONResponse(
            {"error": "not_found", "message": "no such subscription"}, status_code=404
        )
    if parts:
        entries = [e for e in entries if e["topic"] == parts[0]]
    return _ld(
        {
            "@context": _CONTEXT,
            "id": path,
            "type": "Subscriptions",
            "lastEventID": last,
            "subscriptions": entries,
        }
    )


def _ld(body: dict[str, Any]) -> Response:
    return JSONResponse(body, media_type="application/ld+json")
