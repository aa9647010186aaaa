"""Supervised background tasks stop when told, even when a cancellation is swallowed."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from hub.supervise import Supervised

pytestmark = pytest.mark.anyio


async def test_exit_stops_a_target_that_swallows_the_first_cancellation() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                # What asyncio.wait_for does before Python 3.12 when its result and the
                # cancellation land together.
                swallowed += 1
                if swallowed > 1:
                    raise

    with anyio.fail_after(5):
        async with Supervised("stubborn", stubborn):
            await asyncio.sleep(0.05)
    assert swallowed == 2


async def test_a_failing_target_is_restarted() -> None:
    runs = 0
    restarted = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs >= 3:
            restarted.set()
            await asyncio.sleep(3600)
        raise RuntimeError("boom")

    with anyio.fail_after(5):
        async with Supervised("flaky", flaky, min_backoff=0.01) as supervised:
            await restarted.wait()
            assert supervised.restarts == 2
