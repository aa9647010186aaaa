"""Whole hub processes: SIGTERM drains cleanly, SIGKILL loses nobody's events."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from conftest import Backends, free_port, wait_ready
from hub import Publisher
from sse_client import SSEStream
from support import SteadyPublisher

pytestmark = pytest.mark.anyio


class HubProcess:
    """``python -m hub serve`` on a free port, on a real Redis under the test's prefix."""

    def __init__(self, backends: Backends, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._backends = backends
        self._extra = extra
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> HubProcess:
        assert self._backends.url is not None
        env = {**os.environ, "HUB_KEY_PREFIX": self._backends.prefix, "HUB_LOG_LEVEL": "warning"}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub",
            "serve",
            "--port",
            str(self.port),
            "--redis-url",
            self._backends.url,
            *self._extra,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await wait_ready(self.url, timeout=20)
        return self

    async def signal(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), 15)

    async def stderr(self) -> str:
        assert self.process is not None
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode(errors="replace")

    async def cleanup(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class HubProcesses:
    """Starts hub processes sharing one Redis prefix; everything is cleaned up after."""

    def __init__(self, redis_url: str) -> None:
        self.backends = Backends("redis", redis_url)
        self._made: list[HubProcess] = []

    async def start(self, *extra: str) -> HubProcess:
        hub = HubProcess(self.backends, *extra)
        self._made.append(hub)
        return await hub.start()

    async def cleanup(self) -> None:
        for hub in self._made:
            await hub.cleanup()
        self.backends.cleanup()


@pytest.fixture
async def hubs(redis_url: str) -> AsyncIterator[HubProcesses]:
    made = HubProcesses(redis_url)
    try:
        yield made
    finally:
        await made.cleanup()


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
