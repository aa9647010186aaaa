"""One channel as a node's live path keeps it: who follows it, and its subscription."""

from __future__ import annotations

from hub.delivery.stream import Stream
from hub.flag import Flag
from hub.store import Key, LiveConnection

__all__ = ["Channel"]


class Channel:
    """A channel followed on one live path: its streams, and the state of its
    subscription on the live connection of its shard.

    ``name`` is the channel's own name; a *wide* channel (Mercure subscribers of
    patterns) stands for every channel of some partitions and has the name ``""``.
    """

    __slots__ = (
        "confirmed",
        "confirmed_at",
        "idle_since",
        "later",
        "live",
        "name",
        "now",
        "partitions",
        "pending",
        "seen",
        "session",
        "shard",
        "wide",
    )

    def __init__(self, name: str, live: bytes, partitions: tuple[int, ...], *, wide: bool) -> None:
        self.name = name
        #: The pub/sub name (or pattern) the channel's messages arrive on.
        self.live = live
        #: The partitions whose events it carries (one, but for a wide channel of one Redis).
        self.partitions = partitions
        self.wide = wide
        #: Streams that take each event as it arrives (they follow this channel only)...
        self.now: set[Stream] = set()
        #: ...and those that take events in key order (hub/delivery/order.py).
        self.later: set[Stream] = set()
        self.confirmed = Flag()
        #: Loop time when ``confirmed`` was last set.
        self.confirmed_at = 0.0
        #: SUBSCRIBE commands sent on ``session`` and not yet confirmed.
        self.pending = 0
        self.session: LiveConnection | None = None
        #: The shard that holds the channel's partition, once known.
        self.shard: str | None = None
        self.idle_since: float | None = None
        #: Every event of the channel up to this key has reached this node (``None``:
        #: not known yet). A stream on this channel alone starts from here.
        self.seen: Key | None = None

    @property
    def subscribers(self) -> set[Stream]:
        return self.now | self.later

    def followed(self) -> bool:
        return bool(self.now or self.later)
