"""Admission: the one connection limit, counting every stream of the node.

Checked before a stream exists, for ``/events`` and Mercure streams alike. A refusal
is a 503 with ``Retry-After``: a browser's EventSource gives up on it, but it protects
the node, and the client (or the load balancer) goes to another one.
"""

from __future__ import annotations

from collections.abc import Callable

from hub.config import Settings
from hub.errors import TooManyConnections

__all__ = ["Admission"]


class Admission:
    """Admits a new stream while the node holds fewer than ``HUB_MAX_CONNECTIONS``."""

    def __init__(self, settings: Settings, open_streams: Callable[[], int]) -> None:
        self._limit = settings.max_connections
        self._open_streams = open_streams

    def check(self) -> None:
        """Admit one more stream, or raise :class:`TooManyConnections`."""
        total = self._open_streams()
        if total >= self._limit:
            raise TooManyConnections(
                f"this node has {total} open streams (HUB_MAX_CONNECTIONS); "
                "retry, or connect to another node"
            )
