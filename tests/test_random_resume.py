"""Clients dropping and resuming at random, on two nodes, while publishers write away."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from hub import Publisher
from hub.store.ids import parse_id
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
    published: list[tuple[str, frozenset[str]]] = []
    publishing_done = asyncio.Event()

    async def produce(publisher: Publisher, name: str) -> None:
        for i in range(150):
            targets = rng.sample(CHANNELS, rng.choice([1, 1, 2]))
            event_id = await publisher.publish(targets, f"{name}-{i}")
            published.append((event_id, frozenset(targets)))
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
        expected = sum(1 for _, targets in published if targets & set(channels))
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

    in_order = [event_id for event_id, _ in sorted(published, key=lambda p: parse_id(p[0]))]
    targets_of = dict(published)
    for channels, received in zip(subscriptions, results, strict=True):
        expected = [i for i in in_order if targets_of[i] & set(channels)]
        assert received == expected, f"seed={seed} channels={channels}"
        for channel in channels:
            per_channel = [i for i in received if channel in targets_of[i]]
            assert per_channel == [i for i in in_order if channel in targets_of[i]], (
                f"seed={seed} channel={channel}"
            )
