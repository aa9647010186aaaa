"""The worker kit and the ticker, run as real processes against real Redis and a real hub."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import cast

import pytest
import redis.asyncio

from hub.store.ids import parse_id
from hub.store.keys import Keys
from support.hubs import Backends, StartHub
from support.net import free_port
from support.redis_server import RedisServer
from support.sse import SSEStream
from support.workers import ROOT, WorkerProcess, redis_env, redis_only

pytestmark = pytest.mark.anyio

StartWorker = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
async def start_worker() -> AsyncIterator[StartWorker]:
    """Start ``python -m workers.<name>`` subprocesses; every one is gone after the test."""
    started: list[WorkerProcess] = []

    async def start(
        *args: str, name: str = "ticker", env: dict[str, str] | None = None, cli: bool = False
    ) -> WorkerProcess:
        # The test's own HUB_* variables must not leak in: each test says what it sets.
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        environ.update(env or {})
        module = ["-m", "hub", "worker", name] if cli else ["-m", f"workers.{name}"]
        process = await asyncio.create_subprocess_exec(
            sys.executable, *module, *args,
            cwd=ROOT, env=environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        worker = WorkerProcess(process)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.cleanup()


async def read_ticks(url: str, prefix: str, channel: str) -> list[dict[str, object]]:
    """The ticks kept in a channel's history, straight from Redis."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        raw = await client.xrange(Keys(prefix).stream(channel))
    finally:
        await client.aclose()
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", raw)
    assert all(fields[b"e"] == b"tick" for _, fields in entries)
    return [json.loads(fields[b"d"]) for _, fields in entries]


# -- the ticker, end to end ---------------------------------------------------------------


@redis_only
async def test_ticker_ticks_reach_a_hub_subscriber_in_order(
    backends: Backends, start_hub: StartHub, start_worker: StartWorker
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with SSEStream(hub.url, ["ticks"]) as stream:
        worker = await start_worker(
            "--channel", "ticks", "--count", "3", "--interval", "0.1", env=redis_env(backends)
        )
        events = await stream.wait_for(3, timeout=8)
        assert await worker.wait() == 0, worker.output
        await asyncio.sleep(0.2)  # nothing more comes after the third tick
        assert len(stream.events) == 3

    assert [e.event for e in events] == ["tick"] * 3
    ticks = [json.loads(e.data) for e in events]
    assert [t["seq"] for t in ticks] == [1, 2, 3]
    assert {(t["host"], t["pid"]) for t in ticks} == {(socket.gethostname(), worker.process.pid)}
    times = [datetime.fromisoformat(str(t["time"])) for t in ticks]
    assert all(t.utcoffset() == timedelta(0) for t in times)
    assert times == sorted(times)
    assert times[-1] - times[0] >= timedelta(seconds=0.15)  # paced by --interval, no burst
    assert [e.id for e in events] == sorted((e.id for e in events), key=_id_key)
    assert "worker stopped" in worker.output


def _id_key(event_id: str | None) -> tuple[int, int, int]:
    assert event_id is not None
    return parse_id(event_id)


@redis_only
async def test_hub_worker_command_runs_the_ticker(
    backends: Backends, start_worker: StartWorker
) -> None:
    assert backends.url is not None
    worker = await start_worker(
        "--channel", "via-cli", "--count", "2", "--interval", "0.05", "--log-json",
        env=redis_env(backends), cli=True,
    )  # fmt: skip
    assert await worker.wait() == 0, worker.output
    ticks = await read_ticks(backends.url, backends.prefix, "via-cli")
    assert [t["seq"] for t in ticks] == [1, 2]
    # --log-json: every line is one JSON object.
    records = [json.loads(line) for line in worker.lines]
    assert {r["msg"] for r in records} >= {"worker started", "worker stopped"}
    started = next(r for r in records if r["msg"] == "worker started")
    assert started["channel"] == "via-cli"
    assert started["key_prefix"] == backends.prefix
    # The hub's JSON lines: the same keys, whichever process writes them.
    assert started["logger"] == "workers.ticker"
    assert started["level"] == "info"
    assert started["pid"] == worker.process.pid
    assert started["ts"].endswith("Z")


# -- stopping -----------------------------------------------------------------------------


@redis_only
async def test_sigterm_stops_a_waiting_ticker_promptly_with_exit_0(
    backends: Backends, start_worker: StartWorker
) -> None:
    assert backends.url is not None
    # A long interval: SIGTERM must cut the wait short, not wait for the next tick.
    worker = await start_worker("--interval", "60", "--log-level", "debug", env=redis_env(backends))
    await worker.wait_for_log("tick published")
    code, took = await worker.terminate()
    assert code == 0, worker.output
    assert took < 5
    assert worker.matching("stop requested")
    assert worker.matching("worker stopped steps=1")
    assert "Traceback" not in worker.output
    assert [t["seq"] for t in await read_ticks(backends.url, backends.prefix, "ticker")] == [1]


# -- configuration errors -----------------------------------------------------------------


async def test_without_redis_url_exits_2_saying_what_to_set(start_worker: StartWorker) -> None:
    worker = await start_worker("--count", "1")
    assert await worker.wait() == 2
    assert "HUB_REDIS_URL" in worker.output
    assert "--redis-url" in worker.output
    assert "Traceback" not in worker.output


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--interval", "0"], "--interval"),
        (["--count", "0"], "--count"),
        (["--channel", "two words"], "whitespace"),
        (["--redis-url", "http://example.com/"], "--redis-url"),
        (["--log-level", "loud"], "log level"),
    ],
)
async def test_bad_options_exit_2_with_a_message(
    start_worker: StartWorker, args: list[str], complaint: str
) -> None:
    worker = await start_worker(*args, env={"HUB_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert await worker.wait() == 2, worker.output
    assert complaint in worker.output
    assert "Traceback" not in worker.output


# -- Redis outages ------------------------------------------------------------------------


async def test_unreachable_redis_is_logged_and_retried_until_sigterm(
    start_worker: StartWorker,
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    worker = await start_worker(
        "--redis-url", closed, "--interval", "0.05", "--retry-min", "0.05", "--retry-max", "0.2"
    )
    failures = await worker.wait_for_log("publish failed; will retry", count=4)
    assert worker.process.returncode is None  # still running, still trying
    assert "attempt=4" in failures[3]
    assert "Connection refused" in failures[0] or "connect" in failures[0].lower()
    code, took = await worker.terminate()
    assert code == 0, worker.output
    assert took < 5
    assert worker.matching("step abandoned")
    assert "Traceback" not in worker.output


async def test_ticker_carries_on_when_redis_comes_back(
    redis_server: RedisServer, start_worker: StartWorker
) -> None:
    prefix = "test:worker-outage:"
    worker = await start_worker(
        "--interval", "0.05", "--retry-min", "0.05", "--retry-max", "0.2",
        "--log-level", "debug",
        env={"HUB_REDIS_URL": redis_server.url, "HUB_KEY_PREFIX": prefix},
    )  # fmt: skip
    await worker.wait_for_log("tick published", count=2)
    redis_server.stop()
    await worker.wait_for_log("publish failed; will retry", count=2)
    redis_server.start()  # same port; it kept nothing on disk, so history starts afresh
    await worker.wait_for_log("publish succeeded again")
    published = len(worker.matching("tick published"))
    await worker.wait_for_log("tick published", count=published + 3)
    code, _ = await worker.terminate()
    assert code == 0, worker.output

    seqs = [int(str(t["seq"])) for t in await read_ticks(redis_server.url, prefix, "ticker")]
    # The same process carried on: its numbering did not restart, and the ticks after
    # the outage follow each other without gaps.
    assert seqs[0] > 2
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
