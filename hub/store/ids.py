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

from hub.errors import BadRequest, Conflict

__all__ = [
    "MAX_CHOSEN_ID_BYTES",
    "EventId",
    "check_chosen_id",
    "format_id",
    "parse_id",
    "stream_id",
]

#: Longest id a Mercure publisher may choose for its update, in UTF-8 bytes.
MAX_CHOSEN_ID_BYTES = 1024

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


def stream_id(raw: bytes) -> EventId:
    """An id as Redis hands it back (a stream entry's, a live message's): always
    ``<ms>-<n>``, so none of :func:`parse_id`'s checks; this runs once per event."""
    ms, _, n = raw.partition(b"-")
    return int(ms), int(n)


def format_id(event_id: EventId) -> str:
    """The string form of an id, as sent in ``id:`` lines and accepted back."""
    return f"{event_id[0]}-{event_id[1]}"


def check_chosen_id(value: str) -> str:
    """Return a publisher-chosen (Mercure) id if it can be one, else raise.

    Refused with :class:`BadRequest`: control characters (they would break the
    ``id:`` line or the ``Last-Event-ID`` header), more than
    :data:`MAX_CHOSEN_ID_BYTES`, and ``earliest``. Refused with :class:`Conflict`: an
    id shaped like a hub id, which names another event's position in the log. (An id
    an event in the log still holds is refused by the publish script, atomically.)
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BadRequest("id must not contain CR, LF, NUL or other control characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest("id contains a lone surrogate; use valid Unicode text") from None
    if size > MAX_CHOSEN_ID_BYTES:
        raise BadRequest(f"id is longer than {MAX_CHOSEN_ID_BYTES} bytes")
    if value == "earliest":
        raise BadRequest("'earliest' is reserved and cannot be an update id")
    try:
        parse_id(value)
    except ValueError:
        return value
    raise Conflict(
        f"id {value[:40]!r} has the shape of a hub event id (<ms>-<n>), which names "
        "another event's place in the log; choose another, such as a URN or a URL"
    )
