"""A real-time broadcast hub: Server-Sent Events to browsers, Redis between nodes."""

from __future__ import annotations

from .app import create_app
from .backend import Backend
from .broker import Broker
from .config import Settings
from .errors import BackendUnavailable, BadRequest, ConfigError, HubError, PayloadTooLarge
from .publisher import Publisher, SyncPublisher

__all__ = [
    "Backend",
    "BackendUnavailable",
    "BadRequest",
    "Broker",
    "ConfigError",
    "HubError",
    "PayloadTooLarge",
    "Publisher",
    "Settings",
    "SyncPublisher",
    "create_app",
]

__version__ = "0.1.0"
