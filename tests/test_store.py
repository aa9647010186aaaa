"""The store's face: what the rest of the hub sees of Redis, working and failing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hub import BackendUnavailable, Conflict, Settings
from hub.store import ZERO, Backend, Extra, Store, parse_id, partition_of
from support.hubs import Backends
from support.redis_server import RedisServer

pytestmark = pytest.mark.anyio
#: Also on a real Redis Cluster (tests/conftest.py).
RUNS_ON_CLUSTER = True


async def test_the_store_reads_back_what_its_publisher_wrote(backends: Backends) -> None:
    store = Store(backends.backend(), backends.settings())
    try:
        first = await store.publisher.publish("news", "one")
        second = await store.publisher.publish("news", "two", extra=Extra(mercure_id="urn:2"))
        entries = [e async for e in store.history(["news"], ZERO, strict=False)]
        assert [(e.id_text.decode(), e.data) for e in entries] == [
            (first, b"one"),
            (second, b"two"),
        ]
        assert [e.mercure_id for e in entries] == [first.encode(), b"urn:2"]
        assert await store.newest(["news", "none"]) == [parse_id(second), None]
        assert await store.now_ms() >= parse_id(second)[0]
        # The index knows the channel as one with events from the first one's time on.
        assert "news" in await store.active_channels([partition_of("news")], parse_id(first)[0])
        assert await store.chosen_id("urn:2", [partition_of("news")]) == [parse_id(second)]
        assert await store.chosen_id("never-chosen", [partition_of("news")]) == []
        assert await store.holes(["news"], ZERO) == []
    finally:
        await store.aclose()


async def test_a_long_mixed_batch_keeps_every_channels_order_and_answers_each_id(
    backends: Backends,
) -> None:
    # More events than one script call carries, on channels of several partitions, with
    # an event of two channels, a private one and a typed one among them: each channel's
    # history holds its events in the batch's order, under the ids the batch answered.
    store = Store(backends.backend(), backends.settings())
    channels = ["x", "y", "z"]
    assert len({partition_of(c) for c in channels}) == 3
    batch: list[dict[str, Any]] = [
        {"channel": channels[i % 3] if i % 7 else "x", "data": f"e{i}"} for i in range(250)
    ]
    batch[120] = {"channels": ["y", "x"], "data": "e120"}
    batch[121] = {"channel": "z", "data": "e121", "private": True}
    batch[122] = {"channel": "z", "data": "e122", "event": "typed"}
    try:
        ids = await store.publisher.publish_many(batch)
        histories: dict[str, list[tuple[str, str]]] = {}
        for c in channels:
            histories[c] = [
                (e.id_text.decode(), e.data.decode()) async for e in store.history([c], ZERO)
            ]
    finally:
        await store.aclose()
    for channel in channels:
        wanted = [
            (ids[i], item["data"])
            for i, item in enumerate(batch)
            if channel in item.get("channels", [item.get("channel")])
        ]
        if channel == "x" and backends.kind == "cluster":
            # On a cluster the event of two channels is stored in x's partition too,
            # under an id of x's own there (its first part, y's, gave the batch's id).
            [part_id] = [i for i, d in histories["x"] if d == "e120"]
            wanted = [(part_id if d == "e120" else i, d) for i, d in wanted]
        assert histories[channel] == wanted


async def test_every_read_raises_backend_unavailable_when_redis_is_gone(
    redis_server: RedisServer,
) -> None:
    store = Store(Backend(redis_server.url), Settings(key_prefix="s:"))
    await store.ping()
    redis_server.stop()

    async def drain(iterable: Any) -> None:
        async for _ in iterable:
            pass

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "pinging Redis": store.ping,
        "reading Redis' clock": store.now_ms,
        "recording lost events": lambda: store.record_loss("news", (1, 0, 1), (2, 0, 1)),
        "reading history": lambda: drain(store.history(["news"], (1, 0, 1))),
        "checking positions": lambda: store.newest(["news"]),
        "reading the partitions' marks": lambda: store.since([0]),
        "reading the channel index": lambda: store.active_channels([0], 0),
        "looking up an event id": lambda: store.chosen_id("x", [0]),
    }
    try:
        for doing, call in calls.items():
            # Never redis-py's own exceptions: the hub's one error, saying what failed.
            with pytest.raises(BackendUnavailable, match=f"while {doing}"):
                await call()
        with pytest.raises(BackendUnavailable, match="nothing was published"):
            await store.publisher.publish("news", "lost")
    finally:
        await store.aclose()


async def test_a_chosen_id_is_forgotten_once_its_event_left_the_history(
    backends: Backends,
) -> None:
    store = Store(backends.backend(), backends.settings(history_size=3))
    publisher = store.publisher
    mine = [partition_of("news")]
    try:
        plain = await publisher.publish("news", "plain")  # no chosen ids yet: none to forget
        chosen = await publisher.publish("news", "one", extra=Extra(mercure_id="urn:one"))
        assert await store.chosen_id("urn:one", mine) == [parse_id(chosen)]
        with pytest.raises(Conflict):
            await publisher.publish("news", "again", extra=Extra(mercure_id="urn:one"))
        for i in range(3):  # pushes "one" out of the channel's 3-event history
            await publisher.publish("news", f"later {i}")
        assert await store.chosen_id("urn:one", mine) == []
        # Trimmed: "plain" and "one". A resume from "plain" would miss "one"; from "one", nothing.
        assert await store.holes(["news"], parse_id(plain)) == ["news"]
        assert await store.holes(["news"], parse_id(chosen)) == []
        reused = await publisher.publish("news", "two", extra=Extra(mercure_id="urn:one"))
        assert await store.chosen_id("urn:one", mine) == [parse_id(reused)]
    finally:
        await store.aclose()
