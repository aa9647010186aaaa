"""Streams that open together share clock reads, and none gets a clock read before it
asked (the id a cursor-less stream starts from must postdate its confirmation)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hub.history
from hub.errors import BackendUnavailable
from hub.history import Clock, ClockReads
from hub.keys import Keys

pytestmark = pytest.mark.anyio


class _Reads:
    """Stands in for :func:`hub.history.read_clock`: each read waits until released."""

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
    monkeypatch.setattr(hub.history, "read_clock", fake)
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
    monkeypatch.setattr(hub.history, "read_clock", fake)
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
    monkeypatch.setattr(hub.history, "read_clock", fake)
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
