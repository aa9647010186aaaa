"""Where the live messages of each partition come from: one Redis, or a cluster's masters.

The live path keeps one pub/sub connection per shard it needs, and only to those: on
one Redis (a Sentinel-named master, the embedded backend) there is one shard; on a Redis
Cluster a shard is a master, and a partition belongs to the master of its tag's slot,
as redis-py's slot map says (:meth:`Shards.refresh` reads it again after a failover or
a migration).
"""

from __future__ import annotations

from redis.asyncio import Redis, RedisCluster
from redis.crc import key_slot

from hub.store.backend import Backend
from hub.store.cluster import node_target
from hub.store.failures import translated
from hub.store.keys import PARTITION_TAGS
from hub.store.lane import Target
from hub.store.pubsub import LiveConnection, OnMessage, OnSubscribed, open_live

__all__ = ["ONE", "Shards"]

#: The name of the one shard of a Redis that is not a cluster.
ONE = ""


class Shards:
    """The shards of the hub's Redis, and a live connection to any of them."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        #: True on a Redis Cluster: live messages go by sharded pub/sub.
        self.sharded = backend.cluster is not None
        self._cluster: RedisCluster | None = None
        self._one: Redis | None = None
        if self.sharded:
            self._cluster = backend.cluster_client(raw_xrange=False)
        else:
            self._one = backend.live_client()

    async def refresh(self) -> None:
        """Read the cluster's slot map again (nothing to do on one Redis)."""
        if self._cluster is not None:
            with translated("reading the cluster's slots"):
                await self._cluster.nodes_manager.initialize()

    def ready(self) -> bool:
        """Whether :meth:`shard_of` can answer (a cluster's slots have been read)."""
        return self._cluster is None or bool(self._cluster.nodes_manager.slots_cache)

    def shard_of(self, partition: int) -> str:
        """The shard that holds ``partition`` now (call :meth:`refresh` first on a cluster)."""
        if self._cluster is None:
            return ONE
        slot = key_slot(PARTITION_TAGS[partition].encode())
        return str(self._cluster.nodes_manager.get_node_from_slot(slot).name)

    async def open(
        self, shard: str, on_message: OnMessage, on_subscribed: OnSubscribed
    ) -> LiveConnection:
        """A fresh live connection to ``shard``; its ``lost`` future says when it broke."""
        with translated("opening the live connection"):
            if self._one is not None:
                target = Target.of(self._one, "live")
                return await open_live(self._one, target, on_message, on_subscribed, sharded=False)
            assert self._cluster is not None
            node = self._cluster.nodes_manager.get_node(node_name=shard)
            if node is None:
                raise ConnectionError(f"the cluster has no master {shard} any more")
            target = node_target(self._cluster, node, "live")
            client = self._node_client(node.host, int(node.port)) if target is None else None
            return await open_live(
                client or Redis(), target, on_message, on_subscribed, sharded=True
            )

    def _node_client(self, host: str, port: int) -> Redis:
        """A plain client of one master, for its redis-py PubSub (TLS)."""
        parsed = self._backend.cluster
        assert parsed is not None
        return Redis(
            host=host,
            port=port,
            username=parsed.username,
            password=parsed.password,
            ssl=parsed.tls,
            socket_connect_timeout=5.0,
        )

    async def aclose(self) -> None:
        if self._cluster is not None:
            await self._cluster.aclose()
        if self._one is not None:
            await self._one.aclose(close_connection_pool=True)
