"""Where the hub's data lives: a Redis server, or the embedded in-memory one.

The embedded backend is fakeredis running in-process, with Lua (lupa), so it runs the
very same publish script and pub/sub code path as a real Redis. It lives in one
process only: use a real Redis as soon as there is more than one hub process.

A Redis watched by Sentinel is named by a ``redis+sentinel://`` URL (see
:func:`parse_sentinel_url`); clients then ask the sentinels where the master is, and
ask again after a failover. A Redis Cluster is named by a ``redis+cluster://`` URL
(:mod:`hub.store.cluster`). :func:`locate` is the one place that reads a URL's scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import fakeredis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from hub.errors import ConfigError
from hub.store.cluster import ClusterURL, parse_cluster_url
from hub.store.keys import check_prefix
from hub.store.urls import CLUSTER_SCHEMES, check_url, host_port, redact

__all__ = [
    "SENTINEL_SCHEME",
    "Backend",
    "SentinelURL",
    "locate",
    "parse_sentinel_url",
    "redact",
]

SENTINEL_SCHEME = "redis+sentinel"
#: Seconds a sentinel may take to say where the master is, before the next one is asked.
SENTINEL_TIMEOUT = 2.0


@dataclass(frozen=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL says."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    #: Credentials of the Redis master (and replicas)...
    username: str | None = None
    password: str | None = None
    #: ...and of the sentinels, when they have their own (``requirepass`` in sentinel.conf).
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``.

    ``port`` defaults to 26379, ``db`` to 0. The user and password are the Redis
    master's. Query options ``sentinel_username`` and ``sentinel_password`` are for
    sentinels that require a password of their own. IPv6 hosts go in brackets:
    ``redis+sentinel://[::1]:26379,[::1]:26380/mymaster``.
    """
    scheme, sep, rest = url.partition("://")
    if scheme != SENTINEL_SCHEME or not sep:
        raise ConfigError(f"not a {SENTINEL_SCHEME}:// URL: {redact(url)}")
    rest, _, query = rest.partition("?")
    hosts, _, path = rest.partition("/")
    username = password = None
    if "@" in hosts:
        credentials, hosts = hosts.rsplit("@", 1)
        user, _, secret = credentials.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    sentinels = [host_port(part, url, 26379) for part in hosts.split(",") if part]
    service, _, db = path.strip("/").partition("/")
    if not sentinels or not service:
        raise ConfigError(
            f"{redact(url)}: expected {SENTINEL_SCHEME}://host:port[,host:port...]/service_name[/db]"
        )
    if not (db or "0").isdigit():
        raise ConfigError(f"{redact(url)}: the database after the service name must be a number")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = sorted(set(options) - {"sentinel_username", "sentinel_password"})
    if unknown:
        raise ConfigError(f"{redact(url)}: unknown option(s) {unknown}")
    return SentinelURL(
        sentinels,
        service,
        int(db or 0),
        username,
        password,
        options.get("sentinel_username"),
        options.get("sentinel_password"),
    )


def locate(url: str) -> SentinelURL | ClusterURL | None:
    """What a Redis URL names: sentinels, a cluster's seed nodes, or (``None``) one
    server that redis-py's ``from_url`` reaches by itself. Raises
    :class:`~hub.errors.ConfigError` for a URL the hub cannot use (:func:`check_url`)."""
    scheme = check_url(url)
    if scheme == SENTINEL_SCHEME:
        return parse_sentinel_url(url)
    if scheme in CLUSTER_SCHEMES:
        return parse_cluster_url(url)
    return None


class _SentinelPool(SentinelConnectionPool):
    """Connections to whichever server the sentinels name as master. The pool owns its
    sentinel clients: closing it closes them."""

    async def aclose(self) -> None:
        await super().aclose()
        await self.sentinel_manager.aclose()


class _BlockingSentinelPool(_SentinelPool, BlockingConnectionPool):
    """...and waits for a free connection instead of failing, like the plain command pool."""


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
        key_prefix: str = "hub:",
    ) -> None:
        self.url = url
        self.key_prefix = check_prefix(key_prefix)
        self._client_name = client_name
        self._timeout = timeout
        self._server: Any = None if url else fakeredis.FakeServer()
        self._pool_size = pool_size
        # An unusable URL fails at start, not on the first connection.
        where = locate(url) if url else None
        #: Set for a ``redis+sentinel://`` URL...
        self.sentinel = where if isinstance(where, SentinelURL) else None
        #: ...and for a ``redis+cluster://`` one.
        self.cluster = where if isinstance(where, ClusterURL) else None

    @property
    def embedded(self) -> bool:
        return self._server is not None

    def describe(self) -> str:
        """For log lines: where the data lives, without credentials."""
        return "embedded in-memory backend" if self.url is None else redact(self.url)

    def command_client(self, key_prefix: str | None = None) -> Redis:
        """A pooled client for commands; its connection count is bounded by ``pool_size``
        (on a cluster, redis-py's cluster client, per master). ``key_prefix`` is accepted
        for callers of earlier versions and checked (it must not hold a brace)."""
        if key_prefix is not None:
            check_prefix(key_prefix)
        if self._server is not None:
            # No socket_timeout (fakeredis sets 5 s): nothing in memory can stall, and with
            # one redis-py writes each command under asyncio.wait_for, which on Python
            # < 3.12 swallows a cancellation that lands as the write completes; a node
            # stopping right after start-up then waited for its live reader ("did not stop
            # when cancelled").
            # In-memory "connections" cost nothing, but fakeredis' pool refuses a 101st
            # concurrent one instead of waiting: a burst of clients must not hit that.
            return fakeredis.FakeAsyncRedis(
                server=self._server, max_connections=1 << 20, socket_timeout=None
            )
        assert self.url is not None
        if self.sentinel is not None:
            return self._master_client(
                _BlockingSentinelPool,
                max_connections=self._pool_size,
                timeout=self._timeout,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                client_name=f"{self._client_name}:cmd",
            )
        if self.cluster is not None:
            return self.cluster_client(raw_xrange=False)  # type: ignore[return-value]
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

    def cluster_client(self, *, raw_xrange: bool) -> RedisCluster:
        """redis-py's cluster client for this cluster: it keeps the slot map and follows
        MOVED and ASK. ``raw_xrange``: XRANGE replies stay raw lists (history reads)."""
        assert self.cluster is not None
        parsed = self.cluster
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
            username=parsed.username,
            password=parsed.password,
            ssl=parsed.tls,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            max_connections=self._pool_size,
            client_name=f"{self._client_name}:cmd",
            # redis-py's own retries stay on here: after a connection error they are what
            # reads the slot map again (a failover). Nothing here publishes: publishes
            # go down the hub's lanes (ClusterLanes), which never send a call twice.
        )
        if raw_xrange:
            client.set_response_callback("XRANGE", lambda response, **_options: response)
        return client

    def live_client(self, key_prefix: str | None = None) -> Redis:
        """A client for the pub/sub connection that carries the live path (one Redis;
        on a cluster the live path connects to each master itself, hub/store/shards.py)."""
        if self._server is not None:
            return fakeredis.FakeAsyncRedis(server=self._server, socket_timeout=None)
        assert self.url is not None
        # No socket_timeout: the reader waits with its own bounded get_message timeout
        # and probes liveness with PING, so an idle channel is not mistaken for a dead one.
        if self.sentinel is not None:
            return self._master_client(
                _SentinelPool,
                socket_connect_timeout=self._timeout,
                client_name=f"{self._client_name}:live",
            )
        return Redis.from_url(
            self.url,
            socket_connect_timeout=self._timeout,
            client_name=f"{self._client_name}:live",
            retry=_no_retry(),
        )

    def _master_client(self, pool_class: type[SentinelConnectionPool], **options: Any) -> Redis:
        """A client of the master the sentinels name; after a failover its new
        connections go to the new master (old ones fail, and callers see that)."""
        assert self.sentinel is not None
        parsed = self.sentinel
        manager = Sentinel(
            parsed.sentinels,
            sentinel_kwargs={
                "socket_timeout": min(self._timeout, SENTINEL_TIMEOUT),
                "socket_connect_timeout": min(self._timeout, SENTINEL_TIMEOUT),
                "username": parsed.sentinel_username,
                "password": parsed.sentinel_password,
                # A sentinel that does not answer is skipped for the next one, not retried.
                "retry": _no_retry(),
            },
        )
        client: Redis = manager.master_for(
            parsed.service,
            connection_pool_class=pool_class,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            retry=_no_retry(),
            **options,
        )
        return client
