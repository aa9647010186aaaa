"""Redis Sentinel: a master, a replica and three sentinels of the test's own, on loopback.

The hub connects with a ``redis+sentinel://`` URL and follows the master through a
failover. Replication is asynchronous, so a failover can lose writes the old master had
acknowledged: these tests pin down how many, and who notices what.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from hub import Backend, BackendUnavailable, ConfigError, Publisher, Settings
from hub.store.backend import parse_sentinel_url
from hub.store.ids import key_suffix, parse_id
from hub.store.keys import Keys
from support.hubs import Backends, StartHub
from support.net import free_port, wait_ready
from support.processes import ResumingClient, SteadyPublisher
from support.sse import Event, SSEStream

pytestmark = pytest.mark.anyio

SERVICE = "mymaster"


class SentinelCluster:
    """A master, a replica and three sentinels on free loopback ports, in a temp dir.

    ``min_replicas`` is the data nodes' ``min-replicas-to-write`` (0: off)."""

    def __init__(self, min_replicas: int = 0) -> None:
        self.min_replicas = min_replicas
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        self._binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="hub-sentinel-"))
        ports: set[int] = set()
        while len(ports) < 5:  # five different ones
            ports.add(free_port())
        a, b, *self.sentinel_ports = ports
        self.ports = {"a": a, "b": b}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        a, b = self.ports["a"], self.ports["b"]
        self._spawn("a", "--port", str(a))
        self._spawn("b", "--port", str(b), "--replicaof", "127.0.0.1", str(a))
        _wait(lambda: self._info(b).get("master_link_status") == "up", "replica never synced")
        # After the initial sync the master streams writes only once the replica has
        # acknowledged (up to a second later): until then a write would reach the master
        # alone, and a failover would lose it.
        _wait(lambda: self._replicated(a), "the replica does not acknowledge writes")
        # Each sentinel is told its peers and the replica up front, as its own config
        # rewrite would record them, instead of finding them through the master (seconds).
        ids = [secrets.token_hex(20) for _ in self.sentinel_ports]
        for i, port in enumerate(self.sentinel_ports):
            peers = "".join(
                f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {ids[j]}\n"
                for j, other in enumerate(self.sentinel_ports)
                if j != i
            )
            config = self.dir / f"sentinel-{i}.conf"
            config.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.dir}\n"
                f"sentinel myid {ids[i]}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {a} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel known-replica {SERVICE} 127.0.0.1 {b}\n" + peers
            )
            self._spawn(f"sentinel-{i}", str(config), "--sentinel")

        def agreed() -> bool:
            # Each sentinel knows the replica and the two others (or it cannot vote).
            for port in self.sentinel_ports:
                with _client(port) as client:
                    if len(client.sentinel_slaves(SERVICE)) != 1:
                        return False
                    if len(client.sentinel_sentinels(SERVICE)) != 2:
                        return False
            return True

        _wait(agreed, "the sentinels did not find each other", timeout=15)

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        # No waiting 5 s for more replicas before the first full sync (diskless default).
        data = ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        data += ["--min-replicas-to-write", str(self.min_replicas), "--min-replicas-max-lag", "2"]
        base = [] if "--sentinel" in args else data
        self.processes[name] = subprocess.Popen(
            [self._binary, *args, *base, "--bind", "127.0.0.1", "--dir", str(self.dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if "--sentinel" not in args:
            _wait(lambda: bool(self._info(int(args[1]))), f"{name} did not start")

    def _replicated(self, master: int) -> bool:
        try:
            with _client(master) as client:
                client.set("t:synced", 1)  # refused while min-replicas-to-write is unmet
                return int(client.wait(1, 500)) == 1
        except redis.RedisError:
            return False

    def _info(self, port: int) -> dict[str, object]:
        try:
            with _client(port) as client:
                return dict(client.info("replication"))
        except redis.RedisError:
            return {}

    async def master_port(self) -> int:
        client = redis.asyncio.Redis(port=self.sentinel_ports[0])
        try:
            _host, port = await client.sentinel_get_master_addr_by_name(SERVICE)
            return int(port)
        finally:
            await client.aclose()

    def server(self, port: int) -> str:
        return next(name for name, p in self.ports.items() if p == port)

    def signal(self, name: str, signum: int) -> None:
        self.processes[name].send_signal(signum)

    def cleanup(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)


def _wait(ready: object, what: str, timeout: float = 10) -> None:
    assert callable(ready)
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.05)


async def _until(check: object, what: str, timeout: float) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.05)


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[SentinelCluster]:
    made = SentinelCluster(getattr(request, "param", 0))
    try:
        made.start()
        yield made
    finally:
        made.cleanup()


@pytest.fixture
async def sentinel_publisher(cluster: SentinelCluster) -> AsyncIterator[Publisher]:
    settings = Settings(redis_url=cluster.url, key_prefix="t:")
    publisher = Publisher(Backend(cluster.url).command_client(), settings)
    try:
        yield publisher
    finally:
        await publisher.aclose()


def _events(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.id or "", e.data) for e in events if not e.event.startswith("hub.")]


async def _history(port: int, channel: str) -> list[str]:
    client = redis.asyncio.Redis(port=port)
    try:
        entries = await client.xrange(Keys("t:").stream(channel))
        # An event's id is its entry id with its channel's part (hub/store/ids.py).
        return [(raw_id + key_suffix(channel)).decode() for raw_id, _fields in entries]
    finally:
        await client.aclose()


def test_sentinel_urls_name_every_sentinel_the_service_and_the_database() -> None:
    parsed = parse_sentinel_url(
        "redis+sentinel://:s%40cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2"
        "?sentinel_password=other"
    )
    assert parsed.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380)]
    assert (parsed.service, parsed.db) == ("mymaster", 2)
    assert (parsed.username, parsed.password, parsed.sentinel_password) == (
        None,
        "s@cret",
        "other",
    )
    backend = Backend("redis+sentinel://:s%40cret@h:1/svc")
    assert backend.describe() == "redis+sentinel://h:1/svc"  # for logs: no password


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:1",  # no service
        "redis+sentinel://h:port/svc",
        "redis+sentinel://h:1/svc/db",
        "redis+sentinel://h:1/svc?socket_timeout=1",
    ],
)
def test_a_malformed_sentinel_url_is_refused_at_start(url: str) -> None:
    with pytest.raises(ConfigError, match="redis\\+sentinel://h"):
        Backend(url)


@pytest.mark.parametrize(
    "cluster", [0, 1], ids=["async-replication", "min-replicas-to-write"], indirect=True
)
async def test_clients_keep_receiving_through_a_sentinel_failover(
    cluster: SentinelCluster, start_hub: StartHub, sentinel_publisher: Publisher
) -> None:
    backends = Backends("redis", cluster.url, prefix="t:")
    hub = await start_hub(backends.settings(), backends.backend())
    old = await cluster.master_port()
    steady = SteadyPublisher(sentinel_publisher, "fo")
    async with ResumingClient(hub.url, ["fo"]) as client:
        steady.start()
        try:
            await _until(lambda: _acked(steady, 20), "nothing published", 10)
            before = len(steady.acknowledged)
            with _client(cluster.sentinel_ports[0]) as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
            await _until(lambda: _moved(cluster, old), "no failover", 15)
            # Sentinel turns the old master into a replica some seconds after the switch;
            # until then it still takes writes from connections it had, and loses them.
            old_client = redis.asyncio.Redis(port=old)
            try:
                await _until(lambda: _is_replica(old_client), "old master kept its role", 20)
            finally:
                await old_client.aclose()
            demoted = len(steady.acknowledged)
            await _until(lambda: _acked(steady, demoted + 50), "no publish after failover", 10)
        finally:
            await steady.stop()
        await client.wait_for(len(steady.acknowledged), timeout=20)
        received = client.received()
        reconnects = client.reconnects
    kept = set(await _history(await cluster.master_port(), "fo"))
    lost = [i for i, (event_id, _) in enumerate(steady.acknowledged) if event_id not in kept]
    # What the old master acknowledged after the switch is gone from history...
    assert all(before <= i < demoted for i in lost), (before, demoted, lost[:3], lost[-3:])
    if cluster.min_replicas:
        # ...unless a master without a replica refuses writes: the publisher is told to
        # retry (503) instead, until the old master has joined the new one as a replica.
        assert len(lost) <= 10, f"{len(lost)} acknowledged events lost"
        assert steady.failures > 0
    else:
        # It took writes for seconds after the switch, every one of them lost.
        assert len(lost) > 100, f"only {len(lost)} lost"
    assert all(event_id in kept for event_id, _ in steady.acknowledged[demoted:])
    # ...but this client, connected all along, got every acknowledged event, once, in order.
    assert received == steady.acknowledged
    assert reconnects == 0, "the stream should have stayed open through the failover"


async def test_a_cursor_at_an_event_the_failover_lost_resumes_with_the_next_event(
    cluster: SentinelCluster, start_hub: StartHub, sentinel_publisher: Publisher
) -> None:
    backends = Backends("redis", cluster.url, prefix="t:")
    hub = await start_hub(backends.settings(), backends.backend())
    old = await cluster.master_port()
    old_name = cluster.server(old)
    new_name = "b" if old_name == "a" else "a"
    async with SSEStream(hub.url, ["lo"]) as watcher:
        kept_id = await sentinel_publisher.publish("lo", "replicated")
        with _client(old) as master:
            assert master.wait(1, 2000) == 1  # the replica has it
            # Cut the replica off before the next write, and for good (it is stopped, so
            # it cannot reconnect): that write exists on the master alone.
            cluster.signal(new_name, signal.SIGSTOP)
            master.client_kill_filter(_type="replica")
        lost_id = await sentinel_publisher.publish("lo", "acknowledged, then lost")
        await watcher.wait_for(2)
        cluster.signal(old_name, signal.SIGKILL)
        cluster.signal(new_name, signal.SIGCONT)
        await _until(lambda: _moved(cluster, old), "sentinels did not fail over", 20)
        await wait_ready(hub.url, timeout=20)  # the hub found the new master

        # Resuming from the lost event: its id is past everything the new master has,
        # and the node that delivered it fenced the channel's ids there (lua/lost.lua),
        # so the next event comes after it and this client misses nothing.
        # Resuming from before it (unaware): the new master never had the lost event,
        # and nothing tells this client it existed.
        async with (
            SSEStream(hub.url, ["lo"], last_event_id=lost_id) as resumed,
            SSEStream(hub.url, ["lo"], last_event_id=kept_id) as unaware,
        ):
            after_id = await _publish_until_acknowledged(sentinel_publisher, "lo", "after")
            await unaware.wait_for(1, timeout=15)
            await resumed.wait_for(1, timeout=15)
            await watcher.wait_for(3, timeout=15)
            stayed_open = not watcher.ended.is_set()
    assert _events(unaware.events) == [(after_id, "after")]
    assert _events(resumed.events) == [(after_id, "after")]
    assert [e.event for e in resumed.events] == ["message"], "no reset: nothing was missed"
    assert parse_id(after_id) > parse_id(lost_id)
    assert _events(watcher.events) == [
        (kept_id, "replicated"),
        (lost_id, "acknowledged, then lost"),
        (after_id, "after"),
    ]
    assert stayed_open, "the open stream had to reconnect"


async def _publish_until_acknowledged(publisher: Publisher, channel: str, data: str) -> str:
    for _ in range(200):
        try:
            return await publisher.publish(channel, data)
        except BackendUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("the new master never took the publish")


async def _acked(steady: SteadyPublisher, count: int) -> bool:
    return len(steady.acknowledged) >= count


async def _moved(cluster: SentinelCluster, old: int) -> bool:
    try:
        return await cluster.master_port() != old
    except redis.RedisError:
        return False


async def _is_replica(client: redis.asyncio.Redis) -> bool:
    try:
        role = await client.execute_command("ROLE")
    except redis.RedisError:
        return False
    return bool(role[0] in (b"slave", "slave"))
