"""Fixtures: backends (embedded and real Redis), hub servers on real sockets, hub processes.

The helpers they hand out live in the ``support`` package; tests import them from there.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from playwright.async_api import Browser

from hub import Backend, Settings, create_app
from hub.inprocess import in_process_workers
from hub.protocol import hub_protocol
from hub.small_posts import SmallPosts
from support.browser import chromium
from support.hubs import Backends, InLoopServer, RunningHub, StartHub
from support.net import free_port, wait_ready
from support.processes import HubProcesses
from support.redis_cluster import RedisCluster
from support.redis_server import RedisServer, answers


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # Async tests run on asyncio through anyio's pytest plugin (starlette brings anyio);
    # each async test module sets ``pytestmark = pytest.mark.anyio``.
    return "asyncio"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: ``HUB_TEST_REDIS_URL``, else the local 6379, else one started here."""
    url = os.environ.get("HUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if answers(url):
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


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of 3 masters and 3 replicas on loopback, one per test session."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``backends`` runs each test on the embedded backend and a real Redis; modules
    with ``RUNS_ON_CLUSTER = True`` (the contract suite and the doors' own tests) on a
    real Redis Cluster too, and every module with ``HUB_TEST_CLUSTER_ALL=1``."""
    chosen = any(
        "backends" in str(marker.args[0])
        for marker in metafunc.definition.iter_markers("parametrize")
    )
    if "backends" in metafunc.fixturenames and not chosen:
        kinds = ["embedded", "redis"]
        if getattr(metafunc.module, "RUNS_ON_CLUSTER", False) or os.environ.get(
            "HUB_TEST_CLUSTER_ALL"
        ):
            kinds.append("cluster")
        metafunc.parametrize("backends", kinds, indirect=True)


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> Iterator[Backends]:
    """Backends of the kind the test is parametrised with (see pytest_generate_tests)."""
    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    made = Backends(request.param, url)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
async def start_hub() -> AsyncIterator[StartHub]:
    """Start hub servers on free loopback ports; they are stopped at the end of the test."""
    running: list[RunningHub] = []

    async def start(
        settings: Settings,
        backend: Backend | None = None,
        *,
        http: str = "auto",
        workers: tuple[str, ...] = (),
    ) -> RunningHub:
        settings = settings.replace(port=free_port(), log_level="warning")
        app = create_app(settings, backend=backend, services=in_process_workers(workers))
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=settings.port,
            # The hub's own protocol (hub serve's), unless a test asks for another.
            http=hub_protocol(settings) if http == "auto" else http,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        SmallPosts.install(config)  # and the proxy headers, as hub serve runs
        server = InLoopServer(config, app)
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


@pytest.fixture
async def hubs(redis_url: str) -> AsyncIterator[HubProcesses]:
    """Real ``hub serve`` processes on the test's Redis; all stopped at the end."""

    made = HubProcesses(redis_url)
    try:
        yield made
    finally:
        await made.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Debian chromium (``/usr/bin/chromium``) for one test."""
    async with chromium() as launched:
        yield launched
