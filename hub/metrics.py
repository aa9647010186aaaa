"""``GET /metrics``: the hub's numbers in Prometheus' text format.

The delivery path keeps plain integers in a :class:`Stats` (one ``+=`` per event, or
per connection, never per client per event); they become Prometheus metrics only when
someone looks: :meth:`Metrics.sync` copies what changed into prometheus-client's
objects, at each scrape and, under ``hub serve --workers N``, once a second.

With several workers on one port a scrape reaches one of them, so each must answer for
all. ``hub serve`` then runs prometheus-client in multiprocess mode: it points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start, every
worker writes its values there (memory-mapped files), and the scraped worker sums all
of them. Counters of a worker that died stay in the sums (totals never go backwards
while the server runs); its gauges are dropped by the supervisor.

Labels are bounded: no per-channel or per-client label. The only label is ``reason``
on closed connections, from a fixed set.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from hub.delivery.stats import Stats

__all__ = ["MULTIPROC_ENV", "Metrics", "multiprocess_dir"]

#: Where prometheus-client's multiprocess mode keeps the workers' values.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between syncs of a worker's numbers to the shared directory.
SYNC_PERIOD = 1.0

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HubState(Protocol):
    """What :class:`Metrics` reads from the broker at sync time."""

    @property
    def stats(self) -> Stats: ...

    @property
    def connections(self) -> int: ...

    @property
    def subscriptions(self) -> int: ...

    @property
    def redis_reconnects(self) -> int: ...


def multiprocess_dir() -> str | None:
    """The multiprocess directory when this process runs in multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The Prometheus side of one hub app: its metric objects and the ``/metrics`` body."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # Our own registry, not the global one: tests run several hubs in one process.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "hub_connections", "Open /events streams.", registry=r, multiprocess_mode="livesum"
        )
        self.subscriptions = Gauge(
            "hub_subscriptions",
            "Channel subscriptions of open streams (a stream on 3 channels counts 3).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.opened = Counter("hub_connections_opened", "Streams opened.", registry=r)
        self.closed = Counter(
            "hub_connections_closed", "Streams closed, by reason.", ["reason"], registry=r
        )
        self.published = Counter(
            "hub_events_published", "Events accepted by POST /publish.", registry=r
        )
        self.rate_limited = Counter(
            "hub_publishes_rate_limited",
            "Publishes refused with 429 over HUB_PUBLISH_RATE (both doors).",
            registry=r,
        )
        self.delivered = Counter(
            "hub_events_delivered",
            "Live events queued for clients (one per event per subscribed client).",
            registry=r,
        )
        self.replays = Counter(
            "hub_replays", "Streams that resumed from a cursor (Last-Event-ID).", registry=r
        )
        self.replayed = Counter(
            "hub_events_replayed", "Events sent from history to resuming streams.", registry=r
        )
        self.resets = Counter(
            "hub_resets", "hub.reset signals sent (a cursor could not be honoured).", registry=r
        )
        self.redis_reconnects = Counter(
            "hub_redis_reconnects",
            "Times the live Redis connection was lost and set up again.",
            registry=r,
        )
        self.publish_latency = Histogram(
            "hub_publish_seconds",
            "Time POST /publish takes to get an id from Redis.",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.fanout_lag = Histogram(
            "hub_fanout_lag_seconds",
            "From publish (Redis time in the event id) to this node queueing the event; "
            "once per event per node.",
            registry=r,
            buckets=_LAG_BUCKETS,
        )
        self._synced: dict[str, int] = {}
        self._last_reconnects = 0

    def attach(self, state: HubState) -> None:
        """Route the broker's once-per-event observations to the histograms."""
        state.stats.observe_lag = self.fanout_lag.observe

    def observe_publish(self, seconds: float) -> None:
        self.publish_latency.observe(seconds)

    def sync(self, state: HubState) -> None:
        """Copy what changed in ``state`` since the last sync into the metric objects."""
        stats = state.stats
        self.connections.set(state.connections)
        self.subscriptions.set(state.subscriptions)
        self._add("opened", self.opened, stats.opened)
        for reason, count in stats.closed.items():
            self._add(f"closed:{reason}", self.closed.labels(reason=reason), count)
        self._add("published", self.published, stats.published)
        self._add("rate_limited", self.rate_limited, stats.rate_limited)
        self._add("delivered", self.delivered, stats.delivered)
        self._add("replays", self.replays, stats.replays)
        self._add("replayed", self.replayed, stats.replayed)
        self._add("resets", self.resets, stats.resets)
        self._add("redis_reconnects", self.redis_reconnects, state.redis_reconnects)

    def _add(self, key: str, counter: Counter, total: int) -> None:
        delta = total - self._synced.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._synced[key] = total

    async def render(self, state: HubState) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type; all workers' sums in multiprocess
        mode."""
        self.sync(state)  # on the loop: it reads the broker's live state
        # In a thread: in multiprocess mode it reads every worker's files.
        body = await asyncio.to_thread(self._exposition)
        return body, CONTENT_TYPE_LATEST

    def _exposition(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    async def sync_forever(self, state: HubState) -> None:
        """In multiprocess mode: keep this worker's numbers fresh for the others' scrapes
        (run it supervised)."""
        while True:
            await asyncio.sleep(SYNC_PERIOD)
            self.sync(state)
