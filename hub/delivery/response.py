"""The streaming ``text/event-stream`` response a client's stream is written to."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from hub.delivery.writer import (
    DirectWriter,
    direct_writer,
    disconnect_hook,
    write_stream_start,
)

__all__ = ["EventStream", "quiet_cut_off_streams"]

logger = logging.getLogger("hub")

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers proxied responses unless told not to; an event must not wait.
    (b"x-accel-buffering", b"no"),
]


class EventStream:
    """The ``text/event-stream`` response: sends ready-made chunks as they come.

    sse-starlette's response wraps every write in an anyio cancel scope for its send
    timeout; with many clients that scope was 26% of the hub's CPU (py-spy, bench/
    fan-out, 1000 clients). Here a write costs one ``send``: the broker's sweeper
    watches for stuck writes and idle streams once a second for all clients, and
    :meth:`abort` drops a client at once, even in the middle of a write that a stuck
    client blocks. Under the hub's own protocol the connection reports the client going away
    (:func:`~hub.delivery.writer.disconnect_hook`); elsewhere one helper task per
    stream watches ``receive()`` for it.
    """

    def __init__(
        self,
        body: AsyncGenerator[bytes, None] | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        #: The chunks to send; may be set after construction, before the response runs.
        self.body = body
        #: Response headers: the stream's own, and any ``headers`` given (Mercure's).
        self.headers = _HEADERS if headers is None else _HEADERS + headers
        self._task: asyncio.Task[Any] | None = None
        self._on_abort: list[Callable[[], None]] = []
        #: Why the stream was dropped (``"disconnected"``, a cut-off reason), or ``None``.
        self.cut_off: str | None = None
        #: Set once the response has started, when the server allows direct writes.
        self.direct: tuple[DirectWriter, Callable[[], int]] | None = None
        #: Set by the source: says whether it is parked where the abort callbacks end
        #: it by themselves (waiting for its next chunk); then an abort needs no
        #: cancellation, which cost more than the rest of a disconnect under churn.
        self.parked: Callable[[], bool] | None = None

    def on_abort(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the stream is aborted (the source should stop too);
        :attr:`cut_off` says why."""
        self._on_abort.append(callback)

    def abort(self, reason: str) -> None:
        """End the response now; the connection is closed without a final chunk."""
        if self.cut_off is not None:
            return
        self.cut_off = reason
        parked = self.parked is not None and self.parked()
        # Both: the cancellation stops a write that a stuck client blocks; closing the
        # source ends the stream even if some await on the way swallows the cancellation.
        for callback in self._on_abort:
            callback()
        if parked or self._task is None:
            return
        if self._task is not asyncio.current_task():
            self._task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body
        assert body is not None, "EventStream.body was never set"
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": 200,
            "headers": self.headers,
        }
        if scope.get("method") == "HEAD":
            await send(start)
            await body.aclose()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task(loop)  # given the loop: one getpid() less
        unhook = disconnect_hook(send, self._lost)
        watcher = loop.create_task(self._watch(receive)) if unhook is None else None
        started = False
        try:
            # The headers leave with the first chunk, not before: a browser fires `open`
            # on them, and by then the hub has confirmed the subscription, so a page may
            # publish from onopen and get its own event.
            async for chunk in body:
                if not started:
                    started = True
                    if not write_stream_start(send, 200, self.headers, chunk):
                        await send(start)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    self.direct = direct_writer(send)
                    continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if self.cut_off is None:
                if not started:
                    await send(start)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            # else: aborted while parked, the source ended without a cancellation; the
            # response ends as a cancelled one does, without a final chunk.
        except asyncio.CancelledError:
            if self.cut_off is None:
                raise  # the server is cancelling us: not ours to swallow
            task = self._task
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
        finally:
            if watcher is not None:
                watcher.cancel()
            if unhook is not None:
                unhook()
            await body.aclose()
        if self.cut_off not in (None, "disconnected"):
            logger.info("dropped a client: %s", self.cut_off)

    def _lost(self) -> None:
        self.abort("disconnected")

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.abort("disconnected")
                return


_DROPPED_ON_PURPOSE = (
    "ASGI callable returned without completing response.",
    "ASGI callable returned without starting response.",
)


class _CutOffFilter(logging.Filter):
    # A stream we abort on purpose ends without a final chunk, and uvicorn reports that as
    # an application error; our own log line above already says what happened.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _DROPPED_ON_PURPOSE


def quiet_cut_off_streams() -> None:
    """Keep uvicorn from logging deliberately dropped streams as errors (idempotent)."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _CutOffFilter) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_CutOffFilter())
