"""Rate allowances shared by every node (``HUB_PUBLISH_RATE``), counted in Redis.

One key per client (``{prefix}rate:{who}``), spent by one call of ``lua/rate.lua``
(GCRA: a token bucket kept as one timestamp, on Redis' clock), so the limit holds
across nodes and works the same on the embedded backend.
"""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis

from hub.store.failures import translated
from hub.store.keys import Keys

__all__ = ["Rates"]

SCRIPT = (resources.files("hub.store") / "lua" / "rate.lua").read_text(encoding="utf-8")


class Rates:
    """Spends units of per-client allowances."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._script = redis.register_script(SCRIPT)

    async def spend(self, who: str, count: int, period: float) -> float:
        """Spend one of ``who``'s ``count`` units per ``period`` seconds: ``0.0`` when
        spent, else the seconds until one is free (nothing is spent then)."""
        interval = period * 1000 / count
        args = [f"{interval:.3f}", f"{interval * (count - 1):.3f}"]
        with translated("counting the publish rate"):
            wait_ms = await self._script(keys=[self._keys.rate(who)], args=args)
        return int(wait_ms) / 1000
