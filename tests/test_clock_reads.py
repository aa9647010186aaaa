"""Where a cursor-less stream starts: from a clock read sent after its channels were
confirmed (shared by the streams that open together, or reused for a moment), and
never so that an event published after its opening comment is missed."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import hub.store.history
from hub import Backend, Settings
from hub.delivery.broker import CLOCK_REUSE, Broker
from hub.delivery.channel import Channel
from hub.errors import BackendUnavailable
from hub.store.history import Clock, ClockReads
from hub.store.ids import parse_id
from hub.store.keys import Keys
from support.hubs import Backends, StartHub

pytestmark = pytest.mark.anyio


class _Reads:
    """Stands in for :func:`hub.store.history.read_clock`: each read waits until released."""

    def __init__(self) -> None:
        self.started: list[asyncio.Future[Clock]] = []

    async def __call__(self, _redis: Any, _keys: Keys) -> Clock:
        done: asyncio.Future[Clock] = asyncio.get_running_loop().create_future()
        self.started.append(done)
        return await done


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def _clock(ms: int) -> Clock:
    return Clock((ms, 0), None, ms)


async def test_clock_reads_are_shared_but_never_older_than_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _Reads()
    monkeypatch.setattr(hub.store.history, "read_clock", fake)
    reads = ClockReads(None, Keys("t:"))  # type: ignore[arg-type]
    first = [asyncio.create_task(reads.read()) for _ in range(3)]
    await _settle()
    assert len(fake.started) == 1
    # Arrives while the first read is in flight: that read may predate it.
    late = asyncio.create_task(reads.read())
    await _settle()
    assert len(fake.started) == 1
    fake.started[0].set_result(_clock(1))
    await _settle()
    assert [t.result().head for t in first] == [(1, 0)] * 3
    assert not late.done()
    assert len(fake.started) == 2
    fake.started[1].set_result(_clock(2))
    assert (await late).head == (2, 0)
    await _settle()
    assert len(fake.started) == 2


async def test_a_cancelled_clock_read_leaves_the_others_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _Reads()
    monkeypatch.setattr(hub.store.history, "read_clock", fake)
    reads = ClockReads(None, Keys("t:"))  # type: ignore[arg-type]
    gone, stays = (asyncio.create_task(reads.read()) for _ in range(2))
    await _settle()
    gone.cancel()
    await _settle()
    fake.started[0].set_result(_clock(7))
    assert (await stays).head == (7, 0)
    assert gone.cancelled()


async def test_a_failed_clock_read_fails_its_callers_and_shutdown_ends_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _Reads()
    monkeypatch.setattr(hub.store.history, "read_clock", fake)
    reads = ClockReads(None, Keys("t:"))  # type: ignore[arg-type]
    failing = [asyncio.create_task(reads.read()) for _ in range(2)]
    await _settle()
    fake.started[0].set_exception(BackendUnavailable("down"))
    for task in failing:
        with pytest.raises(BackendUnavailable, match="down"):
            await task
    waiting = asyncio.create_task(reads.read())
    await _settle()
    reads.close()
    with pytest.raises(BackendUnavailable, match="shutting down"):
        await waiting


def _broker() -> tuple[Broker, Channel]:
    broker = Broker(Backend(None), Settings(key_prefix="t:"))
    broker._live._watermark = (5, 0)
    broker._live.live = True
    channel = Channel("c")
    channel.confirmed_at = 10.0
    return broker, channel


async def test_a_cursorless_stream_starts_from_a_recent_read_sent_after_its_confirmation() -> None:
    broker, channel = _broker()
    broker._clock.latest = (10.5, _clock(9))
    assert broker._join_id([channel], now=10.5 + CLOCK_REUSE) == (9, 0)
    # The watermark when this node has seen a newer event than the read.
    broker._live._watermark = (12, 0)
    assert broker._join_id([channel], now=10.6) == (12, 0)


async def test_a_cursorless_stream_reads_the_clock_again_when_the_last_read_cannot_serve() -> None:
    broker, channel = _broker()
    assert broker._join_id([channel], now=10.6) is None  # no read yet
    # Sent before the channel's subscription was confirmed (or in the same tick).
    broker._clock.latest = (10.0, _clock(9))
    assert broker._join_id([channel], now=10.05) is None
    # Too old to say "the newest id".
    broker._clock.latest = (10.5, _clock(9))
    assert broker._join_id([channel], now=10.5 + 2 * CLOCK_REUSE) is None
    # The live session is not up: ids may be about to be checked against a new master.
    broker._live.live = False
    assert broker._join_id([channel], now=10.55) is None


async def test_streams_opening_while_events_are_published_miss_none_after_their_first_id(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    #: (how many posts to "busy" had begun when this one began, its id)
    published: list[tuple[int, str]] = []
    begun = 0
    more = asyncio.Event()
    stop = asyncio.Event()

    async def publish(client: httpx.AsyncClient) -> None:
        nonlocal begun
        while not stop.is_set():
            for channel in ("busy", "elsewhere"):
                body = {"channel": channel, "data": "x"}
                if channel == "busy":
                    begun += 1
                    number = begun
                response = await client.post(f"{hub.url}/publish", json=body)
                if channel == "busy":
                    published.append((number, response.json()["id"]))
                    more.set()

    async with httpx.AsyncClient(timeout=10) as client:
        publisher = asyncio.create_task(publish(client))
        try:
            for _ in range(20):
                async with client.stream("GET", f"{hub.url}/events?channel=busy") as response:
                    ids = []
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            if not ids:
                                opened = begun  # posts after this one began after the opening
                            ids.append(line[4:])
                        if len(ids) == 4:
                            break
                joined, got = parse_id(ids[0]), ids[1:]
                while got[-1] not in [i for _, i in published]:
                    more.clear()
                    await more.wait()
                assert got == [i for _, i in published if parse_id(i) > joined][:3]
                assert all(parse_id(i) > joined for n, i in published if n > opened)
        finally:
            stop.set()
            await publisher
