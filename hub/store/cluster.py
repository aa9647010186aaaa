"""The hub on a Redis Cluster: its keys spread over the shards, 64 partitions of them.

A ``redis+cluster://host:port[,host:port...]`` URL (``rediss+cluster://`` for TLS) names
seed nodes. Commands go through redis-py's cluster client, which keeps the slot map and
follows ``MOVED`` and ``ASK`` (hub/store/backend.py makes it). Two things of the hub's
own learn about slots here, and only here, from that client's slot map:

- :class:`ClusterLanes`: the publish script's pipelined connections (hub/store/lane.py),
  one per master, each call sent to the master of its first key's slot; a ``MOVED``
  updates the map and sends the call again (nothing ran), an ``ASK`` sends it to the
  importing node after ``ASKING``, a ``TRYAGAIN`` (a slot half migrated) waits a little;
- :func:`node_target`: where a node's raw connections go (the live path's pub/sub
  connection to each shard it needs, hub/store/shards.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from redis.asyncio import RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, TryAgainError

from hub.errors import ConfigError
from hub.store.lane import Lane, Target
from hub.store.resp import Arg, pack
from hub.store.urls import CLUSTER_SCHEMES, host_port, redact

__all__ = [
    "ClusterLanes",
    "ClusterURL",
    "is_cluster_client",
    "node_target",
    "parse_cluster_url",
]

#: Times one call is sent again after MOVED, ASK or TRYAGAIN before its error stands.
_REDIRECTS = 5


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


def is_cluster_client(client: object) -> bool:
    """Whether ``client`` is redis-py's (asyncio) cluster client."""
    return isinstance(client, RedisCluster)


def node_target(client: RedisCluster, node: ClusterNode, role: str) -> Target | None:
    """Where the hub's raw connections to ``node`` go, introduced as ``client``'s are
    (``None`` for TLS: those stay with redis-py)."""
    options: dict[str, Any] = client.connection_kwargs
    if options.get("ssl") or options.get("credential_provider") is not None:
        return None
    host, port = node.host, int(node.port)

    async def opener(loop: asyncio.AbstractEventLoop, factory: Any) -> Any:
        return await loop.create_connection(factory, host, port)

    handshake: list[list[Arg]] = []
    password, username = options.get("password"), options.get("username")
    if password:
        handshake.append(["AUTH", username, password] if username else ["AUTH", password])
    client_name = options.get("client_name")
    if client_name:
        base = client_name.rsplit(":", 1)[0] if ":" in client_name else client_name
        handshake.append(["CLIENT", "SETNAME", f"{base}:{role}"])
    timeout = float(options.get("socket_timeout") or options.get("socket_connect_timeout") or 10)
    return Target(opener, tuple(pack(c) for c in handshake), timeout)


class ClusterLanes:
    """A lane to each master of a cluster, for calls routed by their first key."""

    def __init__(self, client: RedisCluster, role: str) -> None:
        self._client = client
        self._role = role
        self._lanes: dict[str, Lane] = {}
        self._refreshed = 0.0

    @classmethod
    def for_client(cls, client: RedisCluster, *, role: str = "pub") -> ClusterLanes | None:
        """Lanes beside ``client``, or ``None`` when its connections are of a kind the
        hub does not speak itself (TLS)."""
        options: dict[str, Any] = client.connection_kwargs
        if options.get("ssl") or options.get("credential_provider") is not None:
            return None
        return cls(client, role)

    async def _node(self, key: str) -> ClusterNode:
        client = self._client
        if not client.nodes_manager.slots_cache:
            await client.initialize()
        return client.nodes_manager.get_node_from_slot(client.keyslot(key))

    def _lane_of(self, node: ClusterNode) -> Lane:
        lane = self._lanes.get(node.name)
        if lane is None:
            target = node_target(self._client, node, self._role)
            assert target is not None
            lane = self._lanes[node.name] = Lane(target)
        return lane

    async def lane(self, key: str) -> Lane:
        """The lane to the master of ``key``'s slot."""
        return self._lane_of(await self._node(key))

    async def run_many(
        self, calls: Sequence[tuple[str, Sequence[Arg]]], source: str
    ) -> tuple[list[Any], RedisError | None]:
        """Send each command to the master of its key's slot, those of one master back to
        back; return the replies in order (errors in their place, ``None`` where none
        came) and why some did not come. ``source``: the script, loaded where a master
        does not have it yet."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        failure: RedisError | None = None
        #: Calls to send to an importing node after ASKING, and which node.
        asking: dict[int, ClusterNode] = {}
        for attempt in range(_REDIRECTS + 1):
            groups: dict[str, tuple[Lane, list[int]]] = {}
            for i in todo:
                node = asking.get(i) or await self._node(calls[i][0])
                groups.setdefault(node.name, (self._lane_of(node), []))[1].append(i)
            sent = await asyncio.gather(
                *(
                    self._send(lane, [calls[i][1] for i in idx], [i in asking for i in idx], source)
                    for lane, idx in groups.values()
                )
            )
            again: list[int] = []
            asking = {}
            for (_lane, idx), (got, why) in zip(groups.values(), sent, strict=True):
                failure = failure or why
                for i, reply in zip(idx, got, strict=False):
                    replies[i] = reply
                    if attempt == _REDIRECTS:
                        continue
                    if isinstance(reply, MovedError):
                        # The slot has a new owner (failover, migration): nothing ran.
                        await self._client.nodes_manager.move_slot(reply)
                        again.append(i)
                    elif isinstance(reply, AskError):
                        # The slot is moving and this key went ahead: ask its new node.
                        asking[i] = self._client.nodes_manager.get_node(
                            host=reply.host, port=reply.port
                        ) or ClusterNode(reply.host, reply.port, **self._client.connection_kwargs)
                        again.append(i)
                    elif isinstance(reply, TryAgainError):
                        again.append(i)  # some of the call's keys moved, some not yet
            if failure is not None:
                await self._refresh()  # a master went away: who holds its slots now?
            if not again:
                break
            if any(isinstance(replies[i], TryAgainError) for i in again):
                await asyncio.sleep(0.05 * (attempt + 1))
            todo = again
        return replies, failure

    async def _send(
        self, lane: Lane, commands: list[Sequence[Arg]], asked: list[bool], source: str
    ) -> tuple[list[Any], RedisError | None]:
        wire: list[Sequence[Arg]] = []
        for command, ask in zip(commands, asked, strict=True):
            if ask:
                wire.append(("ASKING",))
            wire.append(command)
        try:
            got, failure = await lane.call_many(wire)
        except RedisError as exc:
            return [], exc  # not even connected: nothing was sent
        replies = _drop_asking(got, asked)
        if failure is None and any(isinstance(r, NoScriptError) for r in replies):
            try:
                await lane.call("SCRIPT", "LOAD", source)
            except RedisError as exc:
                return replies, exc
            missing = [n for n, r in enumerate(replies) if isinstance(r, NoScriptError)]
            again, failure = await lane.call_many([commands[n] for n in missing])
            for k, n in enumerate(missing):
                replies[n] = again[k] if k < len(again) else None
        return replies, failure

    async def _refresh(self) -> None:
        """Read the slot map again, at most once a second."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._refreshed < 1.0:
            return
        self._refreshed = loop.time()
        with contextlib.suppress(RedisError, OSError):
            await self._client.nodes_manager.initialize()

    async def aclose(self) -> None:
        for lane in self._lanes.values():
            await lane.aclose()
        self._lanes.clear()


def _drop_asking(replies: list[Any], asked: list[bool]) -> list[Any]:
    """The replies of the commands themselves, without those of the ASKINGs before them."""
    out: list[Any] = []
    position = 0
    for was_asked in asked:
        if was_asked:
            position += 1
        out.append(replies[position] if position < len(replies) else None)
        position += 1
    return out
