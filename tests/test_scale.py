"""Scaling out: ``hub serve --workers N`` on one machine, and several hub processes behind
haproxy (with the settings of ``deploy/haproxy.cfg``) on one Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio

from hub import Publisher
from support.net import free_port
from support.processes import (
    REPO,
    Haproxy,
    HubProcess,
    HubProcesses,
    ResumingClient,
    SteadyPublisher,
)
from support.procfs import running, streams_per_process, worker_pids
from support.redis_server import RedisServer
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

#: Reconnect hint of the test's hubs: browsers come back after 0.1-0.2 s, not 3-6 s.
FAST_RETRY = {"HUB_RETRY_MS": "100"}


# -- hub serve --workers N -----------------------------------------------------------------


async def _live_connections(url: str) -> int:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return sum(c.get("name") == "hub:live" for c in await client.client_list())
    finally:
        await client.aclose()


async def _until(check: object, what: str, timeout: float = 10) -> None:
    assert callable(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.05)


async def _serving(hub: HubProcess, redis_url: str) -> list[int]:
    """Wait until both workers of ``hub`` serve streams, each on a live Redis connection
    of its own (a worker opens one once a client follows a channel)."""

    async def two() -> bool:
        return len(worker_pids(hub.pid)) == 2

    await _until(two, "two workers")
    workers = worker_pids(hub.pid)

    async def both_live() -> bool:
        # A worker just started may not accept yet, and streams opened before it does
        # all go to the other: open a fresh set each try.
        streams = [SSEStream(hub.url, ["probe"]) for _ in range(16)]
        try:
            for stream in streams:
                await stream.__aenter__()
            spread = streams_per_process(workers, hub.port)
            return all(spread.values()) and await _live_connections(redis_url) == 2
        finally:
            for stream in streams:
                await stream.close()

    await _until(both_live, "two workers with one live connection each", timeout=20)
    return workers


@pytest.fixture
async def private_hubs(redis_server: RedisServer) -> AsyncIterator[HubProcesses]:
    """Hub processes on a Redis of the test's own, where every connection is theirs."""
    made = HubProcesses(redis_server.url)
    try:
        yield made
    finally:
        await made.cleanup()


async def test_workers_share_the_port_each_with_its_own_live_redis_connection(
    private_hubs: HubProcesses, redis_server: RedisServer
) -> None:
    hub = await private_hubs.start("--workers", "2")
    workers = await _serving(hub, redis_server.url)
    streams = [SSEStream(hub.url, ["w"]) for _ in range(16)]
    try:
        for stream in streams:
            await stream.__aenter__()
        spread = streams_per_process(workers, hub.port)
        async with httpx.AsyncClient() as client:
            for n in range(3):
                response = await client.post(
                    f"{hub.url}/publish", json={"channel": "w", "data": str(n)}
                )
                assert response.status_code == 201
        for stream in streams:
            await stream.wait_for(3)
        code = await hub.signal(signal.SIGTERM)
        for stream in streams:
            await stream.wait_ended(timeout=10)
    finally:
        for stream in streams:
            await stream.close()
    # The kernel spread the 16 streams over both workers (all on one: 1 in 32768).
    assert sorted(spread) == sorted(workers)
    assert all(spread.values()), spread
    assert all(stream.data() == ["0", "1", "2"] for stream in streams)
    # Every worker drained its streams with a farewell hint (100-200% of 3000 ms)...
    assert all(s.retry is not None and 3000 <= s.retry <= 6000 for s in streams)
    # ...and the supervisor exits 0 with no worker left behind.
    assert code == 0, await hub.stderr()
    assert not any(running(pid) for pid in workers)
    assert "Traceback" not in await hub.stderr()


async def test_a_worker_that_dies_is_replaced(
    private_hubs: HubProcesses, redis_server: RedisServer
) -> None:
    hub = await private_hubs.start("--workers", "2")
    victim, survivor = await _serving(hub, redis_server.url)
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        workers = worker_pids(hub.pid)
        return len(workers) == 2 and victim not in workers

    await _until(replaced, "the dead worker was not replaced", timeout=15)
    assert survivor in await _serving(hub, redis_server.url)
    assert await hub.signal(signal.SIGTERM) == 0


async def test_workers_stop_when_the_supervisor_is_killed(
    private_hubs: HubProcesses, redis_server: RedisServer
) -> None:
    hub = await private_hubs.start("--workers", "2")
    workers = await _serving(hub, redis_server.url)
    await hub.signal(signal.SIGKILL)

    async def gone() -> bool:
        return not any(running(pid) for pid in workers)

    await _until(gone, "workers outlived their supervisor", timeout=15)


async def test_workers_need_redis_and_a_free_port() -> None:
    taken = free_port()
    serve = [sys.executable, "-m", "hub", "serve", "--port", str(taken), "--workers", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    embedded = await asyncio.create_subprocess_exec(*serve, stderr=subprocess.PIPE, env=env)
    _, err = await asyncio.wait_for(embedded.communicate(), 20)
    assert embedded.returncode == 2
    assert b"HUB_REDIS_URL" in err
    with _listening(taken):
        process = await asyncio.create_subprocess_exec(
            *serve, "--redis-url", "redis://127.0.0.1:1/0", stderr=subprocess.PIPE, env=env
        )
        _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 1
    assert b"cannot listen" in err
    assert b"before it could serve" in err


def _listening(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


# -- several nodes behind haproxy ------------------------------------------------------------


class Cluster:
    def __init__(self, hubs: HubProcesses, nodes: list[HubProcess], balancer: Haproxy) -> None:
        self.hubs = hubs
        self.nodes = nodes
        self.balancer = balancer

    def publisher(self) -> Publisher:
        backends = self.hubs.backends
        assert backends.url is not None
        return Publisher.from_url(backends.url, backends.settings())

    async def sessions(self) -> dict[str, int]:
        """Open streams per node, as haproxy counts them."""
        return {name: int(s["scur"]) for name, s in (await self.balancer.server_stats()).items()}


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[Cluster]:
    """Three hub processes on one Redis, behind haproxy."""
    hubs = HubProcesses(redis_url)
    balancer: Haproxy | None = None
    try:
        nodes = [hubs.make(env=FAST_RETRY) for _ in range(3)]
        await asyncio.gather(*(node.start() for node in nodes))
        balancer = await Haproxy(nodes).start()
        yield Cluster(hubs, nodes, balancer)
    finally:
        if balancer is not None:
            await balancer.cleanup()
        await hubs.cleanup()


def test_the_shipped_haproxy_config_is_valid() -> None:
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(REPO / "deploy" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def test_clients_spread_over_the_nodes_all_see_every_event(cluster: Cluster) -> None:
    streams = [SSEStream(cluster.balancer.url, ["all"]) for _ in range(9)]
    try:
        for stream in streams:
            await stream.__aenter__()
        sessions = await cluster.sessions()
        async with httpx.AsyncClient() as client:
            ids = []
            for n in range(10):
                # Publishes go through the balancer too, so through every node in turn.
                response = await client.post(
                    f"{cluster.balancer.url}/publish", json={"channel": "all", "data": str(n)}
                )
                assert response.status_code == 201
                ids.append(response.json()["id"])
        for stream in streams:
            await stream.wait_for(10)
    finally:
        for stream in streams:
            await stream.close()
    assert sessions == {"hub1": 3, "hub2": 3, "hub3": 3}
    expected = [(i, str(n)) for n, i in enumerate(ids)]
    assert all([(e.id, e.data) for e in stream.events] == expected for stream in streams)


async def test_a_killed_nodes_clients_resume_through_the_balancer_and_miss_nothing(
    cluster: Cluster,
) -> None:
    publisher = cluster.publisher()
    steady = SteadyPublisher(publisher, "kill")
    clients = [ResumingClient(cluster.balancer.url, ["kill"]) for _ in range(9)]
    try:
        for client in clients:
            await client.__aenter__()
        steady.start()
        for client in clients:
            await client.wait_for(30)
        victim = cluster.nodes[1]
        on_victim = (await cluster.sessions())["hub2"]
        await victim.signal(signal.SIGKILL)
        await asyncio.sleep(1.5)  # publishing goes on while they come back
        await steady.stop()
        for client in clients:
            await client.wait_for(len(steady.acknowledged))
    finally:
        await steady.stop()
        for client in clients:
            await client.close()
        await publisher.aclose()
    assert on_victim == 3
    assert sum(c.reconnects for c in clients) == on_victim
    for client in clients:
        assert client.signals() == []  # no hub.reset: nothing was beyond resuming
        assert client.received() == steady.acknowledged
        assert client.failed == [], "a browser would have given up on an error status"


async def test_a_rolling_restart_of_every_node_under_load_loses_nothing(
    cluster: Cluster,
) -> None:
    publisher = cluster.publisher()
    steady = SteadyPublisher(publisher, "roll")
    clients = [ResumingClient(cluster.balancer.url, ["roll"]) for _ in range(6)]
    codes = []
    try:
        for client in clients:
            await client.__aenter__()
        steady.start()
        for i, node in enumerate(cluster.nodes, 1):
            for client in clients:
                await client.wait_for(len(steady.acknowledged) // 2)
            codes.append(await node.signal(signal.SIGTERM))
            await node.start()
            await cluster.balancer.wait_status(f"hub{i}", "UP")
        await asyncio.sleep(0.5)
        await steady.stop()
        for client in clients:
            await client.wait_for(len(steady.acknowledged))
    finally:
        await steady.stop()
        for client in clients:
            await client.close()
        await publisher.aclose()
    assert codes == [0, 0, 0]
    assert sum(c.reconnects for c in clients) >= len(clients)  # each node had streams
    for client in clients:
        assert client.signals() == [], client.streams[-1].events[:3]
        assert client.received() == steady.acknowledged
        assert client.failed == [], "a browser would have given up on an error status"
