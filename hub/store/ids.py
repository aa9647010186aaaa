"""Event ids: ``<ms>-<seq>.<h>``, parsed and formatted in one place.

Each channel's history is a Redis Stream, and an event's entry id there (``<ms>-<seq>``,
handed out by ``XADD *`` on the server's clock) orders the channel's events. Channels
share no counter, so that publishes on different channels touch no common key (and, on
a Redis Cluster, no common shard); two channels can hand out the same ``<ms>-<seq>``.
An event's *key* adds ``h``, a 64-bit hash of its channel (the first of its channels,
for an event published to several at once): ``(ms, seq, h)`` orders every event of the
hub, and the hub writes it as ``<ms>-<seq>.<h>`` (``h`` in base 36) in ``id:`` lines.

A client's single ``Last-Event-ID`` is then a position in that one order: it has every
event of its channels up to it, and none after. The live path delivers a stream that
follows several channels in key order (:mod:`hub.delivery.order`), and history is
merged by key, so resuming from any id gives exactly what was missed.

A *cut* ``(ms, 0, 0)`` is a position between events: everything before millisecond
``ms`` is behind it, everything from ``ms`` on ahead of it (no channel hashes to 0).
Streams start from a cut, and resets point at one. Clients treat ids as opaque.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from hub.errors import BadRequest, Conflict

__all__ = [
    "MAX_CHOSEN_ID_BYTES",
    "ZERO",
    "EventId",
    "Key",
    "StreamId",
    "channel_hash",
    "check_chosen_id",
    "cut",
    "event_key",
    "format_id",
    "format_key",
    "key_suffix",
    "parse_id",
    "stream_id",
]

#: Longest id a Mercure publisher may choose for its update, in UTF-8 bytes.
MAX_CHOSEN_ID_BYTES = 1024

#: An entry id as Redis hands it back: (milliseconds, sequence within them).
StreamId = tuple[int, int]
#: An event's place in the hub-wide order: (ms, seq, hash of its first channel).
Key = tuple[int, int, int]
#: The name the rest of the hub has used for a position in the event order.
EventId = Key
#: Before every event: a cursor of "everything".
ZERO: Key = (0, 0, 0)

_ID = re.compile(r"(\d{1,15})-(\d{1,20})(?:\.([0-9a-z]{1,13}))?")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


@lru_cache(maxsize=65536)
def channel_hash(channel: str) -> int:
    """The 64-bit hash that orders a channel's events among others of the same
    ``<ms>-<seq>``; never 0 (cuts use 0)."""
    digest = hashlib.blake2b(channel.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


# Every delivered event's id ends in its channel's hash in base 36: 13 divisions of a
# 64-bit number, done once per channel instead of once per event.
@lru_cache(maxsize=65536)
def _base36(number: int) -> str:
    if number == 0:
        return "0"
    out = []
    while number:
        number, digit = divmod(number, 36)
        out.append(_DIGITS[digit])
    return "".join(reversed(out))


@lru_cache(maxsize=65536)
def key_suffix(channel: str) -> bytes:
    """``.<h>``: what follows an entry id in the ids of ``channel``'s events."""
    return b"." + _base36(channel_hash(channel)).encode()


def stream_id(raw: bytes) -> StreamId:
    """An entry id as Redis hands it back (always ``<ms>-<seq>``): none of
    :func:`parse_id`'s checks, since this runs once per event."""
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq)


def event_key(raw: bytes, h: int) -> Key:
    """The key of the event stored under entry id ``raw`` whose first channel hashes to ``h``."""
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq), h


def cut(ms: int) -> Key:
    """The position just before millisecond ``ms``."""
    return ms, 0, 0


def format_key(key: Key) -> str:
    """A key as clients see it in ``id:`` lines and send it back."""
    return f"{key[0]}-{key[1]}.{_base36(key[2])}"


#: The name callers used before keys had a channel part.
format_id = format_key


def parse_id(text: str | bytes) -> Key:
    """Parse ``"1700000000000-3.k2x9"`` (or a cut, ``...-0.0``); raise :class:`ValueError`
    for anything else. An id of the layout before keys had a channel part
    (``<ms>-<n>``) reads as the position just before that event: history written
    then is not read any more, so it is older than everything there is."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    match = _ID.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a hub event id: {text[:40]!r}")
    ms, seq, h = match.groups()
    return int(ms), int(seq), int(h, 36) if h is not None else 0


def check_chosen_id(value: str) -> str:
    """Return a publisher-chosen (Mercure) id if it can be one, else raise.

    Refused with :class:`BadRequest`: control characters (they would break the
    ``id:`` line or the ``Last-Event-ID`` header), more than
    :data:`MAX_CHOSEN_ID_BYTES`, and ``earliest``. Refused with :class:`Conflict`: an
    id shaped like a hub id, which names another event's position. (An id an event in
    the same partition still holds is refused by the publish script, atomically.)
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
        f"id {value[:40]!r} has the shape of a hub event id (<ms>-<n>[.<h>]), which names "
        "another event's place in the order; choose another, such as a URN or a URL"
    )
