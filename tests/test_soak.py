"""Memory soak: thousands of streams opened and closed against one real ``hub serve``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.hubs import Backends
from support.net import free_port
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

CHANNELS = ["soak-a", "soak-b", "soak-c", "soak-d"]
WARM_UP = 500
CYCLES = 3000
CONCURRENCY = 50
#: RSS the churn may add after warm-up; a leak of one stream's state per cycle shows well
#: above it (3000 cycles x ~10 KiB), allocator noise stays well below.
MAX_GROWTH = 20 * 1024 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def churn(port: int, count: int, offset: int) -> None:
    """``count`` cycles, ``CONCURRENCY`` at a time: open a stream, read its opening, close."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def cycle(i: int) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                channel = CHANNELS[i % len(CHANNELS)]
                writer.write(
                    f"GET /events?channel={channel} HTTP/1.1\r\nHost: hub\r\n\r\n".encode()
                )
                await writer.drain()
                head = await reader.readuntil(b": connected\n")
                assert head.startswith(b"HTTP/1.1 200"), head[:200]
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    await asyncio.wait_for(asyncio.gather(*(cycle(offset + i) for i in range(count))), 60)


async def readyz(client: httpx.AsyncClient, url: str) -> dict[str, object]:
    response = await client.get(f"{url}/readyz")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.mark.slow
async def test_stream_churn_does_not_grow_memory(redis_url: str, tmp_path: Path) -> None:
    backends = Backends("redis", redis_url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    log = tmp_path / "hub.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub",
            "serve",
            "--port",
            str(port),
            "--redis-url",
            redis_url,
            "--key-prefix",
            backends.prefix,
            "--log-level",
            "warning",
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            deadline = time.monotonic() + 15
            while True:
                assert process.returncode is None, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, "hub serve did not become ready"
                await asyncio.sleep(0.1)

            async with SSEStream(url, CHANNELS) as watcher:
                await churn(port, WARM_UP, 0)
                before = rss_bytes(process.pid)
                published = 0
                for start in range(0, CYCLES, 500):
                    await churn(port, 500, WARM_UP + start)
                    for channel in CHANNELS:
                        response = await client.post(
                            f"{url}/publish",
                            json={"channel": channel, "data": f"{start}:{'x' * 200}"},
                        )
                        assert response.status_code == 201, response.text
                        published += 1
                after = rss_bytes(process.pid)
                assert len(await watcher.wait_for(published)) == published

            for _ in range(100):
                if (await readyz(client, url))["connections"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert (await readyz(client, url))["connections"] == 0

        growth = after - before
        print(
            f"\nhub RSS after warm-up {before / 2**20:.1f} MiB, after {CYCLES} more cycles "
            f"{after / 2**20:.1f} MiB (growth {growth / 2**20:+.1f} MiB)"
        )
        assert growth < MAX_GROWTH, f"RSS grew {growth / 2**20:.1f} MiB over {CYCLES} cycles"

        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
        output = log.read_text()
        assert process.returncode == 0, output
        assert "Traceback" not in output, output
        assert "ERROR" not in output, output
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), 10)
        backends.cleanup()
