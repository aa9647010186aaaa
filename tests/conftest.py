"""Fixtures: backends (embedded and real Redis), hub servers on real sockets, SSE readers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis
import uvicorn

from hub import Backend, Settings, create_app
from hub.broker import Broker
from hub.protocol import head_bounded_protocol
from hub.server import HubServer

if TYPE_CHECKING:
    from support import HubProcesses


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # Async tests run on asyncio through anyio's pytest plugin (starlette brings anyio);
    # each async test module sets ``pytestmark = pytest.mark.anyio``.
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


class RedisServer:
    """A redis-server of the test's own, on a free port, keeping nothing on disk."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="hub-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self._binary = binary

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: ``HUB_TEST_REDIS_URL``, else the local 6379, else one started here."""
    url = os.environ.get("HUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if _answers(url):
        yield url
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for tests that stop, restart or break it."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@dataclass
class Backends:
    """Makes backends and settings that share one data set (embedded server or Redis prefix)."""

    kind: str
    url: str | None
    prefix: str = field(default_factory=lambda: f"test:{uuid.uuid4().hex[:10]}:")
    _embedded: Backend | None = None

    def backend(self, pool_size: int = 10) -> Backend:
        if self.url is None:
            if self._embedded is None:
                self._embedded = Backend(None)
            return self._embedded
        return Backend(self.url, pool_size=pool_size, client_name=f"hub-{self.prefix}")

    def settings(self, **changes: Any) -> Settings:
        return Settings(redis_url=self.url, key_prefix=self.prefix, **changes)

    def cleanup(self) -> None:
        if self.url is None:
            return
        client = redis.Redis.from_url(self.url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@pytest.fixture(params=["embedded", "redis"])
def backends(request: pytest.FixtureRequest) -> Iterator[Backends]:
    """The contract suite runs once on the embedded backend and once on real Redis."""
    url = None if request.param == "embedded" else request.getfixturevalue("redis_url")
    made = Backends(request.param, url)
    try:
        yield made
    finally:
        made.cleanup()


class _TestServer(HubServer):
    # Several servers share the test's event loop: none of them may take over signals.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningHub:
    url: str
    server: HubServer
    task: asyncio.Task[None]
    settings: Settings

    @property
    def broker(self) -> Broker:
        """The running app's broker (for tests that look inside)."""
        broker: Broker = self.server.hub_app.state.broker
        return broker

    async def stop(self) -> None:
        """Graceful stop, like SIGTERM."""
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 20)

    async def kill(self) -> None:
        """Abrupt stop: drop every connection without a goodbye, like SIGKILL."""
        self.server.force_exit = True
        self.server.should_exit = True
        for connection in list(self.server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await asyncio.wait_for(self.task, 20)


StartHub = Callable[..., Awaitable[RunningHub]]


@pytest.fixture
async def start_hub() -> AsyncIterator[StartHub]:
    """Start hub servers on free loopback ports; they are stopped at the end of the test."""
    running: list[RunningHub] = []

    async def start(
        settings: Settings, backend: Backend | None = None, *, http: str = "auto"
    ) -> RunningHub:
        settings = settings.replace(port=free_port(), log_level="warning")
        app = create_app(settings, backend=backend)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=settings.port,
            # The hub's own protocol (hub serve's), unless a test asks for another.
            http=head_bounded_protocol(settings.max_header_bytes) if http == "auto" else http,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        server = _TestServer(config, app)
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise RuntimeError("hub server did not start")
            await asyncio.sleep(0.01)
        hub = RunningHub(f"http://127.0.0.1:{settings.port}", server, task, settings)
        await wait_ready(hub.url)
        running.append(hub)
        return hub

    yield start
    for hub in running:
        if not hub.task.done():
            await hub.stop()


async def wait_ready(url: str, timeout: float = 10) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = await client.get(f"{url}/readyz")
                if response.status_code == 200:
                    return
                state = response.text
            except httpx.TransportError as exc:  # not listening yet
                state = repr(exc)
            if time.monotonic() > deadline:
                raise AssertionError(f"hub at {url} not ready: {state}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def hubs(redis_url: str) -> AsyncIterator[HubProcesses]:
    """Real ``hub serve`` processes on the test's Redis; all stopped at the end."""
    from support import HubProcesses  # support imports this module: import it late

    made = HubProcesses(redis_url)
    try:
        yield made
    finally:
        await made.cleanup()
