"""One channel as a node's live path keeps it: who follows it, and its subscription."""

from __future__ import annotations

import asyncio

from hub.delivery.stream import Stream
from hub.store import EventId, LiveConnection

__all__ = ["Channel"]


class Channel:
    """A channel followed on one live path: its streams, and the state of its
    subscription on the live connection."""

    __slots__ = (
        "confirmed",
        "confirmed_at",
        "floor",
        "idle_since",
        "name",
        "pending",
        "session",
        "subscribers",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: set[Stream] = set()
        self.confirmed = asyncio.Event()
        #: Loop time when ``confirmed`` was last set.
        self.confirmed_at = 0.0
        #: SUBSCRIBE commands sent on ``session`` and not yet confirmed.
        self.pending = 0
        self.session: LiveConnection | None = None
        self.idle_since: float | None = None
        #: The newest id when the subscription was confirmed: older events were never
        #: this node's to deliver live (clients replayed them from history).
        self.floor: EventId = (0, 0)
