"""A real-time broadcast hub: Server-Sent Events to browsers, Redis between nodes."""

from __future__ import annotations

from .app import create_app
from .backend import Backend
from .broker import Broker
from .client import Event, HubClient
from .config import Settings
from .errors import (
    BackendUnavailable,
    BadRequest,
    ConfigError,
    Conflict,
    HubError,
    PayloadTooLarge,
    TooManyConnections,
)
from .publisher import Publisher, SyncPublisher

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
