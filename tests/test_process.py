"""Whole hub processes: SIGTERM drains cleanly, SIGKILL loses nobody's events."""

from __future__ import annotations

import asyncio
import gc
import signal

import httpx
import pytest

from hub import Publisher
from hub.server import _freeze_startup_objects
from support.processes import HubProcesses, SteadyPublisher
from support.sse import SSEStream

pytestmark = pytest.mark.anyio


async def test_sigterm_ends_streams_with_a_jittered_retry_hint_and_exits_zero(
    hubs: HubProcesses,
) -> None:
    hub = await hubs.start("--heartbeat", "60")
    streams = [SSEStream(hub.url, ["bye"]) for _ in range(5)]
    for stream in streams:
        await stream.__aenter__()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = await hub.signal(signal.SIGTERM)
        for stream in streams:
            await stream.wait_ended(timeout=5)
        elapsed = loop.time() - started
        log = await hub.stderr()
    finally:
        for stream in streams:
            await stream.close()
    assert code == 0, log
    assert elapsed < 10
    hints = [stream.retry for stream in streams]
    # The opening hint is 3000 ms; the farewell hint is spread over 3000-6000 ms.
    assert all(h is not None and 3000 <= h <= 6000 for h in hints), hints
    assert len(set(hints)) > 1, f"no jitter: {hints}"
    assert "Traceback" not in log


async def test_sigkill_of_a_node_its_clients_resume_on_another_and_miss_nothing(
    hubs: HubProcesses,
) -> None:
    doomed = await hubs.start()
    survivor = await hubs.start()
    backends = hubs.backends
    publisher = Publisher.from_url(backends.url or "", backends.settings())
    steady = SteadyPublisher(publisher, "k")
    try:
        async with SSEStream(doomed.url, ["k"]) as stream:
            steady.start()
            await stream.wait_for(30)
            await doomed.signal(signal.SIGKILL)
            await stream.wait_ended()
            received = [(e.id, e.data) for e in stream.events]
            cursor = stream.last_event_id
        async with SSEStream(survivor.url, ["k"], last_event_id=cursor) as resumed:
            await asyncio.sleep(0.3)
            await steady.stop()
            await resumed.wait_for(len(steady.acknowledged) - len(received), timeout=20)
            received += [(e.id, e.data) for e in resumed.events]
    finally:
        await steady.stop()
        await publisher.aclose()
    assert received == steady.acknowledged


async def test_new_connections_are_refused_once_draining(
    hubs: HubProcesses,
) -> None:
    hub = await hubs.start()
    async with SSEStream(hub.url, ["d"]) as stream:
        assert hub.process is not None
        hub.process.send_signal(signal.SIGTERM)
        await stream.wait_ended(timeout=5)
    await asyncio.wait_for(hub.process.wait(), 15)
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{hub.url}/healthz")


class _MadeAtStartup:
    pass


def test_a_served_hub_keeps_its_startup_objects_out_of_full_collections() -> None:
    made = _MadeAtStartup()
    try:
        _freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        assert not any(o is made for o in gc.get_objects())  # the collected generations
    finally:
        gc.unfreeze()
