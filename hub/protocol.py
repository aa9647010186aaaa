"""The HTTP/1.1 protocol ``hub serve`` runs under uvicorn: uvicorn's httptools protocol
with bounds on what one connection may hold.

- **Request heads** (``HUB_MAX_HEADER_BYTES``). uvicorn's httptools protocol has no
  limit of its own: the parser keeps what it has read of a header in memory until the
  line ends (four connections each sending 100 MiB of one header took a node from 91 to
  546 MiB). A request whose line and headers exceed the limit is answered ``431`` and
  its connection closed as soon as that many bytes arrived without the end of the
  headers. (uvicorn's h11 protocol has a limit of its own, which
  :func:`hub.server.build_server` sets to the same number.)
- **Time to send the head** (``HUB_HEADER_TIMEOUT``), counted from the connection (or
  from the first byte of the next request on a kept-alive one). uvicorn has no such
  timer: 1,500 connections that sent half a header stayed open for good, each holding a
  file descriptor. One that sent nothing is closed without a word (browsers open spare
  connections they may never use); one that sent part of a head gets ``408``.
- **Time to send the body** (``HUB_BODY_TIMEOUT``), from the end of the head: a body that
  trickles in gets ``408`` and the connection is closed.
- **Connections per client address** (``HUB_MAX_CONNECTIONS_PER_IP``, off by default):
  a request on a connection beyond the limit is answered ``503`` with ``Retry-After``.
  Only for a hub that clients reach directly: behind a proxy they share its address.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import is_ssl

from hub.answers import keep_alive
from hub.config import Settings
from hub.flag import Flag

if TYPE_CHECKING:
    from hub.doors import Endpoint

__all__ = ["HubProtocol", "hub_protocol"]

logger = logging.getLogger("hub")

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class HubProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above; the class attributes are set
    per server by :func:`hub_protocol`.

    The head is measured twice, because the parser reports a head only once it is
    whole: as parsed (a head that arrives in one read), and as bytes read while a head
    is still incomplete (one that never ends). The second is taken after the parser saw
    each read: a read that finished one request and began the next counts whole against
    the next.
    """

    #: Bytes of request line and headers accepted.
    max_head = 16 * 1024
    #: Seconds to send a head, and then a body.
    header_timeout = 10.0
    body_timeout = 30.0
    #: Connections one address may hold (0: no limit), and how many each holds now.
    max_per_ip = 0
    open_per_ip: ClassVar[dict[str, int]] = {}
    #: Requests refused for that since the last log line, and when that line was.
    refused_per_ip = 0
    refused_logged_at = float("-inf")
    #: Small POSTs answered off the connection (:mod:`hub.small_posts`), once installed.
    small_posts: ClassVar[Any] = None

    # Set on every request: slots keep them out of uvicorn's large instance dict.
    __slots__ = (
        "_address",
        "_head_bytes",
        "_in_body",
        "_in_head",
        "_over_limit",
        "_reading",
        "_refused",
        "_small",
        "_small_body",
        "_timer",
        "lost_hook",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's queue of pipelined requests is a deque, whose first block is ~600
        # bytes on every connection; pipelining is rare, and a list holds none.
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        self._head_bytes = 0
        self._reading = 0
        self._in_head = True
        self._in_body = False
        self._refused = False
        self._over_limit = False
        self._address: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: The endpoint of the small post being read, and its body so far.
        self._small: Endpoint | None = None
        self._small_body: list[bytes] = []
        #: Called once the connection is lost: a stream's response sets it instead of
        #: keeping a task waiting on ``receive()`` (:func:`hub.delivery.writer.disconnect_hook`),
        #: about 2 KiB less per idle stream.
        self.lost_hook: Callable[[], None] | None = None

    # -- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's connection_made, but with the addresses the transport holds already:
        # uvicorn's get_local_addr / get_remote_addr ask a socket object made for the
        # purpose, ~6 us a connection under uvloop (5% of setting up a stream).
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = _address(transport, "sockname")
        self.client = _address(transport, "peername")
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = "{}:{} - ".format(*self.client) if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        # uvicorn's events, as flags that make no deque until waited on (hub/flag.py).
        writable = Flag()
        writable.set()
        self.flow._is_writable_event = writable
        if self.max_per_ip and self.client:
            address = self.client[0]
            held = self.open_per_ip.get(address, 0)
            if held >= self.max_per_ip:
                # Answered once its request head is in (a clean 503 a client can read),
                # or closed by the header timer: it holds its descriptor no longer.
                self._over_limit = True
            else:
                self.open_per_ip[address] = held + 1
                self._address = address
        self._arm(self.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._address is not None:
            held = self.open_per_ip.get(self._address, 1) - 1
            if held > 0:
                self.open_per_ip[self._address] = held
            else:
                self.open_per_ip.pop(self._address, None)
            self._address = None
        HttpToolsProtocol.connection_lost(self, exc)
        hook, self.lost_hook = self.lost_hook, None
        if hook is not None:
            hook()

    def carry_stream(self) -> None:
        """The response now starting is an event stream, which lasts as long as the
        connection: no request is served after it on this connection, which closes
        when the stream ends. The parser goes (~0.9 KiB per idle stream), and what the
        client sends from now on is ignored (an EventSource sends nothing)."""
        cycle = self.cycle
        if cycle is None or cycle.more_body or self.pipeline or self._in_head or self._refused:
            # A body still coming, or a request behind it, whole or begun: parsed (and
            # timed) as before.
            return
        cycle.keep_alive = False
        self.parser = _STREAMING
        self._disarm()

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing sent: nothing to answer
            return
        logger.debug("closed a connection that sent no complete request head in time")
        self._refuse(
            408,
            "request_timeout",
            f"the request line and headers did not arrive within {self.header_timeout:g}s "
            "(HUB_HEADER_TIMEOUT)",
        )

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing() or not self._in_body:
            return
        logger.info(
            "closed a connection whose request body did not arrive within %gs (HUB_BODY_TIMEOUT)",
            self.body_timeout,
        )
        cycle = self.cycle
        if self._small is None and cycle is not None:
            # The app waits for the rest of the body: it now hears that the client is
            # gone, and nothing it sends goes out after the 408. (A small post's body
            # is still the protocol's own: no app has it yet.)
            cycle.disconnected = True
            cycle.message_event.set()
        self._small = None
        self._refuse(
            408,
            "request_timeout",
            f"the request body did not arrive within {self.body_timeout:g}s of the headers "
            "(HUB_BODY_TIMEOUT)",
        )

    # -- the parser ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        if self._over_limit:
            self._refused = True
            return
        # The head is within what was read since the message began: only when that is
        # over the limit is it worth measuring exactly.
        if self._head_bytes + self._reading > self.max_head and self._head_size() > self.max_head:
            # Not handed to the app: answered once the parser returns.
            self._refused = True
            return
        self._in_body = True
        if self.small_posts is not None:
            self._small = self.small_posts.endpoint_for(self)
            if self._small is not None:
                return
        before = self.cycle
        HttpToolsProtocol.on_headers_complete(self)
        cycle = self.cycle
        if cycle is not before and cycle is not None:
            # (Its task has not run yet: nothing waits on the event it was given.)
            cycle.message_event = Flag()
        if (
            cycle is not before
            and cycle is not None
            and self.scope["http_version"] == "1.0"
            and self.parser.should_keep_alive()
        ):
            keep_alive(cycle)

    def _head_size(self) -> int:
        return len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)

    def on_body(self, body: bytes) -> None:
        if self._small is not None:
            self._small_body.append(body)
        elif not self._refused:
            HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        if self._in_body:
            self._in_body = False
            self._disarm()
        if self._small is not None:
            endpoint, self._small = self._small, None
            body, self._small_body = self._small_body, []
            self.small_posts.serve(self, endpoint, body[0] if len(body) == 1 else b"".join(body))
        elif not self._refused:
            HttpToolsProtocol.on_message_complete(self)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.parser is _STREAMING:
            return
        self._reading = len(data)
        HttpToolsProtocol.data_received(self, data)
        if self._refused:
            self._refuse_request()
        elif self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head:
                self._refused = True
                self._refuse_request()
            elif self._timer is None:
                # The next request on a kept-alive connection, begun but not whole (the
                # first one's timer runs from the connection).
                self._arm(self.header_timeout, self._head_timed_out)
        elif self._in_body and self._timer is None:
            # Timers only for what did not come whole in one read: the common request
            # costs none.
            self._arm(self.body_timeout, self._body_timed_out)

    # -- refusals ------------------------------------------------------------------------

    def _refuse_request(self) -> None:
        if self._over_limit:
            self._note_over_limit()
            self._refuse(
                503,
                "too_many_connections",
                f"this address already holds {self.max_per_ip} connections to this node "
                "(HUB_MAX_CONNECTIONS_PER_IP); close some and retry",
                retry_after=5,
            )
            return
        logger.warning(
            "refused a request whose line and headers exceed %d bytes (HUB_MAX_HEADER_BYTES)",
            self.max_head,
        )
        self._refuse(
            431,
            "headers_too_large",
            f"the request line and headers exceed {self.max_head} bytes; send less (a "
            "shorter URL, fewer or smaller headers and cookies), or raise "
            "HUB_MAX_HEADER_BYTES",
        )

    def _note_over_limit(self) -> None:
        # Once a minute at most: a client hammering the limit must not flood the log.
        cls = type(self)
        cls.refused_per_ip += 1
        now = self.loop.time()
        if now - cls.refused_logged_at >= 60.0:
            logger.warning(
                "refused %d requests from addresses over HUB_MAX_CONNECTIONS_PER_IP=%d "
                "since the last such line (the latest from %s)",
                cls.refused_per_ip,
                self.max_per_ip,
                self.client[0] if self.client else "?",
            )
            cls.refused_per_ip = 0
            cls.refused_logged_at = now

    def _refuse(self, status: int, code: str, message: str, *, retry_after: int = 0) -> None:
        """Answer ``status`` with a JSON error, as the app does, and close."""
        self._refused = True
        self._disarm()
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            # A pipelined request behind a response still being sent (a stream): an
            # answer now would land inside that response. Closing is all there is.
            self.transport.close()
            return
        body = json.dumps({"error": code, "message": message}).encode()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (
            status,
            _REASONS[status],
        )
        if retry_after:
            head += b"retry-after: %d\r\n" % retry_after
        head += b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        self.transport.write(head + body)
        self.transport.close()


#: The parser of a connection that carries an event stream (:meth:`carry_stream`).
_STREAMING: Any = object()


class _Pipeline(list[Any]):
    """The two deque methods uvicorn calls on its pipeline, on a list."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def _address(transport: asyncio.BaseTransport, which: str) -> tuple[str, int] | None:
    """Host and port of one end of a TCP connection, as uvicorn gives them (``None``
    for a Unix socket)."""
    info = transport.get_extra_info(which)
    return (str(info[0]), int(info[1])) if isinstance(info, tuple) else None


def hub_protocol(settings: Settings) -> type[HubProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) for these settings;
    one per server, so that its connection counts are its own."""
    bounds = {
        "max_head": settings.max_header_bytes,
        "header_timeout": settings.header_timeout,
        "body_timeout": settings.body_timeout,
        "max_per_ip": settings.max_connections_per_ip,
        "open_per_ip": {},
        "refused_per_ip": 0,
        "refused_logged_at": float("-inf"),
    }
    return type("HubProtocol", (HubProtocol,), bounds)
