"""The doors: the wire protocols clients come in by, each onto the same broker.

A door is a :class:`Door`: its routes, the endpoints that take the fast path (no
middleware, no router: they render their own errors), any path prefixes it owns, and
what it keeps per process. The app (:mod:`hub.app`) registers every door in one place,
:data:`hub.app.DOORS`; adding a wire protocol is adding a door there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.delivery.broker import Broker
from hub.delivery.response import EventStream
from hub.doors.auth import Auth

__all__ = ["Door", "Endpoint", "Opened"]

#: An endpoint on the fast path: a request in, a response (or a stream) out.
Endpoint = Callable[[Request], Awaitable["Response | EventStream"]]
#: What a door keeps per process while the app runs (kept on ``app.state.<name>``).
Opened = Callable[[Broker, Auth], AbstractAsyncContextManager[Any]]


@dataclass(frozen=True)
class Door:
    """One wire protocol's way into the hub."""

    #: Its name; what :attr:`opened` gives is kept on ``app.state.<name>``.
    name: str
    #: Routes for the router (so that a wrong method gets a 405 that lists the right ones).
    routes: list[Route] = field(default_factory=list)
    #: ``(path, methods, endpoint)`` served before any middleware and the router, when
    #: no middleware must see them (CORS for other origins does).
    fast: list[tuple[str, frozenset[str], Endpoint]] = field(default_factory=list)
    #: ``(prefix, endpoint)`` for paths whose parts are URL-encoded and may hold ``%2F``,
    #: which routing on the decoded path would split. Always served this way.
    prefixes: list[tuple[str, Endpoint]] = field(default_factory=list)
    #: Per-process state, opened with the app's lifespan.
    opened: Opened | None = None
    #: Entries the door puts on ``app.state`` for other doors (hooks, such as the
    #: native door's ``private_streams``), so that no door imports another.
    provides: dict[str, Any] = field(default_factory=dict)
