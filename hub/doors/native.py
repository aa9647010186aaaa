"""The native door: ``GET /events`` (Server-Sent Events) and ``POST /publish`` (JSON)."""

from __future__ import annotations

import asyncio
import json
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
from hub.doors.body import read_body
from hub.errors import BadRequest
from hub.store import Extra, check_channels
from hub.store.keys import refuse_reserved

__all__ = ["NATIVE", "PrivateStreams", "events", "publish", "stream_params"]

_PUBLISH_FIELDS = {"channel", "channels", "data", "event", "private"}
#: Room in a publish body for everything but ``data`` (channel names, keys, quoting).
_ENVELOPE = 64 * 1024


class PrivateStreams(Protocol):
    """Serves an ``/events`` stream whose token may receive private updates of its
    channels. Private updates travel on the log, not the native live path; a door that
    follows the log registers itself as ``app.state.private_streams``."""

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
        claims = auth.subscriber(request)
        private: PrivateStreams | None = getattr(request.app.state, "private_streams", None)
        if claims is not None and private is not None and claims.can_receive(channels):
            # Private updates travel on the log only; a plain stream costs the native
            # live path nothing.
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
    """``POST /publish`` ``{"channel": "news", "data": ..., "event": "update"}``."""
    broker: Broker = request.app.state.broker
    settings = broker.settings
    raw = await read_body(request, settings.max_payload + _ENVELOPE)
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except ValueError:
        # Python's own limit on integer digits (4300): not the client's JSON being wrong.
        raise BadRequest("a number in the body has too many digits; send it as a string") from None
    except RecursionError:
        raise BadRequest(
            "the body's JSON is nested too deeply; flatten data, or send it as a string"
        ) from None
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object like {"channel": "news", "data": "hi"}')
    unknown = sorted(set(body) - _PUBLISH_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; allowed: {sorted(_PUBLISH_FIELDS)}")
    channels = _publish_channels(body)
    refuse_reserved(channels)
    if "data" not in body:
        raise BadRequest('"data" is required (a string is sent as-is, other JSON as JSON)')
    private = body.get("private", False)
    if not isinstance(private, bool):
        raise BadRequest('"private" must be true or false')
    auth: Auth = request.app.state.auth
    subject = None
    if auth.publisher_verifier is not None:
        claims = auth.publisher(request)
        auth.check_publish(claims, check_channels(channels, 1000))
        subject = claims.subject
    started = time.perf_counter()
    event_id = await broker.publisher.publish(
        channels,
        body["data"],
        event=body.get("event"),
        extra=Extra(private=private, subject=subject),
    )
    metrics: PublishTimer = request.app.state.metrics
    metrics.observe_publish(time.perf_counter() - started)
    broker.stats.published += 1
    return JSONResponse({"id": event_id}, status_code=201)


def _publish_channels(body: dict[str, Any]) -> list[str]:
    if ("channel" in body) == ("channels" in body):
        raise BadRequest('give either "channel": "name" or "channels": ["a", "b"]')
    if "channel" in body:
        return check_channels([body["channel"]], 1)
    channels = body["channels"]
    if not isinstance(channels, list):
        raise BadRequest('"channels" must be a list of channel names')
    return channels  # names and their number are checked by the publisher


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
