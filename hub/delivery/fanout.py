"""What a live path does with a live message, and how it catches up after a reconnect.

A :class:`hub.delivery.live.LivePath` owns a connection, its subscriptions, its
watermark and its health checks; a :class:`Fanout` gives the messages their meaning.
The native path's is :class:`NativeFanout`; a door with records of its own (the
Mercure door's log) brings its own, and reuses the whole live path unchanged.
"""

from __future__ import annotations

import logging
from typing import Protocol

from hub.config import Settings
from hub.delivery.channel import Channel
from hub.delivery.sse import encode_frame, retry_frame
from hub.delivery.stats import Stats, lag_since
from hub.delivery.stream import Stream
from hub.store import Clock, EventId, Keys, Store
from hub.store.records import live_event

__all__ = ["Fanout", "NativeFanout", "Recovering"]

logger = logging.getLogger("hub")


class Recovering(Protocol):
    """What recovery needs of the live path it catches up (a ``LivePath``)."""

    subscribers: set[Stream]

    def channels(self) -> list[Channel]:
        """The channels the path is subscribed to."""
        ...

    def advance(self, event_id: EventId) -> None:
        """Events up to ``event_id`` have been received."""
        ...


class Fanout(Protocol):
    """The meaning of one live path's messages."""

    def live_name(self, channel: str) -> str:
        """The pub/sub name a channel's live messages arrive on."""
        ...

    def history_key(self, channel: str) -> str:
        """The stream whose newest entry the position check compares with."""
        ...

    def dispatch(self, channel: Channel | None, payload: bytes) -> EventId:
        """Deliver one live message to ``channel``'s streams (``None``: nobody here
        follows it); return its id."""
        ...

    async def recover(self, live: Recovering, after: EventId, clock: Clock) -> None:
        """Deliver, in order, what was published after ``after`` on ``live``'s channels
        while its connection was down; :meth:`LivePath.advance` past each event."""
        ...


class NativeFanout:
    """``/events``: one frame per event, built once, queued for every stream."""

    def __init__(self, store: Store, settings: Settings, stats: Stats) -> None:
        self._store = store
        self._keys: Keys = store.keys
        self._settings = settings
        self._stats = stats
        self._cached: tuple[bytes, bytes] = (b"", b"")

    def live_name(self, channel: str) -> str:
        return self._keys.live(channel)

    def history_key(self, channel: str) -> str:
        return self._keys.stream(channel)

    def dispatch(self, channel: Channel | None, payload: bytes) -> EventId:
        event = live_event(payload)
        if channel is None or not channel.subscribers:
            return event.id
        # An event published to several channels arrives once per channel, back to back.
        cached_id, frame = self._cached
        if cached_id != event.raw_id:
            frame = encode_frame(event.raw_id, event.event, event.data)
            self._cached = (event.raw_id, frame)
            self._stats.observe_lag(lag_since(event.id[0]))
        self._stats.delivered += len(channel.subscribers)
        event_id = event.id
        for sub in channel.subscribers:
            sub.deliver(event_id, frame)
        return event_id

    async def recover(self, live: Recovering, after: EventId, clock: Clock) -> None:
        channels = [c for c in live.channels() if c.subscribers]
        if not channels:
            return
        by_name = {c.name: c for c in channels}
        ttl_ms = int(self._settings.history_ttl * 1000)
        reader = self._store.history(
            list(by_name),
            after,
            expired_before=(clock.now_ms - ttl_ms, 0) if ttl_ms else None,
            dedupe=False,
        )
        recovered = closed = 0
        async for entry in reader:
            # Close the streams of a channel found trimmed before anything later reaches
            # them: a client following it and another channel too would otherwise come
            # back with a cursor past the hole, and get no hub.reset.
            closed = self._close_gaps(by_name, reader.gaps, closed)
            frame = encode_frame(entry.raw_id, entry.event, entry.data)
            self._stats.delivered += len(by_name[entry.channel].subscribers)
            for sub in list(by_name[entry.channel].subscribers):
                sub.deliver(entry.id, frame)
            live.advance(entry.id)
            recovered += 1
        self._close_gaps(by_name, reader.gaps, closed)
        if recovered or reader.gaps:
            logger.warning(
                "recovered %d events published while the live connection was down%s",
                recovered,
                f"; history too short for {reader.gaps}" if reader.gaps else "",
            )

    def _close_gaps(self, by_name: dict[str, Channel], gaps: list[str], done: int) -> int:
        """Close the streams of channels ``gaps[done:]``, trimmed before we could read
        them: these clients reconnect and get hub.reset. Returns how many are done."""
        for name in gaps[done:]:
            for sub in list(by_name[name].subscribers):
                sub.close("gap", final=retry_frame(self._settings.retry_ms))
        return len(gaps)
