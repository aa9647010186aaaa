"""Event ids: ``<ms>-<n>``, one hub-wide order for every event on one Redis.

The publish script hands out ids from a hybrid clock: the Redis server's time in
milliseconds, or the last id's millisecond plus a counter when time has not moved
on (or went backwards). Every id is larger than every id before it, whatever the
channel, so one number orders all events. That lets each event be encoded once per
hub process (the ``id:`` line is the same for every client) while a client's single
``Last-Event-ID`` still says exactly where it stands on every channel it follows.
The format is also a valid Redis Stream id, so history is kept in streams under the
very same ids. Clients treat ids as opaque strings.
"""

from __future__ import annotations

import re

__all__ = ["EventId", "format_id", "parse_id"]

#: (milliseconds, sequence within that millisecond); tuples compare in event order.
EventId = tuple[int, int]

_ID = re.compile(r"(\d{1,15})-(\d{1,15})")


def parse_id(text: str | bytes) -> EventId:
    """Parse ``"1700000000000-3"``; raise :class:`ValueError` for anything else."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    match = _ID.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a hub event id: {text[:40]!r}")
    return int(match.group(1)), int(match.group(2))


def format_id(event_id: EventId) -> str:
    """The string form of an id, as sent in ``id:`` lines and accepted back."""
    return f"{event_id[0]}-{event_id[1]}"
