"""The hub on a Redis Cluster: its URLs, its keys over the shards, and following them.

The contract suite and the doors' tests run on the session's cluster too (modules with
``RUNS_ON_CLUSTER``); here is what only a cluster has.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from hub import Backend, BackendUnavailable, ConfigError, Publisher, Settings, SyncPublisher
from hub.store import ZERO, Store, parse_id, partition_of
from hub.store.backend import locate
from hub.store.cluster import ClusterURL, parse_cluster_url
from hub.store.keys import PARTITION_TAGS, Keys
from support.hubs import Backends, StartHub
from support.net import wait_ready
from support.redis_cluster import RedisCluster
from support.sse import Event, SSEStream

pytestmark = pytest.mark.anyio


def test_cluster_urls_name_seed_nodes_and_bad_ones_say_what_to_fix() -> None:
    assert parse_cluster_url("redis+cluster://a:7000,[::1]:7001,b") == ClusterURL(
        [("a", 7000), ("::1", 7001), ("b", 6379)]
    )
    assert parse_cluster_url("rediss+cluster://u:p%40ss@a:7000/0") == ClusterURL(
        [("a", 7000)], tls=True, username="u", password="p@ss"
    )
    assert isinstance(locate("redis+cluster://a:7000"), ClusterURL)
    assert locate("redis://a:7000/0") is None
    for bad, says in [
        ("redis+cluster://", "host:port"),
        ("redis+cluster://a:x", "is not host:port"),
        ("redis+cluster://a:7000/2", "database 0 only"),
        ("redis+cluster://a:7000?ssl=1", "takes no options"),
    ]:
        with pytest.raises(ConfigError, match=says):
            parse_cluster_url(bad)
    with pytest.raises(ConfigError) as caught:
        parse_cluster_url("redis+cluster://user:secret@a:x")
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("prefix", ["{hub}:", "{}hub:", "hub{:"])
def test_a_key_prefix_with_a_brace_is_refused_since_it_would_put_every_key_in_one_slot(
    prefix: str,
) -> None:
    with pytest.raises(ConfigError, match="HUB_KEY_PREFIX=hub:"):
        Backend("redis+cluster://127.0.0.1:1", key_prefix=prefix)
    with pytest.raises(ConfigError, match="must not contain braces"):
        Settings(key_prefix=prefix)


def _slot_of(channel: str) -> int:
    """The hash slot that holds ``channel``'s keys (its partition's tag's)."""
    return redis.cluster.key_slot(PARTITION_TAGS[partition_of(channel)].encode())


def _owner(port: int, slot: int) -> tuple[int, str]:
    """(port, node id) of the master that serves ``slot``, as the node on ``port`` says."""
    for first, last, master, *_ in redis.Redis(port=port).execute_command("CLUSTER SLOTS"):
        if first <= slot <= last:
            return int(master[1]), master[2].decode()
    raise AssertionError(f"nobody serves slot {slot}")


def _replica_of(master_port: int) -> int:
    """The port of the master's replica, as the master itself says (no gossip lag)."""
    replication = redis.Redis(port=master_port).info("replication")
    return int(replication["slave0"]["port"])


def _migrate(cluster: RedisCluster, slot: int) -> tuple[int, int]:
    """Move ``slot`` and its keys to another master, as ``redis-cli --cluster reshard``
    does; return (old port, new port)."""
    ranges = redis.Redis(port=cluster.ports[0]).execute_command("CLUSTER SLOTS")
    masters = {master[2].decode(): int(master[1]) for _, _, master, *_ in ranges}
    src_port, src_id = _owner(cluster.ports[0], slot)
    dst_id = next(node for node in masters if node != src_id)
    src, dst = redis.Redis(port=src_port), redis.Redis(port=masters[dst_id])
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", masters[dst_id], "", 0, 5000, "KEYS", *keys)
    for port in masters.values():
        redis.Redis(port=port).execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    return src_port, masters[dst_id]


async def test_publishers_and_live_streams_follow_a_slot_to_another_master(
    redis_cluster: RedisCluster, start_hub: StartHub
) -> None:
    backends = Backends("cluster", redis_cluster.url)
    backend = backends.backend()
    hub = await start_hub(backends.settings(), backend)
    publisher = Publisher.from_url(redis_cluster.url, backends.settings())
    acknowledged: list[str] = []

    async def publish(data: str) -> None:
        for _ in range(50):  # while the slot moves, a publish may be refused: retry
            try:
                acknowledged.append(await publisher.publish("moving", data))
                return
            except BackendUnavailable:
                await asyncio.sleep(0.05)
        raise AssertionError(f"{data} was never acknowledged")

    try:
        async with SSEStream(hub.url, ["moving"]) as stream:
            for i in range(5):
                await publish(f"before {i}")
            await stream.wait_for(5)
            old, new = await asyncio.to_thread(_migrate, redis_cluster, _slot_of("moving"))
            assert old != new
            for i in range(5):
                await publish(f"after {i}")
            # The live connection was dropped with the slot (sunsubscribe), found the new
            # master, and recovered from the moved history: each event once, in order.
            await stream.wait_for(10, timeout=20)
            await asyncio.sleep(0.2)
            events = [(e.id, e.data) for e in stream.events if not e.event.startswith("hub.")]
            assert events == list(
                zip(
                    acknowledged,
                    [f"{w} {i}" for w in ("before", "after") for i in range(5)],
                    strict=True,
                )
            )
            assert not [e for e in stream.events if e.event.startswith("hub.")]
    finally:
        await publisher.aclose()
        backends.cleanup()


async def test_the_blocking_publisher_and_the_store_meet_across_the_shards(
    redis_cluster: RedisCluster,
) -> None:
    backends = Backends("cluster", redis_cluster.url)
    sync = SyncPublisher.from_url(redis_cluster.url, backends.settings())
    store = Store(backends.backend(), backends.settings())
    assert partition_of("a") != partition_of("b")  # (so "one" is stored once in each)
    try:
        first = await asyncio.to_thread(sync.publish, ["a", "b"], "one")
        second = await store.publisher.publish("b", "two")
        # Batches too: script calls, each in the slot of its channel's partition.
        batch = [{"channel": "a", "data": "three"}, {"channel": "b", "data": "four"}]
        third, fourth = await asyncio.to_thread(sync.publish_many, batch)
        fifth, sixth = await store.publisher.publish_many(
            [{"channel": "a", "data": "five"}, {"channel": "b", "data": "six"}]
        )
        both = [(e.id_text.decode(), e.data) async for e in store.history(["a", "b"], ZERO)]
        only_b = [e.data async for e in store.history(["b"], ZERO)]
    finally:
        sync.close()
        await store.aclose()
        backends.cleanup()
    # A reader of both channels gets "one" once, from its first part; channels of
    # different shards are in key order (each channel in its own publishing order).
    published = [(first, b"one"), (second, b"two"), (third, b"three"), (fourth, b"four")]
    published += [(fifth, b"five"), (sixth, b"six")]
    assert sorted(both) == sorted(published)
    assert [d for _, d in both if d in (b"one", b"three", b"five")] == [b"one", b"three", b"five"]
    assert [d for _, d in both if d in (b"two", b"four", b"six")] == [b"two", b"four", b"six"]
    assert only_b == [b"one", b"two", b"four", b"six"]


def test_hub_publish_takes_a_cluster_url_and_says_when_the_prefix_has_a_brace(
    redis_cluster: RedisCluster,
) -> None:
    backends = Backends("cluster", redis_cluster.url)
    command = [sys.executable, "-m", "hub", "publish", "--redis-url", redis_cluster.url]
    environ = {**os.environ, "HUB_KEY_PREFIX": backends.prefix}
    try:
        done = subprocess.run(
            [*command, "news", "hello"], env=environ, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        event_id = done.stdout.strip()
        stream = Keys(backends.prefix).stream("news")
        owner = _owner(redis_cluster.ports[0], redis.cluster.key_slot(stream.encode()))[0]
        [(raw_id, _)] = redis.Redis(port=owner).xrange(stream)
        assert raw_id.decode() == event_id.partition(".")[0]
        environ["HUB_KEY_PREFIX"] = "{hub}:"
        refused = subprocess.run(
            [*command, "news", "hello"], env=environ, capture_output=True, text=True, timeout=30
        )
        assert refused.returncode != 0
        assert "must not contain braces" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        backends.cleanup()


def _events(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.id or "", e.data) for e in events if not e.event.startswith("hub.")]


async def _publish_until_acknowledged(publisher: Publisher, channel: str, data: str) -> str:
    for _ in range(300):
        try:
            return await publisher.publish(channel, data)
        except BackendUnavailable:
            await asyncio.sleep(0.05)
    raise AssertionError("the new master never took the publish")


async def test_a_failover_is_followed_and_what_the_old_master_lost_gets_hub_reset(
    redis_cluster: RedisCluster, start_hub: StartHub
) -> None:
    cluster = redis_cluster
    backends = Backends("cluster", cluster.url)
    hub = await start_hub(backends.settings(), backends.backend())
    publisher = Publisher.from_url(cluster.url, backends.settings())
    slot = _slot_of("lo")
    old_port, _ = _owner(cluster.ports[0], slot)
    replica_port = _replica_of(old_port)
    survivor = next(p for p in cluster.ports if p not in (old_port, replica_port))
    try:
        async with SSEStream(hub.url, ["lo"]) as watcher:
            kept_id = await publisher.publish("lo", "replicated")
            master = redis.Redis(port=old_port)
            assert master.wait(1, 2000) == 1  # the replica has it
            # Cut the replica off before the next write: that write exists on the
            # master alone, which is then killed; the replica takes over without it.
            cluster.processes[replica_port].send_signal(signal.SIGSTOP)
            master.client_kill_filter(_type="replica")
            lost_id = await publisher.publish("lo", "acknowledged, then lost")
            await watcher.wait_for(2)
            cluster.processes[old_port].send_signal(signal.SIGKILL)
            cluster.processes[replica_port].send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 30
            while _owner(survivor, slot)[0] != replica_port:
                assert time.monotonic() < deadline, "the replica was not promoted"
                await asyncio.sleep(0.2)
            await wait_ready(hub.url, timeout=20)  # the hub found the new master

            # Resuming from the lost event: the client has everything up to it, and the
            # hub moved the channel's ids past it (the new master's clock may be behind).
            # From the event before it: the lost one is owed and gone, so hub.reset.
            async with (
                SSEStream(hub.url, ["lo"], last_event_id=lost_id) as resumed,
                SSEStream(hub.url, ["lo"], last_event_id=kept_id) as unaware,
            ):
                reset = (await unaware.wait_for(1, timeout=15))[0]
                assert reset.event == "hub.reset"
                assert json.loads(reset.data)["reason"] == "history_lost"
                after_id = await _publish_until_acknowledged(publisher, "lo", "after")
                await unaware.wait_for(2, timeout=15)
                await resumed.wait_for(1, timeout=15)
                await watcher.wait_for(3, timeout=15)
                stayed_open = not watcher.ended.is_set()
    finally:
        await publisher.aclose()
        cluster.processes[replica_port].send_signal(signal.SIGCONT)  # if still stopped
        # The killed master comes back as a replica: the session's cluster is whole again.
        await asyncio.to_thread(cluster.restart, old_port)
        backends.cleanup()
    assert parse_id(after_id) > parse_id(lost_id)
    assert _events(unaware.events) == [(after_id, "after")]
    assert resumed.events == [e for e in resumed.events if not e.event.startswith("hub.")]
    assert _events(resumed.events) == [(after_id, "after")]
    # The stream open all along got the lost event live, then the new master's.
    assert _events(watcher.events) == [
        (kept_id, "replicated"),
        (lost_id, "acknowledged, then lost"),
        (after_id, "after"),
    ]
    assert stayed_open, "the open stream had to reconnect"


@pytest.mark.parametrize("blocking", [False, True], ids=["asyncio", "blocking"])
async def test_an_event_over_two_partitions_keeps_both_channels_order_for_a_reader_of_both(
    redis_cluster: RedisCluster, blocking: bool
) -> None:
    backends = Backends("cluster", redis_cluster.url)
    store = Store(backends.backend(), backends.settings())
    sync = SyncPublisher.from_url(redis_cluster.url, backends.settings())
    keys = Keys(backends.prefix)
    assert partition_of("a") != partition_of("b")
    try:
        # "a" already holds an id well into the current millisecond's sequence (a busy
        # channel), so the event's part in "a" gets a greater id than its part in "b".
        # Seconds ahead of the clock: the publishes below must come before it catches up,
        # on a loaded machine too (300 ms was not always enough).
        history_a = keys.stream("a")
        shard_a = redis.Redis(port=_owner(redis_cluster.ports[0], _slot_of("a"))[0])
        seconds, micros = shard_a.time()
        ahead = seconds * 1000 + micros // 1000 + 5000
        shard_a.xadd(history_a, {"e": "message", "d": "busy"}, id=f"{ahead}-1000")

        async def publish(channels: list[str], data: str) -> str:
            if blocking:
                return await asyncio.to_thread(sync.publish, channels, data)
            return await store.publisher.publish(channels, data)

        both = await publish(["a", "b"], "both")
        after_b = await publish(["b"], "after on b")
        after_a = await publish(["a"], "after on a")
        read = [(e.id_text.decode(), e.data) async for e in store.history(["a", "b"], ZERO)]
        only_b = [e.data async for e in store.history(["b"], ZERO)]
    finally:
        sync.close()
        await store.aclose()
        backends.cleanup()
    # The reader of both takes the event from its part in "a" (its first channel):
    # "after on b" must come after it all the same, as it does on "b" alone.
    assert both.startswith(f"{ahead}-1001.")
    data = [d for _, d in read]
    assert sorted(data) == sorted([b"busy", b"both", b"after on b", b"after on a"])
    assert data.index(b"busy") < data.index(b"both") < data.index(b"after on a")
    assert data.index(b"both") < data.index(b"after on b")
    assert dict(read) == {
        read[0][0]: b"busy",
        both: b"both",
        after_b: b"after on b",
        after_a: b"after on a",
    }
    assert only_b == [b"both", b"after on b"]
