"""Starting a hub: a setting it cannot use is one line and exit status 2; a Redis that
does not answer yet is not such a setting (the hub waits for it, not ready); the
open-files limit is raised and a too-low one explained; a start that fails stops
cleanly."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from support.net import wait_ready
from support.processes import HubProcesses
from support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

_SCRIPT = Path(sys.executable).with_name("hub")
HUB = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hub"]

PEM = "-----BEGIN PUBLIC KEY-----\\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\\n-----END PUBLIC KEY-----"

#: (arguments, extra environment, what the one line must say)
BAD_CONFIGURATIONS: list[tuple[list[str], dict[str, str], str]] = [
    (["serve", "--redis-url", "http://127.0.0.1:6379"], {}, "has scheme 'http'; use one of"),
    (["serve", "--redis-url", "redis://127.0.0.1/x"], {}, "'x' after the host must be a number"),
    (["serve"], {"HUB_REDIS_URL": "redis://u:hunter2@h:port/0"}, "could not be cast to integer"),
    (["serve", "--jwt-key", "secret", "--jwt-algorithm", "RS256"], {}, "usable RS256 public"),
    (["serve", "--jwt-key", PEM], {}, "set HUB_JWT_ALGORITHM to the key's algorithm"),
    (["serve", "--workers", "2"], {}, "workers > 1 needs HUB_REDIS_URL"),
    # Checked once in the supervisor, not by every worker in a traceback of its own.
    (
        ["serve", "--workers", "2", "--redis-url", "redis://127.0.0.1:1/0"],
        {"HUB_JWT_KEY": "not a pem", "HUB_JWT_ALGORITHM": "ES256"},
        "usable ES256 public key",
    ),
    (["serve", "--port", "eighty"], {}, "invalid int value: 'eighty' (see hub serve --help)"),
    (
        ["publish", "c", "d", "--redis-url", "redis+sentinel://h:26379/s"],
        {},
        "a publisher outside the hub takes a redis://",
    ),
    (["publish", "c", "d", "--redis-url", "r", "--token", "t"], {}, "drop one of them"),
]


async def _run(args: list[str], env: dict[str, str]) -> tuple[int | None, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    process = await asyncio.create_subprocess_exec(
        *HUB,
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, **env},
    )
    try:
        with anyio.fail_after(30):
            _out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode, err.decode()


async def test_every_configuration_error_is_one_line_and_exit_status_2() -> None:
    # All at once: each is a Python start-up, and none of them needs the others.
    results = await asyncio.gather(*(_run(args, env) for args, env, _ in BAD_CONFIGURATIONS))
    wrong = []
    for (args, env, expected), (code, err) in zip(BAD_CONFIGURATIONS, results, strict=True):
        one_line = err.count("\n") == 1 and err.startswith("hub")
        if code != 2 or not one_line or expected not in err or "hunter2" in err:
            wrong.append(f"{args} {env}: exit {code}, stderr:\n{err}")
    assert not wrong, "\n\n".join(wrong)


async def test_redis_down_at_start_up_is_waited_for_and_the_hub_is_not_ready_until_then(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    hubs = HubProcesses(redis_server.url)
    try:
        hub = await hubs.make(env={"HUB_LOG_LEVEL": "info"}).start(ready=False)
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(20):
                while True:
                    try:
                        ready = await client.get(f"{hub.url}/readyz")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
            assert ready.status_code == 503
            assert "Redis" in ready.json()["message"]
            assert (await client.get(f"{hub.url}/healthz")).status_code == 200
            log = await hub.stderr()
            assert "cannot connect to Redis" in log
            assert "Check that Redis is running" in log
            assert "Traceback" not in log
            await asyncio.to_thread(redis_server.start)
            await wait_ready(hub.url, timeout=20)
        assert hub.process is not None
        assert hub.process.returncode is None
    finally:
        await hubs.cleanup()


async def test_the_open_files_limit_is_raised_and_a_too_low_one_says_what_to_change() -> None:
    def low_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))

    clean = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    with socket.socket() as taken:
        # The port is taken: the hub gets as far as listening, then stops (exit 3).
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        process = await asyncio.create_subprocess_exec(
            *HUB,
            "serve",
            "--port",
            port,
            "--max-connections",
            "1000",
            stderr=asyncio.subprocess.PIPE,
            env=clean,
            preexec_fn=low_limits,
        )
        with anyio.fail_after(30):
            _out, err = await process.communicate()
    log = err.decode()
    assert process.returncode == 3, log
    assert "open-files limit raised from 256 to 512 (the hard limit)" in log
    assert "the open-files limit (512) is too low for HUB_MAX_CONNECTIONS=1000" in log
    assert "Raise the hard limit to at least 1100 (LimitNOFILE=" in log
    assert "or lower HUB_MAX_CONNECTIONS to 412" in log
    # A start that fails stops at once: the live reader did not hold the shutdown up.
    assert "did not stop when cancelled" not in log
    assert "Traceback" not in log
