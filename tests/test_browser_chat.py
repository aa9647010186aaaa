"""The chat page (``/chat``) in a real browser: Playwright driving Debian's chromium.

The hub runs the llm worker inside (``--worker``, embedded backend), answering from a
fake OpenAI-compatible server that streams slowly. The page follows its conversation
through hub.js: tabs of one browser share one stream. Screenshots go to
``$HUB_SCREENSHOTS`` (or the test's tmp dir) to be looked at.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from hub.store import Keys
from support.browser import metric
from support.fake_openai import FakeOpenAI, Script
from support.hubs import Backends, RunningHub, StartHub

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("backends", ["embedded"], indirect=True)]


ANSWER = [
    "Here is", " how.", " Run this:\n\n", "```python\n", "x = 1.5", "  # Done. Yes!\n",
    "print(x)\n", "```\n", "Then:\n", "- first", " item.", " Still first.\n", "- second item.\n",
    "\n| name | value |\n", "|---|---|\n", "| pi | 3.14 |\n", "\nThat", " is", " all.",
]  # fmt: skip
LONG = [f" Sentence {n}." for n in range(60)]
XSS = [
    "Careful: <script>window.pwned = 1</script> and ",
    '<img src=x onerror="window.pwned = 2"> stay text.',
]


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    server.scripts = {
        "Show me Markdown.": Script(tokens=ANSWER, delay=0.12),
        "Talk for long.": Script(tokens=LONG, delay=0.1),
        "Try XSS.": Script(tokens=XSS),
    }
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def hub(backends: Backends, start_hub: StartHub, fake_openai: FakeOpenAI) -> RunningHub:
    backend = backends.backend()
    worker = f"llm --base-url {fake_openai.url} --max-retries 0"
    running = await start_hub(backends.settings(), backend, workers=(worker,))
    client = backend.command_client()
    deadline = time.monotonic() + 10
    while not await client.exists(Keys(backends.prefix).stream("llm.requests")):
        assert time.monotonic() < deadline, "the worker did not start listening"
        await asyncio.sleep(0.02)
    return running


async def open_chat(context: BrowserContext, url: str, width: int, errors: list[str]) -> Page:
    page = await context.new_page()
    await page.set_viewport_size({"width": width, "height": 800})
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda exc: errors.append(f"script: {exc}"))
    page.on(
        "console",
        lambda m: (
            errors.append(m.text) if m.type == "error" and "net::ERR_" not in m.text else None
        ),
    )
    await page.goto(url)
    await page.wait_for_selector("#state[data-state=open]")
    return page


async def ask(page: Page, prompt: str) -> None:
    await page.bring_to_front()  # headless chromium draws only the front tab's frames
    await page.fill("#prompt", prompt)
    await page.click("#send")


async def wait_done(page: Page, count: int) -> None:
    await page.wait_for_function(
        f"document.querySelectorAll('.turn[data-status]:not([data-status=open])').length >= {count}"
    )


async def sentences_seen(page: Page) -> int:
    return int(
        await page.evaluate("window.hubChat.events.filter(e => e.type == 'sentence').length")
    )


async def wait_streams(hub: RunningHub, count: int) -> None:
    # A tab that joins catches up on a short stream of its own, which ends when it has.
    deadline = time.monotonic() + 10
    while await metric(hub.url, "hub_connections") != count:
        assert time.monotonic() < deadline, f"the hub never had {count} stream(s)"
        await asyncio.sleep(0.1)


async def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("HUB_SCREENSHOTS") or tmp_path)
    os.makedirs(folder, exist_ok=True)  # a local directory, once
    await page.bring_to_front()
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=False)


async def test_chat_page_streams_markdown_survives_a_reload_and_stops(
    hub: RunningHub, fake_openai: FakeOpenAI, browser: Browser, tmp_path: Path
) -> None:
    errors: list[str] = []
    context = await browser.new_context()  # one browser: its tabs share one stream
    desktop = await open_chat(context, f"{hub.url}/chat", 1280, errors)
    channel = await desktop.evaluate("window.hubChat.channel")
    assert f"c={channel}" in desktop.url  # the conversation is in the address
    phone = await open_chat(context, desktop.url, 390, errors)  # a second tab

    # Ask; reload the desktop tab mid-answer.
    await ask(desktop, "Show me Markdown.")
    await desktop.wait_for_function(
        "window.hubChat.events.filter(e => e.type == 'sentence').length >= 2"
    )
    await desktop.bring_to_front()
    await desktop.reload()
    await desktop.wait_for_selector("#state[data-state=open]")
    await desktop.wait_for_selector(".turn[data-status=open] .answer p")  # the answer so far
    assert await desktop.is_enabled("#stop")
    await screenshot(desktop, tmp_path, "chat-1280-streaming")
    await wait_done(desktop, 1)
    await wait_done(phone, 1)
    await wait_streams(hub, 1)  # two tabs, one conversation: one stream

    # Exactly once: no event id twice, every sentence once, the answer rendered whole.
    ids = await desktop.evaluate("window.hubChat.events.map(e => e.id)")
    assert len(ids) == len(set(ids))
    done_sentences = await desktop.evaluate("Object.values(window.hubChat.turns)[0].parts.length")
    assert await sentences_seen(desktop) == done_sentences == await sentences_seen(phone)
    for page in (desktop, phone):
        assert await page.locator(".question").all_inner_texts() == ["Show me Markdown."]
        answer = page.locator(".turn .answer").first
        code = await answer.locator("pre code").inner_text()
        assert code.strip() == "x = 1.5  # Done. Yes!\nprint(x)"
        assert await answer.locator("li").all_inner_texts() == [
            "first item. Still first.",
            "second item.",
        ]
        assert await answer.locator("td").all_inner_texts() == ["pi", "3.14"]
    assert await desktop.inner_html(".turn .answer") == await phone.inner_html(".turn .answer")
    await screenshot(desktop, tmp_path, "chat-1280")
    await screenshot(phone, tmp_path, "chat-390")

    # Stop mid-answer: the model request is closed, the answer ends as "stopped".
    await ask(phone, "Talk for long.")
    await phone.wait_for_function(
        "window.hubChat.events.filter(e => e.type == 'sentence').length >= 15"
    )
    await phone.click("#stop")
    await phone.wait_for_selector(".turn[data-status=stopped]")
    await desktop.bring_to_front()
    await desktop.wait_for_selector(".turn[data-status=stopped]")
    assert await phone.inner_text(".turn[data-status=stopped] .meta") == "stopped"
    assert len(fake_openai.hangups) == 1
    assert fake_openai.tokens_sent < len(ANSWER) + len(LONG)
    assert await phone.is_disabled("#stop")

    # Model output is untrusted: markup in it is shown as text, never run.
    await ask(desktop, "Try XSS.")
    await wait_done(desktop, 3)
    last = desktop.locator(".turn .answer").last
    shown = await last.inner_text()
    assert "<script>window.pwned = 1</script>" in shown
    assert '<img src=x onerror="window.pwned = 2">' in shown
    assert await last.locator("img, script").count() == 0
    assert await desktop.evaluate("window.pwned") is None
    await screenshot(desktop, tmp_path, "chat-1280-after")
    await screenshot(phone, tmp_path, "chat-390-after")

    # A tab alone, reloaded, reads the whole transcript again from the hub's history.
    turns = await desktop.evaluate("window.hubChat.events.map(e => e.id)")
    await phone.close()
    await desktop.reload()
    await wait_done(desktop, 3)
    assert await desktop.evaluate("window.hubChat.events.map(e => e.id)") == turns
    assert await desktop.locator(".question").all_inner_texts() == [
        "Show me Markdown.",
        "Talk for long.",
        "Try XSS.",
    ]
    await wait_streams(hub, 1)
    await context.close()
    assert errors == []
