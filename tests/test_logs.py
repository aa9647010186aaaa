"""Structured logs: ``HUB_LOG_FORMAT=json`` gives one JSON object per line, and one line
per closed stream with its duration, the events it was sent and why it ended."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.errors import ConfigError
from hub.logs import JsonFormatter, TextFormatter, configure_logging, log_fields
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


# -- the one format of the hub and the workers --------------------------------------------


def record(
    msg: str, *, fields: dict[str, Any] | None = None, failed: bool = False
) -> logging.LogRecord:
    """A record of the ``workers.test`` logger, as ``logger.warning(msg, extra=...)`` makes."""
    exc_info = None
    if failed:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.getLogger("workers.test").makeRecord(
        "workers.test", logging.WARNING, __file__, 1, msg, (), exc_info,
        extra=None if fields is None else log_fields(**fields),
    )  # fmt: skip


def test_text_lines_carry_fields_as_key_value_after_the_message_and_the_traceback_below() -> None:
    line = TextFormatter().format(
        record(
            "publish failed",
            fields={"attempt": 2, "error": 'no "redis" here', "e": ""},
            failed=True,
        )
    )
    first, *rest = line.splitlines()
    assert first.endswith(
        ' WARNING workers.test: publish failed attempt=2 error="no \\"redis\\" here" e=""'
    )
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: boom"
    # Several processes on one stream: each line says which one wrote it.
    hello = record("hello")
    assert (
        TextFormatter(with_pid=True)
        .format(hello)
        .endswith(f" WARNING workers.test[{hello.process}]: hello")
    )


def test_json_lines_have_the_hub_keys_then_the_fields_which_cannot_take_them_over() -> None:
    fields = {"request": "1-0", "msg": "not the message", "pid": 0, "exc": "no"}
    text = JsonFormatter().format(record("answering failed", fields=fields, failed=True))
    line = json.loads(text)
    assert list(line) == ["ts", "level", "logger", "pid", "msg", "request", "exc"]
    assert line["msg"] == "answering failed"
    assert line["level"] == "warning"
    assert line["logger"] == "workers.test"
    assert line["pid"] > 0
    assert line["ts"].endswith("Z")
    assert line["exc"].endswith("ValueError: boom")


def test_an_unknown_log_level_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="log level 'loud' is not one of debug, info"):
        configure_logging("loud")


def test_the_logging_setup_imports_nothing_of_the_web_stack() -> None:
    # Workers import hub.logs, and run no web server.
    source = Path(__file__).resolve().parent.parent / "hub" / "logs.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or "").partition(".")[0])
    assert not imported & {"starlette", "sse_starlette", "uvicorn", "jwt", "prometheus_client"}
    assert {name for name in imported if name.startswith(".")} <= {".errors"}
