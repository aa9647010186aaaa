"""The broker: what a client's stream is made of, and where it comes from.

How an event travels: the publish script appends it to each channel's history stream
and publishes it on each channel's live name, atomically per partition; the live path
(:mod:`hub.delivery.live`) queues it, encoded once, for every stream on this process.

How a client gets exactly what it missed: its channels are confirmed subscribed BEFORE
its history is read; live events that arrive meanwhile are held and merged with the
history by key (hub/store/ids.py). Streams skip keys at or below the last one they got,
so an event that reaches a client twice (several channels, replay/live overlap,
recovery) is sent once. A cursor that cannot be honoured exactly gets ``hub.reset``
naming the channels concerned, and everything else it is owed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

from hub.config import Settings
from hub.delivery.admission import Admission
from hub.delivery.channel import Channel
from hub.delivery.live import LivePath
from hub.delivery.sse import HEARTBEAT, preamble, signal_frame
from hub.delivery.stats import Stats
from hub.delivery.stream import Stream, StreamControl
from hub.errors import BackendUnavailable
from hub.store import ZERO, Backend, Event, Key, Publisher, Store, cut, format_id, parse_id
from hub.store.keys import partition_of
from hub.store.store import partitions_of
from hub.supervise import Supervised

__all__ = ["Broker", "Replay"]

logger = logging.getLogger("hub")

#: Replay frames are written in chunks of about this many bytes.
REPLAY_CHUNK = 64 * 1024
#: Bytes in a direct writer's backlog above which the sweeper counts the client as not
#: reading (uvicorn's flow control pauses a response at 64 KiB too).
STUCK_BACKLOG = 64 * 1024
#: Seconds between checks that every partition has its start of history noted.
SINCE_EVERY = 5.0
#: Milliseconds a cursor may be ahead of Redis' clock (hosts' clocks differ a little).
FUTURE_SLACK_MS = 60_000
#: What a live path's reader may fail with that it logs briefly and restarts after.
_PASSING = (BackendUnavailable, OSError)


class Broker:
    """Connects clients' streams to Redis. Use as ``async with Broker(...) as broker``.

    It runs the process's live path; every stream on it, native or a door's, is
    admitted (:attr:`admission`), swept (heartbeats, stuck writes) and closed at
    shutdown here.
    """

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(backend, settings)
        self.publisher: Publisher = self.store.publisher
        self._stats = Stats()
        #: The live path every stream of this process runs on.
        self.live_path = LivePath(self.store, settings, self._stats)
        self._reader = Supervised("hub live path", self.live_path.run, quiet=_PASSING)
        self._sweeper = Supervised("hub stream sweeper", self._sweep)
        self._marker = Supervised("hub history marks", self._mark_since, quiet=_PASSING)
        self._stack = AsyncExitStack()
        #: The one connection limit, over every stream.
        self.admission = Admission(settings, self.open_streams)

    async def __aenter__(self) -> Broker:
        # Before the first stream: a resume right after start must find the marks. With
        # Redis not there yet, the marker keeps trying.
        with contextlib.suppress(BackendUnavailable, asyncio.TimeoutError):
            await asyncio.wait_for(self._mark_once(), 5.0)
        await self._marker.__aenter__()
        await self._reader.__aenter__()
        await self._sweeper.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_all("shutdown")
        await self._stack.__aexit__(exc_type, exc, tb)
        await self._sweeper.__aexit__(exc_type, exc, tb)
        await self._reader.__aexit__(exc_type, exc, tb)
        await self._marker.__aexit__(exc_type, exc, tb)
        await self.live_path.aclose()
        await self.store.aclose()

    @property
    def live(self) -> bool:
        """True while the live connections are up and subscribed."""
        return self.live_path.live

    @property
    def connections(self) -> int:
        """Open ``/events`` streams of this process (native ones)."""
        return sum(1 for sub in self.live_path.subscribers if sub.plain)

    def open_streams(self) -> int:
        """Open streams of every kind on this process (what admission counts)."""
        return len(self.live_path.subscribers)

    @property
    def stats(self) -> Stats:
        """This process's plain counters, for :mod:`hub.metrics`."""
        return self._stats

    @property
    def subscriptions(self) -> int:
        """Channel subscriptions of the open native streams (one stream on 3 channels: 3)."""
        return sum(len(sub.channels) for sub in self.live_path.subscribers if sub.plain)

    @property
    def redis_reconnects(self) -> int:
        """Times a live connection to Redis was lost and set up again."""
        return self._stats.reconnects + self._reader.restarts

    def close_all(self, reason: str, final: Callable[[], bytes] | None = None) -> int:
        """End every open stream after its queued frames, then ``final()`` (shutdown);
        return how many there were."""
        streams = list(self.live_path.subscribers)
        for sub in streams:
            sub.close(reason, final=final() if final else b"")
        return len(streams)

    async def ping(self) -> None:
        """Raise :class:`BackendUnavailable` unless Redis answers."""
        await self.store.ping()

    async def _mark_since(self) -> None:
        """Note when this Redis was first seen holding each partition's history (a Redis
        that lost its data gets a new start, and cursors from before it a reset)."""
        while True:
            await self._mark_once()
            await asyncio.sleep(SINCE_EVERY)

    async def _mark_once(self) -> None:
        await self.store.mark_since(await self.store.now_ms())

    # -- one client's stream ------------------------------------------------------------

    def stream(
        self,
        channels: list[str],
        cursor: str | None,
        response: StreamControl | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The SSE frames for one client: replay after ``cursor`` (if any), then live.

        ``cursor`` is a ``Last-Event-ID``, ``"earliest"`` for all retained history, or
        ``None`` for live events only. A cursor that cannot be honoured exactly gives a
        ``hub.reset`` frame, then what else it is owed and live events. The stream opens
        with a comment, a ``retry:`` hint and an id to resume from, once Redis has
        confirmed the subscription: every event published after a client has read it is
        delivered to that client. If Redis fails, the stream ends with a comment saying
        why and a ``retry:`` hint.

        ``response.abort(reason)`` is called when the client must be dropped at once
        (its queue overflowed, or a write blocked too long), and an abort from the
        response's side (the client went away) ends this stream.
        """
        loop = asyncio.get_running_loop()
        on_cut_off = response.abort if response is not None else None
        sub = Stream(channels, self.settings.client_buffer, on_cut_off, loop=loop)
        retry_ms = self.settings.retry_ms

        async def join(confirmed: list[Channel]) -> bytes:
            # Live only: the comment with the id the stream starts from, and the live
            # events that arrived meanwhile, as one chunk.
            sub.last = await self.start(sub, confirmed)
            return preamble(retry_ms, format_id(sub.last)) + sub.go_live()

        async def resume(confirmed: list[Channel]) -> AsyncGenerator[bytes, None]:
            assert cursor is not None
            yield preamble(retry_ms)
            async for chunk in Replay(self, sub, confirmed).run(cursor):
                yield chunk

        opening = join if cursor is None else resume
        return sub.run(
            self.live_path, response, opening, stats=self.stats, retry_ms=self.settings.retry_ms
        )

    async def start(self, sub: Stream, confirmed: list[Channel]) -> Key:
        """Where a stream without a cursor starts: every later event of its channels
        reaches it live, and every event published once it has its preamble is later.

        On one channel that is how far this node has seen the channel. On several it is
        a millisecond that every shard of them has passed, read after the subscriptions
        were confirmed (a probe, hub/delivery/order.py)."""
        if not sub.ordered:
            seen = confirmed[0].seen
            assert seen is not None
            return seen
        shards = _shards(confirmed)
        live = self.live_path
        times = [await live.probe(shard) for shard in shards]
        ms = max([*times, *(c.seen[0] for c in confirmed if c.seen is not None)])
        await live.order.passed(ms, shards)
        return cut(ms + 1)

    async def _sweep(self) -> None:
        """For every open stream: a heartbeat when it has been idle for ``HUB_HEARTBEAT``,
        and a cut-off when one write has been blocked for ``HUB_SEND_TIMEOUT``. One pass
        over all clients per period, instead of a timer per client per write."""
        settings = self.settings
        period = min(1.0, settings.heartbeat / 2, settings.send_timeout / 2)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for sub in list(self.live_path.subscribers):
                if sub.direct:
                    self._sweep_direct(sub, now)
                elif sub.writing_since is not None:
                    if now - sub.writing_since > settings.send_timeout:
                        sub.cut_off(f"stuck: one write blocked for {settings.send_timeout:g}s")
                elif now - sub.last_out >= settings.heartbeat:
                    sub.heartbeat(HEARTBEAT)

    def _sweep_direct(self, sub: Stream, now: float) -> None:
        # A direct writer never blocks; a stuck client shows as a backlog that stays
        # above what uvicorn's own flow control would have waited on.
        if sub.backlog() > STUCK_BACKLOG:
            if sub.writing_since is None:
                sub.writing_since = now
            elif now - sub.writing_since > self.settings.send_timeout:
                timeout = self.settings.send_timeout
                sub.cut_off(f"stuck: its socket did not drain for {timeout:g}s")
                return
        else:
            sub.writing_since = None
        if sub.sent != sub.sent_seen:
            sub.sent_seen, sub.last_out = sub.sent, now
        elif now - sub.last_out >= self.settings.heartbeat:
            sub.heartbeat(HEARTBEAT)
            sub.last_out = now


def _shards(channels: list[Channel]) -> list[str]:
    return sorted({c.shard for c in channels if c.shard is not None})


class Replay:
    """One stream's catch-up after its cursor: history merged with the live events
    that arrive meanwhile, and ``hub.reset`` for the channels it cannot serve exactly."""

    def __init__(self, broker: Broker, sub: Stream, confirmed: list[Channel]) -> None:
        self.broker = broker
        self.sub = sub
        self.confirmed = confirmed

    async def run(self, cursor: str) -> AsyncIterator[bytes]:
        broker, sub = self.broker, self.sub
        store, settings = broker.store, broker.settings
        strict = True
        if cursor == "earliest":
            after, strict = ZERO, False
        else:
            try:
                after = parse_id(cursor)
            except ValueError:
                yield await self.reset("invalid", f"{cursor[:60]!r} is not a hub event id")
                return
            if after == ZERO:
                strict = False
        now_ms = await store.now_ms()
        if strict and after[0] > now_ms + FUTURE_SLACK_MS:
            yield await self.reset(
                "unknown",
                f"{cursor} is not in this hub's history (it is from the future: from "
                "another hub, or made up)",
            )
            return
        channels = list(sub.channels)
        predating: list[str] = []
        if strict:
            since = await store.since(partitions_of(channels))
            predating = [c for c in channels if _predates(after, since, c)]
            channels = [c for c in channels if c not in predating]
        ttl_ms = int(settings.history_ttl * 1000)
        broker.stats.replays += 1
        sub.last = after
        reader = store.history(
            channels,
            after,
            strict=strict,
            expired_before=now_ms - ttl_ms if ttl_ms else None,
            follows=sub.follows,
            until=await self.bound(),
        )
        async for chunk in self.merged(reader):
            yield chunk
        lost = predating + reader.lost
        gaps = reader.gaps
        if lost:
            yield await self.reset(
                "history_lost",
                f"Redis lost events of {_names(lost)} after {cursor} (it started again "
                "empty, or a failover lost them); events after it may be missing",
                channels=lost + gaps,
            )
        elif gaps:
            yield await self.reset(
                "expired",
                f"history of {_names(gaps)} no longer reaches back to {cursor}: events "
                "after it were trimmed (HUB_HISTORY_SIZE / HUB_HISTORY_TTL)",
                channels=gaps,
            )

    async def bound(self) -> Key | None:
        """Where the history of a stream on several channels stops and its live events
        take over (``None``, one channel: no need).

        Its channels' histories are read one after the other, and an event published
        in between is in one read and not the other, and comes live later than the
        history after it: merged by key it would be skipped. So every shard is asked for
        its time first, and the replay waits until each has passed the latest: every
        event before is in the histories read after, and has reached this node and been
        held back for the stream; every event after comes live."""
        if not self.sub.ordered:
            return None
        return await self.broker.start(self.sub, self.confirmed)

    async def merged(self, reader: AsyncIterable[Event]) -> AsyncIterator[bytes]:
        """The history's frames, with the live frames held back meanwhile interleaved
        by key, in chunks of about REPLAY_CHUNK bytes."""
        sub, stats = self.sub, self.broker.stats
        chunk: list[bytes] = []
        size = 0
        async for event in reader:
            key = event.key
            chunk.extend(sub.interleave(key))
            if key <= sub.last:
                continue  # the same event from another of the client's channels
            frame = sub.frame_for(event)
            if frame is None:
                continue
            chunk.append(frame)
            size += len(frame)
            sub.last = key
            if size >= REPLAY_CHUNK:
                sub.sent += len(chunk)
                stats.replayed += len(chunk)
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            sub.sent += len(chunk)
            stats.replayed += len(chunk)
            yield b"".join(chunk)

    async def reset(self, reason: str, message: str, channels: list[str] | None = None) -> bytes:
        """Tell the client its cursor cannot be honoured for ``channels``; it continues
        with everything else, and live, from a position every shard has passed."""
        sub = self.sub
        start = await self.broker.start(sub, self.confirmed)
        sub.last = max(sub.last, start)
        sub.sent += 1
        self.broker.stats.resets += 1
        payload: dict[str, Any] = {"reason": reason, "message": message}
        payload["channels"] = channels if channels is not None else sub.channels
        return signal_frame("hub.reset", payload, event_id=format_id(sub.last))


def _predates(after: Key, since: dict[int, int | None], channel: str) -> bool:
    began = since.get(partition_of(channel))
    # No start noted: this Redis holds nothing of the partition (it lost its data just
    # now); a node notes one within seconds.
    return began is None or after[0] < began


def _names(channels: list[str]) -> str:
    return ", ".join(repr(c) for c in channels[:5]) + (" ..." if len(channels) > 5 else "")
