"""Helpers for the browser tests: Debian's chromium under Playwright, a publisher that
keeps what the hub acknowledged, the hub's metrics, screenshots to look at."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, async_playwright

from hub import Publisher

from .processes import HubProcesses

#: Debian's chromium (``apt-get install chromium``): no ``playwright install``.
CHROMIUM = Path("/usr/bin/chromium")


def chromium_path() -> Path:
    if not CHROMIUM.exists():
        raise AssertionError("chromium is not installed: apt-get install chromium")
    return CHROMIUM


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless chromium for one test."""
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            await launched.close()


class PageErrors:
    """Script errors and console errors of the pages watched, except the browser's own
    notes of refused connections and of the statuses a test expects."""

    def __init__(self, *expected_statuses: int) -> None:
        self.errors: list[str] = []
        self._expected = [f"status of {s}" for s in expected_statuses]

    def watch(self, page: Page) -> Page:
        page.on("pageerror", lambda exc: self.errors.append(f"script: {exc}"))
        page.on("console", self._on_console)
        return page

    def _on_console(self, message: ConsoleMessage) -> None:
        text = message.text
        if message.type != "error" or "net::ERR_" in text:
            return
        if not any(e in text for e in self._expected):
            self.errors.append(f"console: {text}")


class HttpPublisher:
    """POSTs numbered events to a hub until stopped; keeps the acknowledged ones as
    ``(id, data)``. ``mercure=True`` publishes through the Mercure door (a form)."""

    def __init__(
        self, url: str, channel: str, *, bearer: str | None = None, mercure: bool = False
    ) -> None:
        self.acknowledged: list[tuple[str, str]] = []
        self._url = url
        self._channel = channel
        self._headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        self._mercure = mercure
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def until(self, count: int, timeout: float = 20) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.acknowledged) < count:
            if self._task is not None and self._task.done():
                self._task.result()
            if loop.time() > deadline:
                raise AssertionError(f"only {len(self.acknowledged)} of {count} published")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        # Not a cancel: a request cut short may be published without our knowing its id.
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self._url, headers=self._headers) as client:
            n = 0
            while not self._stop.is_set():
                data = str(n)
                if self._mercure:
                    form = {"topic": self._channel, "data": data}
                    response = await client.post("/.well-known/mercure", data=form)
                    assert response.status_code == 200, response.text
                    event_id = response.text
                else:
                    body = {"channel": self._channel, "data": data}
                    response = await client.post("/publish", json=body)
                    assert response.status_code == 201, response.text
                    event_id = str(response.json()["id"])
                self.acknowledged.append((event_id, data))
                n += 1
                await asyncio.sleep(0.03)


async def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of the hub's ``/metrics`` (0 when absent): ``labels`` as written
    there, e.g. ``reason="expired"``."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    wanted = name + (f"{{{labels}}}" if labels else "")
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return 0.0


async def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """Keep a picture of the page: in ``$HUB_SCREENSHOTS`` if set, to look at."""
    folder = Path(os.environ.get("HUB_SCREENSHOTS") or tmp_path)
    os.makedirs(folder, exist_ok=True)
    path = folder / (re.sub(r"[^\w.-]", "_", name) + ".png")
    await page.screenshot(path=str(path), full_page=True)
    return path


# -- the demo page, and hub.js in it (window.hubDemo) --------------------------------


async def demo_tab(context: BrowserContext, errors: PageErrors, url: str, channels: str) -> Page:
    page = errors.watch(await context.new_page())
    page.set_default_timeout(10_000)
    await page.goto(f"{url}/?channels={channels}&connect=1")
    await page.wait_for_selector("#state[data-state=open], #state[data-state=resumed]")
    return page


async def shown(page: Page) -> list[tuple[str, str]]:
    """What the demo page received, in order: ``(id, data)``."""
    received: list[dict[str, str]] = await page.evaluate("window.hubDemo.received")
    return [(r["id"], r["data"]) for r in received]


async def wait_shown(page: Page, count: int) -> list[tuple[str, str]]:
    await page.wait_for_function(f"window.hubDemo.received.length >= {count}", timeout=20_000)
    await asyncio.sleep(0.3)  # nothing more may come: no duplicates arriving late
    return await shown(page)


async def holder(pages: list[Page]) -> Page:
    """The tab holding the shared stream (exactly one)."""
    leaders = [p for p in pages if await p.evaluate("window.hubDemo.subscription.leader")]
    assert len(leaders) == 1, len(leaders)
    return leaders[0]


async def wait_for_holder(pages: list[Page]) -> Page:
    for _ in range(100):
        leaders = [p for p in pages if await p.evaluate("window.hubDemo.subscription.leader")]
        if len(leaders) == 1:
            return leaders[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no single tab took the stream over")


async def publish_many(hubs: HubProcesses, channel: str, count: int, **settings: int) -> None:
    """Publish ``count`` events straight into Redis, ten at a time (quicker than HTTP)."""
    publisher = Publisher.from_url(str(hubs.backends.url), hubs.backends.settings(**settings))
    try:
        for start in range(0, count, 10):
            numbers = range(start, min(count, start + 10))
            await asyncio.gather(*(publisher.publish(channel, str(n)) for n in numbers))
    finally:
        await publisher.aclose()
