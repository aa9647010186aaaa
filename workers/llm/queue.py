"""The queue of requests for the ``llm`` worker, which hands each one out once.

A request is an ordinary hub event on the requests channel (``llm.requests``), so it
lands in that channel's history stream, ``{prefix}stream:llm.requests``. Workers read
that stream through one Redis consumer group: Redis hands each entry to one consumer
only, and remembers it as *pending* until that consumer acknowledges it (``XACK``).

- A worker acknowledges a request after it published the reply's ``done`` or ``error``
  (a worker taking a request over looks for them in the conversation's history first:
  :mod:`workers.llm.conversation`).
- While it answers, it resets the request's idle time every ``claim_after / 3`` seconds,
  so nobody else takes a long answer over.
- A request pending longer than ``claim_after`` without that (its worker was killed,
  or hangs) is taken over by another worker with ``XAUTOCLAIM``.
- A worker that stops with answers unfinished marks them idle at once, so that the
  next sweep of another worker takes them over without waiting ``claim_after``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio
from redis.exceptions import ResponseError

from hub.store import Keys
from hub.store.ids import key_suffix

__all__ = ["Delivery", "RequestQueue"]

# The worker's logger, not this module's: to whoever reads the logs these lines are the
# worker's, and they keep the name they had before the worker became a package.
logger = logging.getLogger("workers.llm")

#: Idle time given to requests a stopping worker hands back: any sweep takes them.
_RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000

# Resets the idle time of each request that is still pending for this consumer. XCLAIM
# with a minimum idle time of 0 would take a request back from a worker that already
# took it over, hence the check, in one script so nothing can happen in between.
_TOUCH = """
local lost = {}
for i = 3, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if entry and entry[2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  elseif entry then
    table.insert(lost, ARGV[i])
  end
end
return lost
"""


@dataclass(frozen=True)
class Delivery:
    """A request entry handed to this worker. ``data`` is ``None`` when the entry was
    trimmed from the history before it could be read; ``claimed`` when it was taken over
    from another worker."""

    #: The entry id in the requests stream (what the consumer group knows it by).
    id: str
    data: bytes | None
    claimed: bool = False
    #: Who asked: the token subject the hub kept with the request (authorization on).
    subject: str | None = None
    #: The request's hub event id (``<ms>-<seq>.<h>``): what its publisher got back, and
    #: the ``request_id`` of every event about it.
    event_id: str = ""


class RequestQueue:
    """The consumer-group operations on the requests stream, for one consumer."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: Keys,
        channel: str,
        group: str,
        consumer: str,
        claim_after: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.channel = channel
        self.key = keys.stream(channel)
        self.group = group
        self.consumer = consumer
        self.claim_after_ms = max(1, int(claim_after * 1000))
        self._touch = client.register_script(_TOUCH)
        self._cursor = "0-0"

    def _event_id(self, entry_id: bytes | str) -> str:
        return _text(entry_id) + key_suffix(self.channel).decode()

    async def create_group(self, start: str = "$") -> bool:
        """Create the group (and the stream) unless it exists; return whether it was made.

        ``"$"``: the group starts with requests published from now on. Older history is
        not answered: those questions were asked before any worker listened.
        """
        try:
            await self.client.xgroup_create(self.key, self.group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def read(self, count: int, block: float) -> list[Delivery]:
        """New requests, at most ``count``, waiting up to ``block`` seconds for one."""
        try:
            reply = await self.client.xreadgroup(
                self.group, self.consumer, {self.key: ">"}, count=count, block=int(block * 1000)
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream key is gone (HUB_HISTORY_TTL expired it, or Redis lost its data)
            # and took the group along. Everything in a stream made since is unanswered.
            if await self.create_group("0"):
                logger.warning("requests stream or group vanished; created it again")
            return []
        deliveries: list[Delivery] = []
        for _stream, entries in cast("list[list[Any]]", reply or []):
            for entry_id, fields in entries:
                deliveries.append(
                    Delivery(
                        _text(entry_id),
                        _data(fields),
                        False,
                        _who(fields),
                        self._event_id(entry_id),
                    )
                )
        return deliveries

    async def claim(self, count: int) -> list[Delivery]:
        """Take over up to ``count`` requests pending longer than ``claim_after``."""
        reply = await self.client.xautoclaim(
            self.key, self.group, self.consumer, self.claim_after_ms, self._cursor, count=count
        )
        self._cursor = _text(reply[0])
        deliveries = [
            Delivery(_text(i), _data(f), True, _who(f), self._event_id(i)) for i, f in reply[1]
        ]
        # Redis 7 lists entries trimmed from the stream apart (and forgets them); 6.2
        # returns them with no fields.
        for gone in reply[2] if len(reply) > 2 else []:
            deliveries.append(
                Delivery(_text(gone), None, claimed=True, event_id=self._event_id(gone))
            )
        return deliveries

    async def touch(self, ids: list[str]) -> list[str]:
        """Reset the idle time of requests being answered; return those another worker
        has taken over meanwhile (this worker should stop answering them)."""
        if not ids:
            return []
        lost = await self._touch(keys=[self.key], args=[self.group, self.consumer, *ids])
        return [_text(i) for i in lost]

    async def release(self, ids: list[str]) -> None:
        """Hand unfinished requests back: the next sweep of any worker takes them over."""
        if ids:
            await self.client.xclaim(
                self.key,
                self.group,
                self.consumer,
                0,
                cast("list[Any]", ids),
                idle=_RELEASED_IDLE_MS,
                justid=True,
            )

    async def ack(self, request_id: str) -> None:
        await self.client.xack(self.key, self.group, request_id)

    async def retire(self) -> bool:
        """Leave the group if nothing is pending for this consumer; return whether it did."""
        pending = await self.client.xpending_range(
            self.key, self.group, "-", "+", 1, consumername=self.consumer
        )
        if pending:
            return False
        await self.client.xgroup_delconsumer(self.key, self.group, self.consumer)
        return True

    async def prune(self, idle: float) -> list[str]:
        """Forget consumers of workers gone for ``idle`` seconds with nothing pending."""
        gone: list[str] = []
        for info in await self.client.xinfo_consumers(self.key, self.group):
            name = _text(info["name"])
            if name != self.consumer and not info["pending"] and info["idle"] > idle * 1000:
                await self.client.xgroup_delconsumer(self.key, self.group, name)
                gone.append(name)
        return gone


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _data(fields: dict[bytes, bytes] | None) -> bytes | None:
    return fields.get(b"d") if fields else None


def _who(fields: dict[bytes, bytes] | None) -> str | None:
    subject = fields.get(b"s") if fields else None
    return subject.decode("utf-8", "replace") if subject else None
