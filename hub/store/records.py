"""The record codec: the one Python module that reads the hub's Redis records.

``lua/publish.lua`` writes them (the only other place that knows this layout):

- a channel's history entry (``{prefix}stream:{channel}``): fields ``e`` (event type),
  ``d`` (data), ``p`` (the id of the previous event on the channel, for gap checks),
  and ``s`` (the publisher's token subject) when authorization named one;
- a live message (``{prefix}live:{channel}``): ``<id>\\n<prev>\\n<event>\\n<data>``;
- a log entry (``{prefix}log``, every event in id order, for the Mercure door): fields
  ``c`` (channels, space-separated), ``e``, ``d``, ``m`` (a publisher-chosen id),
  ``r`` (retry), ``x`` (``1`` when private);
- a Mercure live message (``{prefix}mercure:{topic}`` and ``{prefix}mercure-all``):
  ``<id>\\n<mercure id>\\n<event>\\n<retry>\\n<private>\\n<channels>\\n<data>``.
"""

from __future__ import annotations

from typing import NamedTuple

from hub.store.ids import EventId, stream_id

__all__ = ["LiveEvent", "Update", "entry_fields", "live_event"]

_MESSAGE = b"message"


class LiveEvent(NamedTuple):
    """A live message of the native path."""

    raw_id: bytes
    id: EventId
    event: bytes
    data: bytes


def live_event(payload: bytes) -> LiveEvent:
    """Decode a native live message."""
    raw_id, _prev, event, data = payload.split(b"\n", 3)
    return LiveEvent(raw_id, stream_id(raw_id), event, data)


def entry_fields(flat: list[bytes]) -> tuple[bytes, bytes, bytes]:
    """``(event, data, prev)`` from a history entry's raw field list."""
    if len(flat) == 6 and flat[0] == b"e" and flat[2] == b"d" and flat[4] == b"p":
        return flat[1], flat[3], flat[5]
    fields = dict(zip(flat[::2], flat[1::2], strict=False))
    return fields.get(b"e", _MESSAGE), fields.get(b"d", b""), fields.get(b"p", b"")


class Update:
    """One event as the Mercure door sees it: a log entry or a Mercure live message."""

    __slots__ = ("data", "event", "id", "mid", "private", "raw_id", "retry", "topics")

    def __init__(
        self,
        raw_id: bytes,
        mid: bytes,
        event: bytes,
        retry: bytes,
        private: bool,
        topics: bytes,
        data: bytes,
    ) -> None:
        self.raw_id = raw_id
        self.id: EventId = stream_id(raw_id)
        #: The publisher-chosen id, or ``b""``.
        self.mid = mid
        self.event = event
        self.retry = retry
        self.private = private
        self.topics = topics.decode().split(" ")
        self.data = data

    @classmethod
    def from_message(cls, payload: bytes) -> Update:
        """Decode a Mercure live message."""
        raw_id, mid, event, retry, private, topics, data = payload.split(b"\n", 6)
        return cls(raw_id, mid, event, retry, private == b"1", topics, data)

    @classmethod
    def from_entry(cls, raw_id: bytes, fields: dict[bytes, bytes]) -> Update:
        """Decode a log entry."""
        return cls(
            raw_id,
            fields.get(b"m", b""),
            fields.get(b"e", _MESSAGE),
            fields.get(b"r", b""),
            fields.get(b"x", b"") == b"1",
            fields.get(b"c", b""),
            fields.get(b"d", b""),
        )

    @property
    def mercure_id(self) -> bytes:
        """The id Mercure subscribers know this update by."""
        return self.mid or self.raw_id
