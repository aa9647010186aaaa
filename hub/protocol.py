"""The HTTP/1.1 protocol ``hub serve`` runs under uvicorn: uvicorn's httptools protocol
with a bound on the request line and headers.

uvicorn's httptools protocol has no limit of its own: a client could send a header of
any size, and the parser keeps what it has read of it in memory until the line ends
(four connections each sending 100 MiB of one header took a node from 91 to 546 MiB).
Here a request whose line and headers exceed ``HUB_MAX_HEADER_BYTES`` is answered
``431`` and its connection closed as soon as that many bytes arrived without the end
of the headers. (uvicorn's h11 protocol has a limit of its own, which
:func:`hub.server.build_server` sets to the same number.)
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

__all__ = ["HeadBoundedProtocol", "head_bounded_protocol", "write_whole"]

logger = logging.getLogger("hub")


class HeadBoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing request heads over :attr:`max_head` bytes.

    Two counts, because the parser reports a head only once it is whole: the request
    line and headers as parsed (a head that arrives in one read), and the bytes read
    while a head is still incomplete (one that never ends). The second is taken after
    the parser saw each read: a read that finished one request and began the next
    counts whole against the next.
    """

    #: Bytes of request line and headers accepted; set by :func:`head_bounded_protocol`.
    max_head = 16 * 1024

    # Set on every request: slots keep them out of uvicorn's large instance dict.
    __slots__ = ("_head_bytes", "_in_head", "_reading", "_refused")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._reading = 0
        self._in_head = True
        self._refused = False

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The head is within what was read since the message began: only when that is
        # over the limit is it worth measuring exactly.
        if self._head_bytes + self._reading > self.max_head and self._head_size() > self.max_head:
            # Not handed to the app: answered once the parser returns.
            self._refused = True
            return
        before = self.cycle
        HttpToolsProtocol.on_headers_complete(self)
        cycle = self.cycle
        if (
            cycle is not before
            and cycle is not None
            and self.scope["http_version"] == "1.0"
            and self.parser.should_keep_alive()
        ):
            _keep_alive(cycle)

    def _head_size(self) -> int:
        return len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        if not self._refused:
            HttpToolsProtocol.on_message_complete(self)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._reading = len(data)
        HttpToolsProtocol.data_received(self, data)
        if self._refused:
            self._refuse()
        elif self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head:
                self._refused = True
                self._refuse()

    def _refuse(self) -> None:
        logger.warning(
            "refused a request whose line and headers exceed %d bytes (HUB_MAX_HEADER_BYTES)",
            self.max_head,
        )
        body = json.dumps(
            {
                "error": "headers_too_large",
                "message": (
                    f"the request line and headers exceed {self.max_head} bytes; send "
                    "less (a shorter URL, fewer or smaller headers and cookies), or "
                    "raise HUB_MAX_HEADER_BYTES"
                ),
            }
        ).encode()
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self.transport.close()


def _keep_alive(cycle: RequestResponseCycle) -> None:
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
    # (uvicorn's test: a handler anywhere above; the hub's own root handler is one.)
    if cycle.access_log and cycle.access_logger.isEnabledFor(logging.INFO):
        scope = cycle.scope
        cycle.access_logger.info(
            '%s - "%s %s HTTP/%s" %d',
            get_client_addr(scope),
            scope["method"],
            get_path_with_query_string(scope),
            scope["http_version"],
            status,
        )
    parts: list[bytes | memoryview] = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if keep_http10:
        cycle.keep_alive = True
        parts.append(b"connection: keep-alive\r\n")
    elif not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    cycle.transport.write(b"".join(parts))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


def head_bounded_protocol(max_head: int) -> type[HeadBoundedProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) for this limit."""
    return type("HeadBoundedProtocol", (HeadBoundedProtocol,), {"max_head": max_head})
