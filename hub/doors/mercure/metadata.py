"""Mercure 1.0's discovery of the hub as an OAuth 2.0 protected resource (RFC 9728,
draft-dunglas-mercure-08 "Protected Resource Metadata"): the metadata document, and
the ``resource_metadata`` parameter that points to it from every Bearer challenge
the Mercure door answers with.

A hub serving Mercure 0.24 only publishes none: the draft has clients read its
absence as a hint that a hub predates 1.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.doors.auth import COOKIE_1
from hub.doors.grants import DETAIL_TYPE, bearer_challenge
from hub.errors import HubError, NotFound

if TYPE_CHECKING:
    from hub.doors.mercure.door import MercureDoor

__all__ = ["METADATA_PATH", "hub_url", "point_to_metadata", "protected_resource_metadata"]

HUB_PATH = "/.well-known/mercure"
#: RFC 9728 section 3.1: the well-known name goes between the host and the hub's path.
METADATA_PATH = "/.well-known/oauth-protected-resource" + HUB_PATH


def _origin(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def hub_url(request: Request) -> str:
    """The hub's URL as this request reached it."""
    return _origin(request) + HUB_PATH


def _resource(request: Request, audience: str | None) -> str:
    """The resource identifier 1.0 tokens carry as ``aud``: the hub's URL as this
    request reached it, unless ``HUB_JWT_AUDIENCE`` pins others (then the URL if it
    is one of them, else the first)."""
    here = hub_url(request)
    pinned = [a for a in (audience or "").replace(",", " ").split() if a]
    return here if not pinned or here in pinned else pinned[0]


async def protected_resource_metadata(request: Request) -> Response:
    """``GET /.well-known/oauth-protected-resource/.well-known/mercure``."""
    door: MercureDoor = request.app.state.mercure
    if "1.0" not in door.auth.protocols:
        raise NotFound(
            "this hub serves Mercure 0.24 only (HUB_MERCURE_PROTOCOLS), which has no "
            "protected resource metadata"
        )
    body: dict[str, Any] = {
        "resource": _resource(request, door.settings.jwt_audience),
        "authorization_details_types_supported": [DETAIL_TYPE],
        # The cookie is no RFC 6750 method: the draft gives it a member of its own.
        "bearer_methods_supported": ["header"],
        "mercure_cookie": COOKIE_1,
    }
    if door.settings.subscriptions:
        body["mercure_subscriptions"] = True
    return JSONResponse(body)


def point_to_metadata(request: Request, exc: HubError) -> None:
    """Add ``resource_metadata`` to the Bearer challenge ``exc`` answers with (a 401
    gets the bare challenge the app would give it), while the hub serves 1.0."""
    door: MercureDoor = request.app.state.mercure
    if "1.0" not in door.auth.protocols:
        return
    challenge = exc.challenge
    if challenge is None:
        if exc.status_code != 401:
            return
        challenge = bearer_challenge(None)
    if "resource_metadata=" in challenge:
        return
    exc.challenge = f'{challenge}, resource_metadata="{_origin(request)}{METADATA_PATH}"'
