"""The demo page in a real browser: Playwright driving Debian's chromium, headless.

No ``playwright install``: the browser is ``/usr/bin/chromium`` from apt (``.ci/run``
installs it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request

from support.browser import HttpPublisher
from support.mercure import KEY, token
from support.processes import REPO, HubProcesses
from support.workers import WorkerProcess

pytestmark = pytest.mark.anyio


#: Script errors and console errors of every page a test opened.
_page_errors: list[str] = []


@pytest.fixture(autouse=True)
def no_console_errors() -> Iterator[None]:
    """Every test ends with no script error and no console error on its pages, except
    the browser's own notes of a refused connection (a test may kill the hub)."""
    _page_errors.clear()
    yield
    assert not _page_errors, _page_errors


def _on_console(message: ConsoleMessage) -> None:
    if message.type == "error" and "net::ERR_" not in message.text:
        _page_errors.append(f"console: {message.text}")


async def open_page(browser: Browser, url: str, channels: str) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(10_000)
    page.on("pageerror", lambda exc: _page_errors.append(f"script: {exc}"))
    page.on("console", _on_console)
    await page.goto(f"{url}/?channels={channels}&connect=1")
    await page.wait_for_selector("#state[data-state=open]")
    return page


async def rows(page: Page) -> list[tuple[str, str, str]]:
    """The page's event table, oldest first: ``(id, type, data)``."""
    cells: list[list[str]] = await page.eval_on_selector_all(
        "#events tbody tr",
        "rows => rows.map(r => Array.from(r.cells, c => c.textContent))",
    )
    return [(c[0], c[1], c[2]) for c in reversed(cells)]


async def wait_rows(page: Page, count: int, timeout: float = 20) -> list[tuple[str, str, str]]:
    await page.wait_for_function(
        f"document.querySelectorAll('#events tbody tr').length >= {count}",
        timeout=timeout * 1000,
    )
    return await rows(page)


async def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    """Keep a picture of the page: in ``$HUB_SCREENSHOTS`` if set, to look at."""
    folder = Path(os.environ.get("HUB_SCREENSHOTS") or tmp_path)
    os.makedirs(folder, exist_ok=True)
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def test_page_shows_events_from_another_process_and_publishes_with_its_token(
    hubs: HubProcesses, browser: Browser, tmp_path: Path
) -> None:
    hub = await hubs.start()
    page = await open_page(browser, hub.url, "demo")
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))

    # Another process publishes, straight into Redis.
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hub",
        "publish",
        "demo",
        "from another process",
        "--redis-url",
        str(hubs.backends.url),
        env={**os.environ, "HUB_KEY_PREFIX": hubs.backends.prefix},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await cli.communicate()
    assert cli.returncode == 0
    first_id = out.decode().strip()
    assert await wait_rows(page, 1) == [(first_id, "message", "from another process")]

    # The form, with a token: a Bearer header on publish, ?authorization= on streams.
    await page.fill("#token", "s3cret")
    assert await page.input_value("#pub-channel") == "demo"
    await page.fill("#pub-event", "update")
    await page.fill("#pub-data", "from the form")
    await page.click("#pub-send")
    shown = await wait_rows(page, 2)
    assert shown[1][1:] == ("update", "from the form")
    assert shown[1][0] in await page.inner_text("#pub-result")
    publishes = [r for r in requests if r.method == "POST" and r.url.endswith("/publish")]
    assert [await r.header_value("authorization") for r in publishes] == ["Bearer s3cret"]
    await screenshot(page, tmp_path, "demo-events")

    await page.click("#connect")  # reconnect, now with the token
    await page.wait_for_selector("#state[data-state=resumed]")
    streams = [r for r in requests if "/events?" in r.url]
    assert streams
    # A header, not the URL: hub.js streams with fetch(), which can send one.
    assert await streams[-1].header_value("authorization") == "Bearer s3cret"
    assert "s3cret" not in streams[-1].url
    # It resumed from the last id it had: nothing shown twice.
    await asyncio.sleep(0.3)
    assert len(await rows(page)) == 2


async def test_page_shows_every_event_once_when_its_hub_is_killed_and_restarted(
    hubs: HubProcesses, browser: Browser
) -> None:
    # The page's hub asks for quick reconnects; publishing goes through another node.
    page_hub = await hubs.start(env={"HUB_RETRY_MS": "300"})
    other = await hubs.start()
    page = await open_page(browser, page_hub.url, "kill")
    publishing = HttpPublisher(other.url, "kill")
    publishing.start()
    try:
        await publishing.until(15)
        await page_hub.signal(signal.SIGKILL)
        await publishing.until(len(publishing.acknowledged) + 15)  # while it is down
        await page_hub.start()
        await page.wait_for_selector("#state[data-state=resumed]")
        await publishing.until(len(publishing.acknowledged) + 15)
    finally:
        await publishing.stop()
    acknowledged = publishing.acknowledged
    shown = await wait_rows(page, len(acknowledged))
    await asyncio.sleep(0.5)  # nothing more may come: no duplicates arriving late
    shown = await rows(page)
    assert [(i, d) for i, _t, d in shown] == acknowledged
    states = await page.evaluate("window.hubDemo.states")
    assert "reconnecting" in states, states
    assert states[-1] == "resumed", states


async def test_page_says_reset_when_the_history_no_longer_reaches_back_to_its_cursor(
    hubs: HubProcesses, browser: Browser
) -> None:
    short = {"HUB_HISTORY_SIZE": "2", "HUB_RETRY_MS": "300"}
    page_hub = await hubs.start(env=short)
    other = await hubs.start(env=short)
    page = await open_page(browser, page_hub.url, "short")
    await _publish(other.url, "short", "seen")
    await wait_rows(page, 1)
    await page_hub.signal(signal.SIGKILL)
    for n in range(5):  # more than the history keeps, while the page is away
        await _publish(other.url, "short", f"missed {n}")
    await page_hub.start()
    await page.wait_for_selector("#state[data-state=reset]")
    assert "expired" in await page.inner_text("#state-detail")
    await _publish(other.url, "short", "after")
    shown = await wait_rows(page, 2)
    assert [d for _i, _t, d in shown] == ["seen", "after"]  # live again, nothing twice


async def _publish(url: str, channel: str, data: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/publish", json={"channel": channel, "data": data})
    assert response.status_code == 201, response.text


async def test_chat_box_shows_the_llm_workers_answer_sentence_by_sentence(
    hubs: HubProcesses, browser: Browser, tmp_path: Path
) -> None:
    hub = await hubs.start()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "OPENAI_"))}
    environ.update(
        {"HUB_REDIS_URL": str(hubs.backends.url), "HUB_KEY_PREFIX": hubs.backends.prefix}
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub", "worker", "llm", "--demo", "--demo-delay", "0.01",
        cwd=REPO, env=environ,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    worker = WorkerProcess(process)
    try:
        await worker.wait_for_log("listening for requests", timeout=20)
        page = await open_page(browser, hub.url, "demo")
        # Record how many sentences the answer had each time it changed: it grows.
        await page.evaluate(
            """() => {
                window.sentencesSeen = [];
                const answer = document.getElementById("answer");
                new MutationObserver(() => window.sentencesSeen.push(
                    answer.querySelectorAll(".sentence").length
                )).observe(answer, { childList: true });
            }"""
        )
        await page.fill("#prompt", "What is the hub?")
        await page.click("#ask")
        await page.wait_for_function(
            "document.getElementById('chat-status').textContent.startsWith('done:')",
            timeout=20_000,
        )
        said = await page.eval_on_selector_all(
            "#answer .sentence", "spans => spans.map(s => s.textContent.trim())"
        )
        seen = await page.evaluate("window.sentencesSeen")
        status = await page.inner_text("#chat-status")
        await screenshot(page, tmp_path, "demo-chat")
    finally:
        await worker.cleanup()
    assert len(said) >= 3
    assert "What is the hub?" in said[0]
    assert f"done: {len(said)} sentences from demo" in status
    assert seen == list(range(1, len(said) + 1)), seen  # one sentence at a time


async def test_page_with_authorization_on_publishes_only_with_a_valid_token(
    hubs: HubProcesses, browser: Browser
) -> None:
    hub = await hubs.start(env={"HUB_JWT_KEY": KEY, "HUB_ANONYMOUS": "1"})
    page = await open_page(browser, hub.url, "locked")  # anonymous: public events
    await page.fill("#pub-channel", "locked")
    await page.fill("#pub-data", "no token")
    await page.click("#pub-send")
    await page.wait_for_function(
        "document.getElementById('pub-result').textContent.startsWith('failed')"
    )
    assert "token" in (await page.inner_text("#pub-result")).lower()
    # The browser notes the refused request in the console: that one is expected.
    _page_errors[:] = [e for e in _page_errors if "status of 401" not in e]

    await page.fill("#token", token(publish=["locked"]))
    await page.fill("#pub-data", "with a token")
    await page.click("#pub-send")
    shown = await wait_rows(page, 1)
    assert [row[2] for row in shown] == ["with a token"]


async def test_page_keeps_its_token_out_of_the_url_and_in_the_tab(
    hubs: HubProcesses, browser: Browser
) -> None:
    hub = await hubs.start(env={"HUB_JWT_KEY": KEY, "HUB_ANONYMOUS": "1"})
    page = await open_page(browser, hub.url, "news")
    # An old link carrying ?token= : ignored, and gone from the address bar.
    await page.goto(f"{hub.url}/?channels=news&token=leaked-secret")
    assert await page.input_value("#token") == ""
    assert "token" not in page.url
    # Typed in the form, it survives a reload of the tab, without entering the URL.
    await page.fill("#token", "typed-secret")
    await page.dispatch_event("#token", "change")
    await page.reload()
    assert await page.input_value("#token") == "typed-secret"
    assert "secret" not in page.url
