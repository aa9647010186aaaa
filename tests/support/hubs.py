"""Backends shared by a test's hubs, and hub servers running in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from hub import Backend, Settings
from hub.delivery.broker import Broker
from hub.server import HubServer


def _prefix() -> str:
    # A prefix of its own: tests share one Redis (and one cluster).
    return f"test:{uuid.uuid4().hex[:10]}:"


@dataclass
class Backends:
    """Makes backends and settings that share one data set (embedded server or Redis prefix)."""

    kind: str
    url: str | None
    prefix: str = field(default_factory=_prefix)
    _embedded: Backend | None = None

    def backend(self, pool_size: int = 10) -> Backend:
        if self.url is None:
            if self._embedded is None:
                self._embedded = Backend(None)
            return self._embedded
        return Backend(
            self.url, pool_size=pool_size, client_name=f"hub-{self.prefix}", key_prefix=self.prefix
        )

    def settings(self, **changes: Any) -> Settings:
        return Settings(redis_url=self.url, key_prefix=self.prefix, **changes)

    def cleanup(self) -> None:
        if self.url is None:
            return
        if self.kind == "cluster":
            self._cleanup_cluster()
            return
        client = redis.Redis.from_url(self.url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def _cleanup_cluster(self) -> None:
        host, _, port = self.url.removeprefix("redis+cluster://").split(",")[0].partition(":")
        client = redis.RedisCluster(host=host, port=int(port))
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for key in keys:
                client.delete(key)  # keys of many slots: one at a time
        finally:
            client.close()


class InLoopServer(HubServer):
    # Several servers share the test's event loop: none of them may take over signals.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningHub:
    url: str
    server: HubServer
    task: asyncio.Task[None]
    settings: Settings

    @property
    def broker(self) -> Broker:
        """The running app's broker (for tests that look inside)."""
        broker: Broker = self.server.hub_app.state.broker
        return broker

    async def stop(self) -> None:
        """Graceful stop, like SIGTERM."""
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 20)

    async def kill(self) -> None:
        """Abrupt stop: drop every connection without a goodbye, like SIGKILL."""
        self.server.force_exit = True
        self.server.should_exit = True
        for connection in list(self.server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await asyncio.wait_for(self.task, 20)


StartHub = Callable[..., Awaitable[RunningHub]]
