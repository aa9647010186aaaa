"""One client's end of the live path: a bounded queue of ready-made SSE frames."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hub.delivery.writer import DirectWriter
from hub.store.ids import EventId

__all__ = ["Subscriber"]


class Subscriber:
    """Frames queued for one client, in id order, each id at most once.

    The broker's reader calls :meth:`deliver` (synchronously, for every event of the
    client's channels); the client's response task drains the queue with
    :meth:`next_batch`, one write for everything that piled up. While the client's
    history is being replayed, live frames are held back and released afterwards, so
    replay and live events come out merged, in order, without duplicates.

    With a ``direct`` writer (:mod:`hub.delivery.writer`), a subscriber whose queue is empty and
    whose task is waiting switches to writing each frame onto the socket at once, from
    the reader, and back to queueing when it is closed with a final frame.
    """

    __slots__ = (
        "_direct",
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
        "sent",
        "sent_seen",
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
    ) -> None:
        self.channels = channels
        #: The id of the last frame handed to this client; older or equal ids are skipped.
        self.last: EventId = (0, 0)
        #: Why the subscriber was closed (``"slow"``, ``"shutdown"``, ...), or ``None``.
        self.closed: str | None = None
        self._frames: list[bytes] = []
        self._held: list[tuple[EventId, bytes]] | None = []
        self._size = 0
        self._limit = limit
        # A bare future per wait, not an asyncio.Event: this runs once per client per
        # event, and Event's bookkeeping (waiter list, loop lookup) showed in profiles.
        # The caller may pass the loop it has: each lookup costs a getpid() syscall on
        # Python < 3.12, and a stream is set up with several.
        self._loop = loop or asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
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
        #: ``sent`` when the sweeper last looked.
        self.sent_seen = 0

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
            self.close("cut off", drop=True)
            if self.on_cut_off is not None:
                self.on_cut_off(reason)

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
        held, self._held = self._held or [], None
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

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
