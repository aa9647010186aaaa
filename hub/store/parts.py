"""The round trips of a publish: what goes to Redis together, and in which order.

A batch goes in as few round trips as its events allow, and as few script calls:
events of one channel and no options, of one partition on a cluster, travel several to
a call (the script's batch mode, :func:`merged`), since what Redis spends per call is
most of what such an event costs it.

An event of several partitions goes part by part. On a Redis Cluster an event whose
channels fall into several partitions is stored once per partition, each part with an id
from its own channels' streams (hub/store/records.py). A stream that follows channels of
several parts takes the event from the first of them
(:meth:`hub.store.Event.first_part`) and places it by that part's id among its other
events. For every channel the stream follows to stay in publish order, that id must come
after every earlier event of each of the channels, and before every later one. So:

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
their replies and what failed; it returns the replies, one per call of each event.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from redis.exceptions import RedisError

from hub.store.calls import Call

__all__ = ["Plan", "Replies", "in_batches", "in_order", "merged", "spread"]

logger = logging.getLogger("hub")

#: Events one call of the script's batch mode carries at most: Redis runs nothing else
#: while a script runs, and a hundred events take it about a quarter of a millisecond.
MERGE_AT_MOST = 100

#: What a round trip gives back: a reply (or an error) per call, and what failed.
Replies = tuple[list[Any], RedisError | None]
#: Calls to run, their replies sent back, the parts' replies at the end.
Plan = Generator[list[Call], Replies, Replies]


def in_order(calls: list[Call]) -> Plan:
    """The round trips that publish the parts ``calls`` of one event (see above)."""
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


def in_batches(events: list[list[Call]], *, cluster: bool) -> Plan:
    """The round trips that publish a batch, in order: each run of events of one part
    in one round trip (several to a call where they allow: :func:`merged`), each event
    of several parts as :func:`in_order` says. The replies come back flat, one per
    event's call; after a failure, only those that came."""
    replies: list[Any] = []
    run: list[Call] = []
    for calls in [*events, None]:
        if calls is not None and len(calls) == 1:
            run.append(calls[0])
            continue
        if run:
            sent, counts = merged(run, cluster=cluster)
            got, failure = yield sent
            replies += spread(got, counts)
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


def merged(run: list[Call], *, cluster: bool) -> tuple[list[Call], list[int]]:
    """The calls of a run of events as sent: each stretch of events that take the
    script's fast path (one channel, no options), of one partition on a cluster, as one
    call of its batch mode, since what Redis spends per call is most of what such an
    event costs it; and, per call sent, how many events it carries (0: one as it is)."""
    sent: list[Call] = []
    counts: list[int] = []
    group: list[Call] = []

    def close() -> None:
        if len(group) == 1:
            sent.append(group[0])
            counts.append(0)
        elif group:
            first = group[0]
            fire = first.args[5] if len(first.args) == 6 else ""
            args: list[bytes | str | int] = ["batch", fire]
            for call in group:
                args += call.args[:4]
            sent.append(Call([c.keys[0] for c in group], args, first.partition, first.suffix))
            counts.append(len(group))
        group.clear()

    for call in run:
        if len(call.keys) != 1:
            close()
            sent.append(call)
            counts.append(0)
            continue
        if group and (
            len(group) >= MERGE_AT_MOST
            or call.args[4:] != group[0].args[4:]  # another firehose
            or (cluster and call.partition != group[0].partition)  # another slot
        ):
            close()
        group.append(call)
    close()
    return sent, counts


def spread(replies: list[Any], counts: list[int]) -> list[Any]:
    """Replies to :func:`merged`'s calls as one per event (after a failure, as many as
    came)."""
    out: list[Any] = []
    for reply, count in zip(replies, counts, strict=False):
        if count == 0:
            out.append(reply)
        elif isinstance(reply, list):
            out += reply
        else:
            out += [reply] * count  # the call's error, or no reply, is each event's
    return out
