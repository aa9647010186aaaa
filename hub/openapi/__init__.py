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
from hub.openapi.parts import error, json_body, ref, schemas, text
from hub.openapi.paths import events, mercure, publish, subscriptions
from hub.version import __version__

__all__ = ["openapi_endpoint", "openapi_spec"]


def openapi_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the hub's HTTP API, with this node's limits in it."""
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
            "/events": events(settings),
            "/publish": publish(settings),
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process is up",
                    "responses": {"200": json_body(ref("Health"), "The process is up.")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: Redis answers and the live connection is subscribed",
                    "responses": {
                        "200": json_body(ref("Ready"), "Ready for traffic."),
                        "503": json_body(ref("NotReady"), "Not ready: keep traffic away."),
                    },
                }
            },
            "/.well-known/mercure": mercure(settings),
            "/.well-known/mercure/subscriptions": subscriptions(0),
            "/.well-known/mercure/subscriptions/{topic}": subscriptions(1),
            "/.well-known/mercure/subscriptions/{topic}/{subscriber}": subscriptions(2),
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": json_body({"type": "object"}, "The OpenAPI document.")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (under --workers N: the sums of all workers)",
                    "responses": {"200": text("text/plain", "Prometheus' text format.")},
                }
            },
            "/": {
                "get": {
                    "operationId": "demoPage",
                    "summary": "The demo page: follow channels, publish, ask the llm worker",
                    "responses": {"200": text("text/html", "The page.")},
                }
            },
            "/chat": {
                "get": {
                    "operationId": "chatPage",
                    "summary": "The chat page: a conversation with the llm worker (?c=<channel>)",
                    "responses": {"200": text("text/html", "The page.")},
                }
            },
            "/static/{name}": {
                "get": {
                    "operationId": "demoStatic",
                    "summary": "The demo and chat pages' scripts and styles",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "app.js, hub.js, hub.d.ts, style.css, index.html, "
                            "chat.js, chat.css or chat.html",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The file.",
                            "content": {
                                "text/javascript": {"schema": {"type": "string"}},
                                "text/css": {"schema": {"type": "string"}},
                                "text/html": {"schema": {"type": "string"}},
                                "text/plain": {"schema": {"type": "string"}},
                            },
                        },
                        "404": error("No such file."),
                    },
                }
            },
            "/static/vendor/{name}": {
                "get": {
                    "operationId": "chatVendorFile",
                    "summary": "The chat page's vendored libraries (marked, DOMPurify)",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": "marked.umd.js, purify.min.js, or their LICENSE.txt",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The file.",
                            "content": {
                                "text/javascript": {"schema": {"type": "string"}},
                                "text/plain": {"schema": {"type": "string"}},
                            },
                        },
                        "404": error("No such file."),
                    },
                }
            },
        },
        "components": {"schemas": schemas(settings)},
    }


async def openapi_endpoint(request: Request) -> Response:
    """``GET /openapi.json``: :func:`openapi_spec` for this node's settings."""
    settings: Settings = request.app.state.settings
    return JSONResponse(openapi_spec(settings))
