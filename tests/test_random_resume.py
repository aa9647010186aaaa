"""Clients dropping and resuming at random, on two nodes, while publishers write away."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from hub import Publisher
from hub.store.ids import Key, channel_hash, event_key, format_key, parse_id
from hub.store.keys import Keys, partition_of
from support.hubs import Backends, StartHub
from support.sse import SSEStream

pytestmark = pytest.mark.anyio
#: Also on a real Redis Cluster (tests/conftest.py).
RUNS_ON_CLUSTER = True

CHANNELS = ["r0", "r1", "r2"]


async def test_random_drops_and_resumes_receive_exactly_the_published_sequence(
    backends: Backends, start_hub: StartHub
) -> None:
    seed = int(os.environ.get("HUB_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    backend = backends.backend()
    hubs = [await start_hub(backends.settings(), backend) for _ in range(2)]
    publishers = [Publisher(backend.command_client(), backends.settings()) for _ in range(3)]
    published: list[tuple[str, list[str], str]] = []
    publishing_done = asyncio.Event()

    async def produce(publisher: Publisher, name: str) -> None:
        for i in range(150):
            targets = rng.sample(CHANNELS, rng.choice([1, 1, 2]))
            data = f"{name}-{i}"
            event_id = await publisher.publish(targets, data)
            published.append((event_id, targets, data))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.uniform(0, 0.004))

    async def consume(channels: list[str], first: SSEStream) -> list[str]:
        received: list[str] = []
        stream = first
        while True:
            if publishing_done.is_set():
                break
            await asyncio.sleep(rng.uniform(0.02, 0.15))
            received += [e.id for e in stream.events if e.id is not None]
            cursor = stream.last_event_id
            await stream.close()
            stream = SSEStream(rng.choice(hubs).url, channels, last_event_id=cursor)
            await stream.__aenter__()
        expected = sum(1 for _, targets, _ in published if set(targets) & set(channels))
        try:
            await stream.wait_for(expected - len(received), timeout=20)
            await asyncio.sleep(0.1)  # anything extra (a duplicate) would show up now
            received += [e.id for e in stream.events if e.id is not None]
            assert not [e for e in stream.events if e.event.startswith("hub.")]
        finally:
            await stream.close()
        return received

    subscriptions = [rng.sample(CHANNELS, rng.randint(1, 3)) for _ in range(4)]
    firsts = [SSEStream(rng.choice(hubs).url, channels) for channels in subscriptions]
    for stream in firsts:
        await stream.__aenter__()
    consumers = [
        asyncio.create_task(consume(channels, stream))
        for channels, stream in zip(subscriptions, firsts, strict=True)
    ]
    try:
        await asyncio.gather(*(produce(p, f"p{i}") for i, p in enumerate(publishers)))
        publishing_done.set()
        results = await asyncio.gather(*consumers)
    finally:
        for publisher in publishers:
            await publisher.aclose()

    parts = {}
    if backends.kind == "cluster":  # only a cluster splits events over partitions
        reader = backend.command_client()
        try:
            parts = await _part_ids(reader, backends.prefix)
        finally:
            await reader.aclose()
    for channels, received in zip(subscriptions, results, strict=True):
        # What each published event looks like to a stream on ``channels``: its id, or
        # on a cluster for an event split over partitions, the id of the part the stream
        # takes (that of the first of its channels the event names).
        owed = sorted(
            (_seen_as(event_id, targets, data, channels, parts), data, targets)
            for event_id, targets, data in published
            if set(targets) & set(channels)
        )
        assert received == [format_key(key) for key, _, _ in owed], f"seed={seed} {channels=}"
        for channel in channels:
            # Each publisher's events on each channel in the order it published them.
            got = [_numbered(data) for _, data, targets in owed if channel in targets]
            for name in {name for name, _ in got}:
                numbers = [n for who, n in got if who == name]
                assert numbers == sorted(numbers), f"seed={seed} {channel=} {name=}"


def _numbered(data: str) -> tuple[str, int]:
    name, _, n = data.partition("-")
    return name, int(n)


async def _part_ids(client: Any, prefix: str) -> dict[tuple[str, str], bytes]:
    """The entry id of each event in each channel's history, by (channel, data)."""
    keys = Keys(prefix)
    ids: dict[tuple[str, str], bytes] = {}
    for channel in CHANNELS:
        for raw_id, fields in await client.xrange(keys.stream(channel)):
            ids[(channel, fields[b"d"].decode())] = raw_id
    return ids


def _seen_as(
    event_id: str,
    targets: list[str],
    data: str,
    channels: list[str],
    parts: dict[tuple[str, str], bytes],
) -> Key:
    if len({partition_of(t) for t in targets}) == 1 or not parts:
        return parse_id(event_id)
    first = next(t for t in targets if t in channels)
    anchor = next(t for t in targets if partition_of(t) == partition_of(first))
    return event_key(parts[(first, data)], channel_hash(anchor))
