"""Rate allowances shared by every node (``HUB_PUBLISH_RATE``), counted in Redis.

One key per client (``{prefix}rate:{who}``), spent by one call of ``lua/rate.lua``
(GCRA: a token bucket kept as one timestamp, on Redis' clock), so the limit holds
across nodes and works the same on the embedded backend.
"""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError

from hub.store.cluster import ClusterLanes
from hub.store.failures import translated
from hub.store.keys import Keys
from hub.store.lane import Lane

__all__ = ["Rates"]

SCRIPT = (resources.files("hub.store") / "lua" / "rate.lua").read_text(encoding="utf-8")


class Rates:
    """Spends units of per-client allowances."""

    def __init__(self, redis: Redis | RedisCluster, keys: Keys) -> None:
        self._keys = keys
        self._script = redis.register_script(SCRIPT)
        # Once per publish, like the publish script: down a lane of its own where the
        # server allows (hub/store/lane.py; on a cluster, one per master). Through
        # redis-py the check cost the node more CPU than verifying an RS256 token.
        self._lanes: ClusterLanes | None = None
        self._lane: Lane | None = None
        if isinstance(redis, RedisCluster):
            self._lanes = ClusterLanes.for_client(redis, role="rate")
        else:
            self._lane = Lane.for_client(redis, role="rate")

    async def spend(self, who: str, count: int, period: float, units: int = 1) -> float:
        """Spend ``units`` of ``who``'s ``count`` units per ``period`` seconds: ``0.0``
        when spent, else the seconds until they are free (nothing is spent then)."""
        interval = period * 1000 / count
        key = self._keys.rate(who)
        args = (f"{interval:.3f}", f"{interval * (count - 1):.3f}", units)
        with translated("counting the publish rate"):
            lane = self._lane if self._lanes is None else await self._lanes.lane(key)
            if lane is None:
                wait_ms = await self._script(keys=[key], args=args)
            else:
                command = ("EVALSHA", self._script.sha, 1, key, *args)
                try:
                    wait_ms = await lane.call(*command)
                except NoScriptError:
                    # Not loaded on this server yet (a restart, a failover): nothing ran.
                    await lane.call("SCRIPT", "LOAD", SCRIPT)
                    wait_ms = await lane.call(*command)
        return int(wait_ms) / 1000

    async def aclose(self) -> None:
        if self._lane is not None:
            await self._lane.aclose()
        if self._lanes is not None:
            await self._lanes.aclose()
