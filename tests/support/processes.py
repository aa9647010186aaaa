"""Helpers shared by tests: publishers that keep count of what Redis acknowledged, hub
processes, a browser-like resuming SSE client, and haproxy in front of hub processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

from hub import BackendUnavailable, Publisher

from .hubs import Backends
from .net import free_port, wait_ready
from .sse import SSEStream

REPO = Path(__file__).resolve().parents[2]


class SteadyPublisher:
    """Publishes numbered events until stopped; keeps what Redis acknowledged."""

    def __init__(self, publisher: Publisher, channel: str) -> None:
        self.acknowledged: list[tuple[str, str]] = []
        self.failures = 0
        self._publisher = publisher
        self._channel = channel
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            data = str(n)
            try:
                event_id = await self._publisher.publish(self._channel, data)
            except BackendUnavailable:
                self.failures += 1
                await asyncio.sleep(0.02)
                continue
            self.acknowledged.append((event_id, data))
            n += 1
            await asyncio.sleep(0.002)


class ResumingClient:
    """Follows channels as a browser's EventSource does: when a stream ends or breaks it
    waits the stream's ``retry:`` hint (at most ``max_delay`` seconds, to keep tests
    short), then connects again to the same URL with ``Last-Event-ID`` set to the id of
    the last event it got. It keeps every event of every stream, in order."""

    def __init__(
        self,
        base_url: str,
        channels: Sequence[str],
        *,
        last_event_id: str | None = None,
        max_delay: float = 1.0,
    ) -> None:
        self.base_url = base_url
        self.channels = list(channels)
        self.cursor = last_event_id
        self.max_delay = max_delay
        #: Every stream opened so far; the last one may still be open.
        self.streams: list[SSEStream] = []
        #: Streams that answered something other than 200, or nothing at all. A browser's
        #: EventSource gives up for good on an error status.
        self.failed: list[int | None] = []
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ResumingClient:
        """Start following; returns once the first stream has answered (or failed)."""
        self._task = asyncio.create_task(self._run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not self.streams or (
            self.streams[0].status is None and not self.streams[0].ended.is_set()
        ):
            if self._task.done():
                self._task.result()
            if loop.time() > deadline:
                raise AssertionError(f"{self.base_url}: no answer to the first request")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def reconnects(self) -> int:
        return max(0, len(self.streams) - 1)

    def received(self) -> list[tuple[str, str]]:
        """``(id, data)`` of every event but ``hub.*`` signals, across reconnects."""
        return [
            (e.id or "", e.data)
            for stream in self.streams
            for e in stream.events
            if not e.event.startswith("hub.")
        ]

    def signals(self) -> list[str]:
        return [e.event for s in self.streams for e in s.events if e.event.startswith("hub.")]

    async def wait_for(self, count: int, timeout: float = 20) -> None:
        """Wait until ``count`` events (signals not counted) have arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.received()) < count:
            if self._task is not None and self._task.done():
                self._task.result()
            if loop.time() > deadline:
                got = self.received()
                raise AssertionError(
                    f"only {len(got)} of {count} events after {timeout}s "
                    f"({self.reconnects} reconnects, failed: {self.failed}): {got[-3:]}"
                )
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for stream in self.streams:
            await stream.close()

    async def _run(self) -> None:
        while not self._stopping:
            stream = SSEStream(self.base_url, self.channels, last_event_id=self.cursor)
            self.streams.append(stream)
            await stream.__aenter__()
            await stream.ended.wait()
            if stream.status != 200:
                self.failed.append(stream.status)
            # What the browser would send: the id of the last complete block (the opening
            # block's id included; a frame cut off mid-way does not count).
            self.cursor = stream.last_event_id
            hint = (stream.retry or 1000) / 1000
            await asyncio.sleep(min(hint, self.max_delay))


class HubProcess:
    """``python -m hub serve`` on a free port, on a real Redis under the test's prefix.

    It can be started again after it exited, on the same port (a rolling restart)."""

    def __init__(self, backends: Backends, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._backends = backends
        self._extra = extra
        self._env = env or {}
        self._log = Path(tempfile.mkdtemp(prefix="hub-log-")) / "stderr.log"
        #: uvicorn's access log, in text mode (its other lines go to stderr).
        self._out = self._log.with_name("stdout.log")
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *, ready: bool = True) -> HubProcess:
        assert self._backends.url is not None
        env = {
            **os.environ,
            "HUB_KEY_PREFIX": self._backends.prefix,
            "HUB_LOG_LEVEL": "warning",
            **self._env,
        }
        # A file, not a pipe: a pipe nobody reads would block a chatty hub.
        with _log_file(self._log) as log, _log_file(self._out) as out:
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
                stdout=out,
                stderr=log,
            )
        if ready:
            await wait_ready(self.url, timeout=20)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def signal(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), 20)

    async def stderr(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    async def stdout(self) -> str:
        return self._out.read_text(errors="replace") if self._out.exists() else ""

    async def cleanup(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        shutil.rmtree(self._log.parent, ignore_errors=True)


class HubProcesses:
    """Starts hub processes sharing one Redis prefix; everything is cleaned up after."""

    def __init__(self, redis_url: str) -> None:
        self.backends = Backends("redis", redis_url)
        self._made: list[HubProcess] = []

    def make(self, *extra: str, env: dict[str, str] | None = None) -> HubProcess:
        hub = HubProcess(self.backends, *extra, env=env)
        self._made.append(hub)
        return hub

    async def start(self, *extra: str, env: dict[str, str] | None = None) -> HubProcess:
        return await self.make(*extra, env=env).start()

    async def cleanup(self) -> None:
        for hub in self._made:
            await hub.cleanup()
        self.backends.cleanup()


class Haproxy:
    """haproxy on a free loopback port, in front of hub processes, with the balancer
    settings of ``deploy/haproxy.cfg`` (the file shipped for production): only the
    listening address, the servers and the health-check interval are the test's own."""

    def __init__(self, servers: Sequence[HubProcess], *, check_inter_ms: int = 200) -> None:
        binary = shutil.which("haproxy")
        if binary is None:
            pytest.fail("haproxy is not installed: apt-get install haproxy")
        self._binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="hub-haproxy-"))
        self.socket = self.dir / "admin.sock"
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text(
            local_haproxy_config(
                [s.port for s in servers], self.port, self.socket, check_inter_ms=check_inter_ms
            )
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> Haproxy:
        with _log_file(self.dir / "haproxy.log") as log:
            self.process = await asyncio.create_subprocess_exec(
                self._binary,
                "-f",
                str(self.config),
                "-db",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        await wait_ready(self.url, timeout=10)
        return self

    async def command(self, line: str) -> str:
        """A command on haproxy's admin socket (``show stat``, ``show servers state``)."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode()
        finally:
            writer.close()

    async def server_stats(self) -> dict[str, dict[str, str]]:
        """Per hub server: haproxy's stats (``status``, ``scur`` current sessions, ...)."""
        lines = (await self.command("show stat")).strip().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        return {r["svname"]: r for r in rows if r["pxname"] == "hubs" and r["svname"][:3] == "hub"}

    async def wait_status(self, server: str, status: str, timeout: float = 10) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (await self.server_stats())[server]["status"] != status:
            if loop.time() > deadline:
                raise AssertionError(f"haproxy never saw {server} {status}")
            await asyncio.sleep(0.05)

    async def cleanup(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _log_file(path: Path) -> BinaryIO:
    """A child process's output file; the child keeps its own copy of the descriptor."""
    return open(path, "ab")


def local_haproxy_config(
    ports: Sequence[int], listen: int, admin_socket: Path, *, check_inter_ms: int = 200
) -> str:
    """``deploy/haproxy.cfg`` for hubs on loopback ports: docker's DNS and the server
    template give way to one ``server`` line per port; everything else is kept."""
    text = (REPO / "deploy" / "haproxy.cfg").read_text()
    text = re.sub(r"(?ms)^resolvers docker\n.*?(?=^\S|\Z)", "", text)
    text, binds = re.subn(r"(?m)^(\s+)bind :8000$", rf"\1bind 127.0.0.1:{listen}", text)
    servers = "\n".join(f"    server hub{i} 127.0.0.1:{port}" for i, port in enumerate(ports, 1))
    text, templates = re.subn(r"(?m)^\s+server-template hub .*$", servers, text)
    assert (binds, templates) == (1, 1), "deploy/haproxy.cfg: no `bind :8000` or `server-template`"
    text = re.sub(r"\binter \d+\w*", f"inter {check_inter_ms}ms", text)
    # Room for what a test opens, whatever the file limit of the machine.
    text = re.sub(r"\bmaxconn \d+", "maxconn 2000", text)
    text = text.replace("log stdout format raw local0 info", "log stdout format raw local0 warning")
    stats = f"    stats socket {admin_socket} mode 600 level admin\n"
    return re.sub(r"(?m)^global\n", lambda m: m.group(0) + stats, text)
