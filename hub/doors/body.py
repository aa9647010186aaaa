"""Small HTTP helpers shared by the native API and the Mercure door."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from hub.config import Settings
from hub.errors import BadRequest, PayloadTooLarge
from hub.store.batch import at_index, parse_json

__all__ = ["WHOLE_BODY", "header", "json_answer", "read_body", "read_ndjson"]

#: The scope key of a body the server read whole before the app ran
#: (:mod:`hub.small_posts`); :func:`read_body` takes it from there.
WHOLE_BODY = "hub.body"


async def read_body(request: Request, limit: int, setting: str = "raise HUB_MAX_PAYLOAD") -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes (the
    message names ``setting``, the way to allow more)."""
    whole: bytes | None = request.scope.get(WHOLE_BODY)
    declared = str(len(whole)) if whole is not None else header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit} ({setting})")
    if whole is not None:
        return whole
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    # Read off ASGI directly: Starlette's request.stream() is a generator and a state
    # machine around the same loop, a few percent of a small publish's CPU.
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _gone(size)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes ({setting})")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def header(request: Request, name: bytes) -> str | None:
    """The first ``name`` header (lower case), read off the ASGI scope: building
    Starlette's ``request.headers`` for one header costs more than this scan."""
    headers: list[tuple[bytes, bytes]] = request.scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_ndjson(request: Request, settings: Settings) -> list[Any]:
    """An NDJSON body's values, one a line, parsed as the lines arrive (a large batch
    is not one long stretch of JSON parsing). Bounded by ``HUB_MAX_BATCH_BYTES`` and
    ``HUB_MAX_BATCH`` lines; a blank line is refused (it would shift every index after
    it), except at the end."""
    limit, most = settings.max_batch_bytes, settings.max_batch
    declared = header(request, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the batch is {declared} bytes; the limit is {limit} (HUB_MAX_BATCH_BYTES): "
            "split it into several requests"
        )
    values: list[Any] = []
    size = 0
    pending: list[bytes] = []  # the line being read, joined once it ends
    async for chunk in _stream(request):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the batch exceeds {limit} bytes (HUB_MAX_BATCH_BYTES): split it into "
                "several requests"
            )
        pending.append(chunk)
        if b"\n" not in chunk:
            continue
        *lines, rest = b"".join(pending).split(b"\n")
        pending = [rest]
        for line in lines:
            _add_line(values, line, most)
    rest = b"".join(pending)
    if rest.strip():
        _add_line(values, rest, most)
    return values


def _add_line(values: list[Any], line: bytes, most: int) -> None:
    index = len(values)
    if index >= most:
        raise BadRequest(
            f"a batch holds at most {most} events (HUB_MAX_BATCH); split it into several requests"
        )
    with at_index(index):
        if not line.strip():
            raise BadRequest("an empty line; NDJSON has one publish object on each line")
        values.append(parse_json(line, "the line"))


async def _stream(request: Request) -> AsyncIterator[bytes]:
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            yield chunk
    except ClientDisconnect:
        raise _gone(size) from None


def _gone(size: int) -> BadRequest:
    # Gone mid-body, or cut off by HUB_BODY_TIMEOUT: nothing was published, and no one
    # is left to read this answer; not a server error with a traceback.
    return BadRequest(
        f"the connection closed after {size} bytes of the body; nothing was published"
    )


def json_answer(body: bytes, status: int = 200) -> Response:
    """A response of ``body``, JSON already encoded. What ``Response(body, status,
    media_type="application/json")`` makes, without working out its headers: a few
    percent of a small publish's CPU."""
    answer = Response.__new__(Response)
    answer.status_code = status
    answer.background = None
    answer.body = body
    answer.raw_headers = [
        (b"content-length", b"%d" % len(body)),
        (b"content-type", b"application/json"),
    ]
    return answer
