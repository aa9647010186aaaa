"""A real-time broadcast hub: Server-Sent Events to browsers, Redis between nodes.

The face is small and cheap: ``from hub import Publisher`` loads the store wing and
nothing of the web stack (Starlette, uvicorn, PyJWT, prometheus-client), so a worker
that only publishes does not pay for it. ``create_app``, ``Broker`` and the client
are loaded when first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from hub.config import Settings
from hub.errors import (
    BackendUnavailable,
    BadRequest,
    ConfigError,
    Conflict,
    HubError,
    PayloadTooLarge,
    RateLimited,
    TooManyConnections,
)
from hub.store.backend import Backend
from hub.store.publisher import Publisher, SyncPublisher
from hub.version import __version__

if TYPE_CHECKING:
    from hub.app import create_app
    from hub.client import Event, HubClient
    from hub.delivery.broker import Broker

__all__ = [
    "Backend",
    "BackendUnavailable",
    "BadRequest",
    "Broker",
    "ConfigError",
    "Conflict",
    "Event",
    "HubClient",
    "HubError",
    "PayloadTooLarge",
    "Publisher",
    "RateLimited",
    "Settings",
    "SyncPublisher",
    "TooManyConnections",
    "__version__",
    "create_app",
]

#: Public names whose modules load the web stack or an HTTP client: imported on first use.
_LAZY = {
    "create_app": "hub.app",
    "Broker": "hub.delivery.broker",
    "Event": "hub.client",
    "HubClient": "hub.client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hub' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value
