"""Server-Sent Events framing, and the streaming response.

Frames are built as bytes here once per event per process; every client of that event
gets the same bytes object, and a client with several frames queued gets them joined
in one write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from .config import Settings

__all__ = [
    "EventStream",
    "encode_frame",
    "event_stream",
    "preamble",
    "retry_frame",
    "signal_frame",
]

logger = logging.getLogger("hub")

_MESSAGE = b"message"


def encode_frame(event_id: bytes, event: bytes, data: bytes) -> bytes:
    """One SSE event: ``id:``, ``event:`` unless it is ``message``, one ``data:`` per line."""
    head = b"id: " + event_id + b"\n"
    if event != _MESSAGE:
        head += b"event: " + event + b"\n"
    if b"\n" not in data and b"\r" not in data:
        return head + b"data: " + data + b"\n\n"
    # The browser splits data on CR, LF and CRLF alike; so do we, so that every line
    # gets its own data: field and none is cut short.
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def signal_frame(event: str, payload: dict[str, Any], event_id: str | None = None) -> bytes:
    """A hub signal (``hub.reset``, ...): JSON data; an ``id:`` moves the client's cursor."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    head = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
    return head + b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def preamble(retry_ms: int) -> bytes:
    """Sent at once: a comment so the browser's ``onopen`` fires, and the reconnect delay."""
    return b": connected\nretry: " + str(retry_ms).encode() + b"\n\n"


def retry_frame(retry_ms: int) -> bytes:
    return b"retry: " + str(retry_ms).encode() + b"\n\n"


def _heartbeat() -> ServerSentEvent:
    return ServerSentEvent(comment="heartbeat", sep="\n")


class EventStream(EventSourceResponse):
    """sse-starlette's response, plus :meth:`abort`: drop the client at once, even in the
    middle of a write that a stuck client is blocking (closing its queue alone would not
    wake that write up). A client whose write times out is dropped the same way."""

    def __init__(self, body: AsyncIterator[bytes], settings: Settings) -> None:
        super().__init__(
            body,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            ping=settings.heartbeat,
            ping_message_factory=_heartbeat,
            sep="\n",
            send_timeout=settings.send_timeout,
        )
        self._cancel = anyio.CancelScope()
        #: Why the client was dropped, or ``None``.
        self.cut_off: str | None = None

    def abort(self, reason: str) -> None:
        self.cut_off = reason
        self._cancel.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._cancel:
            try:
                await super().__call__(scope, receive, send)
            except SendTimeoutError:
                self.cut_off = "send timeout"
        if self.cut_off:
            logger.info("dropped a stuck client (%s)", self.cut_off)


def event_stream(body: AsyncIterator[bytes], settings: Settings) -> EventStream:
    """The ``text/event-stream`` response around an iterator of ready-made frames."""
    return EventStream(body, settings)


class _CutOffFilter(logging.Filter):
    # A stream we abort on purpose ends without a final chunk, and uvicorn reports that as
    # an application error; our own log line above already says what happened.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing response."


def quiet_cut_off_streams() -> None:
    """Keep uvicorn from logging deliberately dropped streams as errors (idempotent)."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _CutOffFilter) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_CutOffFilter())
