"""The OpenAPI 3.0 description of the HTTP API, served at ``GET /openapi.json``.

Written by hand, and kept accurate to what :mod:`hub.app` does: the test suite fuzzes
the running hub against it (``tests/test_openapi.py``), so a response this document
does not describe fails the build.

Where the hub's rule cannot be said exactly in JSON Schema, the schema is the looser
of the two and the description says the rest. Channel names are limited to 256 *bytes*
of UTF-8, so ``maxLength: 256`` (characters) lets through some names the hub refuses,
never the other way round. The one exception is the number of channels: ``maxItems``
counts every name, while the hub drops duplicate names before it counts.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hub.config import Settings
from hub.doors.topics import MAX_TEMPLATE_BYTES, MAX_TEMPLATE_VARIABLES
from hub.store.keys import MAX_CHANNEL_BYTES, MAX_EVENT_TYPE_BYTES

__all__ = ["openapi_endpoint", "openapi_spec"]

#: No whitespace and no ASCII control characters (the hub also refuses Unicode spaces
#: and other unprintable characters, which a portable pattern cannot list).
_CHANNEL_PATTERN = r"^[^\s\x00-\x1f\x7f]+$"

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}, **extra}


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if retry_after:
        extra["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    return _json(_ref("Error"), description, **extra)


def _schemas(settings: Settings) -> dict[str, Any]:
    channel = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_CHANNEL_BYTES,
        "pattern": _CHANNEL_PATTERN,
        "description": (
            f"A channel name: 1 to {MAX_CHANNEL_BYTES} bytes of UTF-8, without whitespace "
            "or control characters. Letters, digits and punctuation such as - _ . : / "
            "are safe."
        ),
        "example": "news",
    }
    channels = {
        "type": "array",
        "items": _ref("Channel"),
        "minItems": 1,
        "maxItems": settings.max_channels,
        "description": (
            f"Up to {settings.max_channels} distinct channel names (HUB_MAX_CHANNELS); "
            "a repeated name counts once."
        ),
        "example": ["news", "sports"],
    }
    event = {
        "type": "string",
        "nullable": True,
        "minLength": 1,
        "maxLength": MAX_EVENT_TYPE_BYTES,
        "pattern": r"^[^\r\n\x00]+$",
        "not": {"type": "string", "pattern": r"^hub\."},
        "description": (
            f"The SSE event type, up to {MAX_EVENT_TYPE_BYTES} bytes of UTF-8 without CR, LF "
            "or NUL. Types starting with 'hub.' are reserved for the hub's own signals. "
            "Missing or null: 'message'."
        ),
        "example": "update",
    }
    data = {
        "description": (
            "Any JSON value. A string is sent as it is, anything else as compact JSON; "
            f"either way at most {settings.max_payload} bytes (HUB_MAX_PAYLOAD), else 413."
        ),
        "example": {"title": "hello"},
    }

    def publish_body(target: str, target_schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": [target, "data"],
            "properties": {
                target: target_schema,
                "data": _ref("Data"),
                "event": _ref("EventType"),
                "private": {
                    "type": "boolean",
                    "description": "Only for subscribers whose token's mercure.subscribe "
                    "claims match one of the channels.",
                },
            },
        }

    return {
        "Channel": channel,
        "Channels": channels,
        "EventType": event,
        "Data": data,
        "PublishOne": publish_body("channel", _ref("Channel")),
        "PublishMany": publish_body("channels", _ref("Channels")),
        "StreamEvent": {
            "type": "object",
            "description": (
                "One event of the stream, as an EventSource parses it. Published events carry "
                "the publisher's type and data; 'hub.reset' carries JSON data "
                '{"reason": ..., "message": ..., "channels": [...]}. Comments (connected, '
                "heartbeat) and retry hints are not events."
            ),
            "required": ["data", "event"],
            "properties": {
                "id": {"type": "string", "description": "The event id; opaque."},
                "event": {"type": "string", "description": "The type; 'message' by default."},
                "data": {"type": "string"},
                "retry": {"type": "integer", "minimum": 0},
            },
        },
        "Published": {
            "type": "object",
            "required": ["id"],
            "additionalProperties": False,
            "properties": {
                "id": {
                    "type": "string",
                    "minLength": 1,
                    "description": "The event id: an opaque string, as sent in the stream.",
                }
            },
        },
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "string",
                    "description": "Machine-readable name of the problem.",
                    "enum": [
                        "bad_request",
                        "payload_too_large",
                        "headers_too_large",
                        "unauthorized",
                        "forbidden",
                        "conflict",
                        "backend_unavailable",
                        "too_many_connections",
                        "not_found",
                    ],
                },
                "message": {"type": "string", "description": "What to change, in words."},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "connections"],
            "properties": {
                "status": {"type": "string", "enum": ["ok"]},
                "connections": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Streams open on this node.",
                },
            },
        },
        "NotReady": {
            "type": "object",
            "required": ["status", "message"],
            "properties": {
                "status": {"type": "string", "enum": ["unavailable", "starting"]},
                "message": {"type": "string"},
            },
        },
    }


def _events(settings: Settings) -> dict[str, Any]:
    return {
        "get": {
            "operationId": "subscribe",
            "summary": "Subscribe to channels as a Server-Sent Events stream",
            "description": (
                "An endless text/event-stream: the comment ': connected' and a 'retry:' hint "
                "once the subscription is live, then one event per publish, and a "
                "': heartbeat' comment on an idle stream. With a cursor the stream first "
                "replays what was missed, or starts with a 'hub.reset' event when it cannot: "
                "a bad or stale cursor never gets an error status."
            ),
            "parameters": [
                {
                    "name": "channel",
                    "in": "query",
                    "required": True,
                    "style": "form",
                    "explode": True,
                    "schema": _ref("Channels"),
                    "description": "Repeat for each channel: ?channel=a&channel=b.",
                },
                {
                    "name": "lastEventId",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": (
                        "Resume after this event id (a cursor the page saved); 'earliest' "
                        "replays all retained history. The Last-Event-ID header wins."
                    ),
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "Resume after this event id (EventSource sends it itself).",
                },
            ],
            "responses": {
                "200": {
                    "description": "The event stream; it does not end on its own.",
                    # OpenAPI 3.0 has no way to describe a stream: as tools read it (and
                    # 3.2's itemSchema says), this schema describes each event in it.
                    "content": {"text/event-stream": {"schema": _ref("StreamEvent")}},
                },
                "400": _error("No channel, too many channels, or a bad channel name."),
                "401": _error("A JWT key is configured and the token is missing or invalid."),
                "503": _error(
                    f"This node has {settings.max_connections} streams open "
                    "(HUB_MAX_CONNECTIONS): retry later, or go to another node.",
                    retry_after=True,
                ),
            },
        }
    }


def _publish(settings: Settings) -> dict[str, Any]:
    return {
        "post": {
            "operationId": "publish",
            "summary": "Publish one event to one channel or several",
            "requestBody": {
                "required": True,
                "content": {
                    _JSON: {
                        "schema": {"oneOf": [_ref("PublishOne"), _ref("PublishMany")]},
                        "example": {"channel": "news", "data": {"title": "hello"}},
                    }
                },
            },
            "responses": {
                "201": _json(_ref("Published"), "Published; every subscriber gets it."),
                "400": _error(
                    "Malformed JSON, a wrong type, an unknown field, a bad channel name or "
                    "event type, or too many channels."
                ),
                "401": _error("A JWT key is configured and the token is missing or invalid."),
                "403": _error(
                    "The token's mercure.publish claims do not cover the channels, or a "
                    "channel is reserved for the hub (/.well-known/mercure)."
                ),
                "413": _error(
                    f"The body or its data is too large (data: HUB_MAX_PAYLOAD, "
                    f"{settings.max_payload} bytes)."
                ),
                "503": _error(
                    "Redis is unavailable; the event may not have been published.",
                    retry_after=True,
                ),
            },
        }
    }


def _mercure(settings: Settings) -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string", "minLength": 1}}}
    topic = {"type": "string", "minLength": 1, "pattern": _CHANNEL_PATTERN}
    return {
        "get": {
            "operationId": "mercureSubscribe",
            "summary": "Mercure subscription (the Mercure protocol, as hub v0.24 speaks it)",
            "parameters": [
                {
                    "name": "topic",
                    "in": "query",
                    "required": True,
                    "style": "form",
                    "explode": True,
                    "schema": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": settings.max_channels,
                        "items": {"type": "string", "minLength": 1, "pattern": _CHANNEL_PATTERN},
                    },
                    "description": "Topic selectors: *, exact topics or URI templates.",
                },
                {"name": "lastEventID", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The update stream.",
                    "content": {"text/event-stream": {"schema": _ref("StreamEvent")}},
                },
                "400": _error(
                    "No topic, too many, or a malformed selector; a URI template over "
                    f"{MAX_TEMPLATE_BYTES} bytes or {MAX_TEMPLATE_VARIABLES} variables."
                ),
                "401": _error("A token is required, or the one given is invalid."),
                "503": _error("Too many streams on this node.", retry_after=True),
            },
        },
        "post": {
            "operationId": "mercurePublish",
            "summary": "Mercure publish (form-encoded topic, data, private, id, type, retry)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["topic"],
                            "properties": {
                                # One topic field, or several (the first is canonical).
                                "topic": {
                                    "anyOf": [
                                        topic,
                                        {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": settings.max_channels,
                                            "items": topic,
                                        },
                                    ]
                                },
                                "data": {"type": "string"},
                                "private": {"type": "string"},
                                "id": {"type": "string", "pattern": r"^[^\x00-\x1f\x7f]*$"},
                                "type": {"type": "string", "pattern": r"^[^\r\n\x00]*$"},
                                "retry": {"type": "string", "pattern": "^[0-9]*$"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "Published; the body is the update's id.", "content": text},
                "400": _error("A missing topic or a malformed field."),
                "401": _error("No valid publisher token."),
                "403": _error(
                    "The token may not publish to these topics, or a topic is reserved "
                    "for the hub (/.well-known/mercure)."
                ),
                "409": _error(
                    "The id is held by another update still in the log, or has the shape "
                    "of a hub event id (<ms>-<n>)."
                ),
                "413": _error("The body is too large."),
                "503": _error("Redis is unavailable.", retry_after=True),
            },
        },
    }


def _subscriptions(depth: int) -> dict[str, Any]:
    """The Mercure subscriptions API at ``depth`` path parameters (0, 1 or 2)."""
    names = ["topic", "subscriber"][:depth]
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
            "description": f"The {name}, URL-encoded.",
        }
        for name in names
    ]
    one = depth == 2
    summary = "One subscription" if one else "Active subscriptions" + (" to a topic" * depth)
    ld = {"type": "object", "required": ["@context", "lastEventID"]}
    missing = "The API is off (HUB_SUBSCRIPTIONS=0)" + (
        ", or no such subscription." if one else "."
    )
    return {
        "get": {
            "operationId": ["subscriptions", "topicSubscriptions", "subscription"][depth],
            "summary": f"{summary} (Mercure subscriptions API; needs HUB_SUBSCRIPTIONS=1)",
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "JSON-LD, as the Mercure specification describes it.",
                    "content": {"application/ld+json": {"schema": ld}},
                },
                "401": _error("No subscriber JWT."),
                "403": _error("The token's mercure.subscribe selectors do not match the path."),
                "404": _error(missing),
            },
        }
    }


def openapi_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the hub's HTTP API, with this node's limits in it."""
    from hub import __version__  # here: ``hub/__init__.py`` imports this module first

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "SSE hub",
            "version": __version__,
            "description": (
                "A real-time broadcast hub: Server-Sent Events to browsers, Redis between "
                "nodes, exact resume with Last-Event-ID."
            ),
        },
        "paths": {
            "/events": _events(settings),
            "/publish": _publish(settings),
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process is up",
                    "responses": {"200": _json(_ref("Health"), "The process is up.")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: Redis answers and the live connection is subscribed",
                    "responses": {
                        "200": _json(_ref("Ready"), "Ready for traffic."),
                        "503": _json(_ref("NotReady"), "Not ready: keep traffic away."),
                    },
                }
            },
            "/.well-known/mercure": _mercure(settings),
            "/.well-known/mercure/subscriptions": _subscriptions(0),
            "/.well-known/mercure/subscriptions/{topic}": _subscriptions(1),
            "/.well-known/mercure/subscriptions/{topic}/{subscriber}": _subscriptions(2),
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (under --workers N: the sums of all workers)",
                    "responses": {"200": _text("text/plain", "Prometheus' text format.")},
                }
            },
            "/": {
                "get": {
                    "operationId": "demoPage",
                    "summary": "The demo page: follow channels, publish, ask the llm worker",
                    "responses": {"200": _text("text/html", "The page.")},
                }
            },
            "/static/{name}": {
                "get": {
                    "operationId": "demoStatic",
                    "summary": "The demo page's script and style",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "app.js, style.css or index.html",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The file.",
                            "content": {
                                "text/javascript": {"schema": {"type": "string"}},
                                "text/css": {"schema": {"type": "string"}},
                                "text/html": {"schema": {"type": "string"}},
                            },
                        },
                        "404": _error("No such file."),
                    },
                }
            },
        },
        "components": {"schemas": _schemas(settings)},
    }


async def openapi_endpoint(request: Request) -> Response:
    """``GET /openapi.json``: :func:`openapi_spec` for this node's settings."""
    settings: Settings = request.app.state.settings
    return JSONResponse(openapi_spec(settings))
