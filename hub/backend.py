"""Where the hub's data lives: a Redis server, or the embedded in-memory one.

The embedded backend is fakeredis running in-process, with Lua (lupa), so it runs the
very same publish script and pub/sub code path as a real Redis. It lives in one
process only: use a real Redis as soon as there is more than one hub process.
"""

from __future__ import annotations

from typing import Any

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["Backend", "redact"]


def redact(url: str) -> str:
    """``url`` without its user and password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def _no_retry() -> Retry:
    # No silent retries: a retried EVALSHA whose reply was lost would publish twice, and
    # a silently reconnected pub/sub would hide the messages lost in between. Callers
    # see the error and decide.
    return Retry(NoBackoff(), 0)


class Backend:
    """Hands out Redis clients that all talk to the same data.

    ``Backend(url)`` for a Redis server, ``Backend()`` (or ``Backend(None)``) for the
    embedded in-memory backend. Several hub apps in one process may share one embedded
    backend; they then behave like nodes on one Redis.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        pool_size: int = 10,
        client_name: str = "hub",
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self._client_name = client_name
        self._timeout = timeout
        self._server: Any = None if url else fakeredis.FakeServer()
        self._pool_size = pool_size

    @property
    def embedded(self) -> bool:
        return self._server is not None

    def describe(self) -> str:
        """For log lines: where the data lives, without credentials."""
        return "embedded in-memory backend" if self.url is None else redact(self.url)

    def command_client(self) -> Redis:
        """A pooled client for commands; its connection count is bounded by ``pool_size``."""
        if self._server is not None:
            return fakeredis.FakeAsyncRedis(server=self._server)
        assert self.url is not None
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self._pool_size,
            timeout=self._timeout,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            client_name=f"{self._client_name}:cmd",
            retry=_no_retry(),
        )
        return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it

    def live_client(self) -> Redis:
        """A client for the one pub/sub connection that carries the live path."""
        if self._server is not None:
            return fakeredis.FakeAsyncRedis(server=self._server)
        assert self.url is not None
        # No socket_timeout: the reader waits with its own bounded get_message timeout
        # and probes liveness with PING, so an idle channel is not mistaken for a dead one.
        return Redis.from_url(
            self.url,
            socket_connect_timeout=self._timeout,
            client_name=f"{self._client_name}:live",
            retry=_no_retry(),
        )
