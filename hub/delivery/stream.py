"""One client's stream: its channels, its place in the event order, its queue of
ready-made SSE frames, the loop that writes them, and why it ended.

Everything about one stream lives on its :class:`Stream`; the response it is written
to (:mod:`hub.delivery.response`) only carries bytes and reports the client leaving.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from typing import Any, Protocol

from hub.delivery.sse import native_frame, retry_frame
from hub.delivery.stats import TOKEN_EXPIRED, Stats
from hub.delivery.writer import DirectWriter
from hub.errors import BackendUnavailable
from hub.logs import log_stream_closed
from hub.store.ids import ZERO, EventId
from hub.store.records import Event

__all__ = ["Opening", "Stream", "StreamControl"]

logger = logging.getLogger("hub")


class StreamControl(Protocol):
    """What a stream needs of the HTTP response it is written to."""

    def abort(self, reason: str) -> None: ...

    def on_abort(self, callback: Callable[[], None]) -> None: ...

    #: Why the response was aborted, once it was.
    cut_off: str | None

    #: Says whether the stream is parked where the abort callbacks end it by themselves.
    parked: Callable[[], bool] | None

    #: A direct writer onto the client's socket (:mod:`hub.delivery.writer`), or ``None``.
    direct: tuple[DirectWriter, Callable[[], int]] | None


#: A stream's opening, given its confirmed channels: one chunk, or a generator of them.
Opening = Callable[[list[Any]], Awaitable[bytes] | AsyncGenerator[bytes, None]]


class Path(Protocol):
    """What a stream needs of the live path it runs on (:class:`hub.delivery.live.LivePath`)."""

    def attach(self, stream: Stream) -> list[Any]:
        """Follow the stream's channels; return them, to be confirmed."""
        ...

    async def confirm(self, channels: list[Any]) -> None:
        """Return once Redis has confirmed the subscriptions to ``channels``."""
        ...

    def detach(self, stream: Stream, now: float | None = None) -> None:
        """Stop delivering to the stream."""
        ...


#: How each way a stream can close is counted (``hub_connections_closed_total``) and
#: told in its log line: reason label and what it means.
_ENDINGS = {
    "aborted": ("client", "the client went away"),
    TOKEN_EXPIRED: ("expired", "its token expired (the client comes back with a new one)"),
    "cut off": ("slow", "cut off as too slow"),
    "shutdown": ("shutdown", "the node is shutting down"),
    "gap": ("gap", "history was trimmed while Redis was unreachable"),
    "failed": ("error", "ended by the hub (see the warning before)"),
}


class Stream:
    """One client's stream: frames queued in id order, each id at most once.

    The broker's reader calls :meth:`deliver` (synchronously, for every event of the
    client's channels); the client's response task drains the queue with
    :meth:`next_batch`, one write for everything that piled up. While the client's
    history is being replayed, live frames are held back and released afterwards, so
    replay and live events come out merged, in order, without duplicates.

    With a ``direct`` writer (:mod:`hub.delivery.writer`), a stream whose queue is empty and
    whose task is waiting switches to writing each frame onto the socket at once, from
    the reader, and back to queueing when it is closed with a final frame.
    """

    __slots__ = (
        "_direct",
        "_follow",
        "_frames",
        "_held",
        "_limit",
        "_loop",
        "_size",
        "_waiter",
        "channels",
        "closed",
        "last",
        "last_out",
        "on_cut_off",
        "ordered",
        "plain",
        "response",
        "sent",
        "sent_seen",
        "why",
        "writer",
        "writing_since",
    )

    def __init__(
        self,
        channels: list[str],
        limit: int,
        on_cut_off: Callable[[str], None] | None = None,
        writer: tuple[DirectWriter, Callable[[], int]] | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        ordered: bool | None = None,
    ) -> None:
        self.channels = channels
        # A few channels in a tuple: as quick to look in, 150 bytes less per idle stream.
        few = len(channels) < 5
        self._follow: Collection[str] = tuple(channels) if few else frozenset(channels)
        #: Takes events in key order (it follows several channels): hub/delivery/order.py.
        self.ordered = len(channels) > 1 if ordered is None else ordered
        #: Takes every public event's native frame as it is (delivery asks no questions).
        self.plain = True
        #: The id of the last frame handed to this client; older or equal ids are skipped.
        self.last: EventId = ZERO
        #: How the stream was closed (a key of ``_ENDINGS``), or ``None`` while open.
        self.closed: str | None = None
        #: The detail of a cut-off or an abort (what the log line says).
        self.why = ""
        self._frames: list[bytes] = []
        self._held: collections.deque[tuple[EventId, bytes]] | None = collections.deque()
        self._size = 0
        self._limit = limit
        # A bare future per wait, not an asyncio.Event (its bookkeeping showed in
        # profiles); the caller may pass its loop: a lookup is a getpid() on < 3.12.
        self._loop = loop or asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        #: The response the stream is written to, while it runs.
        self.response: StreamControl | None = None
        #: Called with a reason when the client is cut off, to drop its connection at once.
        self.on_cut_off = on_cut_off
        #: Loop time when the current write to the client began (``None``: not writing),
        #: and when the last one began; the broker's sweeper reads both.
        self.writing_since: float | None = None
        self.last_out = 0.0
        #: The direct writer and backlog probe, if the response offers them.
        self.writer = writer
        #: The writer while direct mode is on (``None``: frames go through the queue).
        self._direct: DirectWriter | None = None
        #: Events handed to the client's stream on either path (the close log line; the
        #: sweeper's sign of activity in direct mode).
        self.sent = 0
        self.sent_seen = 0  # ``sent`` when the sweeper last looked

    def follows(self, channel: str) -> bool:
        """Whether this stream follows ``channel`` (:meth:`hub.store.Event.wanted_by`)."""
        return channel in self._follow

    def frame_for(self, event: Event) -> bytes | None:
        """The frame this stream takes for ``event``, or ``None``: a native stream takes
        public events only, and of an event spread over partitions its first part."""
        if event.private or not event.wanted_by(self.follows):
            return None
        return native_frame(event)

    def interleave(self, key: EventId) -> list[bytes]:
        """While a replay runs: the live frames held back so far whose keys come before
        ``key`` (and after :attr:`last`), which go out before the replay's next event."""
        held = self._held
        out: list[bytes] = []
        while held and held[0][0] < key:
            event_id, frame = held.popleft()
            if event_id > self.last:
                self.last = event_id
                out.append(frame)
        return out

    def deliver(self, event_id: EventId, frame: bytes) -> None:
        """Queue one frame; a client whose queue overflows is cut off (it resumes later)."""
        if self.closed is not None:
            return
        if self._held is not None:
            self._held.append((event_id, frame))
        elif event_id > self.last:
            self.last = event_id
            direct = self._direct
            if direct is not None:
                self.sent += 1
                if direct(frame) > self._limit:
                    self.cut_off("too slow: its socket backlog overflowed HUB_CLIENT_BUFFER")
                return
            self._frames.append(frame)
        else:
            return
        self._size += len(frame)
        if self._size > self._limit:
            self.cut_off("too slow: its queue overflowed HUB_CLIENT_BUFFER")
        else:
            self._wake()

    def cut_off(self, reason: str) -> None:
        """Drop the client now, queued frames included; it resumes with its last id."""
        if self.closed is None:
            self.why = reason
            self.close("cut off", drop=True)
            if self.on_cut_off is not None:
                self.on_cut_off(reason)

    def _response_aborted(self) -> None:
        # The response says why at the moment it is aborted; from then on the reason
        # is the stream's.
        response = self.response
        self.aborted((response.cut_off if response is not None else None) or "disconnected")

    def aborted(self, why: str) -> None:
        """The response was aborted: the client went away, its token expired, or it was
        cut off (then it is closed already)."""
        if self.closed is None:
            self.why = why
            self.close(TOKEN_EXPIRED if why == TOKEN_EXPIRED else "aborted", drop=True)

    def heartbeat(self, frame: bytes) -> None:
        """Queue a comment on an idle stream (no id: it does not move the cursor)."""
        if self.closed is not None or self._frames:
            return
        if self._direct is not None:
            self._direct(frame)
        else:
            self._frames.append(frame)
            self.sent -= 1  # next_batch counts frames; a heartbeat is no event
            self._wake()

    def go_live(self) -> bytes:
        """End the replay: return the held live frames that the replay did not cover."""
        held, self._held = self._held or (), None
        out = []
        for event_id, frame in held:
            if event_id > self.last:
                self.last = event_id
                out.append(frame)
        self._size = sum(len(f) for f in self._frames)
        self.sent += len(out)
        return b"".join(out)

    def close(self, reason: str, *, drop: bool = False, final: bytes = b"") -> None:
        """Stop delivering; the stream ends after the queued frames (unless ``drop``)."""
        if self.closed is not None:
            return
        self.closed = reason
        self._direct = None
        if drop:
            self._frames.clear()
            self._held = None
        if final:
            self._frames.append(final)
            self.sent -= 1  # next_batch counts frames; the final hint is no event
        self._size = 0
        self._wake()

    async def next_batch(self) -> bytes | None:
        """Wait for frames; return them joined, or ``None`` once closed and drained."""
        while not self._frames:
            if self.closed is not None:
                return None
            if self.writer is not None and self._held is None:
                self._direct = self.writer[0]
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._direct = None
        frames, self._frames = self._frames, []
        self._size = 0
        self.sent += len(frames)  # once per batch, not per event
        return b"".join(frames)

    def waiting(self) -> bool:
        """True while the stream's task waits in :meth:`next_batch`: :meth:`close` ends
        the stream from there, no cancellation needed."""
        return self._waiter is not None

    @property
    def direct(self) -> bool:
        """True while frames are written straight to the socket (see :mod:`hub.delivery.writer`)."""
        return self._direct is not None

    def backlog(self) -> int:
        """Bytes written directly but not yet taken by the client's socket (-1: closing)."""
        return self.writer[1]() if self.writer is not None else 0

    def ending(self) -> tuple[str, str]:
        """Why the stream ended: its ``reason`` label and the detail for its log line."""
        reason, detail = _ENDINGS.get(self.closed or "failed", _ENDINGS["failed"])
        if self.closed == "cut off" and self.why:
            detail = self.why
        return reason, detail

    async def run(
        self,
        live: Path,
        response: StreamControl | None,
        opening: Opening,
        *,
        stats: Stats,
        retry_ms: int,
        on_close: Callable[[], None] | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Serve this stream from ``live`` (the native live path, or the Mercure door's).

        Attach, wait for Redis to confirm the subscriptions, send what
        ``opening(channels)`` gives (one chunk, or a generator of them: the preamble
        and any replay; it reads the clock, sets the channels' floors and leaves
        :attr:`last` at the newest id it covered), then live events: written straight
        onto the socket when the response allows (:mod:`hub.delivery.writer`), else
        queued.

        Each chunk is yielded when the previous one has been written: the time between
        is how long a write to this client takes, which the broker's sweeper watches.
        The live loop is written out here, one generator deep, because it runs for
        every client for every event on the queued path.
        """
        if response is not None:
            self.response = response
            response.on_abort(self._response_aborted)
            response.parked = self.waiting
        loop = self._loop
        to_confirm = live.attach(self)
        opened = loop.time()
        stats.opened += 1
        try:
            await live.confirm(to_confirm)
            first = opening(to_confirm)
            if isinstance(first, AsyncGenerator):
                async with contextlib.aclosing(first):
                    async for chunk in first:
                        self.writing_since = self.last_out = loop.time()
                        yield chunk
                        self.writing_since = None
            else:
                # One chunk (a live-only stream, the common case): no generator to set
                # up and close.
                chunk = await first
                del first  # (the finished coroutine, else held for the stream's life)
                self.writing_since = self.last_out = loop.time()
                yield chunk
                self.writing_since = None
            tail = self.go_live()
            if tail:
                self.writing_since = self.last_out = loop.time()
                yield tail
                self.writing_since = None
            if response is not None:
                # Known once the response has started, which the opening's first chunk did.
                self.writer = response.direct
            while (batch := await self.next_batch()) is not None:
                self.writing_since = self.last_out = loop.time()
                yield batch
                self.writing_since = None
        except BackendUnavailable as exc:
            # Never a silent hang and never an error status (EventSource would give up
            # for good): say why in a comment and let the browser come back after the hint.
            logger.warning("closing a stream: %s", exc)
            note = str(exc).replace("\n", " ").replace("\r", " ").encode()
            yield b": " + note + b"\n" + retry_frame(retry_ms)
        finally:
            now = loop.time()
            live.detach(self, now)
            if on_close is not None:
                on_close()
            reason, detail = self.ending()
            stats.closed[reason] += 1
            log_stream_closed(
                seconds=now - opened,
                events=max(0, self.sent),
                reason=reason,
                detail=detail,
                channels=len(self.channels),
            )
            # The response and the stream refer to each other (their abort and cut-off
            # callbacks): without this cut, every stream, its task and its transport
            # waited for the cyclic GC, 10% of the CPU under churn.
            self.on_cut_off = None
            self.response = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
