"""The Mercure endpoints: ``GET`` and ``POST /.well-known/mercure``, in the protocol
as Mercure hub v0.24 speaks it (``topic=``) and as Mercure 1.0 does (``match=``,
``match_urlpattern=``), both at once unless ``HUB_MERCURE_PROTOCOLS`` narrows it; and
native ``/events`` streams that may receive private updates. The door they open onto
the broker is :mod:`hub.doors.mercure.door`."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from hub.delivery.broker import Broker
from hub.delivery.response import EventStream
from hub.delivery.sse import signal_frame
from hub.doors import Door
from hub.doors.auth import Auth, Claims
from hub.doors.body import read_body
from hub.doors.grants import bearer_challenge
from hub.doors.mercure.api import subscriptions_api
from hub.doors.mercure.door import MercureDoor
from hub.doors.mercure.fanout import MercureStream
from hub.doors.mercure.metadata import (
    METADATA_PATH,
    hub_url,
    point_to_metadata,
    protected_resource_metadata,
)
from hub.doors.mercure.reserved import refuse_reserved_1
from hub.doors.mercure.subscriptions import EVENT_TYPE, PATH, Matcher
from hub.doors.quota import spend_publish
from hub.doors.topics import Selectors, check_template, compile_template, is_template
from hub.doors.urlpatterns import check_pattern
from hub.errors import BadRequest, Forbidden, HubError
from hub.store.ids import ZERO, EventId
from hub.store.keys import check_channel, check_event_type, refuse_reserved
from hub.store.publisher import Extra

__all__ = ["MercureDoor", "mercure", "mercure_publish", "mercure_subscribe", "native_stream"]

_CACHE_CONTROL = b"private, no-cache, no-store, must-revalidate, max-age=0"


def _selectors(raw: list[str], limit: int) -> list[str]:
    if not raw:
        raise BadRequest("name at least one topic: ?topic=<topic, URI template or *>")
    if len(raw) > limit:
        raise BadRequest(f"{len(raw)} topics requested, at most {limit} (HUB_MAX_CHANNELS)")
    # Every selector is checked for size first: compiling comes after, and only for a
    # request whose selectors are all within bounds.
    for selector in raw:
        if is_template(selector):
            check_template(selector)
        elif selector != "*":
            check_channel(selector)
    for selector in raw:
        if is_template(selector):
            compile_template(selector)
    return list(dict.fromkeys(raw))


#: Mercure 1.0's selector parameters: exact (two spellings) and URL Pattern.
_EXACT = ("match", "match_exact")
_URLPATTERN = "match_urlpattern"


def _invalid_request(message: str) -> BadRequest:
    return BadRequest(message, challenge=bearer_challenge("invalid_request", message))


def _modern(request: Request, protocols: frozenset[str]) -> bool:
    """Is this a Mercure 1.0 subscription (``match*=``) or a 0.24 one (``topic=``)?"""
    names = {name for name in request.query_params if name.startswith("match")}
    unknown = names - {*_EXACT, _URLPATTERN}
    if unknown:
        # Mercure 1.0 refuses any other name under the prefix, so typos fail loudly.
        raise _invalid_request(
            f"unknown selector parameter {sorted(unknown)[0][:40]!r}: use match= (exact "
            "topic) or match_urlpattern= (URL Pattern)"
        )
    modern = bool(names)
    if modern and "topic" in request.query_params:
        raise _invalid_request(
            "a subscription is Mercure 1.0 (match=, match_urlpattern=) or 0.24 (topic=), not both"
        )
    if modern and "1.0" not in protocols:
        raise _invalid_request(
            "this hub serves Mercure 0.24 only (HUB_MERCURE_PROTOCOLS): subscribe with topic="
        )
    if not modern and "0.24" not in protocols:
        raise _invalid_request(
            "this hub serves Mercure 1.0 only (HUB_MERCURE_PROTOCOLS): subscribe with "
            "match=<topic> or match_urlpattern=<URL Pattern>, not topic="
        )
    return modern


def _selectors_1(request: Request, limit: int) -> tuple[list[str], Selectors, list[Matcher]]:
    exact = [v for name in _EXACT for v in request.query_params.getlist(name)]
    patterns = request.query_params.getlist(_URLPATTERN)
    if not exact and not patterns:
        raise _invalid_request("name at least one topic: ?match=<topic> or ?match_urlpattern=")
    if len(exact) + len(patterns) > limit:
        raise _invalid_request(
            f"{len(exact) + len(patterns)} topics requested, at most {limit} (HUB_MAX_CHANNELS)"
        )
    try:
        # Sizes first, compiling after, as for templates.
        for selector in exact:
            if selector != "*":
                check_channel(selector)
        for pattern in patterns:
            check_pattern(pattern)
        selectors = Selectors(matches=exact, urlpatterns=patterns, strict=True)
    except BadRequest as exc:
        # Mercure 1.0 answers a malformed request with RFC 6750's invalid_request.
        raise _invalid_request(str(exc)) from None
    matchers: list[Matcher] = [("exact", m) for m in dict.fromkeys(exact)]
    matchers += [("urlpattern", p) for p in dict.fromkeys(patterns)]
    return list(dict.fromkeys(exact + patterns)), selectors, matchers


async def mercure(request: Request) -> Response | EventStream:
    """``/.well-known/mercure``: one route, so that a 405 lists both methods."""
    try:
        if request.method == "POST":
            return await mercure_publish(request)
        return await mercure_subscribe(request)
    except HubError as exc:
        point_to_metadata(request, exc)
        raise


async def mercure_subscribe(request: Request) -> Response | EventStream:
    """``GET /.well-known/mercure?topic=...``: the Mercure subscription stream."""
    door: MercureDoor = request.app.state.mercure
    modern = _modern(request, door.auth.protocols)
    # Authenticate before any work a selector could make expensive.
    claims = await door.auth.subscriber(request, mercure=True, modern=modern)
    selectors: Selectors | None = None
    matchers: list[Matcher] | None = None
    if modern:
        topics, selectors, matchers = _selectors_1(request, door.settings.max_channels)
    else:
        topics = _selectors(request.query_params.getlist("topic"), door.settings.max_channels)
    door.broker.admission.check()
    cursor = (
        request.headers.get("last-event-id")
        or request.query_params.get("lastEventID")
        or request.query_params.get("lastEventId")
    )
    response = EventStream()
    sub = MercureStream(
        topics,
        claims,
        native=False,
        limit=door.settings.client_buffer,
        on_cut_off=response.abort,
        selectors=selectors,
    )
    after: EventId | None = None
    if cursor is None:
        header = await door.newest_id(sub)
    elif cursor == "earliest":
        after, header = ZERO, "earliest"
    else:
        resolved = await door.resolve(cursor, sub)
        # Mercure: an id the hub does not know is answered with "earliest", so that the
        # client knows it may have missed updates; it continues live from now. A known
        # one is echoed as the hub spells it, never as the client sent it.
        after, header = resolved if resolved is not None else (None, "earliest")
    # Mercure 1.0 names the response header Mercure-Last-Event-ID (Last-Event-ID is a
    # request header); 0.24 clients read Last-Event-ID. Both are sent to everyone.
    last = header.encode("utf-8", "replace")
    response.headers = [h for h in response.headers if h != (b"cache-control", b"no-cache")] + [
        (b"last-event-id", last),
        (b"mercure-last-event-id", last),
        (b"cache-control", _CACHE_CONTROL),
    ]
    response.body = door.stream(sub, after, response, matchers=matchers)
    return response


async def native_stream(
    request: Request, channels: list[str], claims: Claims, cursor: str | None
) -> EventStream:
    """``/events`` for a token that may receive private updates of its channels (admitted
    by the caller)."""
    door: MercureDoor = request.app.state.mercure
    response = EventStream()
    sub = MercureStream(
        channels,
        claims,
        native=True,
        limit=door.settings.client_buffer,
        on_cut_off=response.abort,
    )
    after: EventId | None = None
    reset = b""
    if cursor == "earliest":
        after = ZERO
    elif cursor:
        resolved = await door.resolve(cursor, sub)
        after = resolved[0] if resolved is not None else None
        if after is None:
            reset = signal_frame(
                "hub.reset",
                {
                    "reason": "unknown",
                    "message": f"{cursor[:60]!r} cannot be resumed from exactly (unknown, "
                    "trimmed or lost); continuing live",
                    "channels": channels,
                },
                event_id=await door.newest_id(),
            )
    response.body = door.stream(sub, after, response, reset=reset)
    return response


async def mercure_publish(request: Request) -> Response:
    """``POST /.well-known/mercure``: publish an update (form-encoded, Mercure fields)."""
    door: MercureDoor = request.app.state.mercure
    claims = await door.auth.publisher(request, mercure=True)
    await spend_publish(door.broker, request, claims)
    content_type = request.headers.get("content-type", "")
    if content_type and not content_type.startswith("application/x-www-form-urlencoded"):
        raise BadRequest("send the update as application/x-www-form-urlencoded form fields")
    body = await read_body(request, door.settings.max_payload + 64 * 1024)
    try:
        fields = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=2000
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the form body cannot be read: {exc}") from None
    form: dict[str, list[str]] = {}
    for name, value in fields:
        form.setdefault(name, []).append(value)
    topics = form.get("topic", [])
    if not topics:
        raise BadRequest("missing topic: give at least one topic field")
    for topic in topics:
        check_channel(topic)
    if claims is not None and claims.modern:
        # Mercure 1.0 answers 400 for the hub's topics, and reads them more widely
        # (resolved against the hub's URL); 0.24 clients keep their 403.
        refuse_reserved_1(topics, hub_url(request))
        try:
            refuse_reserved(topics)
        except Forbidden as exc:
            raise BadRequest(str(exc)) from None
    refuse_reserved(topics)
    if len(topics) > door.settings.max_channels:
        raise BadRequest(f"{len(topics)} topics; at most {door.settings.max_channels}")
    topics = list(dict.fromkeys(topics))
    door.auth.check_publish(claims, topics)
    extra = Extra(
        private="private" in form,
        # Checked by the publisher, for every door (hub.store.ids.check_chosen_id).
        mercure_id=_one(form, "id") or None,
        retry=_retry(_one(form, "retry")),
    )
    event = _one(form, "type") or None
    if event is not None and ("\r" in event or "\n" in event or "\0" in event):
        raise BadRequest("type must not contain CR, LF or NUL characters")
    if event == EVENT_TYPE and "1.0" in door.auth.protocols:
        # Mercure 1.0 keeps this type for the hub's own subscription events, so that a
        # subscriber can trust them; a hub serving 0.24 only has no such events.
        raise BadRequest(
            f"type {EVENT_TYPE!r} is reserved for the hub's subscription events "
            "(Mercure 1.0); choose another type"
        )
    event = check_event_type(event)
    event_id = await door.broker.publisher.publish(
        topics, _one(form, "data") or "", event=event, extra=extra
    )
    return PlainTextResponse(extra.mercure_id or event_id)


def _one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


def _retry(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 10:
        raise BadRequest("retry must be an unsigned integer (milliseconds)")
    return int(value)


def _opened(broker: Broker, auth: Auth) -> MercureDoor:
    return MercureDoor(broker, auth)


#: The Mercure door, as the app registers it.
MERCURE = Door(
    "mercure",
    routes=[
        Route("/.well-known/mercure", mercure, methods=["GET", "POST"]),
        Route(METADATA_PATH, protected_resource_metadata, methods=["GET"]),
    ],
    fast=[("/.well-known/mercure", frozenset({"GET", "HEAD", "POST"}), mercure)],
    # Not a Route: {topic} and {subscriber} are URL-encoded and may hold %2F.
    prefixes=[(PATH, subscriptions_api)],
    opened=_opened,
    provides={"private_streams": native_stream},
)
