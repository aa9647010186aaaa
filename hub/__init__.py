"""A real-time broadcast hub: Server-Sent Events to browsers, Redis between nodes."""

from __future__ import annotations

from hub.app import create_app
from hub.client import Event, HubClient
from hub.config import Settings
from hub.delivery.broker import Broker
from hub.errors import (
    BackendUnavailable,
    BadRequest,
    ConfigError,
    Conflict,
    HubError,
    PayloadTooLarge,
    TooManyConnections,
)
from hub.store.backend import Backend
from hub.store.publisher import Publisher, SyncPublisher

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
    "Settings",
    "SyncPublisher",
    "TooManyConnections",
    "create_app",
]

__version__ = "0.1.0"
