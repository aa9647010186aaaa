"""The Mercure door: ``/.well-known/mercure`` onto the same broker (a topic is a channel).

How updates reach Mercure subscribers, across nodes. Every publish (native or Mercure)
also appends the event, with its Mercure fields, to the hub-wide ``log`` stream and
publishes it on ``mercure:{topic}`` for each of its topics and once on ``mercure-all``
(see ``hub/store/lua/publish.lua``). A node subscribes, on its own second pub/sub connection
(opened with its first Mercure subscriber), to ``mercure:{topic}`` for the exact
topics its subscribers name, and to ``mercure-all`` only while one of them uses a URI
template or ``*``. Redis delivers a PUBLISH only to connections subscribed to it: a
node without pattern subscribers never receives the firehose, and when no node has
any, nothing is sent at all. Replay and recovery read the ``log``, which holds every
event in id order whatever its topics.

Ids. The hub's ``<ms>-<n>`` id orders everything; a Mercure update without a
publisher-chosen ``id`` is known by it. A chosen id is kept beside it (in the log
entry, and in the ``mercure-ids`` hash that maps it back), sent as the SSE ``id:``,
and resolved to the hub id when a subscriber resumes from it.

Private updates never travel on the native live path; this door delivers them only
to subscribers whose ``mercure.subscribe`` claims match one of their topics. Native
``/events`` subscribers whose token may receive private updates of their channels are
served here too, with native framing (:func:`native_stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from hub.config import Settings
from hub.delivery.broker import Broker
from hub.delivery.live import Channel, LivePath
from hub.delivery.response import EventStream
from hub.delivery.sse import encode_frame, preamble, retry_frame
from hub.delivery.stream import Subscriber
from hub.doors.auth import Auth, Claims, expires_in
from hub.doors.mercure.subscriptions import Registry
from hub.doors.topics import Selectors
from hub.errors import BackendUnavailable, TooManyConnections
from hub.store.backend import Backend
from hub.store.history import Clock
from hub.store.ids import EventId, format_id, parse_id
from hub.store.keys import Keys
from hub.supervise import Supervised

__all__ = ["ALL", "MercureDoor", "MercureLive", "MercureSubscriber", "read_log"]

logger = logging.getLogger("hub")

#: The name a node's pattern subscribers are attached under (never a channel name).
ALL = ""
_PAGE = 500


class _MercureKeys(Keys):
    """The Mercure pub/sub names, under the names the live path expects."""

    def live(self, channel: str) -> str:
        return self.mercure_all if channel == ALL else self.mercure(channel)

    def stream(self, channel: str) -> str:
        return self.log if channel == ALL else super().stream(channel)


class MercureSubscriber(Subscriber):
    """A subscriber with topic selectors and claims, filtered per event."""

    __slots__ = ("claims", "native", "selectors", "topics", "uid")

    def __init__(
        self,
        topics: list[str],
        claims: Claims | None,
        *,
        native: bool,
        limit: int,
        on_cut_off: Callable[[str], None] | None,
    ) -> None:
        # Native channels are exact names, braces and all: never templates.
        selectors = Selectors(topics, exact=native)
        channels = sorted(selectors.exact)
        if selectors.patterns:
            channels.append(ALL)
        super().__init__(channels, limit, on_cut_off)
        #: The topic selectors as the client gave them.
        self.topics = topics
        self.selectors = selectors
        #: The subscriber's id in the subscriptions API.
        self.uid = f"urn:uuid:{uuid.uuid4()}"
        self.claims = claims
        #: Native ``/events`` framing: hub ids and ``hub.*`` signals.
        self.native = native

    def wants(self, topics: list[str], private: bool) -> bool:
        if not self.selectors.match_any(topics):
            return False
        return not private or (self.claims is not None and self.claims.can_receive(topics))


class _Update:
    """One event as the Mercure door sees it; frames are built once, when first needed."""

    __slots__ = (
        "_mercure",
        "_native",
        "data",
        "event",
        "id",
        "mid",
        "private",
        "raw_id",
        "retry",
        "topics",
    )

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
        ms, _, n = raw_id.partition(b"-")
        self.id: EventId = (int(ms), int(n))
        self.mid = mid
        self.event = event
        self.retry = retry
        self.private = private
        self.topics = topics.decode().split(" ")
        self.data = data
        self._mercure: bytes | None = None
        self._native: bytes | None = None

    @classmethod
    def from_message(cls, payload: bytes) -> _Update:
        raw_id, mid, event, retry, private, topics, data = payload.split(b"\n", 6)
        return cls(raw_id, mid, event, retry, private == b"1", topics, data)

    @classmethod
    def from_entry(cls, raw_id: bytes, fields: dict[bytes, bytes]) -> _Update:
        return cls(
            raw_id,
            fields.get(b"m", b""),
            fields.get(b"e", b"message"),
            fields.get(b"r", b""),
            fields.get(b"x", b"") == b"1",
            fields.get(b"c", b""),
            fields.get(b"d", b""),
        )

    def frame(self, native: bool) -> bytes:
        if native:
            if self._native is None:
                self._native = encode_frame(self.raw_id, self.event, self.data)
            return self._native
        if self._mercure is None:
            frame = encode_frame(self.mid or self.raw_id, self.event, self.data)
            if self.retry:
                frame = b"retry: " + self.retry + b"\n" + frame
            self._mercure = frame
        return self._mercure


class MercureLive(LivePath):
    """The live path of the Mercure door: the same machinery as the native one
    (confirmed subscriptions, recovery after a reconnect, position checks) on the
    ``mercure:`` names, with per-subscriber filtering."""

    def _dispatch(self, live: bytes, payload: bytes) -> None:
        update = _Update.from_message(payload)
        if self._watermark is None or update.id > self._watermark:
            self._watermark = update.id
        channel = self._channels.get(live)
        if channel is None:
            return
        for sub in channel.subscribers:
            if isinstance(sub, MercureSubscriber) and sub.wants(update.topics, update.private):
                sub.deliver(update.id, update.frame(sub.native))

    async def _recover(self, clock: Clock) -> None:
        assert self._watermark is not None
        subs = [s for s in self.subscribers if isinstance(s, MercureSubscriber)]
        if not subs:
            return
        oldest: list[tuple[bytes, Any]] = cast(
            Any, await self.redis.xrange(self.keys.log, b"-", b"+", 1)
        )
        if oldest and parse_id(oldest[0][0]) > self._watermark:
            # The log no longer reaches back to the last event this node saw: what was
            # trimmed after it while the connection was down cannot be delivered. Which
            # topics it had is gone with it, so every subscriber comes back (with its
            # Last-Event-ID) and gets the door's answer for an id that is too old.
            logger.warning(
                "mercure: the log was trimmed past this node's last event %s while the "
                "live connection was down (HUB_LOG_SIZE / HUB_HISTORY_TTL); closing %d "
                "streams so that their clients resume",
                format_id(self._watermark),
                len(subs),
            )
            for sub in subs:
                sub.close("gap", final=retry_frame(self.settings.retry_ms))
            newest: list[tuple[bytes, Any]] = cast(
                Any, await self.redis.xrevrange(self.keys.log, b"+", b"-", 1)
            )
            self._watermark = parse_id(newest[0][0]) if newest else self._watermark
            return
        recovered = 0
        async for update in read_log(self.redis, self.keys, self._watermark):
            for sub in subs:
                if sub.wants(update.topics, update.private):
                    sub.deliver(update.id, update.frame(sub.native))
            self._watermark = update.id
            recovered += 1
        if recovered:
            logger.warning("mercure: recovered %d events after a reconnect", recovered)


async def read_log(redis: Redis, keys: Keys, after: EventId) -> AsyncIterator[_Update]:
    """Every event of the hub-wide log after ``after``, in id order."""
    start = b"(" + format_id(after).encode() if after > (0, 0) else b"-"
    while True:
        page: list[tuple[bytes, dict[bytes, bytes]]] = cast(
            Any, await redis.xrange(keys.log, start, b"+", _PAGE)
        )
        for raw_id, fields in page:
            yield _Update.from_entry(raw_id, fields)
        if len(page) < _PAGE:
            return
        start = b"(" + page[-1][0]


class MercureDoor:
    """Per-process state of the Mercure door; its live path starts with its first
    subscriber, so a node that never serves one keeps a single pub/sub connection."""

    def __init__(self, broker: Broker, backend: Backend, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.keys = broker.keys
        self.auth = Auth(settings)
        self._backend = backend
        self._live: MercureLive | None = None
        self._live_redis: Redis | None = None
        self._tasks: list[Supervised] = []
        self.registry: Registry | None = None
        if settings.subscriptions:
            self.registry = Registry(broker.redis, self.keys, settings, broker.publisher)

    async def __aenter__(self) -> MercureDoor:
        self.auth.log_mode()
        if self.registry is not None:
            registry = Supervised(
                "hub subscriptions registry",
                self.registry.run,
                quiet=(RedisError, OSError, BackendUnavailable),
            )
            self._tasks.append(registry)
            await registry.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_all("shutdown")
        for task in reversed(self._tasks):
            await task.__aexit__(exc_type, exc, tb)
        if self._live_redis is not None:
            await self._live_redis.aclose(close_connection_pool=True)

    @property
    def connections(self) -> int:
        return len(self._live.subscribers) if self._live is not None else 0

    def close_all(self, reason: str, final: Callable[[], bytes] | None = None) -> None:
        if self._live is not None:
            for sub in list(self._live.subscribers):
                sub.close(reason, final=final() if final else b"")

    async def _started(self) -> MercureLive:
        if self._live is None:
            self._live_redis = self._backend.live_client()
            keys = _MercureKeys(self.settings.key_prefix)
            self._live = MercureLive(self.broker.redis, self._live_redis, keys, self.settings)
            reader = Supervised(
                "hub mercure reader",
                self._live.run,
                quiet=(RedisError, OSError, BackendUnavailable),
            )
            self._tasks.append(reader)
            await reader.__aenter__()
            self.broker.sweep(self._live)
        return self._live

    def check_capacity(self) -> None:
        """Admit a new stream, or raise :class:`TooManyConnections`: the one rule for
        every stream (native and Mercure) against ``HUB_MAX_CONNECTIONS``."""
        total = self.broker.connections + self.connections
        if total >= self.settings.max_connections:
            raise TooManyConnections(
                f"this node has {total} open streams (HUB_MAX_CONNECTIONS); "
                "retry, or connect to another node"
            )

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
        redis = self.broker.redis
        try:
            try:
                position, canonical = parse_id(cursor), ""
            except ValueError:
                mapped = await redis.hget(self.keys.mercure_ids, cursor)
                if mapped is None:
                    return None
                position, canonical = parse_id(mapped), cursor
            oldest: list[tuple[bytes, Any]] = cast(
                Any, await redis.xrange(self.keys.log, b"-", b"+", 1)
            )
        except RedisError as exc:
            raise BackendUnavailable(f"Redis did not answer ({exc}); retry") from exc
        if not oldest or parse_id(oldest[0][0]) > position:
            return None
        if position > (await self.broker.clock()).head:
            return None  # a made-up id from the future would hide every event until then
        return position, canonical or format_id(position)

    async def newest_id(self) -> str:
        """The Mercure id of the newest event in the log (``earliest`` if it is empty)."""
        try:
            last: list[tuple[bytes, dict[bytes, bytes]]] = cast(
                Any, await self.broker.redis.xrevrange(self.keys.log, b"+", b"-", 1)
            )
        except RedisError as exc:
            raise BackendUnavailable(f"Redis did not answer ({exc}); retry") from exc
        if not last:
            return "earliest"
        update = _Update.from_entry(last[0][0], last[0][1])
        return (update.mid or update.raw_id).decode()

    async def stream(
        self,
        sub: MercureSubscriber,
        after: EventId | None,
        response: EventStream,
        *,
        reset: bytes = b"",
    ) -> AsyncGenerator[bytes, None]:
        """The frames of one Mercure (or private-capable native) stream: replay after
        ``after`` (``None``: live only), then live, until the token expires. The
        broker serves it (:meth:`Broker.serve`) from the door's own live path."""
        live = await self._started()
        loop = asyncio.get_running_loop()
        ttl = expires_in(sub.claims)
        # The token's exp ends the stream (Mercure): the client reconnects with a fresh
        # token, or gets 401 for the stale one.
        expiry = None if ttl is None else loop.call_later(ttl, sub.close, "token expired")
        registry = self.registry if not sub.native else None
        registered = False

        async def opening(confirmed: list[Channel]) -> AsyncGenerator[bytes, None]:
            nonlocal registered
            clock = await self.broker.clock(confirmed)
            if registry is not None:
                registry.added(sub.uid, sub.topics)
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
                registry.removed(sub.uid, sub.topics)

        served = self.broker.serve(live, sub, response, opening, on_close=on_close)
        async with contextlib.aclosing(served):
            async for chunk in served:
                yield chunk

    async def _replay(self, sub: MercureSubscriber, after: EventId) -> AsyncIterator[bytes]:
        chunk: list[bytes] = []
        size = 0
        async for update in read_log(self.broker.redis, self.keys, after):
            if update.id <= sub.last or not sub.wants(update.topics, update.private):
                continue
            frame = update.frame(sub.native)
            chunk.append(frame)
            size += len(frame)
            sub.last = update.id
            if size >= 64 * 1024:
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield b"".join(chunk)
