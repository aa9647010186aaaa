"""Answers written whole onto uvicorn's httptools connection: HTTP/1.0 keep-alive, a
complete small response in one write (the fast endpoints' answers), and an event
stream's head together with its first chunk."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

__all__ = ["answer_parts", "keep_alive", "log_access", "write_stream_start", "write_whole"]


def keep_alive(cycle: RequestResponseCycle) -> None:
    """Keep an HTTP/1.0 client's connection open after this response when it asked to
    (``Connection: keep-alive``) and the response has a length, as nginx does.

    uvicorn closes every HTTP/1.0 connection after one response. ApacheBench speaks
    HTTP/1.0: with ``ab -k`` each publish to the hub paid a TCP connect, accept and
    close that Nchan's did not. A response without a length (a stream) still ends with
    the connection, the only end an HTTP/1.0 client can see."""
    cycle.send = _KeepAliveSend(cycle)  # type: ignore[method-assign]


class _KeepAliveSend:
    """``send`` of an HTTP/1.0 request that asked for keep-alive."""

    __slots__ = ("cycle", "send")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self.cycle = cycle
        self.send = cycle.send

    async def __call__(self, message: ASGISendEvent) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if any(name.lower() == b"content-length" for name, _ in headers):
                self.cycle.keep_alive = True
                headers.append((b"connection", b"keep-alive"))
                message = {**message, "headers": headers}
        await self.send(message)


def write_whole(
    send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes | memoryview
) -> bool:
    """Answer with one write: status line, headers and body of a complete response onto
    the socket under ``send``, the request's cycle then finished as uvicorn's own
    ``send`` finishes it. ``False``, with nothing done, unless ``send`` is uvicorn's
    httptools cycle (or the HTTP/1.0 keep-alive one above), before its response began,
    for a request other than HEAD. The access log line is uvicorn's.

    Through ``send`` a small response is two writes, head then body: two system calls,
    and two ASGI messages through Starlette and uvicorn. For ``POST /publish`` those
    were a quarter of the hub's CPU per request (py-spy, ab -k -c 8)."""
    cycle = getattr(send, "__self__", None)
    keep_http10 = isinstance(send, _KeepAliveSend)
    if keep_http10:
        cycle = send.cycle
    if (
        type(cycle) is not RequestResponseCycle
        or cycle.response_started
        or cycle.flow.write_paused
        or cycle.scope["method"] == "HEAD"
    ):
        return False
    if cycle.disconnected:
        return True  # as uvicorn's send: no one to answer
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    log_access(cycle.access_log, cycle.access_logger, cycle.scope, status)
    if keep_http10:
        cycle.keep_alive = True
    connection = b"keep-alive" if keep_http10 else None if cycle.keep_alive else b"close"
    parts = answer_parts(status, cycle.default_headers, headers, connection, body)
    cycle.transport.write(b"".join(parts))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


def write_stream_start(
    send: Any, status: int, headers: list[tuple[bytes, bytes]], chunk: bytes
) -> bool:
    """Start a chunked response and write its first chunk, in one write, onto the socket
    under ``send``, leaving the request's cycle as uvicorn's own ``send`` of the start
    and of that chunk would (the rest of the body goes through ``send``). ``False``, with
    nothing done, where :func:`write_whole` would decline, for an empty ``chunk`` or
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
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    log_access(cycle.access_log, cycle.access_logger, cycle.scope, status)
    cycle.chunked_encoding = True
    framing = [] if cycle.keep_alive else [(b"connection", b"close")]
    framing.append((b"transfer-encoding", b"chunked"))
    body = b"%x\r\n%b\r\n" % (len(chunk), chunk)
    parts = answer_parts(status, cycle.default_headers, named + framing, None, body)
    cycle.transport.write(b"".join(parts))
    return True


#: Headers that decide how uvicorn frames a response.
_FRAMING = (b"content-length", b"transfer-encoding", b"connection")


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
