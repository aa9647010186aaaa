"""The order in which an event of several partitions is published, part by part.

On a Redis Cluster an event whose channels fall into several partitions is stored once
per partition, each part with an id from its own channels' streams
(hub/store/records.py). A stream that follows channels of several parts takes the
event from the first of them (:meth:`hub.store.Event.first_part`) and places it by that
part's id among its other events. For every channel the stream follows to stay in
publish order, that id must come after every earlier event of each of the channels,
and before every later one. So:

- the parts are published one after another, the last first, each with the id of the
  one before as its floor (``after``): each part's id is at or after those of the
  parts behind it, and the first part's is the greatest;
- then every part whose id is below the first's has its streams raised to the first
  part's id, so that their next events come after it (``raise``).

Most of the time every part gets the same id and nothing is raised. What this cannot
order is a publish that races the event's own: one that reaches a channel of a later
part after that part was published but before the raise may be placed before the event
by a stream that follows it beside a channel of an earlier part.

A plan is a generator: it yields the calls to run next, in one round trip, and is sent
their replies and what failed; it returns the replies in the order of the parts.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from redis.exceptions import RedisError

from hub.store.calls import Call

__all__ = ["Plan", "Replies", "in_batches", "in_order"]

logger = logging.getLogger("hub")

#: What a round trip gives back: a reply (or an error) per call, and what failed.
Replies = tuple[list[Any], RedisError | None]
#: Calls to run, their replies sent back, the parts' replies at the end.
Plan = Generator[list[Call], Replies, Replies]


def in_order(calls: list[Call]) -> Plan:
    """The round trips that publish the parts ``calls`` of one event (see above)."""
    if len(calls) == 1:
        return (yield calls)
    replies: list[Any] = [None] * len(calls)
    floor: bytes | None = None
    for index in reversed(range(len(calls))):
        call = calls[index] if floor is None else _floored(calls[index], floor)
        got, failure = yield [call]
        reply = got[0] if got else None
        replies[index] = reply
        if failure is not None or reply is None:
            return replies, failure
        if isinstance(reply, Exception):
            # The parts before it were never sent: the event is refused as a whole.
            replies[:index] = [reply] * index
            return replies, None
        floor = _raw(reply)
    top = _raw(replies[0])
    lower = [_raised(calls[i], top) for i in range(1, len(calls)) if _raw(replies[i]) != top]
    if lower:
        got, failure = yield lower
        problem = failure or next((r for r in got if isinstance(r, Exception)), None)
        if problem is not None:
            # Every part is published; only the order against a racing publish is at
            # stake. Failing the publish now would make its publisher send it twice.
            logger.warning("hub publish: could not raise the ids after %s: %s", top, problem)
    return replies, None


def in_batches(events: list[list[Call]]) -> Plan:
    """The round trips that publish a batch, in order: each run of events of one part
    in one round trip, each event of several parts as :func:`in_order` says. The
    replies come back flat, one per call; after a failure, only those that came."""
    replies: list[Any] = []
    run: list[Call] = []
    for calls in [*events, None]:
        if calls is not None and len(calls) == 1:
            run.append(calls[0])
            continue
        if run:
            got, failure = yield run
            replies += got
            if failure is not None:
                return replies, failure
            run = []
        if calls is not None:
            got, failure = yield from in_order(calls)
            replies += got
            if failure is not None:
                return replies, failure
    return replies, None


def _raw(reply: Any) -> bytes:
    return reply if isinstance(reply, bytes) else str(reply).encode()


def _floored(call: Call, floor: bytes) -> Call:
    return Call(call.keys, [*call.args, "after", floor], call.partition, call.suffix)


def _raised(call: Call, top: bytes) -> Call:
    # A part of a split event always has the full keys: histories first, one per channel.
    histories = call.keys[: len(call.keys) // 4]
    return Call(histories, ["raise", top], call.partition, call.suffix)
