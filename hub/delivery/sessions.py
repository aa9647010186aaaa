"""The live path's connections: one session per shard, each one life of a connection.

A session subscribes its shard's followed channels, waits for Redis to confirm them,
probes the shard's clock, recovers what its channels missed while they had no
connection (hub/delivery/recovery.py), then delivers live until the connection breaks;
then the next session of that shard starts over, after a back-off. On a cluster a
failed session makes the manager read the slot map again first: the channels of a
master that failed over, or of a slot that moved, go to the shard that holds them now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable
from functools import partial
from typing import Any, Protocol

from hub.config import Settings
from hub.delivery.channel import Channel
from hub.delivery.order import Order
from hub.delivery.recovery import check_positions, recover
from hub.delivery.stats import Stats
from hub.delivery.wide import Wide
from hub.errors import BackendUnavailable
from hub.store import Event, LiveConnection, Store, cut

__all__ = ["Followed", "Session", "Sessions"]

logger = logging.getLogger("hub")

#: Seconds a subscriber waits for Redis to confirm its channels before giving up.
CONFIRM_TIMEOUT = 10.0
#: Seconds a channel nobody follows stays subscribed (cheap reconnects, no churn).
IDLE_LINGER = 5.0
#: Seconds of silence on a live connection before it is probed...
PROBE_AFTER = 5.0
#: ...and seconds the probe may go unanswered before the connection counts as dead.
PROBE_TIMEOUT = 5.0
#: Seconds between attempts to reach a shard whose connection failed: doubled per failure.
MIN_BACKOFF, MAX_BACKOFF = 0.05, 5.0


class Session:
    """One life of the live connection to one shard."""

    __slots__ = ("conn", "held", "live", "shard")

    def __init__(self, shard: str) -> None:
        self.shard = shard
        self.conn: LiveConnection | None = None
        #: Messages that arrived while the session was being set up (until its recovery).
        self.held: list[tuple[bytes, bytes, bool]] | None = []
        self.live = False


class Followed(Protocol):
    """What sessions need of the live path they serve (:class:`hub.delivery.live.LivePath`)."""

    store: Store
    settings: Settings
    stats: Stats
    order: Order
    wide: Wide
    #: Channels by the name their messages arrive on.
    channel_map: dict[bytes, Channel]

    def channels(self) -> list[Channel]: ...

    def on_message(self, session: Session, live: bytes, payload: bytes, pattern: bool) -> None: ...

    def dispatch(self, session: Session, live: bytes, payload: bytes, pattern: bool) -> None: ...

    def deliver(self, event: Event, channel: Channel) -> None: ...


class Sessions:
    """A session to each shard that holds a followed channel (run :meth:`run` supervised)."""

    def __init__(self, path: Followed) -> None:
        self._path = path
        self._shards = path.store.shards
        #: The current session of each shard.
        self.current: dict[str, Session] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._backoff: dict[str, tuple[float, float]] = {}
        #: Set to look at once: a channel needs a session, or a session ended.
        self.wake = asyncio.Event()
        self._stale = False

    def ask(self, shards: Iterable[str | None]) -> None:
        """Channels on these shards want a session: wake :meth:`run` unless each shard's
        session is already running (it, or :meth:`LivePath.confirm`, subscribes them).

        Each wake scans every channel, so waking per new channel made a burst of
        streams on distinct channels cost the square of their number.
        """
        for shard in shards:
            task = self._tasks.get(shard) if shard is not None else None
            if task is None or task.done():
                self.wake.set()
                return

    async def aclose(self) -> None:
        """Stop every session (the node is stopping)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def run(self) -> None:
        """Keep a session to each shard that holds a followed channel, until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._stale or not self._shards.ready():
                    await self._shards.refresh()
                    self._stale = False
                    self._reassign()
                now = loop.time()
                self._drop_idle(now)
                needed = {c.shard for c in self._path.channel_map.values() if c.followed()}
                needed.discard(None)
                for shard in needed:
                    task = self._tasks.get(shard)  # type: ignore[arg-type]
                    due = self._backoff.get(shard, (0.0, 0.0))[0]  # type: ignore[arg-type]
                    if (task is None or task.done()) and now >= due:
                        self._start(shard)  # type: ignore[arg-type]
                    elif task is None or task.done():
                        # Waiting out a failed shard's back-off: on a cluster its slots
                        # may have a new master by now, so the map is read again meanwhile.
                        self._stale = self._shards.sharded
                self.wake.clear()
                # Until something changes, or the next shard's back-off is over.
                dues = [due for due, _ in self._backoff.values() if due > now]
                pause = min([0.5 if self._stale else 1.0, *(due - now for due in dues)])
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(0.0, pause))
        finally:
            for task in self._tasks.values():
                task.cancel()

    def _reassign(self) -> None:
        """After the slot map changed: put each channel on the shard that holds it now."""
        for channel in self._path.channel_map.values():
            shard = self._shards.shard_of(channel.partitions[0])
            if shard != channel.shard:
                if channel.later and channel.shard is not None:
                    self._path.order.need(channel.shard, -1)
                channel.shard = shard
                channel.session, channel.pending = None, 0
                channel.confirmed.clear()
                if channel.later:
                    self._path.order.need(shard, +1)

    def _start(self, shard: str) -> None:
        task = asyncio.get_running_loop().create_task(self._session_life(shard))
        self._tasks[shard] = task

    async def _session_life(self, shard: str) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._session(shard)
        except asyncio.CancelledError:
            raise
        except (BackendUnavailable, OSError) as exc:
            delay = self._failed(shard, started)
            logger.warning(
                "hub live reader (%s) failed: %s; again in %.2fs", shard or "redis", exc, delay
            )
        except Exception:
            delay = self._failed(shard, started)
            logger.exception(
                "hub live reader (%s) crashed; again in %.2fs", shard or "redis", delay
            )
        finally:
            self.wake.set()

    def _failed(self, shard: str, started: float) -> float:
        loop = asyncio.get_running_loop()
        _due, last = self._backoff.get(shard, (0.0, MIN_BACKOFF / 2))
        delay = MIN_BACKOFF if loop.time() - started > 10 else min(last * 2, MAX_BACKOFF)
        self._backoff[shard] = (loop.time() + delay * random.uniform(0.8, 1.2), delay)
        self._path.stats.reconnects += 1
        self._stale = self._shards.sharded  # a failover or a migration: read the slots again
        return delay

    async def _session(self, shard: str) -> None:
        """One life of one shard's connection: subscribe, recover, then read until it breaks."""
        session = Session(shard)
        conn = await self._shards.open(
            shard, partial(self._path.on_message, session), partial(self._on_subscribed, session)
        )
        old = self.current.get(shard)
        self.current[shard] = session
        try:
            session.conn = conn
            channels = [
                c for c in self._path.channel_map.values() if c.shard == shard and c.followed()
            ]
            for channel in channels:
                channel.session, channel.pending = conn, 1
                channel.confirmed.clear()
            if channels:
                await self.subscribe(conn, channels)
            await self._await_confirmations(conn, channels)
            ms = await asyncio.wait_for(conn.probe(), PROBE_TIMEOUT)
            await recover(self._path, [c for c in channels if c.seen is not None], ms)
            held, session.held = session.held or [], None
            for live_name, payload, via_pattern in held:
                self._path.dispatch(session, live_name, payload, via_pattern)
            self._path.order.advance(shard, ms)
            for channel in channels:
                if channel.seen is None:
                    channel.seen = cut(ms + 1)
            session.live = True
            # Channels attached while the session was being set up: too late for its
            # list, and confirm() saw no live connection to subscribe them on.
            late = [
                c
                for c in self._path.channel_map.values()
                if c.shard == shard and c.followed() and c.session is None
            ]
            for channel in late:
                channel.session, channel.pending = conn, 1
                channel.confirmed.clear()
            if late:
                await self.subscribe(conn, late)
            if old is None:
                logger.info(
                    "live path connected (%s, %d channels)", shard or "redis", len(channels)
                )
            await self._watch(session, conn)
        finally:
            session.live = False
            session.held = None
            if self.current.get(shard) is session:
                self._path.order.forget(shard)
            for channel in self._path.channel_map.values():
                if channel.session is conn:
                    channel.session, channel.pending = None, 0
                    channel.confirmed.clear()
            await conn.aclose()

    async def subscribe(self, conn: LiveConnection, channels: list[Channel]) -> None:
        """Subscribe ``conn`` to ``channels`` (a pattern for the wide channel of one Redis)."""
        pattern = self._path.wide.pattern
        for names in self._by_slot([c for c in channels if not (c.wide and pattern)]):
            await conn.subscribe(names)
        patterns = [c.live for c in channels if c.wide and pattern]
        if patterns:
            await conn.psubscribe(patterns)

    async def unsubscribe(self, conn: LiveConnection, channels: list[Channel]) -> None:
        pattern = self._path.wide.pattern
        for names in self._by_slot([c for c in channels if not (c.wide and pattern)]):
            await conn.unsubscribe(names)
        patterns = [c.live for c in channels if c.wide and pattern]
        if patterns:
            await conn.punsubscribe(patterns)

    def _by_slot(self, channels: list[Channel]) -> list[list[bytes]]:
        """Live names in groups one command may carry: on a cluster, SSUBSCRIBE takes the
        names of one slot (one partition) at a time."""
        if not self._shards.sharded:
            return [[c.live for c in channels]] if channels else []
        groups: dict[int, list[bytes]] = {}
        for channel in channels:
            groups.setdefault(channel.partitions[0], []).append(channel.live)
        return list(groups.values())

    def _on_subscribed(self, session: Session, live_name: bytes) -> None:
        channel = self._path.channel_map.get(live_name)
        if channel is not None and channel.session is session.conn:
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

    async def _watch(self, session: Session, conn: LiveConnection) -> None:
        """Chores, once a second, until the connection breaks: unsubscribe idle channels,
        probe a silent connection, check positions."""
        loop = asyncio.get_running_loop()
        probe: asyncio.Future[int] | None = None
        probe_sent = 0.0
        next_position_check = loop.time() + self._path.settings.position_check
        while True:
            await asyncio.wait({conn.lost}, timeout=1.0)
            if conn.lost.done():
                conn.lost.result()  # raises why
                raise BackendUnavailable("the live connection ended")
            now = loop.time()
            await self._unsubscribe_idle(session, conn, now)
            if probe is not None and probe.done():
                if probe.exception() is None:
                    self._path.order.advance(session.shard, probe.result())
                probe = None
            if probe is not None and now - probe_sent > PROBE_TIMEOUT:
                raise BackendUnavailable(
                    f"no answer to a probe on the live connection in {PROBE_TIMEOUT:.0f}s"
                )
            if probe is None and now - conn.last_rx > PROBE_AFTER:
                probe, probe_sent = conn.probe(), now
            if now >= next_position_check:
                next_position_check = now + self._path.settings.position_check
                await check_positions(self._path, conn)

    async def _unsubscribe_idle(self, session: Session, conn: LiveConnection, now: float) -> None:
        idle = [
            c
            for c in self._path.channel_map.values()
            if c.session is conn
            and not c.followed()
            and c.idle_since is not None
            and now - c.idle_since > IDLE_LINGER
            and c.pending == 0
        ]
        if not idle:
            return
        for channel in idle:
            del self._path.channel_map[channel.live]
        await self.unsubscribe(conn, idle)

    def _drop_idle(self, now: float) -> None:
        """Forget channels nobody followed for a while and no session carries."""
        for live, channel in list(self._path.channel_map.items()):
            lingered = channel.idle_since is None or now - channel.idle_since > IDLE_LINGER
            if channel.session is None and not channel.followed() and lingered:
                del self._path.channel_map[live]
