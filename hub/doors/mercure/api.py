"""Mercure's subscriptions API, ``GET /.well-known/mercure/subscriptions[...]``, in
both protocols (the registry behind it is :mod:`hub.doors.mercure.subscriptions`).

Which protocol a request speaks is read from its path, as Mercure's own hub does in
its compatibility mode, then from its token:

- ``/subscriptions/{match_type}/{match}/{subscriber}`` and
  ``/subscriptions/{match_type}/{match}`` with ``{match_type}`` ``exact`` or
  ``urlpattern``: Mercure 1.0 (draft-dunglas-mercure-08, "Subscription API");
- ``/subscriptions/{topic}/{subscriber}`` (any other first segment) and
  ``/subscriptions/{topic}``: Mercure 0.24;
- ``/subscriptions``: 1.0 for a token with ``authorization_details``, 0.24 for a
  token with a ``mercure`` claim.

``HUB_MERCURE_PROTOCOLS`` narrows it: a hub serving one protocol reads every path as
that protocol's. A 1.0 answer is ``application/json`` with the cursor in the
``rel="mercure"`` Link header; a 0.24 one is JSON-LD with ``lastEventID`` in the body.
Each lists the subscriptions made in its own protocol, so that every entry's ``id``
is a resource of the API that listed it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.doors.grants import bearer_challenge
from hub.doors.mercure.metadata import hub_url, point_to_metadata
from hub.doors.mercure.subscriptions import CONTEXT, EVENT_TYPE, MATCH_TYPES, PATH
from hub.errors import BadRequest, Forbidden, HubError, NotFound, Unauthorized

if TYPE_CHECKING:
    from hub.doors.mercure.door import MercureDoor

__all__ = ["is_modern", "subscriptions_api"]


async def subscriptions_api(request: Request) -> Response:
    """Answer ``GET``/``HEAD``; any other method gets a 405 naming them."""
    if request.method in ("GET", "HEAD"):
        try:
            return await _answer(request)
        except HubError as exc:
            point_to_metadata(request, exc)
            raise
    return JSONResponse(
        {"error": "method_not_allowed", "message": "the subscriptions API only answers GET"},
        status_code=405,
        headers={"Allow": "GET, HEAD"},
    )


async def _answer(request: Request) -> Response:
    door: MercureDoor = request.app.state.mercure
    registry = door.registry
    if registry is None:
        raise NotFound("the subscriptions API is off; run the hub with HUB_SUBSCRIPTIONS=1")
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").split("?", 1)[0]
    claims = await door.auth.subscriber(request, mercure=True)
    if claims is None:
        raise Unauthorized("the subscriptions API needs a subscriber JWT")
    if claims.subscribe is None or not claims.subscribe.match(path):
        message = (
            f"the token's subscribe selectors do not match {path[:120]!r}; add "
            f"a selector such as '{PATH}{{/topic}}{{/subscriber}}' (0.24) or a URL "
            f"Pattern such as '{PATH}/*' (1.0)"
        )
        raise Forbidden(message, challenge=bearer_challenge("insufficient_scope", message))
    parts = [unquote(p) for p in path[len(PATH) :].split("/") if p]
    modern = is_modern(parts, claims.modern, door.auth.protocols)
    entries = [e for e in await registry.all() if ("match_type" in e) == modern]
    last = await door.newest_id()
    if modern:
        return _answer_1(request, path, parts, entries, last)
    if len(parts) == 2:
        for entry in entries:
            if entry["topic"] == parts[0] and entry["subscriber"] == parts[1]:
                return _ld({"@context": CONTEXT, **entry, "lastEventID": last})
        return _not_found()
    if parts:
        entries = [e for e in entries if e["topic"] == parts[0]]
    return _ld(
        {
            "@context": CONTEXT,
            "id": path,
            "type": "Subscriptions",
            "lastEventID": last,
            "subscriptions": entries,
        }
    )


def is_modern(parts: list[str], modern_token: bool, protocols: frozenset[str]) -> bool:
    """Does this request speak Mercure 1.0 (see the module's docstring)?"""
    if "0.24" not in protocols and parts and (len(parts) == 1 or parts[0] not in MATCH_TYPES):
        raise BadRequest(
            f"this hub serves Mercure 1.0 only (HUB_MERCURE_PROTOCOLS): use {PATH}, "
            f"{PATH}/{{match_type}}/{{match}} or {PATH}/{{match_type}}/{{match}}/"
            "{subscriber}, with match_type exact or urlpattern"
        )
    if len(parts) > 3 or (
        len(parts) == 3 and ("1.0" not in protocols or parts[0] not in MATCH_TYPES)
    ):
        raise BadRequest(
            f"use {PATH}, {PATH}/{{topic}} or {PATH}/{{topic}}/{{subscriber}} (Mercure 0.24), "
            f"or {PATH}/{{match_type}}/{{match}}[/{{subscriber}}] (1.0)"
        )
    if "1.0" not in protocols:
        return False
    if "0.24" not in protocols:
        return True
    if not parts:
        return modern_token
    return len(parts) >= 2 and parts[0] in MATCH_TYPES


def _answer_1(
    request: Request, path: str, parts: list[str], entries: list[dict[str, Any]], last: str
) -> Response:
    hub = hub_url(request)
    cursor = last.replace("\\", "\\\\").replace('"', '\\"')
    # The cursor travels in the Link header, as in discovery, so that a single
    # subscription's body is exactly its subscription event's document.
    headers = {
        "Link": f'<{hub}>; rel="mercure"; last-event-id="{cursor}"; '
        f'type="{EVENT_TYPE}"; content-type="application/json"'
    }
    if parts:
        entries = [e for e in entries if e["match_type"] == parts[0] and e["match"] == parts[1]]
    if len(parts) == 3:
        for entry in entries:
            if entry["subscriber"] == parts[2]:
                return JSONResponse(entry, headers=headers)
        return _not_found()
    body = {"id": path, "type": "subscriptions", "subscriptions": entries}
    return JSONResponse(body, headers=headers)


def _not_found() -> Response:
    return JSONResponse({"error": "not_found", "message": "no such subscription"}, status_code=404)


def _ld(body: dict[str, Any]) -> Response:
    return JSONResponse(body, media_type="application/ld+json")
