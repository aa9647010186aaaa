"""The broker: one live Redis connection per process, fanning events out to clients.

How an event travels: the publish script appends it to each channel's history stream
and publishes it on each channel's ``live:`` pub/sub name, atomically. Every hub process
keeps ONE pub/sub connection, subscribed to the channels its clients follow; a reader
task turns each message into SSE bytes once and queues those bytes for every
subscriber of the channel.

How nothing is lost:

- A client is registered and its channels are confirmed subscribed BEFORE its history
  is read; events published meanwhile are held and merged after the history by id.
- Redis delivers pub/sub messages on a connection in publish order, and drops the
  connection rather than a message; so what a node received is a prefix of the event
  order, and the node's *watermark* (the last id it saw) says where that prefix ends.
  After a reconnect the node reads every subscribed channel's history after the
  watermark and delivers it, in order, before any new live event.
- Subscribers skip ids at or below the last one they got, so an event that reaches a
  client twice (several channels, replay/live overlap, recovery) is sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from .backend import Backend
from .config import Settings
from .errors import BackendUnavailable
from .history import HistoryReader
from .ids import EventId, format_id, parse_id
from .keys import Keys
from .publisher import Publisher
from .sse import encode_frame, retry_frame, signal_frame
from .subscriber import Subscriber
from .supervise import Supervised

__all__ = ["Broker"]

logger = logging.getLogger("hub")

#: Seconds a subscriber waits for Redis to confirm its channels before giving up.
CONFIRM_TIMEOUT = 10.0
#: ...and while the live connection is known to be down.
DOWN_CONFIRM_TIMEOUT = 2.0
#: Seconds a channel nobody follows stays subscribed (cheap reconnects, no churn).
IDLE_LINGER = 5.0
#: Seconds of silence on the live connection before it is probed with PING...
PROBE_AFTER = 5.0
#: ...and seconds the probe may go unanswered before the connection counts as dead.
PROBE_TIMEOUT = 5.0
#: Seconds an event may take from publish to this node before the position check
#: counts it as missed (capped at half the check interval).
POSITION_GRACE = 2.0
#: Replay frames are written in chunks of about this many bytes.
REPLAY_CHUNK = 64 * 1024


class _Channel:
    __slots__ = (
        "confirmed",
        "floor",
        "idle_since",
        "name",
        "pending",
        "session",
        "subscribers",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: set[Subscriber] = set()
        self.confirmed = asyncio.Event()
        #: SUBSCRIBE commands sent on ``session`` and not yet confirmed.
        self.pending = 0
        self.session: PubSub | None = None
        self.idle_since: float | None = None
        #: The newest id when the subscription was confirmed: older events were never
        #: this node's to deliver live (clients replayed them from history).
        self.floor: EventId = (0, 0)


class Broker:
    """Connects clients' streams to Redis. Use as ``async with Broker(...) as broker``."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = backend.command_client()
        self.publisher = Publisher(self.redis, settings, max_channels=settings.max_channels)
        self._live_redis = backend.live_client()
        self._channels: dict[bytes, _Channel] = {}
        self._subscribers: set[Subscriber] = set()
        self._pubsub: PubSub | None = None
        self._watermark: EventId | None = None
        self._cached: tuple[bytes, bytes] = (b"", b"")
        self._reader = Supervised(
            "hub live reader", self._session, quiet=(RedisError, OSError, BackendUnavailable)
        )
        #: True while the live connection is up and subscribed.
        self.live = False

    async def __aenter__(self) -> Broker:
        await self._reader.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_all("shutdown")
        await self._reader.__aexit__(exc_type, exc, tb)
        await self._live_redis.aclose(close_connection_pool=True)
        await self.redis.aclose(close_connection_pool=True)

    @property
    def connections(self) -> int:
        """Open client streams on this process."""
        return len(self._subscribers)

    def close_all(self, reason: str, final: Callable[[], bytes] | None = None) -> None:
        """End every open stream after its queued frames, then ``final()`` (shutdown)."""
        for sub in list(self._subscribers):
            sub.close(reason, final=final() if final else b"")

    async def ping(self) -> None:
        """Raise :class:`BackendUnavailable` unless Redis answers."""
        try:
            await self.redis.ping()
        except RedisError as exc:
            raise BackendUnavailable(f"Redis did not answer PING: {exc}") from exc

    # -- one client's stream ------------------------------------------------------------

    async def stream(
        self,
        channels: list[str],
        cursor: str | None,
        opening: bytes = b"",
        on_cut_off: Callable[[], None] | None = None,
    ) -> AsyncIterator[bytes]:
        """The SSE frames for one client: replay after ``cursor`` (if any), then live.

        ``cursor`` is a ``Last-Event-ID``, ``"earliest"`` for all retained history, or
        ``None`` for live events only. A cursor that cannot be honoured exactly gives a
        ``hub.reset`` frame first, then live events. ``opening`` is sent once Redis has
        confirmed the subscription: every event published after a client has read it is
        delivered to that client. ``on_cut_off`` is called if the client falls so far
        behind that its queue overflows: it should drop the connection.
        """
        sub = Subscriber(channels, self.settings.client_buffer, on_cut_off)
        to_confirm = self._attach(sub)
        try:
            await self._confirm(to_confirm)
            clock = await self._clock()
            for channel in to_confirm:
                channel.floor = max(channel.floor, clock[0])
            if opening:
                yield opening
            async for chunk in self._replay(sub, cursor, clock):
                yield chunk
            tail = sub.go_live()
            if tail:
                yield tail
            while (batch := await sub.next_batch()) is not None:
                yield batch
        except RedisError as exc:
            raise BackendUnavailable(f"Redis failed while serving a stream: {exc}") from exc
        finally:
            self._detach(sub)

    def _attach(self, sub: Subscriber) -> list[_Channel]:
        self._subscribers.add(sub)
        attached = []
        for name in sub.channels:
            live = self.keys.live(name).encode()
            channel = self._channels.get(live)
            if channel is None:
                channel = self._channels[live] = _Channel(name)
            channel.subscribers.add(sub)
            channel.idle_since = None
            attached.append(channel)
        return attached

    def _detach(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        now = asyncio.get_running_loop().time()
        for name in sub.channels:
            channel = self._channels.get(self.keys.live(name).encode())
            if channel is not None:
                channel.subscribers.discard(sub)
                if not channel.subscribers:
                    channel.idle_since = now

    async def _confirm(self, channels: list[_Channel]) -> None:
        """Make sure the live connection has confirmed a subscription to each channel."""
        ps = self._pubsub
        unsent = [c for c in channels if c.session is None]
        if ps is not None and unsent and _usable(ps):
            for channel in unsent:
                channel.session = ps
                channel.pending += 1
            # On failure the reader notices the broken connection and resubscribes everything.
            with contextlib.suppress(RedisError):
                await ps.subscribe(*(self.keys.live(c.name) for c in unsent))
        loop = asyncio.get_running_loop()
        # With the live connection known to be down, say so soon rather than keep a new
        # client waiting in silence; a slow but working Redis gets the full timeout.
        timeout = CONFIRM_TIMEOUT if self.live else DOWN_CONFIRM_TIMEOUT
        deadline = loop.time() + timeout
        for channel in channels:
            try:
                await asyncio.wait_for(channel.confirmed.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                state = "" if self.live else " (the live connection to Redis is down)"
                raise BackendUnavailable(
                    f"Redis did not confirm the subscription to {channel.name!r} within "
                    f"{timeout:.0f}s{state}; retry later"
                ) from None

    async def _replay(
        self, sub: Subscriber, cursor: str | None, clock: tuple[EventId, int | None, int]
    ) -> AsyncIterator[bytes]:
        head, since, now_ms = clock
        if cursor is None:
            sub.last = head
            return
        strict = True
        if cursor == "earliest":
            after, strict = (0, 0), False
        else:
            try:
                after = parse_id(cursor)
            except ValueError:
                yield await self._reset(sub, "invalid", f"{cursor[:60]!r} is not a hub event id")
                return
            if after == (0, 0):
                strict = False
            elif after > head:
                yield await self._reset(
                    sub,
                    "unknown",
                    f"{cursor} is not in this hub's history (it is newer than "
                    "the last event: from another hub, or from before Redis lost its data)",
                )
                return
            elif since is not None and after[0] < since:
                yield await self._reset(
                    sub,
                    "history_lost",
                    f"{cursor} predates this Redis's history (it started "
                    "again empty); events after it may be lost",
                )
                return
        ttl_ms = int(self.settings.history_ttl * 1000)
        reader = HistoryReader(
            self.redis,
            self.keys,
            sub.channels,
            after,
            strict=strict,
            expired_before=(now_ms - ttl_ms, 0) if ttl_ms else None,
        )
        sub.last = after
        chunk: list[bytes] = []
        size = 0
        async for entry in reader:
            if reader.gaps:
                break
            if entry.id <= sub.last:
                continue  # the same event from another of the client's channels
            frame = encode_frame(entry.raw_id, entry.event, entry.data)
            chunk.append(frame)
            size += len(frame)
            sub.last = entry.id
            if size >= REPLAY_CHUNK:
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            yield b"".join(chunk)
        if reader.gaps:
            names = ", ".join(repr(c) for c in reader.gaps[:5])
            yield await self._reset(
                sub,
                "expired",
                f"history of {names} no longer reaches back to "
                f"{format_id(after)}: events after it were trimmed (HUB_HISTORY_SIZE / "
                "HUB_HISTORY_TTL)",
                channels=reader.gaps,
            )

    async def _reset(
        self, sub: Subscriber, reason: str, message: str, channels: list[str] | None = None
    ) -> bytes:
        """Tell the client its cursor cannot be honoured; it continues live from now."""
        head, _, _ = await self._clock()
        sub.last = max(sub.last, head)
        payload: dict[str, Any] = {"reason": reason, "message": message}
        payload["channels"] = channels if channels is not None else sub.channels
        return signal_frame("hub.reset", payload, event_id=format_id(sub.last))

    async def _clock(self) -> tuple[EventId, int | None, int]:
        """(last id handed out or ``(0, 0)``, history start in ms, Redis time in ms)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.clock, "ms", "n", "since")
            pipe.time()
            (ms, n, since), (secs, micros) = await pipe.execute()
        head = (int(ms), int(n)) if ms is not None else (0, 0)
        return head, int(since) if since is not None else None, secs * 1000 + micros // 1000

    # -- the live connection ------------------------------------------------------------

    async def _session(self) -> None:
        """One life of the live connection: subscribe, recover, then read until it breaks."""
        ps = self._live_redis.pubsub(ignore_subscribe_messages=False)
        watch = _ReconnectWatch()
        try:
            await ps.connect()  # type: ignore[no-untyped-call]
            if ps.connection is not None and hasattr(ps.connection, "register_connect_callback"):
                ps.connection.register_connect_callback(watch.on_connect)
            self._pubsub = ps
            for live, channel in list(self._channels.items()):
                if not channel.subscribers:
                    del self._channels[live]
            initial = list(self._channels.values())
            for channel in initial:
                channel.session, channel.pending = ps, 1
                channel.confirmed.clear()
            if initial:
                await ps.subscribe(*(self.keys.live(c.name) for c in initial))
            held = await self._await_confirmations(ps, initial)
            if self._watermark is None:
                self._watermark, _, _ = await self._clock()
            else:
                await self._recover()
            for message in held:
                self._dispatch(message["channel"], message["data"])
            self.live = True
            logger.info("live path connected (%d channels)", len(self._channels))
            await self._read(ps, watch)
        finally:
            self.live = False
            if self._pubsub is ps:
                self._pubsub = None
            for channel in self._channels.values():
                channel.session, channel.pending = None, 0
                channel.confirmed.clear()
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(ps.aclose(), 2.0)  # type: ignore[no-untyped-call]

    async def _await_confirmations(
        self, ps: PubSub, channels: list[_Channel]
    ) -> list[dict[str, Any]]:
        held: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIRM_TIMEOUT
        while any(not c.confirmed.is_set() for c in channels):
            if loop.time() > deadline:
                raise BackendUnavailable("Redis did not confirm the live subscriptions")
            message = await ps.get_message(timeout=1.0)
            if message is None:
                continue
            if message["type"] == "message":
                held.append(message)
            else:
                self._control(ps, message)
        return held

    async def _recover(self) -> None:
        """Deliver what was published on subscribed channels while the connection was down."""
        assert self._watermark is not None
        channels = [c for c in self._channels.values() if c.subscribers]
        if not channels:
            return
        by_name = {c.name: c for c in channels}
        ttl_ms = int(self.settings.history_ttl * 1000)
        _, _, now_ms = await self._clock()
        reader = HistoryReader(
            self.redis,
            self.keys,
            list(by_name),
            self._watermark,
            expired_before=(now_ms - ttl_ms, 0) if ttl_ms else None,
            dedupe=False,
        )
        recovered = 0
        async for entry in reader:
            frame = encode_frame(entry.raw_id, entry.event, entry.data)
            for sub in list(by_name[entry.channel].subscribers):
                sub.deliver(entry.id, frame)
            self._watermark = max(self._watermark, entry.id)
            recovered += 1
        for name in reader.gaps:
            # Trimmed before we could read it: these clients reconnect and get hub.reset.
            for sub in list(by_name[name].subscribers):
                sub.close("gap", final=retry_frame(self.settings.retry_ms))
        if recovered or reader.gaps:
            logger.warning(
                "recovered %d events published while the live connection was down%s",
                recovered,
                f"; history too short for {reader.gaps}" if reader.gaps else "",
            )

    async def _read(self, ps: PubSub, watch: _ReconnectWatch) -> None:
        loop = asyncio.get_running_loop()
        last_rx = loop.time()
        ping_sent: float | None = None
        next_chores = last_rx + 1.0
        next_position_check = last_rx + self.settings.position_check
        while True:
            if watch.reconnected:
                raise BackendUnavailable("the live connection was re-established; recovering")
            message = await ps.get_message(timeout=1.0)
            now = loop.time()
            if message is not None:
                last_rx, ping_sent = now, None
                if message["type"] == "message":
                    self._dispatch(message["channel"], message["data"])
                else:
                    self._control(ps, message)
                if now < next_chores:
                    continue
            next_chores = now + 1.0
            await self._unsubscribe_idle(ps, now)
            if ping_sent is not None and now - ping_sent > PROBE_TIMEOUT:
                raise BackendUnavailable(
                    f"no answer to PING on the live connection in {PROBE_TIMEOUT:.0f}s"
                )
            if ping_sent is None and now - last_rx > PROBE_AFTER and ps.subscribed:
                await ps.ping()
                ping_sent = now
            if now >= next_position_check:
                next_position_check = now + self.settings.position_check
                await self._check_positions()

    async def _check_positions(self) -> None:
        """Notice a lost *last* event: nothing later arrives to reveal that gap.

        The newest entry of each followed channel's history must not be newer than what
        this node has seen, unless it is too recent to have arrived yet. If one is, the
        session is restarted: that resubscribes (a wedged subscription is fixed too) and
        recovers everything after the watermark, in order.
        """
        channels = [c for c in self._channels.values() if c.subscribers and c.confirmed.is_set()]
        if not channels or self._watermark is None:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.xrevrange(self.keys.stream(channel.name), b"+", b"-", 1)
            pipe.time()
            *lasts, (secs, micros) = await pipe.execute()
        settled_ms = (
            secs * 1000
            + micros // 1000
            - int(min(POSITION_GRACE, self.settings.position_check / 2) * 1000)
        )
        missed = []
        for channel, last in zip(channels, lasts, strict=True):
            if not last:
                continue
            newest = parse_id(last[0][0])
            if newest > max(self._watermark, channel.floor) and newest[0] < settled_ms:
                missed.append(channel.name)
        if missed:
            raise BackendUnavailable(
                f"the live connection missed the newest event of {missed[:5]}; "
                "resubscribing and recovering"
            )

    def _control(self, ps: PubSub, message: dict[str, Any]) -> None:
        if message["type"] != "subscribe":
            return
        channel = self._channels.get(message["channel"])
        if channel is not None and channel.session is ps:
            channel.pending -= 1
            if channel.pending <= 0:
                channel.confirmed.set()

    async def _unsubscribe_idle(self, ps: PubSub, now: float) -> None:
        idle = [
            live
            for live, c in self._channels.items()
            if not c.subscribers
            and c.idle_since is not None
            and now - c.idle_since > IDLE_LINGER
            and c.pending == 0
        ]
        if not idle:
            return
        for live in idle:
            del self._channels[live]
        await ps.unsubscribe(*idle)

    def _dispatch(self, live: bytes, payload: bytes) -> None:
        """One live message: encode it once, queue it for every subscriber of the channel."""
        raw_id, _prev, event, data = payload.split(b"\n", 3)
        ms, _, n = raw_id.partition(b"-")
        event_id = (int(ms), int(n))
        if self._watermark is None or event_id > self._watermark:
            self._watermark = event_id
        channel = self._channels.get(live)
        if channel is None or not channel.subscribers:
            return
        # An event published to several channels arrives once per channel, back to back.
        cached_id, frame = self._cached
        if cached_id != raw_id:
            frame = encode_frame(raw_id, event, data)
            self._cached = (raw_id, frame)
        for sub in channel.subscribers:
            sub.deliver(event_id, frame)


class _ReconnectWatch:
    """redis-py reconnects a dropped pub/sub connection by itself and resubscribes; what
    was published in between would be lost without a word. This notices, so the reader
    starts a proper session (with recovery) instead."""

    def __init__(self) -> None:
        self.reconnected = False

    async def on_connect(self, _connection: Any) -> None:
        self.reconnected = True


def _usable(ps: PubSub) -> bool:
    connection = ps.connection
    return connection is None or bool(getattr(connection, "is_connected", True))
