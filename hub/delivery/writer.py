"""Live events straight onto the client's socket, when the server allows it.

Per delivered event, the generic path costs a wake-up of the client's task, a pass
through the stream generator, an ASGI message and uvicorn's chunk framing: in profiles
of ``bench/`` fan-out, most of the hub's CPU. Under uvicorn's httptools protocol the
response's transport is reachable from ``send``; once a stream is live (its replay is
written and nothing is queued), the live reader writes each event onto every client's
transport itself, framed as an HTTP/1.1 chunk once per event, not once per client.

Anything else (h11, another ASGI server, a test client) keeps the generic path: this
module only ever answers "not available".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import Send

__all__ = ["DirectWriter", "direct_writer", "disconnect_hook"]

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
