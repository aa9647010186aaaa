"""The native door: ``GET /events`` (Server-Sent Events) and ``POST /publish`` (JSON)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from hub.delivery.broker import Broker
from hub.delivery.response import EventStream
from hub.delivery.stats import TOKEN_EXPIRED
from hub.doors import Door
from hub.doors.auth import Auth, Claims, expires_in
from hub.doors.body import header, json_answer, read_body, read_ndjson
from hub.doors.quota import spend_publish
from hub.errors import BadRequest, HubError, PayloadTooLarge
from hub.store import Extra, check_channels
from hub.store.batch import of_event, parse_json, read_item, read_items
from hub.store.keys import refuse_reserved

__all__ = ["NATIVE", "PrivateStreams", "events", "publish", "stream_params"]

_PRIVATE = Extra(private=True)
#: Media types of a batch with one publish object per line.
_NDJSON = ("application/x-ndjson", "application/ndjson", "application/jsonl")
#: Room in a publish body for everything but ``data`` (channel names, keys, quoting).
_ENVELOPE = 64 * 1024


class PrivateStreams(Protocol):
    """Serves an ``/events`` stream whose token may receive private updates of its
    channels: a door that checks who may receive which private update (the Mercure
    door) registers itself as ``app.state.private_streams``."""

    async def __call__(
        self, request: Request, channels: list[str], claims: Claims, cursor: str | None
    ) -> EventStream: ...


class PublishTimer(Protocol):
    """Where ``/publish`` reports how long Redis took (``app.state.metrics``)."""

    def observe_publish(self, seconds: float) -> None: ...


async def events(request: Request) -> Response | EventStream:
    """Subscribe: ``GET /events?channel=A&channel=B`` with an optional cursor."""
    broker: Broker = request.app.state.broker
    settings = broker.settings
    names, cursor = stream_params(request.scope)
    channels = check_channels(names, settings.max_channels)
    # Checked before the stream exists, counting every stream of the node.
    broker.admission.check()
    auth: Auth = request.app.state.auth
    claims = None
    if auth.subscriber_verifier is not None:
        claims = await auth.subscriber(request)
        private: PrivateStreams | None = getattr(request.app.state, "private_streams", None)
        if claims is not None and private is not None and claims.can_receive(channels):
            # Who may receive which private update is the Mercure door's business; a
            # plain stream skips every private update without asking.
            return await private(request, channels, claims, cursor or None)

    response = EventStream()
    response.body = broker.stream(channels, cursor or None, response)
    ttl = expires_in(claims)
    if ttl is not None:
        # The token's exp ends the stream; the client comes back with a fresh one.
        timer = asyncio.get_running_loop().call_later(ttl, response.abort, TOKEN_EXPIRED)
        response.on_abort(timer.cancel)
    return response


def stream_params(scope: Scope) -> tuple[list[str], str | None]:
    """A stream request's ``channel`` values and its cursor, read off the ASGI scope as
    Starlette's ``query_params`` and ``headers`` would give them: building those was 7%
    of the CPU under connection churn (bench S6)."""
    query = scope["query_string"].decode("latin-1")
    if "%" in query or "+" in query:
        params = parse_qsl(query, keep_blank_values=True)
    else:  # nothing to unquote: what parse_qsl would return
        params = [(n, v) for n, _, v in (p.partition("=") for p in query.split("&") if p)]
    channels = [v for n, v in params if n == "channel"]
    # The header is what EventSource sends on its own reconnects: it is newer than a cursor
    # the page put in the URL when it first connected.
    cursor = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"last-event-id"), None)
    if not cursor:  # else the last lastEventId, as query_params.get gives it
        cursor = next((v for n, v in reversed(params) if n == "lastEventId"), None)
    return channels, cursor


async def publish(request: Request) -> Response:
    """``POST /publish``: one publish object ``{"channel": "news", "data": ...}``, or a
    batch: a JSON array of them, or NDJSON (``Content-Type: application/x-ndjson``)."""
    broker: Broker = request.app.state.broker
    settings = broker.settings
    auth: Auth = request.app.state.auth
    # The token first, and HUB_PUBLISH_RATE: a batch body may be megabytes to read and
    # parse.
    claims = await auth.publisher(request) if auth.publisher_verifier is not None else None
    await spend_publish(broker, request, claims)
    if _is_ndjson(request):
        bodies = await read_ndjson(request, settings)
        return await _publish_batch(request, claims, bodies)
    raw = await read_body(
        request,
        max(settings.max_payload + _ENVELOPE, settings.max_batch_bytes),
        "raise HUB_MAX_PAYLOAD for one event, HUB_MAX_BATCH_BYTES for a batch",
    )
    body = parse_json(raw)
    if isinstance(body, list):
        if len(raw) > settings.max_batch_bytes:
            raise PayloadTooLarge(
                f"the batch is {len(raw)} bytes; the limit is {settings.max_batch_bytes} "
                "(HUB_MAX_BATCH_BYTES): split it into several requests"
            )
        return await _publish_batch(request, claims, body)
    if len(raw) > settings.max_payload + _ENVELOPE:
        raise PayloadTooLarge(
            f"the body is {len(raw)} bytes; the limit is {settings.max_payload + _ENVELOPE} "
            "(raise HUB_MAX_PAYLOAD)"
        )
    if not isinstance(body, dict):
        raise BadRequest(
            'the body must be a JSON object like {"channel": "news", "data": "hi"}, '
            "or an array of them"
        )
    item = read_item(body)
    refuse_reserved(item.channels)
    if claims is not None:
        auth.check_publish(claims, check_channels(item.channels, 1000))
    started = time.perf_counter()
    extra = _PRIVATE if item.private else None
    if claims is not None and claims.subject:
        # Kept with the event: a worker reading requests counts them per subject.
        extra = Extra(private=item.private, subject=claims.subject)
    publisher = broker.publisher
    event_id = await publisher.publish(item.channels, item.data, event=item.event, extra=extra)
    metrics: PublishTimer = request.app.state.metrics
    metrics.observe_publish(time.perf_counter() - started)
    broker.stats.published += 1
    # What JSONResponse({"id": event_id}) gives, without the encoder: an id is digits,
    # a dash, a dot and letters.
    return json_answer(b'{"id":"%s"}' % event_id.encode(), 201)


async def _publish_batch(request: Request, claims: Claims | None, bodies: list[Any]) -> Response:
    """Every item checked (shape, reserved names, the token's claims, then names, types
    and sizes in the publisher) before any is published; ids in order."""
    broker: Broker = request.app.state.broker
    auth: Auth = request.app.state.auth
    items = read_items(bodies, broker.settings.max_batch)
    for index, item in enumerate(items):
        try:
            refuse_reserved(item.channels)
            if claims is not None:
                auth.check_publish(claims, check_channels(item.channels, 1000))
        except HubError as exc:
            raise of_event(index, exc) from None
    # Each event of a batch counts against HUB_PUBLISH_RATE; the request spent one.
    await spend_publish(broker, request, claims, units=len(items) - 1, spent=1)
    started = time.perf_counter()
    subject = claims.subject if claims is not None else None
    ids = await broker.publisher.publish_many(items, subject=subject)
    metrics: PublishTimer = request.app.state.metrics
    metrics.observe_publish(time.perf_counter() - started)
    broker.stats.published += len(ids)
    return JSONResponse({"ids": ids}, status_code=201)


def _is_ndjson(request: Request) -> bool:
    kind = header(request, b"content-type")
    return kind is not None and kind.partition(";")[0].strip().lower() in _NDJSON


#: The native door, as the app registers it.
NATIVE = Door(
    "native",
    routes=[
        Route("/events", events, methods=["GET"]),
        Route("/publish", publish, methods=["POST"]),
    ],
    fast=[
        ("/events", frozenset({"GET", "HEAD"}), events),
        ("/publish", frozenset({"POST"}), publish),
    ],
)
