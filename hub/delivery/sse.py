"""Server-Sent Events framing.

Frames are built as bytes here once per event per process; every client of that event
gets the same bytes object, and a client with several frames queued gets them joined
in one write.
"""

from __future__ import annotations

import json
from typing import Any

from sse_starlette import ServerSentEvent

from hub.store.records import Event

__all__ = [
    "HEARTBEAT",
    "encode_frame",
    "native_frame",
    "preamble",
    "retry_frame",
    "signal_frame",
]

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


def native_frame(event: Event) -> bytes:
    """An event's ``/events`` frame, built once per event and kept on it."""
    frame = event.frame
    if frame is None:
        frame = event.frame = encode_frame(event.id_text, event.event, event.data)
    return frame


def signal_frame(event: str, payload: dict[str, Any], event_id: str | None = None) -> bytes:
    """A hub signal (``hub.reset``, ...): JSON data; an ``id:`` moves the client's cursor."""
    data = json.dumps(payload, separators=(",", ":")).encode()
    head = b"" if event_id is None else b"id: " + event_id.encode() + b"\n"
    return head + b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def preamble(retry_ms: int, event_id: str | None = None) -> bytes:
    """Sent at once: a comment so the browser's ``onopen`` fires, and the reconnect delay.

    With ``event_id``, the browser's cursor starts there (a block without data fires no
    event but still sets ``lastEventId``): a client that joined live and lost its stream
    before its first event resumes from where it joined instead of from nowhere.
    """
    head = (
        b": connected\n" if event_id is None else b": connected\nid: " + event_id.encode() + b"\n"
    )
    return head + b"retry: " + str(retry_ms).encode() + b"\n\n"


def retry_frame(retry_ms: int) -> bytes:
    return b"retry: " + str(retry_ms).encode() + b"\n\n"


#: Sent on an idle stream so that proxies and browsers keep it open.
HEARTBEAT = ServerSentEvent(comment="heartbeat", sep="\n").encode()
