"""Mercure streams and what the Mercure door's live path does with each message.

Every publish (native or Mercure) also appends the event, with its Mercure fields, to
the hub-wide ``log`` stream and publishes it on ``mercure:{topic}`` for each of its
topics and once on ``mercure-all`` (see ``hub/store/lua/publish.lua``). The door's
live path subscribes to ``mercure:{topic}`` for the exact topics its streams name, and
to ``mercure-all`` only while one of them uses a URI template, a URL Pattern or
``*``: a node without
pattern subscribers never receives the firehose. Replay and recovery read the log,
which holds every event in id order whatever its topics.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from hub.config import Settings
from hub.delivery.channel import Channel
from hub.delivery.fanout import Recovering
from hub.delivery.sse import encode_frame, retry_frame
from hub.delivery.stream import Stream
from hub.doors.auth import Claims
from hub.doors.topics import Selectors
from hub.store import Clock, EventId, Keys, Store, Update, format_id

__all__ = ["ALL", "Frames", "MercureFanout", "MercureStream"]

logger = logging.getLogger("hub")

#: The name a node's pattern subscribers are attached under (never a channel name).
ALL = ""


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
        super().__init__(channels, limit, on_cut_off)
        #: The topic selectors as the client gave them.
        self.topics = topics
        self.selectors = selectors
        #: The stream's subscriber id in the subscriptions API.
        self.uid = f"urn:uuid:{uuid.uuid4()}"
        self.claims = claims
        #: Native ``/events`` framing: hub ids and ``hub.*`` signals.
        self.native = native

    def wants(self, topics: list[str], private: bool) -> bool:
        if not self.selectors.match_any(topics):
            return False
        return not private or (self.claims is not None and self.claims.can_receive(topics))


class Frames:
    """An update's two frames (Mercure and native), each built once, when first needed:
    one update goes to many streams of either kind."""

    __slots__ = ("_mercure", "_native", "update")

    def __init__(self, update: Update) -> None:
        self.update = update
        self._mercure: bytes | None = None
        self._native: bytes | None = None

    def frame(self, native: bool) -> bytes:
        update = self.update
        if native:
            if self._native is None:
                self._native = encode_frame(update.raw_id, update.event, update.data)
            return self._native
        if self._mercure is None:
            frame = encode_frame(update.mercure_id, update.event, update.data)
            if update.retry:
                frame = b"retry: " + update.retry + b"\n" + frame
            self._mercure = frame
        return self._mercure


class MercureFanout:
    """The Mercure door's live messages: per-stream filtering on topics and claims."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._keys: Keys = store.keys
        self._settings = settings

    def live_name(self, channel: str) -> str:
        return self._keys.mercure_all if channel == ALL else self._keys.mercure(channel)

    def history_key(self, channel: str) -> str:
        return self._keys.log if channel == ALL else self._keys.stream(channel)

    def dispatch(self, channel: Channel | None, payload: bytes) -> EventId:
        update = Update.from_message(payload)
        if channel is not None:
            frames = Frames(update)
            for sub in channel.subscribers:
                if isinstance(sub, MercureStream) and sub.wants(update.topics, update.private):
                    sub.deliver(update.id, frames.frame(sub.native))
        return update.id

    async def recover(self, live: Recovering, after: EventId, clock: Clock) -> None:
        subs = [s for s in live.subscribers if isinstance(s, MercureStream)]
        if not subs:
            return
        oldest = await self._store.log_oldest()
        if oldest is not None and oldest > after:
            # The log no longer reaches back to the last event this node saw: what was
            # trimmed after it while the connection was down cannot be delivered. Which
            # topics it had is gone with it, so every subscriber comes back (with its
            # Last-Event-ID) and gets the door's answer for an id that is too old.
            logger.warning(
                "mercure: the log was trimmed past this node's last event %s while the "
                "live connection was down (HUB_LOG_SIZE / HUB_HISTORY_TTL); closing %d "
                "streams so that their clients resume",
                format_id(after),
                len(subs),
            )
            for sub in subs:
                sub.close("gap", final=retry_frame(self._settings.retry_ms))
            newest = await self._store.log_newest()
            if newest is not None:
                live.advance(newest.id)
            return
        recovered = 0
        async for update in self._store.read_log(after):
            frames = Frames(update)
            for sub in subs:
                if sub.wants(update.topics, update.private):
                    sub.deliver(update.id, frames.frame(sub.native))
            live.advance(update.id)
            recovered += 1
        if recovered:
            logger.warning("mercure: recovered %d events after a reconnect", recovered)
