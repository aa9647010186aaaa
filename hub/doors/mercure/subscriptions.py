"""Mercure's subscriptions API and subscription events, correct across nodes.

State lives in Redis: each node keeps its own subscriptions in a hash
(``{prefix}subscriptions:{node}``) that expires ``NODE_TTL`` seconds after the node's
last heartbeat, and announces itself in ``{prefix}subscription-nodes`` (node ->
expiry). A node that dies takes its subscriptions with it within ``NODE_TTL``
seconds, with nobody to clean up after it. Every write is one call of
``hub/store/lua/subscriptions.lua`` (:mod:`hub.store.subscriptions`), made by one
supervised task per node from a queue, so a stream never waits for it.

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
from typing import Any
from urllib.parse import quote

from hub.errors import BadRequest
from hub.store.publisher import Extra
from hub.store.store import Store

__all__ = ["CONTEXT", "PATH", "Registry", "subscription", "subscription_id"]

logger = logging.getLogger("hub")

PATH = "/.well-known/mercure/subscriptions"
#: Seconds a node's subscriptions outlive its last heartbeat...
NODE_TTL = 15.0
#: ...and seconds between heartbeats.
HEARTBEAT_EVERY = 5.0
CONTEXT = "https://mercure.rocks/"


def subscription_id(topic: str, subscriber: str) -> str:
    return f"{PATH}/{quote(topic, safe='')}/{quote(subscriber, safe='')}"


def subscription(topic: str, subscriber: str, active: bool, payload: Any = None) -> dict[str, Any]:
    entry = {
        "id": subscription_id(topic, subscriber),
        "type": "Subscription",
        "topic": topic,
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
        self._queue: asyncio.Queue[tuple[str, str, list[str], Any]] = asyncio.Queue()

    def added(self, subscriber: str, topics: list[str], payload: Any = None) -> None:
        self._queue.put_nowait(("add", subscriber, topics, payload))

    def removed(self, subscriber: str, topics: list[str], payload: Any = None) -> None:
        self._queue.put_nowait(("remove", subscriber, topics, payload))

    async def run(self) -> None:
        """Apply queued changes in order; heartbeat while there are none."""
        await self._records.write("alive", [])
        while True:
            try:
                op, subscriber, topics, payload = await asyncio.wait_for(
                    self._queue.get(), HEARTBEAT_EVERY
                )
            except asyncio.TimeoutError:
                await self._records.write("alive", [])
                continue
            active = op == "add"
            entries = [subscription(t, subscriber, active, payload) for t in topics]
            if active:
                args = [x for e in entries for x in (e["id"], json.dumps(e))]
            else:
                args = [e["id"] for e in entries]
            await self._records.write(op, args)
            for entry in entries:
                await self._announce(entry)

    async def _announce(self, entry: dict[str, Any]) -> None:
        body = json.dumps({"@context": CONTEXT, **entry})
        try:
            await self._publisher.publish(entry["id"], body, extra=Extra(private=True, kept=False))
        except BadRequest as exc:
            # A selector too long for a topic once URL-encoded: the API still lists it.
            logger.debug("no subscription event for %s: %s", entry["id"][:80], exc)

    async def all(self) -> list[dict[str, Any]]:
        """Every live subscription, on every node, in a stable order."""
        found = await self._records.all()
        return sorted(found, key=lambda e: (e["topic"], e["subscriber"]))
