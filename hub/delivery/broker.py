"""The broker: what a client's stream is made of, and where it comes from.

How an event travels: the publish script appends it to each channel's history stream
and publishes it on each channel's ``live:`` pub/sub name, atomically; the live path
(:mod:`hub.delivery.live`) queues it, encoded once, for every subscriber on this process.

How a client gets exactly what it missed: its channels are confirmed subscribed
BEFORE its history is read; live events that arrive meanwhile are held and merged after
the history by id. Subscribers skip ids at or below the last one they got, so an event
that reaches a client twice (several channels, replay/live overlap, recovery) is sent
once. A cursor that cannot be honoured exactly gets ``hub.reset`` and live events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

from hub.config import Settings
from hub.delivery.admission import Admission
from hub.delivery.channel import Channel
from hub.delivery.fanout import Fanout, NativeFanout
from hub.delivery.live import LivePath
from hub.delivery.sse import HEARTBEAT, encode_frame, preamble, signal_frame
from hub.delivery.stats import Stats
from hub.delivery.stream import Stream, StreamControl
from hub.errors import BackendUnavailable
from hub.store import Backend, Clock, EventId, Publisher, Store, format_id, parse_id
from hub.supervise import Supervised

__all__ = ["Broker"]

logger = logging.getLogger("hub")

#: Replay frames are written in chunks of about this many bytes.
REPLAY_CHUNK = 64 * 1024
#: Seconds a clock read stays good for starting cursor-less streams from (see _join_id).
CLOCK_REUSE = 0.1
#: Bytes in a direct writer's backlog above which the sweeper counts the client as not
#: reading (uvicorn's flow control pauses a response at 64 KiB too).
STUCK_BACKLOG = 64 * 1024
#: What a live path's reader may fail with that it logs briefly and restarts after.
_PASSING = (BackendUnavailable, OSError)


class Broker:
    """Connects clients' streams to Redis. Use as ``async with Broker(...) as broker``.

    It runs the native live path, and any a door adds (:meth:`add_path`); every stream
    on any of them is admitted (:attr:`admission`), swept (heartbeats, stuck writes)
    and closed at shutdown here.
    """

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(backend, settings)
        self.publisher: Publisher = self.store.publisher
        self._stats = Stats()
        #: Clock reads shared by the streams that open together.
        self._clock = self.store.clock
        self._live = LivePath(self.store, settings, NativeFanout(self.store, settings, self._stats))
        self._paths: list[LivePath] = [self._live]
        self._reader = Supervised("hub live reader", self._live.run, quiet=_PASSING)
        self._sweeper = Supervised("hub stream sweeper", self._sweep)
        self._stack = AsyncExitStack()
        #: The one connection limit, over every stream of every live path.
        self.admission = Admission(settings, self.open_streams)

    async def __aenter__(self) -> Broker:
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
        self.store.clock.close()
        await self._stack.__aexit__(exc_type, exc, tb)
        await self._sweeper.__aexit__(exc_type, exc, tb)
        await self._reader.__aexit__(exc_type, exc, tb)
        for path in self._paths:
            await path.aclose()
        await self.store.aclose()

    async def add_path(self, fanout: Fanout, name: str) -> LivePath:
        """Start another live path (a door's own messages): its reader runs supervised
        until the broker stops, and its streams are admitted, swept and closed here."""
        path = LivePath(self.store, self.settings, fanout)
        self._paths.append(path)
        await self._stack.enter_async_context(Supervised(name, path.run, quiet=_PASSING))
        return path

    @property
    def live(self) -> bool:
        """True while the live connection is up and subscribed."""
        return self._live.live

    @property
    def connections(self) -> int:
        """Open ``/events`` streams on the native live path of this process."""
        return len(self._live.subscribers)

    def open_streams(self) -> int:
        """Open streams of every kind on this process (what admission counts)."""
        return sum(len(path.subscribers) for path in self._paths)

    @property
    def stats(self) -> Stats:
        """This process's plain counters, for :mod:`hub.metrics`."""
        return self._stats

    @property
    def subscriptions(self) -> int:
        """Channel subscriptions of the open streams (one stream on 3 channels: 3)."""
        return sum(len(sub.channels) for sub in self._live.subscribers)

    @property
    def redis_reconnects(self) -> int:
        """Times the live Redis connection was lost and set up again."""
        return self._reader.restarts

    def close_all(self, reason: str, final: Callable[[], bytes] | None = None) -> int:
        """End every open stream after its queued frames, then ``final()`` (shutdown);
        return how many there were."""
        streams = [sub for path in self._paths for sub in path.subscribers]
        for sub in streams:
            sub.close(reason, final=final() if final else b"")
        return len(streams)

    async def ping(self) -> None:
        """Raise :class:`BackendUnavailable` unless Redis answers."""
        await self.store.ping()

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
        ``hub.reset`` frame first, then live events. The stream opens with a comment and
        a ``retry:`` hint once Redis has confirmed the subscription: every event
        published after a client has read it is delivered to that client. If Redis
        fails, the stream ends with a comment saying why and a ``retry:`` hint.

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
            head = self._join_id(confirmed, loop.time())
            if head is None:
                head = (await self.clock(confirmed)).head
            else:
                for channel in confirmed:
                    channel.floor = max(channel.floor, head)
            sub.last = head
            return preamble(retry_ms, format_id(head)) + sub.go_live()

        async def resume(confirmed: list[Channel]) -> AsyncGenerator[bytes, None]:
            assert cursor is not None
            clock = await self.clock(confirmed)
            yield preamble(retry_ms)
            async for chunk in self._replay(sub, cursor, clock):
                yield chunk

        opening = join if cursor is None else resume
        return sub.run(
            self._live, response, opening, stats=self.stats, retry_ms=self.settings.retry_ms
        )

    async def clock(self, confirmed: Sequence[Channel] = ()) -> Clock:
        """The clock, read by a request sent after this call began (shared by the
        streams that open together, see :class:`hub.store.history.ClockReads`); the
        ``confirmed`` channels' floors are raised to its head (events up to it were
        never this node's to deliver live on them)."""
        clock = await self._clock.read()
        for channel in confirmed:
            channel.floor = max(channel.floor, clock.head)
        return clock

    def _join_id(self, channels: list[Channel], now: float) -> EventId | None:
        """Where a cursor-less stream on confirmed ``channels`` starts, without a round
        trip to Redis; ``None`` when a fresh clock read is needed.

        The stream gets every event with a larger id, and none other; that loses
        nothing if every such event on its channels reaches it live. One sent to Redis
        before a channel's subscription took effect has an id at most the head of a
        clock read sent after that subscription was confirmed; one this node received
        before now, at most the watermark (the live connection delivers in id order).
        Any other arrives from now on, and the stream is attached, so it reaches it.
        (Events received between the attach and now, at most the watermark, were
        published before the stream's opening was sent: not owed to it.) A read counts
        only while the live session that confirmed the channels is up, and for
        CLOCK_REUSE seconds. Under churn this was a clock read per CLOCK_REUSE instead
        of one per handful of streams, which cost 14% of the CPU.
        """
        latest, watermark = self._clock.latest, self._live.watermark
        if latest is None or watermark is None or not self._live.live:
            return None
        sent_at, clock = latest
        if now - sent_at > CLOCK_REUSE:
            return None
        for channel in channels:
            # Loop time has a coarse tick: an equal time may be either order.
            if channel.confirmed_at >= sent_at:
                return None
        return max(clock.head, watermark)

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
            for sub in [sub for path in self._paths for sub in path.subscribers]:
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

    async def _replay(self, sub: Stream, cursor: str, clock: Clock) -> AsyncIterator[bytes]:
        head, since, now_ms, _lost = clock
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
            elif clock.lost is not None and after < clock.lost[1]:
                yield await self._reset(
                    sub,
                    "history_lost",
                    f"Redis lost events up to {format_id(clock.lost[1])} (a failover to a "
                    f"replica that had not received them); events after {cursor} may be lost",
                )
                return
        ttl_ms = int(self.settings.history_ttl * 1000)
        self.stats.replays += 1
        reader = self.store.history(
            sub.channels,
            after,
            strict=strict,
            expired_before=(now_ms - ttl_ms, 0) if ttl_ms else None,
        )
        sub.last = after
        chunk: list[bytes] = []
        size = 0
        # A channel whose history no longer reaches back is left out by the reader and
        # named in the reset below; the others are replayed in full. (Stopping at the
        # first gap skipped them too, under a reset that did not name them: a silent
        # hole.)
        async for entry in reader:
            if entry.id <= sub.last:
                continue  # the same event from another of the client's channels
            frame = encode_frame(entry.raw_id, entry.event, entry.data)
            chunk.append(frame)
            size += len(frame)
            sub.last = entry.id
            if size >= REPLAY_CHUNK:
                sub.sent += len(chunk)
                self.stats.replayed += len(chunk)
                yield b"".join(chunk)
                chunk, size = [], 0
        if chunk:
            sub.sent += len(chunk)
            self.stats.replayed += len(chunk)
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
                # The head read before the history: every later event reaches this
                # stream live. A fresh read would also pass over events of the other
                # channels published after their history was read.
                head=head,
            )

    async def _reset(
        self,
        sub: Stream,
        reason: str,
        message: str,
        channels: list[str] | None = None,
        head: EventId | None = None,
    ) -> bytes:
        """Tell the client its cursor cannot be honoured; it continues live from now
        (from ``head``, when given)."""
        if head is None:
            head = (await self._clock.read()).head
        sub.last = max(sub.last, head)
        sub.sent += 1
        self.stats.resets += 1
        payload: dict[str, Any] = {"reason": reason, "message": message}
        payload["channels"] = channels if channels is not None else sub.channels
        return signal_frame("hub.reset", payload, event_id=format_id(sub.last))
