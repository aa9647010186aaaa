"""The app: the doors (:mod:`hub.doors`) onto one broker, plus ``/healthz``,
``/readyz``, ``/metrics`` (:mod:`hub.metrics`), ``/openapi.json`` (:mod:`hub.openapi`),
the demo page at ``/`` and the chat page at ``/chat`` (``hub/static``)."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from hub.answers import write_whole
from hub.config import Settings
from hub.delivery.broker import Broker
from hub.delivery.response import EventStream, quiet_cut_off_streams
from hub.delivery.sse import retry_frame
from hub.doors import Door, Endpoint
from hub.doors.auth import Auth, cors_origins
from hub.doors.grants import bearer_challenge
from hub.doors.mercure import MERCURE
from hub.doors.native import NATIVE
from hub.errors import (
    BackendUnavailable,
    HubError,
    KeysUnavailable,
    RateLimited,
    TooManyConnections,
)
from hub.logs import redact_secrets
from hub.metrics import Metrics
from hub.openapi import openapi_endpoint
from hub.store import Backend
from hub.supervise import Supervised

__all__ = ["DOORS", "HubApp", "Service", "create_app", "drain", "whole"]

#: Something to run beside the app for as long as it runs: called with the app's
#: backend, settings and metrics registry when the app starts, entered, and left when
#: it stops. The app is given these from above (``hub serve --worker``), so that it
#: imports nothing of what they run.
Service = Callable[[Backend, Settings, Any], AbstractAsyncContextManager[object]]

logger = logging.getLogger("hub")

#: Every door of the hub: the one place a wire protocol is registered.
DOORS: tuple[Door, ...] = (NATIVE, MERCURE)

#: The demo page's files: plain HTML, CSS and JavaScript, no build step.
STATIC = Path(__file__).resolve().parent / "static"
#: What ``/static/{name}`` serves: these files and nothing else (no path tricks).
_STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "hub.js": "text/javascript; charset=utf-8",
    "hub.d.ts": "text/plain; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
    "chat.html": "text/html; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
    # Vendored libraries of the chat page (hub/static/vendor/README.md says which).
    "vendor/marked.umd.js": "text/javascript; charset=utf-8",
    "vendor/purify.min.js": "text/javascript; charset=utf-8",
    "vendor/marked.LICENSE.txt": "text/plain; charset=utf-8",
    "vendor/dompurify.LICENSE.txt": "text/plain; charset=utf-8",
}


def create_app(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    services: Sequence[Service] = (),
) -> Starlette:
    """The hub as an ASGI app. Without a backend it connects to ``settings.redis_url``,
    or runs on the embedded in-memory backend when that is ``None``. ``services``: what
    else runs in this process while the app does, such as producer workers
    (:func:`hub.inprocess.in_process_workers`)."""
    settings = settings or Settings.from_env()
    backend = backend or Backend(
        settings.redis_url, pool_size=settings.redis_pool_size, key_prefix=settings.key_prefix
    )
    quiet_cut_off_streams()
    auth = Auth(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if backend.embedded:
            logger.warning(
                "no HUB_REDIS_URL: running on the embedded in-memory backend "
                "(one process only, history is lost on exit)"
            )
        else:
            logger.info("using Redis at %s", backend.describe())
        auth.log_mode()
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(auth.opened())
            broker = await stack.enter_async_context(Broker(backend, settings))
            metrics.attach(broker)
            if metrics.multiprocess:
                # Other workers answer scrapes too: keep our numbers fresh for them.
                await stack.enter_async_context(
                    Supervised("hub metrics sync", lambda: metrics.sync_forever(broker))
                )
                stack.callback(metrics.sync, broker)  # the last numbers of this worker
            app.state.broker = broker
            for door in DOORS:
                if door.opened is not None:
                    state = await stack.enter_async_context(door.opened(broker, auth))
                    setattr(app.state, door.name, state)
                for name, value in door.provides.items():
                    setattr(app.state, name, value)
            for service in services:
                await stack.enter_async_context(service(backend, settings, metrics.registry))
            yield

    metrics = Metrics()
    app = HubApp(
        DOORS,
        fast=not settings.cors_origins,
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/chat", chat_page, methods=["GET"]),
            *(route for door in DOORS for route in door.routes),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            Route("/static/{name}", static_file, methods=["GET"]),
            Route("/static/vendor/{name}", vendor_file, methods=["GET"]),
        ],
        middleware=_cors(settings),
        lifespan=lifespan,
        exception_handlers={HubError: _hub_error},
    )
    app.state.settings = settings
    app.state.auth = auth
    app.state.metrics = metrics
    return app


class HubApp(Starlette):
    """Starlette, except that the doors' fast endpoints skip the middleware stack and
    the router.

    Every write to every client would otherwise pass through two middleware wrappers
    (server errors, exception handlers): a few percent of the CPU per delivered event
    in profiles; and a wrapped ``send`` rules out direct writes
    (:mod:`hub.delivery.writer`). For ``/publish`` the stack and routing were about a
    quarter of the hub's CPU per publish (py-spy, bench/ S1c). None of these endpoints
    needs them: they render their own errors below, and anything unexpected still
    reaches uvicorn, which logs it and answers 500.
    """

    def __init__(self, doors: Sequence[Door], fast: bool, **options: Any) -> None:
        super().__init__(**options)
        #: ``(path, method)`` -> endpoint, for the fast path (none when middleware must
        #: see every request: CORS headers for other origins).
        self.fast: dict[tuple[str, str], Endpoint] = {
            (path, method): endpoint
            for door in doors
            for path, methods, endpoint in door.fast
            for method in methods
            if fast
        }
        #: ``(prefix, endpoint)``: paths a door owns by prefix (always served this way).
        self.prefixes = [prefix for door in doors for prefix in door.prefixes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._fast_endpoint(scope)
            if endpoint is not None:
                response = await self.answer(endpoint, scope, receive)
                done = whole(response)
                if done is None or not write_whole(
                    send, done.status_code, done.raw_headers, done.body
                ):
                    await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def answer(
        self, endpoint: Endpoint, scope: Scope, receive: Receive
    ) -> Response | EventStream:
        """What a fast endpoint answers the request of ``scope``, errors rendered.

        The request is not kept for a stream's life: it and what it parsed are about
        0.5 KiB per idle stream."""
        scope["app"] = self
        request = Request(scope, receive)
        try:
            return await endpoint(request)
        except HubError as exc:
            return await _hub_error(request, exc)

    def _fast_endpoint(self, scope: Scope) -> Endpoint | None:
        path: str = scope["path"]
        endpoint = self.fast.get((path, scope["method"]))
        if endpoint is not None:
            return endpoint
        for prefix, owner in self.prefixes:
            if path.startswith(prefix):
                return owner
        return None


def whole(response: object) -> Response | None:
    """``response``, if it can be written whole (its body complete, no background
    task); ``None`` for a stream or a file."""
    body = getattr(response, "body", None)
    if (
        isinstance(response, Response)
        and response.background is None
        and isinstance(body, (bytes, memoryview))
    ):
        return response
    return None


def drain(app: Starlette) -> None:
    """Shutdown, first step: end every open stream with a jittered ``retry:`` hint, so
    clients come back spread out (to another node) instead of all at once."""
    broker: Broker | None = getattr(app.state, "broker", None)
    if broker is None:
        return
    retry_ms = broker.settings.retry_ms
    closed = broker.close_all(
        "shutdown", lambda: retry_frame(int(retry_ms * random.uniform(1.0, 2.0)))
    )
    if closed:
        logger.info("closed %d streams for shutdown", closed)


async def _hub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HubError)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, (BackendUnavailable, TooManyConnections, KeysUnavailable)):
        headers["Retry-After"] = "5"
    # The message may quote what the client sent; a token in it would reach whatever
    # logs the answer (a proxy, the client's own logs).
    message = redact_secrets(str(exc))
    # RFC 6750: a 401 always carries a Bearer challenge; the auth checks give a precise
    # one (invalid_token, insufficient_scope, invalid_request) where they know it, with
    # the message redacted alike (hub.doors.grants.bearer_challenge).
    challenge = exc.challenge or (bearer_challenge(None) if exc.status_code == 401 else None)
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
    return JSONResponse(
        {"error": exc.code, "message": message}, status_code=exc.status_code, headers=headers
    )


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
            expose_headers=["Last-Event-ID", "Mercure-Last-Event-ID", "WWW-Authenticate"],
        )
    ]


async def index(request: Request) -> Response:
    """The demo page: follow channels, publish, ask the ``llm`` worker."""
    return await _static("index.html")


async def chat_page(request: Request) -> Response:
    """The chat page: a conversation with the ``llm`` worker (``?c=<channel>``)."""
    return await _static("chat.html")


async def static_file(request: Request) -> Response:
    """The demo page's scripts and styles."""
    return await _static(request.path_params["name"])


async def vendor_file(request: Request) -> Response:
    """The chat page's vendored libraries (``hub/static/vendor/README.md``)."""
    return await _static("vendor/" + request.path_params["name"])


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
