"""The Mercure subscriptions registry's records in Redis.

Each node keeps its own subscriptions in a hash (``{prefix}subscriptions:{node}``)
that expires a while after the node's last heartbeat, and announces itself in
``{prefix}subscription-nodes`` (node -> expiry). Every write is one call of
``lua/subscriptions.lua``.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, cast

from redis.asyncio import Redis, RedisCluster

from hub.store.failures import translated
from hub.store.keys import Keys

__all__ = ["SubscriptionRecords"]

SCRIPT = (resources.files("hub.store") / "lua" / "subscriptions.lua").read_text(encoding="utf-8")


class SubscriptionRecords:
    """One node's subscription records, and everyone's for reading."""

    def __init__(self, redis: Redis | RedisCluster, keys: Keys, node: str, ttl_ms: int) -> None:
        self.node = node
        self._redis = redis
        self._keys = keys
        self._script = self._redis.register_script(SCRIPT)
        self._ttl_ms = ttl_ms

    async def write(self, op: str, args: list[str]) -> None:
        """``alive`` (heartbeat), ``add`` (id, JSON pairs) or ``remove`` (ids)."""
        keys = [self._keys.subscriptions(self.node), self._keys.subscription_nodes]
        with translated("writing the subscriptions registry"):
            await self._script(keys=keys, args=[self.node, self._ttl_ms, op, *args])

    async def all(self) -> list[dict[str, Any]]:
        """Every live subscription, on every node."""
        with translated("reading the subscriptions registry"):
            secs, micros = await self._redis.time()
            now_ms = int(secs) * 1000 + int(micros) // 1000
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
        return [json.loads(raw) for page in pages for raw in page]
