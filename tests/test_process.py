"""Whole hub processes: SIGTERM drains cleanly, SIGKILL loses nobody's events; the
process-wide settings (garbage collector, listen queue) a served hub runs with."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import signal
import socket
from pathlib import Path

import httpx
import pytest

from hub import Publisher
from hub.config import Settings
from hub.heap import YOUNG, settle_heap
from hub.server import BACKLOG, build_server, listen
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
    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert not any(o is made for o in gc.get_objects())  # the collected generations
        assert gc.get_threshold() == (YOUNG, threshold[1], threshold[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


#: More than uvicorn's own default queue (2048): a restarted node's clients reconnecting.
BURST = 3000


def test_a_node_that_has_not_accepted_yet_holds_a_reconnect_burst_in_its_queue() -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if somaxconn <= BURST or hard < BURST + 100:
        pytest.skip(f"needs net.core.somaxconn > {BURST} and {BURST + 100} open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, BURST + 100), hard))
    assert build_server(Settings()).config.backlog == BACKLOG  # one process: uvicorn binds
    (server,) = listen("127.0.0.1", 0)  # workers: the hub binds
    clients: list[socket.socket] = []
    try:
        port = server.getsockname()[1]
        for _ in range(BURST):
            client = socket.socket()
            clients.append(client)
            # A SYN the full queue dropped would be retried only after a second.
            client.settimeout(0.5)
            client.connect(("127.0.0.1", port))
        assert len(clients) == BURST
    finally:
        for client in clients:
            client.close()
        server.close()
        with contextlib.suppress(ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
