"""The pieces of the OpenAPI document: response helpers and the component schemas."""

from __future__ import annotations

from typing import Any

from hub.config import Settings
from hub.store.keys import MAX_CHANNEL_BYTES, MAX_EVENT_TYPE_BYTES

__all__ = ["CHANNEL_PATTERN", "JSON", "error", "json_body", "ref", "schemas", "text"]

#: No whitespace and no ASCII control characters (the hub also refuses Unicode spaces
#: and other unprintable characters, which a portable pattern cannot list).
CHANNEL_PATTERN = r"^[^\s\x00-\x1f\x7f]+$"

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if retry_after:
        extra["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    return json_body(ref("Error"), description, **extra)


def schemas(settings: Settings) -> dict[str, Any]:
    channel = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_CHANNEL_BYTES,
        "pattern": CHANNEL_PATTERN,
        "description": (
            f"A channel name: 1 to {MAX_CHANNEL_BYTES} bytes of UTF-8, without whitespace "
            "or control characters. Letters, digits and punctuation such as - _ . : / "
            "are safe."
        ),
        "example": "news",
    }
    channels = {
        "type": "array",
        "items": ref("Channel"),
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
                "data": ref("Data"),
                "event": ref("EventType"),
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
        "PublishOne": publish_body("channel", ref("Channel")),
        "PublishMany": publish_body("channels", ref("Channels")),
        "PublishBatch": {
            "type": "array",
            "minItems": 1,
            "maxItems": settings.max_batch,
            "items": {"oneOf": [ref("PublishOne"), ref("PublishMany")]},
            "description": (
                f"Up to {settings.max_batch} publish objects (HUB_MAX_BATCH), at most "
                f"{settings.max_batch_bytes} bytes in all (HUB_MAX_BATCH_BYTES). All are "
                "checked before any is published: a bad one is refused with its index "
                "('event 3: ...') and none is published. Published in order, each "
                "atomically, each with its own id."
            ),
        },
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
        "PublishedBatch": {
            "type": "object",
            "required": ["ids"],
            "additionalProperties": False,
            "properties": {
                "ids": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "description": "The events' ids, in the order of the batch.",
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
