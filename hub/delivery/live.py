"""The live path: one pub/sub connection per shard a process needs, fanning events out.

Every hub process keeps ONE live path, and on it one connection to each shard (one
Redis: one connection) that holds a channel its clients follow, subscribed to those
channels' live names (and, while Mercure subscribers of patterns are open, to every
channel's: hub/delivery/wide.py). Each message is decoded once and framed once, and its
frame handed to every stream of its channel: at once to streams that follow that channel
alone, in key order to the others (hub/delivery/order.py).

Redis delivers pub/sub messages on a connection in publish order, and drops the
connection rather than a message; so what a node received of a channel is a prefix of
its events, and :attr:`Channel.seen` says where that prefix ends. After a reconnect the
node reads each followed channel's history after ``seen`` and delivers it before any new
live event (hub/delivery/recovery.py). A periodic position check catches the one loss
that no later event reveals: the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial

from hub.config import Settings
from hub.delivery.channel import Channel
from hub.delivery.order import Order
from hub.delivery.sessions import CONFIRM_TIMEOUT, PROBE_TIMEOUT, Session, Sessions
from hub.delivery.sse import native_frame
from hub.delivery.stats import Stats, lag_since
from hub.delivery.stream import Stream
from hub.delivery.wide import Wide
from hub.errors import BackendUnavailable
from hub.store import Event, Store, cut, live_event, partition_of

__all__ = ["LivePath"]

logger = logging.getLogger("hub")

#: Seconds a subscriber waits for Redis to confirm its channels while the live
#: connection is known to be down (CONFIRM_TIMEOUT while it is up).
DOWN_CONFIRM_TIMEOUT = 2.0


class LivePath:
    """The channel registry and the readers of one process's live connections (run
    :meth:`run` supervised). Streams of every door run on it."""

    def __init__(self, store: Store, settings: Settings, stats: Stats) -> None:
        self.settings = settings
        self.store = store
        self.stats = stats
        self._keys = store.keys
        self._shards = store.shards
        #: Channels by the name their messages arrive on.
        self.channel_map: dict[bytes, Channel] = {}
        self._channels = self.channel_map
        #: Every open client stream of this process.
        self.subscribers: set[Stream] = set()
        self.order = Order(self._released, self._probe)
        self.wide = Wide(self._keys, sharded=self._shards.sharded)
        #: The connections: a session per shard (hub/delivery/sessions.py).
        self.sessions = Sessions(self)
        self._sessions = self.sessions.current

    # -- what the broker and streams see ---------------------------------------------

    @property
    def live(self) -> bool:
        """True while every shard this process needs is connected and subscribed."""
        followed = [c for c in self._channels.values() if c.followed()]
        if not followed:
            return all(s.live for s in self._sessions.values()) if self._sessions else True
        return self._live_for(followed)

    def _live_for(self, channels: list[Channel]) -> bool:
        # confirm() asks this of its own channels only: asking ``live`` (every channel)
        # per new subscription made 10,000 streams on 10,000 channels cost 12x the CPU.
        sessions = self._sessions
        return all(c.shard in sessions and sessions[c.shard].live for c in channels)

    def channels(self) -> list[Channel]:
        """The channels this path is subscribed to (or about to be)."""
        return list(self._channels.values())

    def attach(self, sub: Stream) -> list[Channel]:
        self.subscribers.add(sub)
        attached = []
        for name in sub.channels:
            for channel in self._channels_for(name):
                if sub.ordered:
                    if not channel.later and channel.shard is not None:
                        self.order.need(channel.shard, +1)
                    channel.later.add(sub)
                else:
                    channel.now.add(sub)
                channel.idle_since = None
                attached.append(channel)
        self.sessions.ask(c.shard for c in attached if c.session is None)
        return attached

    def _channels_for(self, name: str) -> list[Channel]:
        live_names = self.wide.names() if name == "" else [self._keys.live(name).encode()]
        found = []
        for live in live_names:
            channel = self._channels.get(live)
            if channel is None:
                if name == "":
                    channel = self.wide.channel(live)
                else:
                    channel = Channel(name, live, (partition_of(name),), wide=False)
                if self._shards.ready():
                    channel.shard = self._shards.shard_of(channel.partitions[0])
                self._channels[live] = channel
            found.append(channel)
        return found

    def detach(self, sub: Stream, now: float | None = None) -> None:
        self.subscribers.discard(sub)
        if now is None:
            now = asyncio.get_running_loop().time()
        for name in sub.channels:
            for channel in self._channels_for(name):
                channel.now.discard(sub)
                if sub in channel.later:
                    channel.later.discard(sub)
                    if not channel.later and channel.shard is not None:
                        self.order.need(channel.shard, -1)
                if not channel.followed():
                    channel.idle_since = now

    async def confirm(self, channels: list[Channel]) -> None:
        """Return once the live connection has confirmed a subscription to each channel,
        and each channel knows how far this node has seen it (:attr:`Channel.seen`)."""
        if all(c.confirmed.is_set() and c.seen is not None for c in channels):
            return  # the common case: nothing to send or wait for
        for channel in channels:
            await self._subscribe(channel)
        loop = asyncio.get_running_loop()
        # With the live connection known to be down, say so soon rather than keep a new
        # client waiting in silence; a slow but working Redis gets the full timeout.
        live = self._live_for(channels)
        timeout = CONFIRM_TIMEOUT if live else DOWN_CONFIRM_TIMEOUT
        deadline = loop.time() + timeout
        for channel in channels:
            while not (channel.confirmed.is_set() and channel.seen is not None):
                # asyncio.wait, not wait_for: on Python < 3.12 wait_for swallows a
                # cancellation that lands as the awaited event fires, and the client's
                # stream would outlive the client.
                left = deadline - loop.time()
                if left <= 0:
                    state = "" if live else " (the live connection to Redis is down)"
                    raise BackendUnavailable(
                        f"Redis did not confirm the subscription to {channel.name or '*'!r} "
                        f"within {timeout:.0f}s{state}; retry later"
                    )
                if channel.confirmed.is_set():
                    await self._settle(channel, left)
                    continue
                if channel.session is None:
                    # Not subscribed yet: its shard was unknown, or had no live session.
                    await self._subscribe(channel)
                waiter = loop.create_task(channel.confirmed.wait())
                try:
                    pause = left if channel.session is not None else min(left, 0.05)
                    await asyncio.wait({waiter}, timeout=pause)
                finally:
                    waiter.cancel()

    async def _subscribe(self, channel: Channel) -> None:
        """Subscribe ``channel`` on its shard's live connection, if it is up and the
        channel is not on it yet (a session being set up subscribes its own)."""
        session = self._sessions.get(channel.shard) if channel.shard is not None else None
        conn = session.conn if session is not None and session.live else None
        if channel.session is None and conn is not None and not conn.lost.done():
            channel.session = conn
            channel.pending += 1
            # On failure the session notices the broken connection and resubscribes.
            with contextlib.suppress(BackendUnavailable):
                await self.sessions.subscribe(conn, [channel])

    async def _settle(self, channel: Channel, timeout: float) -> None:
        """A channel confirmed just now: every event it had before was stamped at most at
        the probe's millisecond; once the shard has passed that, this node has all that
        arrives live, and a stream on it may start after that millisecond."""
        session = self._sessions.get(channel.shard or "")
        if session is None or session.conn is None:
            await asyncio.sleep(min(timeout, 0.05))
            return
        probe = session.conn.probe()
        try:
            done, _ = await asyncio.wait({probe}, timeout=timeout)
            if not done:
                return
            ms = probe.result()
        except BackendUnavailable:
            return
        await self.order.passed(ms, (session.shard,))
        if channel.seen is None:
            channel.seen = cut(ms + 1)

    async def probe(self, shard: str) -> int:
        """``shard``'s time in ms, read on its live connection: every event it stamped
        before that millisecond has reached this node (and is delivered or queued)."""
        session = self._sessions.get(shard)
        if session is None or session.conn is None:
            raise BackendUnavailable("the live connection to Redis is down; retry")
        ms = await asyncio.wait_for(session.conn.probe(), PROBE_TIMEOUT)
        if session.held is None:
            self.order.advance(shard, ms)
        return ms

    async def run(self) -> None:
        """Keep a session to each shard that holds a followed channel, until cancelled."""
        await self.sessions.run()

    async def aclose(self) -> None:
        """Stop every session (the node is stopping)."""
        await self.sessions.aclose()
        self.order.close()

    # -- messages ----------------------------------------------------------------------

    def on_message(self, session: Session, live_name: bytes, payload: bytes, pattern: bool) -> None:
        if session.held is not None:
            session.held.append((live_name, payload, pattern))  # after the session's recovery
        else:
            self.dispatch(session, live_name, payload, pattern)

    def dispatch(self, session: Session, live_name: bytes, payload: bytes, pattern: bool) -> None:
        if pattern:
            channel = self.wide.pattern_channel(self._channels)
            name: str | None = self._keys.channel_of_live(live_name)
        else:
            channel = self._channels.get(live_name)
            name = (
                None
                if channel is not None and channel.wide
                else (
                    channel.name if channel is not None else self._keys.channel_of_live(live_name)
                )
            )
        if channel is not None and channel.wide and name is None:
            event = live_event(payload, None, channel.partitions[0])
        else:
            event = live_event(payload, name)
        self.order.advance(session.shard, event.key[0])
        if channel is None:
            return
        if not channel.wide:
            channel.seen = event.key
        self.deliver(event, channel)

    def deliver(self, event: Event, channel: Channel) -> None:
        """Hand ``event`` to ``channel``'s streams: at once to those that follow it alone,
        in key order to the others."""
        self.stats.observe_lag(lag_since(event.key[0]))
        now = channel.now
        if now:
            deliver_to(event, now, self.stats)
        if channel.later:
            self.order.add(event.key, (event, channel))

    def _released(self, item: tuple[Event, Channel]) -> None:
        event, channel = item
        if channel.later:
            deliver_to(event, channel.later, self.stats)

    def _probe(self, shard: str) -> None:
        session = self._sessions.get(shard)
        if session is None or session.conn is None or session.held is not None:
            return  # the session's own probe will advance it once it is set up
        waiter = session.conn.probe()
        waiter.add_done_callback(partial(self._probed, shard))

    def _probed(self, shard: str, waiter: asyncio.Future[int]) -> None:
        if waiter.cancelled() or waiter.exception() is not None:
            self.order.probe_failed(shard)
            return
        self.order.advance(shard, waiter.result())


def deliver_to(event: Event, subs: set[Stream], stats: Stats) -> None:
    """One event to each of ``subs``, in the frame each takes (or none)."""
    key = event.key
    delivered = 0
    if not event.private and event.part < 0:
        # The common case, once per client per event: a plain native stream takes the
        # native frame as it is, without asking.
        frame = event.frame or native_frame(event)
        for sub in subs:
            if sub.plain:
                sub.deliver(key, frame)
                delivered += 1
            else:
                mine = sub.frame_for(event)
                if mine is not None:
                    sub.deliver(key, mine)
                    delivered += 1
    else:
        for sub in subs:
            mine = sub.frame_for(event)
            if mine is not None:
                sub.deliver(key, mine)
                delivered += 1
    stats.delivered += delivered
