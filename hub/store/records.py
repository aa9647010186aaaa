"""The record codec: the one Python module that reads the hub's Redis records.

``lua/publish.lua`` writes them, and :mod:`hub.store.publisher` builds the live
message's tail; those are the only other places that know this layout.

- A channel's history entry (``{prefix}{<tag>}:s:{channel}``): fields ``e`` (event
  type) and ``d`` (data), then only those that apply: ``c`` (the event's channels,
  space-separated, when it has several), ``o`` (``<part> <token>`` when its channels
  span partitions), ``m`` (a publisher-chosen Mercure id), ``r`` (retry), ``x`` (``1``:
  private), ``s`` (the publisher's token subject).
- A live message (``{prefix}{<tag>}:l:{channel}``, and the cluster's ``...:all``):
  ``<id>\\n<flags>\\n<event>\\n<channels>\\n<origin>\\n<mercure id>\\n<retry>\\n<data>``,
  with ``flags`` ``x`` for a private event, and ``channels`` and ``origin`` empty for an
  event of one channel (the pub/sub name says which).

An event whose channels fall into several partitions is stored as one *part* per
partition (each atomic in its own slot, with its own id), all carrying every channel
and ``o``. A stream gets the event once, from the first part holding one of the
channels it follows (:meth:`Event.first_part`); the same rule on every node and in
history, so a client gets it once whichever way it comes.
"""

from __future__ import annotations

from collections.abc import Callable

from hub.store.ids import Key, channel_hash, format_key
from hub.store.keys import partition_of

__all__ = ["Event", "entry_event", "first_in_partition", "live_event"]

_MESSAGE = b"message"


class Event:
    """One event as delivery sees it: decoded from a live message or a history entry."""

    __slots__ = (
        "channels",
        "data",
        "event",
        "frame",
        "key",
        "mframe",
        "mid",
        "part",
        "private",
        "raw_id",
        "retry",
        "subject",
        "via",
    )

    def __init__(
        self,
        raw_id: bytes,
        channels: list[str],
        event: bytes,
        data: bytes,
        *,
        part: int = -1,
        private: bool = False,
        mid: bytes = b"",
        retry: bytes = b"",
        subject: bytes = b"",
        first: str | None = None,
        via: str = "",
    ) -> None:
        ms, _, seq = raw_id.partition(b"-")
        #: The entry id in the channel's stream (``<ms>-<seq>``).
        self.raw_id = raw_id
        #: The event's place in the hub-wide order (hub.store.ids): its entry id and its
        #: first channel, or a part's first channel (parts have ids of their own).
        self.key: Key = (int(ms), int(seq), channel_hash(first or channels[0]))
        #: Every channel of the event, in the order it was published to them.
        self.channels = channels
        self.event = event
        self.data = data
        #: Which part this is of an event whose channels span partitions; -1: whole.
        self.part = part
        self.private = private
        #: The publisher-chosen Mercure id, or ``b""``.
        self.mid = mid
        self.retry = retry
        self.subject = subject
        #: The channel whose history or live name this record came from.
        self.via = via or channels[0]
        #: Frames built by delivery, once per event (native ``/events``, and Mercure).
        self.frame: bytes | None = None
        self.mframe: bytes | None = None

    @property
    def mercure_id(self) -> bytes:
        """The id Mercure subscribers know this event by."""
        return self.mid or self.id_text

    @property
    def id_text(self) -> bytes:
        """The event's hub id, as in native ``id:`` lines."""
        return format_key(self.key).encode()

    def first_part(self, follows: Callable[[str], bool]) -> int:
        """The part a stream that ``follows`` these channels gets this event from: the
        first whose channels include one it follows (parts are the channels grouped by
        partition, in the order they first appear); -1 if it follows none."""
        seen: list[int] = []
        for channel in self.channels:
            p = partition_of(channel)
            if p not in seen:
                seen.append(p)
            if follows(channel):
                return seen.index(p)
        return -1

    def wanted_by(self, follows: Callable[[str], bool]) -> bool:
        """Whether a stream that ``follows`` channels gets the event from this record:
        always for a whole event, and for a part when it is the stream's first part."""
        return self.part < 0 or self.first_part(follows) == self.part


def first_in_partition(channels: list[str], channel: str) -> str:
    """The first of ``channels`` in ``channel``'s partition: the one a part's id is of."""
    p = partition_of(channel)
    return next(c for c in channels if partition_of(c) == p)


def live_event(payload: bytes, channel: str | None, partition: int = -1) -> Event:
    """Decode a live message that arrived on ``channel``'s live name, or (``None``) on
    ``partition``'s firehose, whose messages always name their channels."""
    raw_id, flags, event, channels, origin, mid, retry, data = payload.split(b"\n", 7)
    if not channels:
        assert channel is not None
        return Event(raw_id, [channel], event, data, private=flags == b"x", mid=mid, retry=retry)
    names = channels.decode().split(" ")
    if channel is None:
        channel = next(c for c in names if partition_of(c) == partition)
    return Event(
        raw_id,
        names,
        event,
        data,
        part=int(origin.partition(b" ")[0]) if origin else -1,
        private=flags == b"x",
        mid=mid,
        retry=retry,
        first=first_in_partition(names, channel) if origin else None,
        via=channel,
    )


def entry_event(raw_id: bytes, flat: list[bytes], channel: str) -> Event:
    """Decode a history entry of ``channel`` from its raw field list."""
    if len(flat) == 4 and flat[0] == b"e" and flat[2] == b"d":
        return Event(raw_id, [channel], flat[1], flat[3])
    fields = dict(zip(flat[::2], flat[1::2], strict=False))
    channels = fields.get(b"c")
    origin = fields.get(b"o")
    names = channels.decode().split(" ") if channels else [channel]
    return Event(
        raw_id,
        names,
        fields.get(b"e", _MESSAGE),
        fields.get(b"d", b""),
        part=int(origin.partition(b" ")[0]) if origin else -1,
        private=fields.get(b"x") == b"1",
        mid=fields.get(b"m", b""),
        retry=fields.get(b"r", b""),
        subject=fields.get(b"s", b""),
        first=first_in_partition(names, channel) if origin else None,
        via=channel,
    )
