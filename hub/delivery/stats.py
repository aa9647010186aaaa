"""Plain counters of one process's delivery path, and why a stream closed.

They become Prometheus metrics only when someone looks (:mod:`hub.metrics`): here a
count is one ``+=``, never per client per event.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CLOSE_REASONS", "TOKEN_EXPIRED", "Stats", "lag_since"]

#: Why a stream closed: the ``reason`` label of ``hub_connections_closed_total``.
CLOSE_REASONS = ("client", "slow", "expired", "shutdown", "gap", "error")
#: What a stream is aborted with when its token expires.
TOKEN_EXPIRED = "token expired"


def _no_observation(_seconds: float) -> None:
    pass


class Stats:
    """Plain counters of one process's hub, bumped on the delivery path.

    Every field only grows. Nothing here allocates or locks, so a ``+=`` on the hot path
    costs what an attribute write costs.
    """

    __slots__ = (
        "closed",
        "delivered",
        "observe_lag",
        "opened",
        "published",
        "rate_limited",
        "reconnects",
        "replayed",
        "replays",
        "resets",
    )

    def __init__(self) -> None:
        #: Streams opened and closed; ``closed`` by reason (:data:`CLOSE_REASONS`).
        self.opened = 0
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)
        #: Events accepted by ``POST /publish`` on this process.
        self.published = 0
        #: Publishes refused over ``HUB_PUBLISH_RATE`` (both doors).
        self.rate_limited = 0
        #: Live events queued for clients: once per event, ``+= number of subscribers``.
        self.delivered = 0
        #: Streams that resumed from a cursor, and the events they were sent from history.
        self.replays = 0
        self.replayed = 0
        #: ``hub.reset`` signals sent.
        self.resets = 0
        #: Times a live connection to Redis (to any shard) was lost and set up again.
        self.reconnects = 0
        #: Seconds from publish (the id's Redis time) to this process, once per event;
        #: replaced by :class:`Metrics` with a histogram's ``observe``.
        self.observe_lag: Callable[[float], None] = _no_observation


def lag_since(event_ms: int) -> float:
    """Seconds since the Redis time ``event_ms`` in an event id (clamped at 0: clocks
    of Redis and this host may differ a little)."""
    return max(0.0, time.time() - event_ms / 1000)
