"""The hub on a Redis Cluster: every key and pub/sub name of one hub in one hash slot.

A ``redis+cluster://host:port[,host:port...]`` URL (``rediss+cluster://`` for TLS)
names seed nodes. The key prefix must hold a hash tag (``HUB_KEY_PREFIX={hub}:``), so
all of the hub's keys hash to one slot: each script is single-slot (no ``CROSSSLOT``,
also on clusters that refuse multi-key commands across slots), and live messages go
by sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``) within the shard that owns the slot.

Connections go to the master of that slot, as the cluster's ``CLUSTER SLOTS`` says
at each new connection. A connection told ``MOVED`` (a failover, a slot
migration) is dropped, so the next one finds the new owner; the call that got the
answer fails with a hub error and is retried by its caller, as after a Sentinel
failover. One slot means one shard carries the hub: this layout makes the hub run on
a cluster (managed ones included); it does not spread one hub's load over shards.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from hub.errors import ConfigError
from hub.store.urls import CLUSTER_SCHEMES, host_port, redact

__all__ = [
    "ClusterURL",
    "SlotPool",
    "check_hash_tag",
    "parse_cluster_url",
    "sharded_script",
]


@dataclass(frozen=True)
class ClusterURL:
    """What a ``redis+cluster://`` URL says."""

    nodes: list[tuple[str, int]]
    tls: bool = False
    username: str | None = None
    password: str | None = None


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis[s]+cluster://[[user]:password@]host[:port][,host[:port]...][/0]``.

    ``port`` defaults to 6379. A cluster has one database, so a path other than
    ``/`` or ``/0`` is refused. IPv6 hosts go in brackets.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in CLUSTER_SCHEMES or not sep:
        raise ConfigError(f"not a redis+cluster:// URL: {redact(url)}")
    if "?" in rest:
        raise ConfigError(f"{redact(url)}: a redis+cluster:// URL takes no options")
    hosts, _, path = rest.partition("/")
    username = password = None
    if "@" in hosts:
        credentials, hosts = hosts.rsplit("@", 1)
        user, _, secret = credentials.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    nodes = [host_port(part, url, 6379) for part in hosts.split(",") if part]
    if not nodes:
        raise ConfigError(f"{redact(url)}: expected {scheme}://host:port[,host:port...]")
    if path.strip("/") not in ("", "0"):
        raise ConfigError(f"{redact(url)}: a Redis Cluster has database 0 only")
    return ClusterURL(nodes, scheme == "rediss+cluster", username, password)


def check_hash_tag(prefix: str) -> str:
    """The key every hub key shares a slot with; raise unless ``prefix`` holds a hash tag."""
    start = prefix.find("{")
    end = prefix.find("}", start + 1) if start >= 0 else -1
    if start < 0 or end <= start + 1:
        raise ConfigError(
            f"on a Redis Cluster the key prefix must hold a hash tag, so that all of the "
            f"hub's keys live in one hash slot; {prefix!r} has none. Set "
            "HUB_KEY_PREFIX={hub}: (or --key-prefix '{hub}:')"
        )
    return prefix


def sharded_script(source: str) -> str:
    """A Lua script's source with its PUBLISH calls made sharded (SPUBLISH)."""
    return source.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")


class SlotMap:
    """Which master owns the hub's slot: asked of the cluster at each new connection.

    Uses redis-py's key hashing (``key_slot``) and the cluster's own ``CLUSTER SLOTS``
    answer, from the seed nodes and the owners seen before, first that answers. One
    lookup per connection (not per command): connections are pooled and long-lived.
    """

    def __init__(self, parsed: ClusterURL, prefix: str, timeout: float) -> None:
        self.slot = key_slot(check_hash_tag(prefix).encode())
        self._parsed = parsed
        self._timeout = timeout
        self._known: list[tuple[str, int]] = list(parsed.nodes)

    async def owner(self) -> tuple[str, int]:
        """The master of the hub's slot, as the cluster says now."""
        failures = []
        for host, port in list(self._known):
            client = Redis(
                host=host,
                port=port,
                username=self._parsed.username,
                password=self._parsed.password,
                ssl=self._parsed.tls,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0),
            )
            try:
                ranges = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            except RedisError as exc:
                failures.append(f"{host}:{port}: {exc}")
                continue
            finally:
                await client.aclose()
            for first, last, master, *_replicas in ranges:
                if first <= self.slot <= last:
                    owner = (_text(master[0]) or host, int(master[1]))
                    if owner not in self._known:
                        self._known.append(owner)
                    return owner
            failures.append(f"{host}:{port}: slot {self.slot} has no master")
        raise RedisConnectionError(
            "no node of the Redis Cluster says who owns the hub's slot: " + "; ".join(failures)
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: Answers that mean this connection talks to the wrong node now.
_ELSEWHERE = (AskError, ClusterDownError, TryAgainError)  # MOVED is a kind of ASK


class _SlotConnection(Connection):
    """A connection to the current owner of the hub's slot."""

    def __init__(self, **kwargs: Any) -> None:
        self.slot_pool: SlotPool = kwargs.pop("slot_pool")
        super().__init__(**kwargs)

    async def connect(self) -> None:
        if not self.is_connected:
            self.host, self.port = await self.slot_pool.slot_map.owner()
        await super().connect()  # type: ignore[no-untyped-call]

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except _ELSEWHERE:
            # The slot moved: the next command on this pool must find its new owner.
            await self.disconnect()
            raise


class _SlotSSLConnection(_SlotConnection, SSLConnection):
    pass


class SlotPool(ConnectionPool):
    """Connections to whichever master owns the hub's slot."""

    def __init__(self, slot_map: SlotMap, tls: bool, **kwargs: Any) -> None:
        kwargs["connection_class"] = _SlotSSLConnection if tls else _SlotConnection
        super().__init__(**kwargs)
        #: TLS connections: the hub's raw connections leave those to redis-py.
        self.tls = tls
        self.slot_map = slot_map
        self.connection_kwargs["slot_pool"] = self

    async def owner(self) -> tuple[str, int]:
        return await self.slot_map.owner()

    async def open_to_owner(self, loop: asyncio.AbstractEventLoop, factory: Any) -> Any:
        """A raw connection (the hub's lane and live reader) to the slot's master, asked
        at every connect, so a connection follows the slot."""
        host, port = await self.slot_map.owner()
        return await loop.create_connection(factory, host, port)


class BlockingSlotPool(SlotPool, BlockingConnectionPool):
    """...that waits for a free connection instead of failing."""
