"""Answers written whole onto uvicorn's httptools connection: HTTP/1.0 keep-alive, and
a complete small response in one write (the fast endpoints' answers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from hub.delivery.writer import answer_parts, begin_response

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

__all__ = ["keep_alive", "write_whole"]


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
    begin_response(cycle, status)
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
