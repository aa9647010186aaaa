"""Small HTTP helpers shared by the native API and the Mercure door."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from hub.config import Settings
from hub.errors import BadRequest, PayloadTooLarge
from hub.store.batch import at_index, parse_json

__all__ = ["read_body", "read_ndjson"]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the body is {declared} bytes; the limit is {limit} (raise HUB_MAX_PAYLOAD)"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes (raise HUB_MAX_PAYLOAD)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_ndjson(request: Request, settings: Settings) -> list[Any]:
    """An NDJSON body's values, one a line, parsed as the lines arrive (a large batch
    is not one long stretch of JSON parsing). Bounded by ``HUB_MAX_BATCH_BYTES`` and
    ``HUB_MAX_BATCH`` lines; a blank line is refused (it would shift every index after
    it), except at the end."""
    limit, most = settings.max_batch_bytes, settings.max_batch
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the batch is {declared} bytes; the limit is {limit} (HUB_MAX_BATCH_BYTES): "
            "split it into several requests"
        )
    values: list[Any] = []
    size = 0
    pending: list[bytes] = []  # the line being read, joined once it ends
    async for chunk in request.stream():
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
