"""The OpenAPI paths of the doors: ``/events``, ``/publish``, the Mercure hub and its
subscriptions API."""

from __future__ import annotations

from typing import Any

from hub.config import Settings
from hub.doors.topics import MAX_TEMPLATE_BYTES, MAX_TEMPLATE_VARIABLES
from hub.openapi.parts import CHANNEL_PATTERN, JSON, error, json_body, ref

__all__ = ["events", "mercure", "publish", "subscriptions"]


def events(settings: Settings) -> dict[str, Any]:
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
                    "schema": ref("Channels"),
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
                    "content": {"text/event-stream": {"schema": ref("StreamEvent")}},
                },
                "400": error("No channel, too many channels, or a bad channel name."),
                "401": error("A JWT key is configured and the token is missing or invalid."),
                "503": error(
                    f"This node has {settings.max_connections} streams open "
                    "(HUB_MAX_CONNECTIONS): retry later, or go to another node.",
                    retry_after=True,
                ),
            },
        }
    }


def publish(settings: Settings) -> dict[str, Any]:
    return {
        "post": {
            "operationId": "publish",
            "summary": "Publish one event to one channel or several, or a batch of events",
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "oneOf": [ref("PublishOne"), ref("PublishMany"), ref("PublishBatch")]
                        },
                        "example": {"channel": "news", "data": {"title": "hello"}},
                    },
                    "application/x-ndjson": {
                        "schema": {
                            "type": "string",
                            "description": (
                                "A batch as NDJSON: one publish object (PublishOne or "
                                "PublishMany) on each line; the same rules as PublishBatch, "
                                "an error names the line as 'event N' (from 0)."
                            ),
                        },
                        "example": '{"channel": "news", "data": "one"}\n'
                        '{"channel": "news", "data": "two"}\n',
                    },
                },
            },
            "responses": {
                "201": json_body(
                    {"oneOf": [ref("Published"), ref("PublishedBatch")]},
                    "Published; every subscriber gets it (a batch: all of them, in order).",
                ),
                "400": error(
                    "Malformed JSON, a wrong type, an unknown field, a bad channel name or "
                    "event type, too many channels, or a batch with a bad event (named by "
                    "its index; nothing of it is published) or too many events."
                ),
                "401": error("A JWT key is configured and the token is missing or invalid."),
                "403": error(
                    "The token's mercure.publish claims do not cover the channels, or a "
                    "channel is reserved for the hub (/.well-known/mercure)."
                ),
                "413": error(
                    f"The body or its data is too large (data: HUB_MAX_PAYLOAD, "
                    f"{settings.max_payload} bytes; a batch: HUB_MAX_BATCH_BYTES, "
                    f"{settings.max_batch_bytes} bytes)."
                ),
                "429": error(
                    "Over HUB_PUBLISH_RATE for this token's subject (or address).",
                    retry_after=True,
                ),
                "503": error(
                    "Redis is unavailable; the event may not have been published (a batch: "
                    "the message says which events were). Or the keys of HUB_JWT_JWKS_URL "
                    "are not loaded yet.",
                    retry_after=True,
                ),
            },
        }
    }


def _selectors(settings: Settings, name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "style": "form",
        "explode": True,
        "schema": {
            "type": "array",
            "minItems": 1,
            "maxItems": settings.max_channels,
            "items": {"type": "string", "minLength": 1, "pattern": CHANNEL_PATTERN},
        },
        "description": description + " Give topic, or match parameters (at least one).",
    }


def mercure(settings: Settings) -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string", "minLength": 1}}}
    topic = {"type": "string", "minLength": 1, "pattern": CHANNEL_PATTERN}
    return {
        "get": {
            "operationId": "mercureSubscribe",
            "summary": "Mercure subscription: 0.24 (topic=) or 1.0 (match=, match_urlpattern=)",
            "parameters": [
                _selectors(settings, "topic", "0.24: *, exact topics or URI templates."),
                _selectors(settings, "match", "1.0: exact topics (* is every topic)."),
                _selectors(settings, "match_exact", "1.0: the same as match."),
                _selectors(settings, "match_urlpattern", "1.0: WHATWG URL Patterns."),
                {"name": "lastEventID", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "The update stream.",
                    "content": {"text/event-stream": {"schema": ref("StreamEvent")}},
                },
                "400": error(
                    "No topic, too many, or a malformed selector; a URI template over "
                    f"{MAX_TEMPLATE_BYTES} bytes or {MAX_TEMPLATE_VARIABLES} variables; "
                    "a URL Pattern with a regular expression group; topic= beside match "
                    "parameters; a 1.0 request with a token in the URL."
                ),
                "401": error("A token is required, or the one given is invalid."),
                "503": error("Too many streams on this node.", retry_after=True),
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
                "400": error("A missing topic or a malformed field."),
                "401": error("No valid publisher token."),
                "403": error(
                    "The token may not publish to these topics, or a topic is reserved "
                    "for the hub (/.well-known/mercure)."
                ),
                "409": error(
                    "The id is held by another update still in the history of its "
                    "partition, or has the shape of a hub event id (<ms>-<seq>.<h>)."
                ),
                "413": error("The body is too large."),
                "429": error(
                    "Over HUB_PUBLISH_RATE for this token's subject (or address).",
                    retry_after=True,
                ),
                "503": error(
                    "Redis is unavailable, or the keys of HUB_JWT_JWKS_URL are not loaded yet.",
                    retry_after=True,
                ),
            },
        },
    }


def subscriptions(depth: int) -> dict[str, Any]:
    """The Mercure subscriptions API at ``depth`` path parameters: 0, 1 or 2 (0.24's
    ``{topic}/{subscriber}``, which is also 1.0's ``{match_type}/{match}`` when the first
    segment is ``exact`` or ``urlpattern``), or 3 (1.0's single subscription)."""
    names = [["topic", "subscriber"][:depth], ["match_type", "match", "subscriber"]][depth == 3]
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
    one = depth in (2, 3)
    summary = "One subscription" if one else "Active subscriptions" + (" to a topic" * depth)
    if depth == 2:
        summary += " (0.24), or those of one matcher (1.0, {topic} exact or urlpattern)"
    ld = {"type": "object", "required": ["@context", "lastEventID"]}
    plain = {"type": "object", "required": ["id", "type"]}
    # 0.24 answers JSON-LD, 1.0 plain JSON; 1.0 has no one-segment path.
    content: dict[str, Any] = {}
    if depth != 3:
        content["application/ld+json"] = {"schema": ld}
    if depth != 1:
        content["application/json"] = {"schema": plain}
    missing = "The API is off (HUB_SUBSCRIPTIONS=0)" + (
        ", or no such subscription." if one else "."
    )
    return {
        "get": {
            "operationId": [
                "subscriptions",
                "topicSubscriptions",
                "subscription",
                "matchSubscription",
            ][depth],
            "summary": f"{summary} (Mercure subscriptions API; needs HUB_SUBSCRIPTIONS=1)",
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "JSON-LD for Mercure 0.24, plain JSON for 1.0 (cursor in "
                    "the rel=mercure Link header), as the Mercure specifications describe them.",
                    "content": content,
                },
                "400": error("A path no protocol the hub serves has (HUB_MERCURE_PROTOCOLS)."),
                "401": error("No subscriber JWT."),
                "403": error("The token's subscribe selectors do not match the path."),
                "404": error(missing),
            },
        }
    }
