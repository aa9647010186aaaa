"""Small POSTs to the fast endpoints (``POST /publish``, the Mercure door's publish),
served by the connection itself instead of through uvicorn's request cycle.

For each request uvicorn makes a ``RequestResponseCycle``, a task running the ASGI
app, an ASGI ``receive`` and ``send`` and, before the app, the proxy-headers rewrite.
For a 100-byte publish that was about half of the hub's own CPU: 88 against 46 µs
(bench/publish_cost.py, side by side). A POST whose whole body is declared up front
and small (``Content-Length`` at most :data:`SMALL_BODY`, no ``Expect:
100-continue``), with no earlier request still being answered, is read by the
protocol into one buffer (its size and time bounds as for any request,
:mod:`hub.protocol`). Then one task runs the same endpoint, on the same scope, and
writes its answer in one write. Anything else goes uvicorn's way.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from starlette.types import Message, Scope

from hub.app import HubApp, whole
from hub.delivery.writer import answer_parts, log_access
from hub.doors import Endpoint
from hub.doors.body import WHOLE_BODY
from hub.forwarded import Forwarded
from hub.protocol import HubProtocol

__all__ = ["SMALL_BODY", "SmallPosts"]

#: The largest body served this way: a publish of one event, or a batch of about a
#: hundred small ones. It is read before the endpoint runs (and checks the token).
SMALL_BODY = 64 * 1024

_SERVER_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


class SmallPosts:
    """Which requests are small posts, and how they are answered (one per server)."""

    def __init__(self, app: HubApp, forwarded: Forwarded | None) -> None:
        self._app = app
        self._forwarded = forwarded
        self._endpoints = {
            path.encode(): endpoint
            for (path, method), endpoint in app.fast.items()
            if method == "POST"
        }

    @classmethod
    def install(cls, config: uvicorn.Config) -> None:
        """Serve ``config``'s app behind the proxy headers (:meth:`Forwarded.install`)
        and, when it runs the hub's protocol and app, small posts so."""
        Forwarded.install(config)
        app: object = config.app
        forwarded: Forwarded | None = None
        if isinstance(app, Forwarded):
            forwarded, app = app, app.app
        protocol = config.http
        if (
            isinstance(app, HubApp)
            and isinstance(protocol, type)
            and issubclass(protocol, HubProtocol)
        ):
            protocol.small_posts = cls(app, forwarded)

    def endpoint_for(self, protocol: HubProtocol) -> Endpoint | None:
        """The endpoint of the request whose head ``protocol`` just parsed, if it is a
        small post; then the protocol collects its body and calls :meth:`serve`."""
        endpoint = self._endpoints.get(protocol.url)
        if endpoint is None or protocol.parser.get_method() != b"POST":
            return None
        cycle = protocol.cycle
        if (
            (cycle is not None and not cycle.response_complete)
            or protocol.expect_100_continue
            or protocol.flow.write_paused
            or protocol.root_path
            or protocol.parser.should_upgrade()
        ):
            return None
        length = None
        for name, value in protocol.headers:
            if name == b"content-length":
                if length is not None:
                    return None  # two of them: uvicorn's way answers that
                length = value
            elif name == b"transfer-encoding":
                return None
        if length is None or not length.isdigit() or int(length) > SMALL_BODY:
            return None
        return endpoint

    def serve(self, protocol: HubProtocol, endpoint: Endpoint, body: bytes) -> None:
        """Answer the small post whose body just arrived."""
        scope: Any = protocol.scope
        version = protocol.parser.get_http_version()
        scope["http_version"] = version
        scope["method"] = "POST"
        scope["path"] = protocol.url.decode("ascii")
        scope["raw_path"] = protocol.url
        scope["query_string"] = b""
        scope[WHOLE_BODY] = body
        if self._forwarded is not None:
            self._forwarded.rewrite(scope)
        keep = protocol.parser.should_keep_alive()
        answering = _Answering(keep, version == "1.0" and keep)
        protocol.cycle = answering  # type: ignore[assignment]
        task = protocol.loop.create_task(self._answer(protocol, answering, endpoint, scope, body))
        protocol.tasks.add(task)
        task.add_done_callback(protocol.tasks.discard)

    async def _answer(
        self,
        protocol: HubProtocol,
        answering: _Answering,
        endpoint: Endpoint,
        scope: Scope,
        body: bytes,
    ) -> None:
        transport = protocol.transport
        try:
            response = await self._app.answer(endpoint, scope, _Body(body))
        except Exception as exc:
            # As uvicorn does for an app that raised.
            protocol.logger.error("Exception in ASGI application\n", exc_info=exc)
            response = None
        answering.response_complete = True
        if answering.disconnected or transport.is_closing():
            return
        answer = whole(response)
        if answer is None:
            if response is not None:
                protocol.logger.error("a small post was answered with a stream")
            transport.write(_SERVER_ERROR)
            transport.close()
            return
        log_access(protocol.access_log, protocol.access_logger, scope, answer.status_code)
        keep = answering.keep_alive
        connection = b"keep-alive" if answering.http10 else None if keep else b"close"
        parts = answer_parts(
            answer.status_code,
            protocol.server_state.default_headers,
            answer.raw_headers,
            connection,
            answer.body,
        )
        transport.write(b"".join(parts))
        if not keep:
            transport.close()
        protocol.on_response_complete()


class _Answering:
    """Stands in for uvicorn's cycle while a small post is answered: what uvicorn and
    :class:`HubProtocol` ask of the request in progress (a request pipelined behind it
    waits, the connection's loss is noted, a shutdown closes after the answer)."""

    __slots__ = (
        "disconnected",
        "http10",
        "keep_alive",
        "message_event",
        "more_body",
        "response_complete",
        "response_started",
    )

    def __init__(self, keep_alive: bool, http10: bool) -> None:
        self.keep_alive = keep_alive
        self.http10 = http10
        self.disconnected = False
        self.response_complete = False
        self.response_started = False
        self.more_body = False
        self.message_event = _NoEvent()


class _NoEvent:
    """The cycle's message event: nothing waits on this one."""

    __slots__ = ()

    def set(self) -> None:
        return None


class _Body:
    """``receive`` of a request whose whole body is in hand."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    async def __call__(self) -> Message:
        body, self._body = self._body, None
        if body is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": body, "more_body": False}
