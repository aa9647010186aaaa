"""The store's face: what the rest of the hub sees of Redis, working and failing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from hub import BackendUnavailable, Conflict, Settings
from hub.store import Backend, Extra, Store, parse_id
from support.hubs import Backends
from support.redis_server import RedisServer

pytestmark = pytest.mark.anyio
#: Also on a real Redis Cluster (tests/conftest.py).
RUNS_ON_CLUSTER = True


async def test_the_store_reads_back_what_its_publisher_wrote(backends: Backends) -> None:
    store = Store(backends.backend(), backends.settings())
    try:
        first = await store.publisher.publish("news", "one")
        second = await store.publisher.publish("news", "two")
        clock = await store.read_clock()
        assert clock.head == tuple(int(p) for p in second.split("-"))
        entries = [e async for e in store.history(["news"], (0, 0), strict=False)]
        assert [(e.raw_id.decode(), e.data) for e in entries] == [(first, b"one"), (second, b"two")]
        newest, now_ms = await store.newest([store.keys.stream("news"), store.keys.stream("none")])
        assert newest == [clock.head, None]
        assert now_ms >= clock.head[0]
        log = [u async for u in store.read_log((0, 0))]
        assert [(u.raw_id.decode(), u.topics, u.data) for u in log] == [
            (first, ["news"], b"one"),
            (second, ["news"], b"two"),
        ]
        assert await store.log_oldest() == log[0].id
        newest_update = await store.log_newest()
        assert newest_update is not None
        assert newest_update.mercure_id.decode() == second
        assert await store.chosen_id("never-chosen") is None
    finally:
        await store.aclose()


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
        "reading the publish clock": store.read_clock,
        "recording lost events": lambda: store.record_loss((1, 0), (2, 0)),
        "reading history": lambda: drain(store.history(["news"], (1, 0))),
        "checking positions": lambda: store.newest([store.keys.stream("news")]),
        "reading the log": lambda: drain(store.read_log((0, 0))),
        "looking up an event id": lambda: store.chosen_id("x"),
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


async def test_a_chosen_id_is_forgotten_once_its_event_left_the_log(backends: Backends) -> None:
    store = Store(backends.backend(), backends.settings(log_size=3))
    publisher = store.publisher
    try:
        await publisher.publish("news", "plain")  # no chosen ids yet: nothing to forget
        chosen = await publisher.publish("news", "one", extra=Extra(mercure_id="urn:one"))
        assert await store.chosen_id("urn:one") == parse_id(chosen)
        with pytest.raises(Conflict):
            await publisher.publish("news", "again", extra=Extra(mercure_id="urn:one"))
        for i in range(3):  # pushes "one" out of the 3-entry log
            await publisher.publish("news", f"later {i}")
        assert await store.chosen_id("urn:one") is None
        reused = await publisher.publish("news", "two", extra=Extra(mercure_id="urn:one"))
        assert await store.chosen_id("urn:one") == parse_id(reused)
    finally:
        await store.aclose()
