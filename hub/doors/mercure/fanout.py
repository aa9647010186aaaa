"""Mercure streams: topic selectors and claims, filtered per event, in two framings.

Every event travels on its channel's live name whatever door published it; a Mercure
stream of exact topics follows those channels on the process's one live path, and one
of URI templates, URL Patterns or ``*`` follows the wide channels as well
(hub/delivery/wide.py). Replay reads each topic's history, and for patterns every
channel the index says has events after the cursor.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from hub.delivery.sse import encode_frame, native_frame
from hub.delivery.stream import Stream
from hub.doors.auth import Claims
from hub.doors.topics import Selectors
from hub.store import Event

__all__ = ["ALL", "MercureStream", "mercure_frame"]

#: The name a stream's pattern selectors follow (the wide channels; never a channel name).
ALL = ""


def mercure_frame(event: Event) -> bytes:
    """An event's Mercure frame (its Mercure id, ``retry:``), built once per event."""
    frame = event.mframe
    if frame is None:
        frame = encode_frame(event.mercure_id, event.event, event.data)
        if event.retry:
            frame = b"retry: " + event.retry + b"\n" + frame
        event.mframe = frame
    return frame


class MercureStream(Stream):
    """A stream with topic selectors and claims, filtered per event."""

    __slots__ = ("claims", "native", "selectors", "topics", "uid")

    def __init__(
        self,
        topics: list[str],
        claims: Claims | None,
        *,
        native: bool,
        limit: int,
        on_cut_off: Callable[[str], None] | None,
        selectors: Selectors | None = None,
    ) -> None:
        # Native channels are exact names, braces and all: never templates. Mercure 1.0
        # streams come with their selectors built (exact matches and URL Patterns).
        if selectors is None:
            selectors = Selectors(topics, exact=native)
        channels = sorted(selectors.exact)
        if selectors.patterns:
            channels.append(ALL)
        super().__init__(
            channels,
            limit,
            on_cut_off,
            ordered=bool(selectors.patterns) or len(selectors.exact) > 1,
        )
        self.plain = False
        #: The topic selectors as the client gave them.
        self.topics = topics
        self.selectors = selectors
        #: The stream's subscriber id in the subscriptions API.
        self.uid = f"urn:uuid:{uuid.uuid4()}"
        self.claims = claims
        #: Native ``/events`` framing: hub ids and ``hub.*`` signals.
        self.native = native

    @property
    def wide(self) -> bool:
        """Whether it follows patterns (every channel, filtered)."""
        return bool(self.selectors.patterns)

    def follows(self, channel: str) -> bool:
        return self.selectors.match_any([channel])

    def wants(self, topics: list[str], private: bool) -> bool:
        if not self.selectors.match_any(topics):
            return False
        return not private or (self.claims is not None and self.claims.can_receive(topics))

    def frame_for(self, event: Event) -> bytes | None:
        if not self.wants(event.channels, event.private):
            return None
        if not event.wanted_by(self.follows):
            return None
        return native_frame(event) if self.native else mercure_frame(event)
