"""The ``hub`` console script, run as a real process against hubs on real Redis.

The hubs run in the test's event loop, so the script is always run with asyncio's
subprocess API: a blocking run would stall the very hub it talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from hub import Event, HubClient
from support.hubs import Backends, StartHub
from support.mercure import KEY, token
from support.net import free_port

pytestmark = pytest.mark.anyio

_SCRIPT = Path(sys.executable).with_name("hub")
HUB = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hub"]


@pytest.fixture
def backends(redis_url: str) -> Iterator[Backends]:
    """Real Redis only: the embedded backend lives inside the test process, where the
    script's ``--redis-url`` cannot reach it."""
    made = Backends("redis", redis_url)
    try:
        yield made
    finally:
        made.cleanup()


def cli_env(prefix: str | None = None) -> dict[str, str]:
    """The test's environment without HUB_* settings, which the script would pick up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    if prefix is not None:
        env["HUB_KEY_PREFIX"] = prefix
    return env


async def run_hub(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``hub ARGS...`` to completion (10 s at most): exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        *HUB,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or cli_env(),
    )
    try:
        with anyio.fail_after(10):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def spawn_hub(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start ``hub ARGS...`` in the background; it is killed and reaped on exit."""
    process = await asyncio.create_subprocess_exec(
        *HUB,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or cli_env(),
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()


async def next_event(client: HubClient, channel: str, after: str) -> Event:
    """The first event on ``channel`` after the id ``after``, as the hub serves it."""
    with anyio.fail_after(10):
        async with contextlib.aclosing(client.subscribe(channel, last_event_id=after)) as stream:
            async for event in stream:
                return event
    raise AssertionError("the stream ended")


async def test_publish_over_http_prints_the_event_id(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with HubClient(hub.url) as client:
        before = await client.publish("news", "before")
        code, out, err = await run_hub(
            "publish", "news", "hello from the shell", "--event", "note", "--url", hub.url
        )
        assert (code, err) == (0, "")
        event = await next_event(client, "news", before)
    assert out == f"{event.id}\n"
    assert (event.event, event.data) == ("note", "hello from the shell")


async def test_publish_with_redis_url_writes_under_the_configured_key_prefix(
    backends: Backends, start_hub: StartHub, redis_url: str
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with HubClient(hub.url) as client:
        before = await client.publish("direct", "before")
        code, out, err = await run_hub(
            "publish", "direct", "straight into redis", "--redis-url", redis_url,
            env=cli_env(prefix=backends.prefix),
        )  # fmt: skip
        assert (code, err) == (0, "")
        event = await next_event(client, "direct", before)
    assert out == f"{event.id}\n"
    assert (event.event, event.data) == ("message", "straight into redis")


async def test_tail_prints_events_after_last_event_id_as_json_lines(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    async with HubClient(hub.url) as client:
        cursor = await client.publish("news", "already seen")
        missed = [
            await client.publish("news", "missed"),
            await client.publish("alerts", {"level": "high"}, event="alert"),
        ]
        await client.publish("elsewhere", "not followed")
        args = ["tail", "news", "alerts", "--url", hub.url, "--last-event-id", cursor]
        async with spawn_hub(*args) as tail:
            assert tail.stdout is not None
            with anyio.fail_after(10):
                lines = [await tail.stdout.readline() for _ in missed]
                live = await client.publish("news", "multi\nline")
                lines.append(await tail.stdout.readline())
            tail.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                await tail.wait()
            assert tail.stderr is not None
            err = await tail.stderr.read()
    assert [json.loads(line) for line in lines] == [
        {"id": missed[0], "event": "message", "data": "missed"},
        {"id": missed[1], "event": "alert", "data": '{"level":"high"}'},
        {"id": live, "event": "message", "data": "multi\nline"},
    ]
    assert tail.returncode == 130  # Ctrl-C ends it quietly
    assert b"Traceback" not in err


async def test_publish_and_tail_take_a_token_for_a_hub_with_a_key(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(jwt_key=KEY), backends.backend())
    code, out, err = await run_hub("publish", "news", "x", "--url", hub.url)
    assert (code, out) == (2, "")
    assert "give the token with --token or HUB_TOKEN" in err
    assert "(HTTP 401 from" in err
    publisher = token(publish=["*"])
    code, out, err = await run_hub(
        "publish", "news", "secured", "--url", hub.url, "--token", publisher
    )
    assert code == 0, err
    with_token = {**cli_env(), "HUB_TOKEN": token(subscribe=[])}
    args = ["tail", "news", "--url", hub.url, "--last-event-id", "earliest"]
    async with spawn_hub(*args, env=with_token) as tail:
        assert tail.stdout is not None
        with anyio.fail_after(10):
            line = await tail.stdout.readline()
    assert json.loads(line) == {"id": out.strip(), "event": "message", "data": "secured"}


async def test_publish_to_a_hub_that_is_not_running_fails_with_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_hub("publish", "news", "x", "--url", url)
    assert code != 0
    assert out == ""
    assert err.startswith(f"hub: could not reach the hub at {url}")
    assert "Traceback" not in err


async def test_publish_refused_by_the_hub_fails_with_the_hub_message(
    backends: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(backends.settings(), backends.backend())
    code, out, err = await run_hub("publish", "no spaces please", "x", "--url", hub.url)
    assert code != 0
    assert out == ""
    assert err.startswith("hub: channel name 'no spaces please' contains whitespace")


@pytest.mark.parametrize("backend", ["embedded", "redis"])
async def test_serve_on_a_port_that_is_taken_exits_with_an_error(
    backend: str, redis_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        extra = [] if backend == "embedded" else ["--redis-url", redis_url]
        code, _out, err = await run_hub("serve", "--port", port, *extra)
    assert code == 3, err
    assert "address already in use" in err


async def test_worker_that_is_part_of_the_kit_is_a_clear_error() -> None:
    code, _out, err = await run_hub("worker", "base")
    assert code == 2
    assert "not a worker" in err
    assert "ticker" in err
    assert "llm" in err


def test_every_setting_has_a_serve_flag_that_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dataclasses import fields

    from hub import Settings
    from hub.cli import _parser, settings_from_args

    monkeypatch.setenv("HUB_JWT_ALGORITHM", "HS512")
    monkeypatch.setenv("HUB_HISTORY_SIZE", "7")
    args = _parser().parse_args(
        ["serve", "--jwt-key", "k" * 32, "--jwt-algorithm", "RS256", "--anonymous", "1"]
    )
    settings = settings_from_args(args)
    assert settings.jwt_key == "k" * 32
    assert (settings.jwt_algorithm, settings.anonymous) == ("RS256", True)
    assert settings.history_size == 7  # from the environment: no flag given
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    for field in fields(Settings):
        assert f"--{field.name.replace('_', '-')}" in help_text
        assert f"HUB_{field.name.upper()}" in help_text


def test_serve_flag_with_a_bad_yes_no_value_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hub.cli import _parser

    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["serve", "--anonymous", "maybe"])
    assert exit_info.value.code == 2
    assert "'maybe': use 1 or 0" in capsys.readouterr().err
