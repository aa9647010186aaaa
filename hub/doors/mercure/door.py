"""The Mercure door: ``/.well-known/mercure`` onto the same broker (a topic is a channel).

Its streams run on a live path of its own (:mod:`hub.doors.mercure.fanout`), opened
with the node's first Mercure stream, so a node that never serves one keeps a single
pub/sub connection.

Ids. The hub's ``<ms>-<n>`` id orders everything; a Mercure update without a
publisher-chosen ``id`` is known by it. A chosen id is kept beside it (in the log
entry, and in the ``mercure-ids`` hash that maps it back), sent as the SSE ``id:``,
and resolved to the hub id when a subscriber resumes from it.

Private updates never travel on the native live path; this door delivers them only
to subscribers whose ``mercure.subscribe`` claims match one of their topics. Native
``/events`` subscribers whose token may receive private updates of their channels are
served here too, with native framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType

from hub.delivery.broker import Broker
from hub.delivery.channel import Channel
from hub.delivery.live import LivePath
from hub.delivery.response import EventStream
from hub.delivery.sse import preamble
from hub.doors.auth import Auth, expires_in
from hub.doors.mercure.fanout import Frames, MercureFanout, MercureStream
from hub.doors.mercure.subscriptions import Registry
from hub.errors import BackendUnavailable
from hub.store import EventId, format_id, parse_id
from hub.supervise import Supervised

__all__ = ["MercureDoor"]

#: Replay frames are written in chunks of about this many bytes.
_REPLAY_CHUNK = 64 * 1024


class MercureDoor:
    """Per-process state of the Mercure door."""

    def __init__(self, broker: Broker, auth: Auth) -> None:
        self.broker = broker
        self.settings = broker.settings
        self.store = broker.store
        self.auth = auth
        self._live: LivePath | None = None
        self._starting = asyncio.Lock()
        self._registry_task: Supervised | None = None
        self.registry: Registry | None = (
            Registry(broker.store) if self.settings.subscriptions else None
        )

    async def __aenter__(self) -> MercureDoor:
        if self.registry is not None:
            self._registry_task = Supervised(
                "hub subscriptions registry", self.registry.run, quiet=(BackendUnavailable, OSError)
            )
            await self._registry_task.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._registry_task is not None:
            await self._registry_task.__aexit__(exc_type, exc, tb)

    async def _started(self) -> LivePath:
        if self._live is not None:
            return self._live
        async with self._starting:
            if self._live is None:
                fanout = MercureFanout(self.store, self.settings)
                self._live = await self.broker.add_path(fanout, "hub mercure reader")
        return self._live

    async def resolve(self, cursor: str) -> tuple[EventId, str] | None:
        """Where a ``Last-Event-ID`` stands in the log, and its canonical spelling (the
        hub id, or the chosen Mercure id as published); ``None`` when the hub cannot
        resume from it (unknown, trimmed, or later than anything handed out).

        A hub id is read as one before the chosen ids are looked at, so that no
        publisher's chosen id can stand in for another event's position. A position is
        resumable when nothing after it was trimmed: the log's oldest entry is at or
        before it (the log is trimmed from the front only). The event itself need not
        be in the log: subscription events have ids but are not kept.
        """
        try:
            position, canonical = parse_id(cursor), ""
        except ValueError:
            mapped = await self.store.chosen_id(cursor)
            if mapped is None:
                return None
            position, canonical = mapped, cursor
        oldest = await self.store.log_oldest()
        if oldest is None or oldest > position:
            return None
        if position > (await self.broker.clock()).head:
            return None  # a made-up id from the future would hide every event until then
        return position, canonical or format_id(position)

    async def newest_id(self) -> str:
        """The Mercure id of the newest event in the log (``earliest`` if it is empty)."""
        newest = await self.store.log_newest()
        return "earliest" if newest is None else newest.mercure_id.decode()

    async def stream(
        self,
        sub: MercureStream,
        after: EventId | None,
        response: EventStream,
        *,
        reset: bytes = b"",
    ) -> AsyncGenerator[bytes, None]:
        """The frames of one Mercure (or private-capable native) stream: replay after
        ``after`` (``None``: live only), then live, until the token expires."""
        live = await self._started()
        loop = asyncio.get_running_loop()
        ttl = expires_in(sub.claims)
        # The token's exp ends the stream (Mercure): the client reconnects with a fresh
        # token, or gets 401 for the stale one.
        expiry = None if ttl is None else loop.call_later(ttl, sub.close, "token expired")
        registry = self.registry if not sub.native else None
        registered = False
        payload = sub.claims.payload if sub.claims is not None else None

        async def opening(confirmed: list[Channel]) -> AsyncGenerator[bytes, None]:
            nonlocal registered
            clock = await self.broker.clock(confirmed)
            if registry is not None:
                registry.added(sub.uid, sub.topics, payload)
                registered = True
            yield preamble(self.settings.retry_ms) + reset
            sub.last = after if after is not None else clock.head
            if after is not None:
                async for chunk in self._replay(sub, after):
                    yield chunk

        def on_close() -> None:
            if expiry is not None:
                expiry.cancel()
            if registry is not None and registered:
                registry.removed(sub.uid, sub.topics, payload)

        served = sub.run(
            live,
            response,
            opening,
            stats=self.broker.stats,
            retry_ms=self.settings.retry_ms,
            on_close=on_close,
        )
        async with contextlib.aclosing(served):
            async for chunk in served:
                yield chunk

    async def _replay(self, sub: MercureStream, after: EventId) -> AsyncIterator[bytes]:
        chunk: list[bytes] = []
        size = 0
        async for update in self.store.read_log(after):
            if update.id <= sub.last or not sub.wants(update.topics, update.private):
                continue
            frame = Frames(update).frame(sub.native)
            chunk.append(frame)
            size += len(frame)
            sub.last = update.id
            if size >= _REPLAY_CHUNK:
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield b"".join(chunk)
