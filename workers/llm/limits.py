"""Questions per minute, per subject: how the ``llm`` worker keeps one user from
spending everyone's model.

With authorization on, the hub keeps the publisher's token subject (``sub``) with each
request it publishes through ``/publish``; the worker counts them per subject and per
clock minute in Redis (``{prefix}worker:llm:asked:{subject}:{minute}``), so that every
replica shares the count. Requests without a subject (authorization off) are not
counted: anyone may publish anyway.
"""

from __future__ import annotations

import time

import redis.asyncio

from hub.store import Keys

__all__ = ["QuestionLimit"]


class QuestionLimit:
    """At most ``per_minute`` questions per subject in each clock minute (0: no limit)."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, per_minute: int) -> None:
        self.client = client
        self.keys = keys
        self.per_minute = per_minute

    async def refuse(self, subject: str | None) -> str | None:
        """Count a question of ``subject``; the reason to refuse it, or ``None``."""
        if not subject or self.per_minute <= 0:
            return None
        now = time.time()
        minute = int(now // 60)
        key = self.keys.worker("llm", "asked", subject, str(minute))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
        if int(count) <= self.per_minute:
            return None
        wait = 60 - int(now % 60)
        return (
            f"too many questions: at most {self.per_minute} a minute per user; "
            f"try again in {wait} s"
        )
