"""Live events straight onto the client's socket, when the server allows it.

Per delivered event, the generic path costs a wake-up of the client's task, a pass
through the stream generator, an ASGI message and uvicorn's chunk framing: in profiles
of ``bench/`` fan-out, most of the hub's CPU. Under uvicorn's httptools protocol the
response's transport is reachable from ``send``; once a stream is live (its replay is
written and nothing is queued), the live reader writes each event onto every client's
transport itself, framed as an HTTP/1.1 chunk once per event, not once per client.
A stream's start, its head and first chunk, goes out in one write the same way
(:func:`write_stream_start`), and so do the whole small answers of
:mod:`hub.answers` and :mod:`hub.small_posts`, from the parts built here.

Anything else (h11, another ASGI server, a test client) keeps the generic path: this
module only ever answers "not available".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

__all__ = [
    "DirectWriter",
    "answer_parts",
    "begin_response",
    "direct_writer",
    "disconnect_hook",
    "log_access",
    "write_stream_start",
]

#: Write one SSE frame now; returns the bytes still buffered for this client afterwards,
#: or -1 when the connection is closing (the disconnect watcher ends the stream).
DirectWriter = Callable[[bytes], int]

_HTTPTOOLS = "uvicorn.protocols.http.httptools_impl"

# The chunk for the frame most recently written: a live event goes to every subscriber
# of its channel back to back, so this frames it once for all of them.
_last_frame = b""
_last_chunk = b""


def direct_writer(send: Send) -> tuple[DirectWriter, Callable[[], int]] | None:
    """A writer onto the socket under ``send``, and a probe of its write backlog; or
    ``None`` when ``send`` is not uvicorn's httptools response (then use ``send``).

    Call after ``http.response.start`` was sent: only a chunked response qualifies.
    """
    cycle: Any = getattr(send, "__self__", None)
    if type(cycle).__module__ != _HTTPTOOLS:
        return None
    transport = getattr(cycle, "transport", None)
    if (
        getattr(cycle, "chunked_encoding", None) is not True
        or getattr(cycle, "response_complete", True)
        or transport is None
        or not hasattr(transport, "get_write_buffer_size")
    ):
        return None
    writer = _Writer(transport)
    return writer.write, writer.buffered


class _Writer:
    """One client's transport, written to directly. An object and not closures over
    the transport's methods: those were ~0.5 KiB more on every idle stream."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def write(self, frame: bytes) -> int:
        global _last_frame, _last_chunk
        transport = self._transport
        if transport.is_closing():
            return -1
        if frame is not _last_frame:
            _last_chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
            _last_frame = frame
        transport.write(_last_chunk)
        return transport.get_write_buffer_size()  # type: ignore[no-any-return]

    def buffered(self) -> int:
        transport = self._transport
        return -1 if transport.is_closing() else transport.get_write_buffer_size()


def disconnect_hook(send: Send, callback: Callable[[], None]) -> Callable[[], None] | None:
    """Have ``callback`` called when the connection under ``send`` is lost; return
    what undoes that, or ``None`` when the server offers no such hook (then watch
    ``receive()`` for ``http.disconnect``).

    The hub's protocol (:class:`hub.protocol.HubProtocol`) has a ``lost_hook`` slot:
    a stream that waits on it holds no task of its own while idle. If the connection
    is already gone, ``callback`` runs now. The connection then carries the stream
    alone (:meth:`~hub.protocol.HubProtocol.carry_stream`).
    """
    cycle: Any = getattr(send, "__self__", None)
    if type(cycle).__module__ != _HTTPTOOLS:
        return None
    protocol: Any = getattr(getattr(cycle, "on_response", None), "__self__", None)
    if protocol is None or not hasattr(type(protocol), "lost_hook"):
        return None
    if cycle.disconnected or protocol.transport.is_closing():
        callback()
        return _nothing
    protocol.lost_hook = callback
    protocol.carry_stream()

    def unhook() -> None:
        if protocol.lost_hook is callback:
            protocol.lost_hook = None

    return unhook


def _nothing() -> None:
    return None


def write_stream_start(
    send: Any, status: int, headers: list[tuple[bytes, bytes]], chunk: bytes
) -> bool:
    """Start a chunked response and write its first chunk, in one write, onto the socket
    under ``send``, leaving the request's cycle as uvicorn's own ``send`` of the start
    and of that chunk would (the rest of the body goes through ``send``). ``False``, with
    nothing done, where :func:`hub.answers.write_whole` would decline, for an empty ``chunk`` or
    where uvicorn would frame the response otherwise: then send both messages.

    Through ``send`` the head and the first chunk are two writes. Opening a stream is
    what thousands of clients do at once when a node restarts; the second write was a
    tenth of the hub's CPU per stream set up (py-spy, 10,000 streams).
    """
    cycle = getattr(send, "__self__", None)
    if (
        type(cycle) is not RequestResponseCycle
        or not chunk
        or cycle.response_started
        or cycle.disconnected
        or cycle.flow.write_paused
        or cycle.scope["method"] == "HEAD"
    ):
        return False
    named = [(name.lower(), value) for name, value in headers]  # as uvicorn writes them
    for name, value in named:
        if (
            name in _FRAMING
            or HEADER_RE.search(name) is not None
            or HEADER_VALUE_RE.search(value) is not None
        ):
            return False  # uvicorn's send frames it (or refuses it) as it decides
    begin_response(cycle, status)
    cycle.chunked_encoding = True
    framing = [] if cycle.keep_alive else [(b"connection", b"close")]
    framing.append((b"transfer-encoding", b"chunked"))
    body = b"%x\r\n%b\r\n" % (len(chunk), chunk)
    parts = answer_parts(status, cycle.default_headers, named + framing, None, body)
    cycle.transport.write(b"".join(parts))
    return True


#: Headers that decide how uvicorn frames a response.
_FRAMING = (b"content-length", b"transfer-encoding", b"connection")


def begin_response(cycle: RequestResponseCycle, status: int) -> None:
    """Mark ``cycle``'s response as begun, as uvicorn's ``send`` of its start does, for a
    head that the caller writes onto the transport itself."""
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    log_access(cycle.access_log, cycle.access_logger, cycle.scope, status)


def answer_parts(
    status: int,
    default_headers: list[tuple[bytes, bytes]],
    headers: list[tuple[bytes, bytes]],
    connection: bytes | None,
    body: bytes | memoryview,
) -> list[bytes | memoryview]:
    """A whole response, to be joined into one write: status line, uvicorn's default
    headers (date, server), ``headers``, a ``connection`` header if given, the body."""
    parts: list[bytes | memoryview] = [STATUS_LINE[status]]
    for name, value in default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if connection is not None:
        parts += (b"connection: ", connection, b"\r\n")
    parts += (b"\r\n", body)
    return parts


def log_access(enabled: bool, logger: logging.Logger, scope: Any, status: int) -> None:
    """uvicorn's access log line for a request answered ``status``, if it logs them."""
    # (uvicorn's test: a handler anywhere above; the hub's own root handler is one.)
    if enabled and logger.isEnabledFor(logging.INFO):
        logger.info(
            '%s - "%s %s HTTP/%s" %d',
            get_client_addr(scope),
            scope["method"],
            get_path_with_query_string(scope),
            scope["http_version"],
            status,
        )
