"""The live path: one pub/sub connection per process, fanning events out to subscribers.

Every hub process keeps ONE pub/sub connection, subscribed to the ``live:`` names of the
channels its clients follow; a reader task turns each message into SSE bytes once and
queues those bytes for every subscriber of the channel.

Redis delivers pub/sub messages on a connection in publish order, and drops the
connection rather than a message; so what a node received is a prefix of the event
order, and its *watermark* (the last id it saw) says where that prefix ends. After a
reconnect the node reads every followed channel's history after the watermark and
delivers it, in order, before any new live event. A periodic position check catches
the one loss that no later event reveals: the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from hub.config import Settings
from hub.delivery.channel import Channel
from hub.delivery.fanout import Fanout
from hub.delivery.stream import Stream
from hub.errors import BackendUnavailable
from hub.store import Clock, EventId, Follower, LiveConnection, Store, format_id

__all__ = ["LivePath"]

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


class LivePath:
    """The channel registry and the reader of one live connection (run it supervised).

    What a live message means, and how to catch up after a reconnect, is the
    ``fanout``'s business (:mod:`hub.delivery.fanout`): the native path's, or a door's.
    """

    def __init__(self, store: Store, settings: Settings, fanout: Fanout) -> None:
        self.settings = settings
        self.store = store
        self.fanout = fanout
        self._follower: Follower = store.follower()
        self._channels: dict[bytes, Channel] = {}
        #: Every open client stream of this process.
        self.subscribers: set[Stream] = set()
        self._conn: LiveConnection | None = None
        #: Messages that arrived while a session was being set up (until its recovery).
        self._held: list[tuple[bytes, bytes]] | None = None
        self._watermark: EventId | None = None
        #: True while the live connection is up and subscribed.
        self.live = False

    @property
    def watermark(self) -> EventId | None:
        """The newest id this node has seen live (events up to it were all received)."""
        return self._watermark

    def channels(self) -> list[Channel]:
        """The channels this path is subscribed to (or about to be)."""
        return list(self._channels.values())

    def advance(self, event_id: EventId) -> None:
        """Events up to ``event_id`` have been received (live, or recovered)."""
        if self._watermark is None or event_id > self._watermark:
            self._watermark = event_id

    async def aclose(self) -> None:
        """Close the live connection's client (the node is stopping)."""
        await self._follower.aclose()

    def attach(self, sub: Stream) -> list[Channel]:
        self.subscribers.add(sub)
        attached = []
        for name in sub.channels:
            live = self.fanout.live_name(name).encode()
            channel = self._channels.get(live)
            if channel is None:
                channel = self._channels[live] = Channel(name)
            channel.subscribers.add(sub)
            channel.idle_since = None
            attached.append(channel)
        return attached

    def detach(self, sub: Stream, now: float | None = None) -> None:
        self.subscribers.discard(sub)
        if now is None:
            now = asyncio.get_running_loop().time()
        for name in sub.channels:
            channel = self._channels.get(self.fanout.live_name(name).encode())
            if channel is not None:
                channel.subscribers.discard(sub)
                if not channel.subscribers:
                    channel.idle_since = now

    async def confirm(self, channels: list[Channel]) -> None:
        """Make sure the live connection has confirmed a subscription to each channel."""
        if all(c.confirmed.is_set() for c in channels):
            return  # the common case: nothing to send or wait for
        conn = self._conn
        unsent = [c for c in channels if c.session is None]
        if conn is not None and unsent and not conn.lost.done():
            for channel in unsent:
                channel.session = conn
                channel.pending += 1
            # On failure the reader notices the broken connection and resubscribes everything.
            with contextlib.suppress(BackendUnavailable):
                await conn.subscribe([self.fanout.live_name(c.name) for c in unsent])
        loop = asyncio.get_running_loop()
        # With the live connection known to be down, say so soon rather than keep a new
        # client waiting in silence; a slow but working Redis gets the full timeout.
        timeout = CONFIRM_TIMEOUT if self.live else DOWN_CONFIRM_TIMEOUT
        deadline = loop.time() + timeout
        for channel in channels:
            if channel.confirmed.is_set():
                continue
            # asyncio.wait, not wait_for: on Python < 3.12 wait_for swallows a cancellation
            # that lands as the awaited event fires, and the client's stream would outlive
            # the client.
            waiter = loop.create_task(channel.confirmed.wait())
            try:
                await asyncio.wait({waiter}, timeout=max(0.0, deadline - loop.time()))
            finally:
                waiter.cancel()
            if not channel.confirmed.is_set():
                state = "" if self.live else " (the live connection to Redis is down)"
                raise BackendUnavailable(
                    f"Redis did not confirm the subscription to {channel.name!r} within "
                    f"{timeout:.0f}s{state}; retry later"
                )

    async def run(self) -> None:
        """One life of the live connection: subscribe, recover, then read until it breaks."""
        self._held = []
        conn = await self._follower.open(self._on_message, self._on_subscribed)
        try:
            self._conn = conn
            for live, channel in list(self._channels.items()):
                if not channel.subscribers:
                    del self._channels[live]
            initial = list(self._channels.values())
            for channel in initial:
                channel.session, channel.pending = conn, 1
                channel.confirmed.clear()
            if initial:
                await conn.subscribe([self.fanout.live_name(c.name) for c in initial])
            await self._await_confirmations(conn, initial)
            clock = await self.store.read_clock()
            if self._watermark is None:
                self._watermark = clock.head
            else:
                if clock.head < self._watermark:
                    await self._note_loss(clock.head, self._watermark)
                await self._recover(clock)
            held, self._held = self._held, None
            for live, payload in held:
                self._dispatch(live, payload)
            self.live = True
            logger.info("live path connected (%d channels)", len(self._channels))
            await self._watch(conn)
        finally:
            self.live = False
            self._held = None
            if self._conn is conn:
                self._conn = None
            for channel in self._channels.values():
                channel.session, channel.pending = None, 0
                channel.confirmed.clear()
            await conn.aclose()

    def _on_message(self, live: bytes, payload: bytes) -> None:
        if self._held is not None:
            self._held.append((live, payload))  # delivered after the session's recovery
        else:
            self._dispatch(live, payload)

    def _on_subscribed(self, live: bytes) -> None:
        channel = self._channels.get(live)
        if channel is not None and channel.session is self._conn:
            channel.pending -= 1
            if channel.pending <= 0:
                channel.confirmed_at = asyncio.get_running_loop().time()
                channel.confirmed.set()

    async def _await_confirmations(self, conn: LiveConnection, channels: list[Channel]) -> None:
        waiting = [c for c in channels if not c.confirmed.is_set()]
        if not waiting:
            return
        confirmed = asyncio.ensure_future(asyncio.gather(*(c.confirmed.wait() for c in waiting)))
        try:
            either: set[asyncio.Future[Any]] = {confirmed, conn.lost}
            await asyncio.wait(either, timeout=CONFIRM_TIMEOUT, return_when="FIRST_COMPLETED")
        finally:
            confirmed.cancel()
        if conn.lost.done():
            conn.lost.result()  # raises why
        if not all(c.confirmed.is_set() for c in waiting):
            raise BackendUnavailable("Redis did not confirm the live subscriptions")

    async def _note_loss(self, head: EventId, watermark: EventId) -> None:
        """This node delivered events that Redis no longer has: it failed over to a
        replica that had not received them, or restarted without them. Record the range,
        so that clients resuming from inside it get ``hub.reset`` instead of a silent
        hole; and recover from what Redis has, since the new master's ids continue from
        its own head."""
        logger.warning(
            "Redis lost events %s..%s that this node had delivered (failover or restart); "
            "clients resuming from before %s get hub.reset",
            format_id(head),
            format_id(watermark),
            format_id(watermark),
        )
        await self.store.record_loss(head, watermark)
        self._watermark = head
        # Open streams that saw lost events must not skip the new master's events as
        # already sent: those can carry lower ids when both masters took writes.
        for sub in self.subscribers:
            sub.last = min(sub.last, head)

    async def _recover(self, clock: Clock) -> None:
        """Deliver what was published on subscribed channels while the connection was
        down (``clock``: read once the session's subscriptions were confirmed)."""
        assert self._watermark is not None
        await self.fanout.recover(self, self._watermark, clock)

    async def _watch(self, conn: LiveConnection) -> None:
        """Chores, once a second, until the connection breaks: unsubscribe idle channels,
        probe a silent connection with PING, check positions."""
        loop = asyncio.get_running_loop()
        ping_sent: float | None = None
        next_position_check = loop.time() + self.settings.position_check
        while True:
            await asyncio.wait({conn.lost}, timeout=1.0)
            if conn.lost.done():
                conn.lost.result()  # raises why
                raise BackendUnavailable("the live connection ended")
            now = loop.time()
            await self._unsubscribe_idle(conn, now)
            if ping_sent is not None and conn.last_rx >= ping_sent:
                ping_sent = None
            if ping_sent is not None and now - ping_sent > PROBE_TIMEOUT:
                raise BackendUnavailable(
                    f"no answer to PING on the live connection in {PROBE_TIMEOUT:.0f}s"
                )
            if ping_sent is None and now - conn.last_rx > PROBE_AFTER and await conn.ping():
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
        lasts, now_ms = await self.store.newest(
            [self.fanout.history_key(channel.name) for channel in channels]
        )
        settled_ms = now_ms - int(min(POSITION_GRACE, self.settings.position_check / 2) * 1000)
        missed = []
        for channel, newest in zip(channels, lasts, strict=True):
            if newest is None:
                continue
            if newest > max(self._watermark, channel.floor) and newest[0] < settled_ms:
                missed.append(channel.name)
        if missed:
            raise BackendUnavailable(
                f"the live connection missed the newest event of {missed[:5]}; "
                "resubscribing and recovering"
            )

    async def _unsubscribe_idle(self, conn: LiveConnection, now: float) -> None:
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
        await conn.unsubscribe(idle)

    def _dispatch(self, live: bytes, payload: bytes) -> None:
        self.advance(self.fanout.dispatch(self._channels.get(live), payload))
