"""Mercure's subscriptions API and subscription events, correct across nodes.

State lives in Redis: each node keeps its own subscriptions in a hash
(``{prefix}subscriptions:{node}``) that expires ``NODE_TTL`` seconds after the node's
last heartbeat, and announces itself in ``{prefix}subscription-nodes`` (node ->
expiry). A node that dies takes its subscriptions with it within ``NODE_TTL``
seconds, with nobody to clean up after it. Every write is one call of
``hub/store/lua/subscriptions.lua`` (:mod:`hub.store.subscriptions`), made by one
supervised task per node from a queue, so a stream never waits for it.

When a Mercure subscriber comes or goes, a private update with its subscription
(``"active": true`` or ``false``) is published for each of its topic selectors, in
the protocol the subscriber spoke: a 0.24 one (``topic=``) to
``/.well-known/mercure/subscriptions/{topic}/{subscriber}`` as a JSON-LD document; a
1.0 one (``match=``, ``match_urlpattern=``) to
``/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`` as plain JSON
under the SSE event type ``mercure`` (draft-dunglas-mercure-08, "Subscription
Events"), which publishers may not use. Subscribers whose claims match those topics
see who is listening. A node
that dies publishes no ``"active": false``; its entries just expire. These events are
announced live but kept in no history: one channel per subscription would pile up
keys, and the API tells the current state.

Enabled with ``HUB_SUBSCRIPTIONS=1`` (off by default: it costs a publish per topic
per connect and disconnect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any
from urllib.parse import quote

from hub.errors import BadRequest
from hub.store.publisher import Extra
from hub.store.store import Store

__all__ = [
    "CONTEXT",
    "EVENT_TYPE",
    "MATCH_TYPES",
    "PATH",
    "Matcher",
    "Registry",
    "subscription",
    "subscription_id",
]

logger = logging.getLogger("hub")

PATH = "/.well-known/mercure/subscriptions"
#: Seconds a node's subscriptions outlive its last heartbeat...
NODE_TTL = 15.0
#: ...and seconds between heartbeats.
HEARTBEAT_EVERY = 5.0
CONTEXT = "https://mercure.rocks/"
#: Mercure 1.0's SSE event type for the hub's own updates (subscription events).
EVENT_TYPE = "mercure"
#: Mercure 1.0's matcher types, as ``{match_type}`` path segments spell them.
MATCH_TYPES = ("exact", "urlpattern")

#: One subscription of a stream: ``(match_type, selector)``; ``match_type`` is
#: ``None`` for a 0.24 ``topic=`` selector, else one of :data:`MATCH_TYPES`.
Matcher = tuple[str | None, str]


def subscription_id(topic: str, subscriber: str) -> str:
    return f"{PATH}/{quote(topic, safe='')}/{quote(subscriber, safe='')}"


def subscription(
    topic: str, subscriber: str, active: bool, payload: Any = None, match_type: str | None = None
) -> dict[str, Any]:
    """A subscription's document: 0.24's (``match_type`` None) or 1.0's."""
    entry: dict[str, Any]
    if match_type is None:
        entry = {
            "id": subscription_id(topic, subscriber),
            "type": "Subscription",
            "topic": topic,
            "subscriber": subscriber,
            "active": active,
        }
    else:
        entry = {
            "id": f"{PATH}/{match_type}/{quote(topic, safe='')}/{quote(subscriber, safe='')}",
            "type": "subscription",
            "match_type": match_type,
            "match": topic,
            "subscriber": subscriber,
            "active": active,
        }
    if payload is not None:
        # The subscriber's token's mercure.payload (or its 1.0 twin), as Mercure shows it.
        entry["payload"] = payload
    return entry


class Registry:
    """This node's side of the subscriptions registry (run :meth:`run` supervised)."""

    def __init__(self, store: Store) -> None:
        self.node = uuid.uuid4().hex
        self._records = store.subscription_records(self.node, int(NODE_TTL * 1000))
        self._publisher = store.publisher
        self._queue: asyncio.Queue[tuple[str, str, list[Matcher], Any]] = asyncio.Queue()

    def added(self, subscriber: str, matchers: list[Matcher], payload: Any = None) -> None:
        self._queue.put_nowait(("add", subscriber, matchers, payload))

    def removed(self, subscriber: str, matchers: list[Matcher], payload: Any = None) -> None:
        self._queue.put_nowait(("remove", subscriber, matchers, payload))

    async def run(self) -> None:
        """Apply queued changes in order; heartbeat while there are none."""
        await self._records.write("alive", [])
        while True:
            try:
                op, subscriber, matchers, payload = await asyncio.wait_for(
                    self._queue.get(), HEARTBEAT_EVERY
                )
            except asyncio.TimeoutError:
                await self._records.write("alive", [])
                continue
            active = op == "add"
            entries = [subscription(m, subscriber, active, payload, kind) for kind, m in matchers]
            if active:
                args = [x for e in entries for x in (e["id"], json.dumps(e))]
            else:
                args = [e["id"] for e in entries]
            await self._records.write(op, args)
            for entry in entries:
                await self._announce(entry)

    async def _announce(self, entry: dict[str, Any]) -> None:
        modern = "match_type" in entry
        body = json.dumps(entry if modern else {"@context": CONTEXT, **entry})
        try:
            await self._publisher.publish(
                entry["id"],
                body,
                event=EVENT_TYPE if modern else None,
                extra=Extra(private=True, kept=False),
            )
        except BadRequest as exc:
            # A selector too long for a topic once URL-encoded: the API still lists it.
            logger.debug("no subscription event for %s: %s", entry["id"][:80], exc)

    async def all(self) -> list[dict[str, Any]]:
        """Every live subscription, on every node, in a stable order."""
        found = await self._records.all()
        return sorted(
            found,
            key=lambda e: (
                e.get("match_type", ""),
                e.get("topic", e.get("match")),
                e["subscriber"],
            ),
        )
