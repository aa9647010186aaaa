"""The Mercure door: ``/.well-known/mercure`` onto the same broker (a topic is a channel).

Its streams run on the process's one live path, beside ``/events`` streams: a topic's
events come on its channel's live name whichever door published them, and pattern
selectors follow the wide channels (hub/delivery/wide.py).

Ids. An update without a publisher-chosen ``id`` is known by its hub id
(``<ms>-<seq>.<h>``). A chosen id is kept beside it (in the history entry, and in its
partition's ``ids`` hash that maps it back), sent as the SSE ``id:``, and resolved to
the hub id when a subscriber resumes from it.

Private updates reach only subscribers whose ``mercure.subscribe`` claims match one of
their topics. Native ``/events`` subscribers whose token may receive private updates
of their channels are served here too, with native framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType

from hub.delivery.broker import FUTURE_SLACK_MS, Broker, Replay
from hub.delivery.channel import Channel
from hub.delivery.response import EventStream
from hub.delivery.sse import preamble
from hub.doors.auth import Auth, expires_in
from hub.doors.mercure.fanout import ALL, MercureStream
from hub.doors.mercure.subscriptions import Matcher, Registry
from hub.errors import BackendUnavailable
from hub.store import PARTITIONS, EventId, cut, format_id, parse_id
from hub.store.store import partitions_of
from hub.supervise import Supervised

__all__ = ["MercureDoor"]

#: Every partition: where a pattern subscriber's events may be.
_EVERY = list(range(PARTITIONS))


class MercureDoor:
    """Per-process state of the Mercure door."""

    def __init__(self, broker: Broker, auth: Auth) -> None:
        self.broker = broker
        self.settings = broker.settings
        self.store = broker.store
        self.auth = auth
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

    async def resolve(self, cursor: str, sub: MercureStream) -> tuple[EventId, str] | None:
        """Where a ``Last-Event-ID`` stands for ``sub``, and its canonical spelling (the
        hub id, or the chosen Mercure id as published); ``None`` when the hub cannot
        resume exactly from it (unknown, ambiguous, trimmed, lost, or from the future).

        A hub id is read as one before the chosen ids are looked at, so that no
        publisher's chosen id can stand in for another event's position; a chosen id is
        looked up in the partitions the stream may read (where it is unique)."""
        partitions = _EVERY if sub.wide else partitions_of(sub.channels)
        try:
            position, canonical = parse_id(cursor), ""
        except ValueError:
            found = await self.store.chosen_id(cursor, partitions)
            if len(found) != 1:
                # Unknown; or held in several partitions (the parts of an update spread
                # over partitions, or two updates that chose one id): which one this
                # subscriber got last cannot be told, so no exact resume.
                return None
            position, canonical = found[0], cursor
        now_ms = await self.store.now_ms()
        if position[0] > now_ms + FUTURE_SLACK_MS:
            return None  # a made-up id from the future would hide every event until then
        since = await self.store.since(partitions)
        if any(began is None or position[0] < began for began in since.values()):
            return None
        channels = await self._channels(sub, position)
        if await self.store.holes(channels, position):
            return None
        return position, canonical or format_id(position)

    async def newest_id(self, sub: MercureStream | None = None) -> str:
        """The Mercure id of the newest update ``sub`` could have had (``earliest`` when
        there is none): of its topics, or for patterns of the channels published to
        last. Without ``sub``: the position now."""
        if sub is None:
            return format_id(cut(await self.store.now_ms() + 1))
        channels = [c for c in sub.channels if c != ALL]
        if sub.wide:
            channels += await self.store.busiest_channels(_EVERY)
        events = [e for e in await self.store.newest_events(channels) if e is not None]
        if not events:
            return "earliest"
        return max(events, key=lambda e: e.key).mercure_id.decode()

    async def _channels(self, sub: MercureStream, after: EventId) -> list[str]:
        """The channels a replay of ``sub`` after ``after`` reads."""
        exact = [c for c in sub.channels if c != ALL]
        if not sub.wide:
            return exact
        active = await self.store.active_channels(_EVERY, after[0])
        return list(dict.fromkeys(exact + [c for c in active if sub.follows(c)]))

    async def stream(
        self,
        sub: MercureStream,
        after: EventId | None,
        response: EventStream,
        *,
        reset: bytes = b"",
        matchers: list[Matcher] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The frames of one Mercure (or private-capable native) stream: replay after
        ``after`` (``None``: live only), then live, until the token expires.
        ``matchers``: its subscriptions as the registry lists them (default: 0.24
        ``topic=`` selectors)."""
        broker = self.broker
        loop = asyncio.get_running_loop()
        ttl = expires_in(sub.claims)
        # The token's exp ends the stream (Mercure): the client reconnects with a fresh
        # token, or gets 401 for the stale one.
        expiry = None if ttl is None else loop.call_later(ttl, sub.close, "token expired")
        registry = self.registry if not sub.native else None
        registered = False
        payload = sub.claims.payload if sub.claims is not None else None
        listed: list[Matcher] = (
            matchers if matchers is not None else [(None, t) for t in sub.topics]
        )

        async def opening(confirmed: list[Channel]) -> AsyncGenerator[bytes, None]:
            nonlocal registered
            if registry is not None:
                registry.added(sub.uid, listed, payload)
                registered = True
            if after is None:
                # Where it starts before it says it is open: an update the client
                # publishes once it has the preamble must come after that start.
                sub.last = await broker.start(sub, confirmed)
                yield preamble(self.settings.retry_ms) + reset
                return
            yield preamble(self.settings.retry_ms) + reset
            sub.last = after
            async for chunk in self._replay(sub, after, confirmed):
                yield chunk

        def on_close() -> None:
            if expiry is not None:
                expiry.cancel()
            if registry is not None and registered:
                registry.removed(sub.uid, listed, payload)

        served = sub.run(
            broker.live_path,
            response,
            opening,
            stats=broker.stats,
            retry_ms=self.settings.retry_ms,
            on_close=on_close,
        )
        async with contextlib.aclosing(served):
            async for chunk in served:
                yield chunk

    async def _replay(
        self, sub: MercureStream, after: EventId, confirmed: list[Channel]
    ) -> AsyncIterator[bytes]:
        replay = Replay(self.broker, sub, confirmed)
        until = await replay.bound()
        reader = self.store.history(
            await self._channels(sub, after), after, strict=False, follows=sub.follows, until=until
        )
        async for chunk in replay.merged(reader):
            yield chunk
