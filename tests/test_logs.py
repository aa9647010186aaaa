"""Structured logs: ``HUB_LOG_FORMAT=json`` gives one JSON object per line, and one line
per closed stream with its duration, the events it was sent and why it ended."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import httpx
import pytest

from support.processes import HubProcess, HubProcesses
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

JSON_INFO = {"HUB_LOG_FORMAT": "json", "HUB_LOG_LEVEL": "info"}


async def log_lines(hub: HubProcess) -> list[dict[str, Any]]:
    """Every line of the hub's stderr, each of which must be a JSON object."""
    lines = [json.loads(line) for line in (await hub.stderr()).splitlines() if line.strip()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


async def closed_streams(hub: HubProcess, count: int) -> list[dict[str, Any]]:
    for _ in range(100):
        closed = [line for line in await log_lines(hub) if line.get("event") == "stream_closed"]
        if len(closed) >= count:
            return closed
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {count} stream_closed lines in {await hub.stderr()}")


async def test_json_logs_say_once_per_stream_how_long_it_lasted_what_it_got_and_why(
    hubs: HubProcesses,
) -> None:
    hub = await hubs.start(env=JSON_INFO)
    async with SSEStream(hub.url, ["a", "b"]) as stream, httpx.AsyncClient() as client:
        for n in range(2):
            response = await client.post(f"{hub.url}/publish", json={"channel": "a", "data": n})
            assert response.status_code == 201
        await stream.wait_for(2)
        await asyncio.sleep(0.2)
    [closed] = await closed_streams(hub, 1)
    assert closed["reason"] == "client"
    assert closed["events"] == 2
    assert closed["channels"] == 2
    assert 0.2 <= closed["duration_s"] < 10
    assert closed["logger"] == "hub.connections"
    assert closed["level"] == "info"
    assert closed["pid"] == hub.pid
    assert closed["ts"].endswith("Z")
    # uvicorn's own lines are JSON too.
    assert any(line["logger"].startswith("uvicorn") for line in await log_lines(hub))


async def test_streams_ended_by_shutdown_are_logged_with_that_reason(
    hubs: HubProcesses,
) -> None:
    hub = await hubs.start(env=JSON_INFO)
    streams = [SSEStream(hub.url, ["bye"]) for _ in range(3)]
    try:
        for stream in streams:
            await stream.__aenter__()
        assert await hub.signal(signal.SIGTERM) == 0
    finally:
        for stream in streams:
            await stream.close()
    closed = await closed_streams(hub, 3)
    assert [line["reason"] for line in closed] == ["shutdown"] * 3
    assert all(line["events"] == 0 for line in closed)
