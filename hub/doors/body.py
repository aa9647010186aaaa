"""Small HTTP helpers shared by the native API and the Mercure door."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from hub.errors import BadRequest, PayloadTooLarge

__all__ = ["read_body"]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the body is {declared} bytes; the limit is {limit} (raise HUB_MAX_PAYLOAD)"
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body exceeds {limit} bytes (raise HUB_MAX_PAYLOAD)")
            chunks.append(chunk)
    except ClientDisconnect:
        # Gone mid-body, or cut off by HUB_BODY_TIMEOUT: nothing was published, and no
        # one is left to read this answer; not a server error with a traceback.
        raise BadRequest(
            f"the connection closed after {size} bytes of the body; nothing was published"
        ) from None
    return b"".join(chunks)
