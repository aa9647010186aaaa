"""The faults, drawn at random (from the run's seed) one after another: each waits for
what it broke to come back before the next is drawn, so the run always ends whole."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

import httpx
import redis.asyncio

from hub import Publisher

from .client import ChaosClient
from .processes import HubNode, RedisProc
from .publishers import Publishing
from .relay import SilentRelay


class Campaign(Protocol):
    """What the faults break and report to (bench/chaos/campaign.py's ``Campaign``)."""

    nodes: list[HubNode]
    redis: RedisProc
    relay: SilentRelay | None
    clients: list[ChaosClient]
    publishing: Publishing
    publisher: Publisher | None
    burst_http: httpx.AsyncClient
    balancer_url: str

    def say(self, text: str) -> None: ...


#: fault name -> weight
WEIGHTS = {
    "node SIGKILL": 3,
    "node SIGTERM": 3,
    "redis restart (SIGTERM)": 1,
    "redis restart (SIGKILL)": 1,
    "CLIENT KILL pubsub": 2,
    "CLIENT KILL normal": 2,
    "silent network": 1,
    "burst": 3,
    "stuck client": 2,
    "slow client": 2,
    "client away": 2,
    "clients reconnect at random": 3,
}


class Faults:
    def __init__(self, campaign: Campaign, rng: random.Random) -> None:
        self.c = campaign
        self.rng = rng
        self.injected: Counter[str] = Counter()
        self._actions: dict[str, Callable[[], Awaitable[None]]] = {
            "node SIGKILL": lambda: self._node(signal.SIGKILL),
            "node SIGTERM": lambda: self._node(signal.SIGTERM),
            "redis restart (SIGTERM)": lambda: self._redis(signal.SIGTERM),
            "redis restart (SIGKILL)": lambda: self._redis(signal.SIGKILL),
            "CLIENT KILL pubsub": lambda: self._client_kill("pubsub"),
            "CLIENT KILL normal": lambda: self._client_kill("normal"),
            "silent network": self._silence,
            "burst": self._burst,
            "stuck client": lambda: self._misbehave("stuck", 3, 12),
            "slow client": lambda: self._misbehave("slow", 3, 15),
            "client away": lambda: self._misbehave("away", 5, 60),
            "clients reconnect at random": self._reconnects,
        }

    async def run(self, until: float, gap: tuple[float, float] = (1.0, 4.0)) -> None:
        loop = asyncio.get_running_loop()
        names, weights = list(WEIGHTS), list(WEIGHTS.values())
        while loop.time() < until:
            await asyncio.sleep(min(self.rng.uniform(*gap), max(0.0, until - loop.time())))
            if loop.time() >= until:
                break
            name = self.rng.choices(names, weights)[0]
            self.injected[name] += 1
            self.c.say(f"fault: {name}")
            await self._actions[name]()

    async def _node(self, signum: int) -> None:
        node = self.rng.choice(self.c.nodes)
        await asyncio.to_thread(node.signal, signum)
        await asyncio.sleep(self.rng.uniform(0.2, 3.0))
        await asyncio.to_thread(node.start)

    async def _redis(self, signum: int) -> None:
        await asyncio.to_thread(self.c.redis.signal, signum)
        await asyncio.sleep(self.rng.uniform(0.2, 4.0))
        await asyncio.to_thread(self.c.redis.start)

    async def _client_kill(self, kind: str) -> None:
        client = redis.asyncio.Redis.from_url(self.c.redis.url, socket_timeout=5)
        try:
            # SKIPME (the default) spares this connection only; the direct publisher's
            # connections go too, and reconnect like the nodes'.
            await client.client_kill_filter(_type=kind)
        except redis.RedisError as exc:
            self.c.say(f"CLIENT KILL failed: {exc}")
        finally:
            await client.aclose()

    async def _silence(self) -> None:
        assert self.c.relay is not None
        self.c.relay.go_silent()
        # Long enough for a node's probe to give the connection up (PING after 5 s
        # without traffic, 5 s more for the answer), and for publishes on silent pool
        # connections to time out.
        await asyncio.sleep(self.rng.uniform(6.0, 14.0))
        self.c.relay.heal()

    async def _burst(self) -> None:
        await self.c.publishing.burst(
            self.rng.randint(20, 200), self.c.burst_http, self.c.balancer_url, self.c.publisher
        )

    async def _misbehave(self, mode: str, low: float, high: float) -> None:
        client = self.rng.choice(self.c.clients)
        client.misbehave(mode, self.rng.uniform(low, high))

    async def _reconnects(self) -> None:
        for client in self.rng.sample(self.c.clients, self.rng.randint(1, len(self.c.clients))):
            client.reconnect()
