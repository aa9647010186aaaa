"""The HTTP API: ``/events`` (SSE), ``/publish``, ``/healthz``, ``/readyz``, its
OpenAPI description at ``/openapi.json`` (:mod:`hub.openapi`), ``/metrics``
(:mod:`hub.metrics`), the demo page at ``/`` (``hub/static``), and the Mercure door
at ``/.well-known/mercure`` (:mod:`hub.doors.mercure.endpoints`)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from hub.config import Settings
from hub.delivery.broker import Broker
from hub.delivery.response import EventStream, quiet_cut_off_streams
from hub.delivery.sse import retry_frame
from hub.doors.auth import cors_origins, expires_in
from hub.doors.body import read_body
from hub.doors.mercure.endpoints import MercureDoor, mercure, native_stream
from hub.doors.mercure.subscriptions import PATH as SUBSCRIPTIONS_PATH
from hub.doors.mercure.subscriptions import subscriptions_endpoint
from hub.errors import (
    BackendUnavailable,
    BadRequest,
    HubError,
    TooManyConnections,
)
from hub.metrics import TOKEN_EXPIRED, Metrics
from hub.openapi import openapi_endpoint
from hub.store.backend import Backend
from hub.store.keys import check_channels, refuse_reserved
from hub.store.publisher import Extra
from hub.supervise import Supervised

__all__ = ["create_app", "drain"]

logger = logging.getLogger("hub")

Endpoint = Callable[[Request], Awaitable["Response | EventStream"]]

_PUBLISH_FIELDS = {"channel", "channels", "data", "event", "private"}
#: Room in a publish body for everything but ``data`` (channel names, keys, quoting).
_ENVELOPE = 64 * 1024
#: The demo page's files: plain HTML, CSS and JavaScript, no build step.
STATIC = Path(__file__).resolve().parent / "static"
#: What ``/static/{name}`` serves: these files and nothing else (no path tricks).
_STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}


def create_app(settings: Settings | None = None, *, backend: Backend | None = None) -> Starlette:
    """The hub as an ASGI app. Without a backend it connects to ``settings.redis_url``,
    or runs on the embedded in-memory backend when that is ``None``."""
    settings = settings or Settings.from_env()
    backend = backend or Backend(settings.redis_url, pool_size=settings.redis_pool_size)
    quiet_cut_off_streams()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if backend.embedded:
            logger.warning(
                "no HUB_REDIS_URL: running on the embedded in-memory backend "
                "(one process only, history is lost on exit)"
            )
        else:
            logger.info("using Redis at %s", backend.describe())
        async with AsyncExitStack() as stack:
            broker = await stack.enter_async_context(Broker(backend, settings))
            metrics.attach(broker)
            if metrics.multiprocess:
                # Other workers answer scrapes too: keep our numbers fresh for them.
                await stack.enter_async_context(
                    Supervised("hub metrics sync", lambda: metrics.sync_forever(broker))
                )
                stack.callback(metrics.sync, broker)  # the last numbers of this worker
            door = await stack.enter_async_context(MercureDoor(broker, backend, settings))
            app.state.broker = broker
            app.state.mercure = door
            yield

    metrics = Metrics()
    app = _HubApp(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/events", events, methods=["GET"]),
            Route("/publish", publish, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            Route("/static/{name}", static_file, methods=["GET"]),
            Route("/.well-known/mercure", mercure, methods=["GET", "POST"]),
        ],
        middleware=_cors(settings),
        lifespan=lifespan,
        exception_handlers={HubError: _hub_error},
    )
    app.state.settings = settings
    app.fast_events = not settings.cors_origins
    app.state.metrics = metrics
    return app


class _HubApp(Starlette):
    """Starlette, except that ``GET /events``, ``POST /publish`` and the Mercure door
    skip the middleware stack and the router.

    Every write to every client would otherwise pass through two middleware wrappers
    (server errors, exception handlers): a few percent of the CPU per delivered event
    in profiles; and a wrapped ``send`` rules out direct writes (:mod:`hub.delivery.writer`).
    For ``/publish`` the stack and routing were about a quarter of the hub's CPU per
    publish (py-spy, bench/ S1c). None of these endpoints needs them: they render
    their own errors below, and anything unexpected still reaches uvicorn, which logs
    it and answers 500.
    """

    #: False when middleware must see these requests too (CORS headers for other origins).
    fast_events = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._fast_endpoint(scope)
            if endpoint is not None:
                scope["app"] = self
                request = Request(scope, receive)
                response: Response | EventStream
                try:
                    response = await endpoint(request)
                except HubError as exc:
                    response = await _hub_error(request, exc)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _fast_endpoint(self, scope: Scope) -> Endpoint | None:
        path, method = scope["path"], scope["method"]
        if self.fast_events:
            if path == "/events" and method in ("GET", "HEAD"):
                return events
            if path == "/publish" and method == "POST":
                return publish
            if path == "/.well-known/mercure" and method in ("GET", "HEAD", "POST"):
                return mercure
        if path.startswith(SUBSCRIPTIONS_PATH):
            # Not a Route: its {topic} and {subscriber} are URL-encoded and may hold
            # %2F, which routing (on the decoded path) would split.
            return subscriptions_endpoint if method in ("GET", "HEAD") else _read_only
        return None


async def _read_only(request: Request) -> Response:
    return JSONResponse(
        {"error": "method_not_allowed", "message": "the subscriptions API only answers GET"},
        status_code=405,
        headers={"Allow": "GET, HEAD"},
    )


def drain(app: Starlette) -> None:
    """Shutdown, first step: end every open stream with a jittered ``retry:`` hint, so
    clients come back spread out (to another node) instead of all at once."""
    broker: Broker | None = getattr(app.state, "broker", None)
    if broker is None:
        return
    retry_ms = broker.settings.retry_ms
    for_each = broker.connections
    broker.close_all("shutdown", lambda: retry_frame(int(retry_ms * random.uniform(1.0, 2.0))))
    door: MercureDoor | None = getattr(app.state, "mercure", None)
    if door is not None:
        for_each += door.connections
        door.close_all("shutdown", lambda: retry_frame(int(retry_ms * random.uniform(1.0, 2.0))))
    if for_each:
        logger.info("closed %d streams for shutdown", for_each)


async def _hub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HubError)
    retry_later = isinstance(exc, (BackendUnavailable, TooManyConnections))
    headers = {"Retry-After": "5"} if retry_later else None
    return JSONResponse(
        {"error": exc.code, "message": str(exc)}, status_code=exc.status_code, headers=headers
    )


async def events(request: Request) -> Response | EventStream:
    """Subscribe: ``GET /events?channel=A&channel=B`` with an optional cursor."""
    broker: Broker = request.app.state.broker
    settings = broker.settings
    names, cursor = stream_params(request.scope)
    channels = check_channels(names, settings.max_channels)
    door: MercureDoor = request.app.state.mercure
    # Checked before the stream exists, counting every stream of the node, native and
    # Mercure. A 503 makes a browser's EventSource give up, but it protects the node:
    # the client (or the load balancer) goes elsewhere.
    door.check_capacity()
    claims = None
    if door.auth.subscriber_verifier is not None:
        claims = door.auth.subscriber(request)
        if claims is not None and claims.can_receive(channels):
            # Private updates travel on the Mercure door only; a plain stream costs the
            # native live path nothing.
            return await native_stream(request, channels, claims, cursor or None)

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
    door: MercureDoor = request.app.state.mercure
    if door.auth.publisher_verifier is not None:
        door.auth.check_publish(door.auth.publisher(request), check_channels(channels, 1000))
    started = time.perf_counter()
    event_id = await broker.publisher.publish(
        channels, body["data"], event=body.get("event"), extra=Extra(private=private)
    )
    metrics: Metrics = request.app.state.metrics
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


def _cors(settings: Settings) -> list[Middleware]:
    origins = cors_origins(settings)
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            # "*" lets any site read public streams without credentials; cookies and
            # tokens in browsers are honoured only for origins listed by name, or any
            # page a visitor opens could read their private updates.
            allow_credentials=origins != ["*"],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Last-Event-ID", "Content-Type", "Cache-Control"],
            expose_headers=["Last-Event-ID"],
        )
    ]


async def index(request: Request) -> Response:
    """The demo page: follow channels, publish, ask the ``llm`` worker."""
    return await _static("index.html")


async def static_file(request: Request) -> Response:
    """The demo page's scripts and styles."""
    return await _static(request.path_params["name"])


async def _static(name: str) -> Response:
    media_type = _STATIC_FILES.get(name)
    if media_type is None:
        return JSONResponse(
            {"error": "not_found", "message": f"no file {name[:60]!r} here; the page is at /"},
            status_code=404,
        )
    # no-cache: a browser revalidates (ETag), so a new hub version's page is seen at once.
    return FileResponse(STATIC / name, media_type=media_type, headers={"Cache-Control": "no-cache"})


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus' text format; under ``--workers N``, the sums of all workers."""
    metrics: Metrics = request.app.state.metrics
    body, content_type = await metrics.render(request.app.state.broker)
    return Response(body, media_type=content_type)


async def healthz(request: Request) -> Response:
    """The process is up (for liveness probes)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Redis answers and the live path is subscribed (for load balancers)."""
    broker: Broker = request.app.state.broker
    try:
        await broker.ping()
    except BackendUnavailable as exc:
        return JSONResponse({"status": "unavailable", "message": str(exc)}, status_code=503)
    if not broker.live:
        return JSONResponse(
            {"status": "starting", "message": "the live Redis connection is not up yet"},
            status_code=503,
        )
    return JSONResponse({"status": "ok", "connections": broker.connections})
