"""hub.js in a real browser: tabs of one origin share one stream, hand it over when the
tab holding it closes or freezes, resume from the saved cursor, and switch to fresh
tokens before theirs expire. Playwright drives Debian's chromium, headless."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Browser, Request

from support.browser import (
    HttpPublisher,
    PageErrors,
    demo_tab,
    holder,
    metric,
    publish_many,
    screenshot,
    wait_for_holder,
    wait_shown,
)
from support.mercure import KEY, token
from support.processes import HubProcesses

pytestmark = pytest.mark.anyio

#: The documented calls, run in a page of the hub's origin (docs/javascript.md).
SUBSCRIBE = """async ([channels, door]) => {
    const { subscribe } = await import("/static/hub.js");
    window.got = [];
    window.resets = [];
    window.tokens = [];
    window.sub = subscribe(channels, {
        onEvent: (event) => window.got.push([event.id, event.data]),
        onReset: (reason, channels) => window.resets.push([reason, channels]),
    }, {
        door,
        getToken: async () => {
            const token = await window.issueToken();
            window.tokens.push(token);
            return token;
        },
    });
}"""


async def test_eight_tabs_share_one_stream_and_each_sees_every_event_once_as_tabs_close(
    hubs: HubProcesses, browser: Browser
) -> None:
    hub = await hubs.start(env={"HUB_RETRY_MS": "300"})
    errors = PageErrors()
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    tabs = [await demo_tab(context, errors, hub.url, "tabs") for _ in range(8)]
    await wait_for_holder(tabs)
    assert await metric(hub.url, "hub_connections") == 1

    publishing = HttpPublisher(hub.url, "tabs")
    publishing.start()
    try:
        await publishing.until(10)
        # Close five tabs one at a time, the one holding the stream first and third.
        for turn in range(5):
            closing = await holder(tabs) if turn % 2 == 0 else tabs[-1]
            tabs.remove(closing)
            await closing.close()
            await wait_for_holder(tabs)
            await publishing.until(len(publishing.acknowledged) + 6)
    finally:
        await publishing.stop()
    acknowledged = publishing.acknowledged
    for tab in tabs:
        assert await wait_shown(tab, len(acknowledged)) == acknowledged
    assert await metric(hub.url, "hub_connections") == 1
    assert errors.errors == []


async def test_a_hung_or_frozen_holder_hands_the_stream_over_and_catches_up_after(
    hubs: HubProcesses, browser: Browser
) -> None:
    hub = await hubs.start(env={"HUB_RETRY_MS": "300"})
    errors = PageErrors()
    context = await browser.new_context()
    tabs = [await demo_tab(context, errors, hub.url, "hang") for _ in range(3)]
    publishing = HttpPublisher(hub.url, "hang")
    publishing.start()
    try:
        await publishing.until(10)
        # A holder whose script hangs for 3 s: it holds the lock but says nothing, so
        # another tab steals the lock; the hung one follows once it comes back.
        hung = await wait_for_holder(tabs)
        await hung.evaluate(
            "setTimeout(() => { const end = Date.now() + 3000; while (Date.now() < end); })"
        )
        await wait_for_holder([t for t in tabs if t is not hung])
        await publishing.until(len(publishing.acknowledged) + 10)
        await wait_for_holder(tabs)
        # The browser freezes a hidden tab after telling it (the freeze event); headless
        # chromium does not freeze its always-visible pages, so the test sends the event.
        frozen = await holder(tabs)
        await frozen.evaluate("document.dispatchEvent(new Event('freeze'))")
        await wait_for_holder([t for t in tabs if t is not frozen])
        await publishing.until(len(publishing.acknowledged) + 10)
        await frozen.evaluate("document.dispatchEvent(new Event('resume'))")
        await publishing.until(len(publishing.acknowledged) + 10)
    finally:
        await publishing.stop()
    acknowledged = publishing.acknowledged
    for tab in tabs:
        assert await wait_shown(tab, len(acknowledged)) == acknowledged
    assert await metric(hub.url, "hub_connections") == 1
    assert errors.errors == []


async def test_a_tab_resumes_from_its_saved_cursor_after_a_reload(
    hubs: HubProcesses, browser: Browser
) -> None:
    hub = await hubs.start()
    errors = PageErrors()
    context = await browser.new_context()
    page = await demo_tab(context, errors, hub.url, "reload")
    streams: list[Request] = []
    page.on("request", lambda r: streams.append(r) if "/events?" in r.url else None)
    publishing = HttpPublisher(hub.url, "reload")
    publishing.start()
    await publishing.until(5)
    seen = await wait_shown(page, 5)
    # Away from the page (its stream closed) while events keep coming, then back.
    await page.goto("about:blank")
    await publishing.until(len(publishing.acknowledged) + 5)
    await page.go_back()
    await page.wait_for_selector("#state[data-state=resumed]")
    await publishing.until(len(publishing.acknowledged) + 5)
    # A reload, the same way.
    await page.reload()
    await page.wait_for_selector("#state[data-state=resumed]")
    await publishing.until(len(publishing.acknowledged) + 5)
    await publishing.stop()
    acknowledged = publishing.acknowledged
    ids = [i for i, _ in acknowledged]
    cursors = [await r.header_value("last-event-id") for r in streams]
    assert len(cursors) == 2, cursors  # back, then reloaded: each from its cursor
    assert ids.index(cursors[0]) >= len(seen) - 1
    assert ids.index(cursors[1]) > ids.index(cursors[0])
    expected = acknowledged[ids.index(cursors[1]) + 1 :]
    assert await wait_shown(page, len(expected)) == expected  # nothing lost, nothing twice

    # Back online (a new network): the stream is replaced, from the cursor.
    streams.clear()
    await page.evaluate("window.dispatchEvent(new Event('online'))")
    for _ in range(50):
        if streams:
            break
        await asyncio.sleep(0.05)
    assert [await r.header_value("last-event-id") for r in streams] == [expected[-1][0]]
    more = HttpPublisher(hub.url, "reload")
    more.start()
    await more.until(3)
    await more.stop()
    assert await wait_shown(page, len(expected) + 3) == expected + more.acknowledged
    assert errors.errors == []


async def test_a_tab_away_for_longer_than_the_holder_remembers_catches_up_from_the_hub(
    hubs: HubProcesses, browser: Browser
) -> None:
    hub = await hubs.start(env={"HUB_HISTORY_SIZE": "2000"})  # the hub remembers more
    errors = PageErrors()
    context = await browser.new_context()
    # Pages that only subscribe (no table to draw): 1,100 events are quick to take in.
    staying, away = [errors.watch(await context.new_page()) for _ in range(2)]
    for page in (staying, away):
        await page.expose_function("issueToken", lambda: None)
        await page.goto(f"{hub.url}/")
        await page.evaluate(SUBSCRIBE, [["away"], "native"])
        await page.wait_for_function("window.sub.state === 'open'")
    await publish_many(hubs, "away", 3, history_size=2000)
    await away.wait_for_function("window.got.length === 3")
    streams: list[Request] = []
    away.on("request", lambda r: streams.append(r) if "/events?" in r.url else None)
    await away.goto("about:blank")
    await publish_many(hubs, "away", 1100, history_size=2000)  # more than the holder keeps
    await staying.wait_for_function("window.got.length >= 1103")
    await away.go_back()
    await away.evaluate(SUBSCRIBE, [["away"], "native"])  # from the cursor it saved
    await away.wait_for_function("window.got.length >= 1100", timeout=20_000)
    await asyncio.sleep(0.3)
    everything = [(i, d) for i, d in await staying.evaluate("window.got")]
    assert [(i, d) for i, d in await away.evaluate("window.got")] == everything[3:]
    # It read what it missed on a stream of its own, from its cursor.
    assert [await r.header_value("last-event-id") for r in streams] == [everything[2][0]]
    assert errors.errors == []


async def test_a_subscription_switches_channels_and_closes_on_the_mercure_door(
    hubs: HubProcesses, browser: Browser
) -> None:
    hub = await hubs.start()
    errors = PageErrors()
    page = errors.watch(await browser.new_page())
    ended: list[str] = []
    page.on("requestfailed", lambda r: ended.append(r.url) if "mercure?" in r.url else None)
    await page.expose_function("issueToken", lambda: None)
    await page.goto(f"{hub.url}/")
    await page.evaluate(
        SUBSCRIBE.replace("door,", 'door, lastEventId: "urn:uuid:no-such-update",'),
        [["https://example.com/a"], "mercure"],
    )
    await page.wait_for_function("window.sub.state === 'open' && window.resets.length")
    assert await page.evaluate("window.resets") == [["unknown", ["https://example.com/a"]]]
    await page.evaluate("window.sub.setChannels(['https://example.com/b'])")
    await page.wait_for_function("window.sub.state === 'open'")
    await publish_many(hubs, "https://example.com/a", 1)
    await publish_many(hubs, "https://example.com/b", 1)
    await page.wait_for_function("window.got.length >= 1")
    await asyncio.sleep(0.3)
    assert [data for _id, data in await page.evaluate("window.got")] == ["0"]  # b's only
    assert await page.evaluate("window.sub.channels") == ["https://example.com/b"]
    await page.evaluate("window.sub.close()")
    assert await page.evaluate("window.sub.state") == "closed"
    # Both streams ended in the browser: a's when it switched, b's when it closed.
    for _ in range(50):
        if len(ended) == 2:
            break
        await asyncio.sleep(0.05)
    assert [u.split("topic=")[1] for u in ended] == [
        "https%3A%2F%2Fexample.com%2Fa",
        "https%3A%2F%2Fexample.com%2Fb",
    ]
    assert errors.errors == []


async def test_the_stream_reader_reads_events_split_anywhere_and_a_silent_stream_is_left(
    hubs: HubProcesses, browser: Browser
) -> None:
    hub = await hubs.start()
    page = await browser.new_page()
    streams: list[Request] = []
    page.on("request", lambda r: streams.append(r) if "/events?" in r.url else None)
    await page.goto(f"{hub.url}/")
    events = await page.evaluate(
        """async (chunks) => {
            const { readEvents } = await import("/static/hub.js");
            const bytes = new TextEncoder();
            const body = new ReadableStream({ start(c) {
                for (const chunk of chunks) c.enqueue(bytes.encode(chunk));
                c.close();
            } });
            const seen = [];
            await readEvents(new Response(body), (e) => seen.push(e), (ms) => seen.push(ms));
            return seen;
        }""",
        [
            ": connected\nid: 1-0\nretry: 300\n\n",
            "id: 2-0\r",
            "\nevent: upd",
            "ate\r\ndata: two\r\ndata:  lines é\r\n\r",
            "\nid: 3-0\ndata\n\nevent: lonely\n\nid: 4-0\rdata: x\r\r",
            "data: no end",
        ],
    )
    assert events == [
        300,
        {"id": "1-0", "type": "message", "data": None},  # a cursor only
        {"id": "2-0", "type": "update", "data": "two\n lines é"},
        {"id": "3-0", "type": "message", "data": ""},
        {"id": "4-0", "type": "message", "data": "x"},
    ]

    # The hub's heartbeat is 15 s: with stallMs at 1 s, the stream is left for a new one
    # from the cursor the hub's first lines gave (nothing else was sent).
    await page.expose_function("issueToken", lambda: None)
    await page.evaluate(SUBSCRIBE.replace("door,", "door, stallMs: 1000,"), [["silent"], "native"])
    for _ in range(100):
        if len(streams) >= 2:
            break
        await asyncio.sleep(0.05)
    await page.evaluate("window.sub.close()")
    cursors = [await r.header_value("last-event-id") for r in streams]
    assert len(cursors) == 2, cursors
    assert cursors[0] is None  # joined live
    assert cursors[1], cursors  # and came back from where it joined


@pytest.mark.parametrize(("door", "seconds"), [("native", 15), ("mercure", 6)])
async def test_tokens_expiring_every_five_seconds_are_replaced_with_no_gap_and_no_repeat(
    hubs: HubProcesses, browser: Browser, door: str, seconds: float
) -> None:
    hub = await hubs.start(env={"HUB_JWT_KEY": KEY})
    errors = PageErrors(401)  # the first token handed out has expired already
    context = await browser.new_context()
    page = errors.watch(await context.new_page())
    issued: list[str] = []

    def issue_token() -> str:
        issued.append(token(expires_in=5 if issued else -10))
        return issued[-1]

    await page.expose_function("issueToken", issue_token)
    await page.goto(f"{hub.url}/")
    await page.evaluate(SUBSCRIBE, [["tokens"], door])
    await page.wait_for_function("window.sub.state === 'open'")
    publishing = HttpPublisher(
        hub.url, "tokens", bearer=token(publish=["*"]), mercure=door == "mercure"
    )
    publishing.start()
    await asyncio.sleep(seconds)
    await publishing.stop()
    acknowledged = publishing.acknowledged
    await page.wait_for_function(f"window.got.length >= {len(acknowledged)}")
    await asyncio.sleep(0.3)
    got = [(i, d) for i, d in await page.evaluate("window.got")]
    assert got == acknowledged
    tokens = await page.evaluate("window.tokens")
    assert len(tokens) >= 1 + seconds // 5  # the expired one, then one per lifetime
    assert await metric(hub.url, "hub_connections_closed_total", 'reason="expired"') == 0
    assert await page.evaluate("window.resets") == []
    assert errors.errors == []


async def test_demo_page_reads_well_on_a_phone_and_uses_a_wide_screen(
    hubs: HubProcesses, browser: Browser, tmp_path: Path
) -> None:
    hub = await hubs.start()
    errors = PageErrors()
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    page = await demo_tab(context, errors, hub.url, "looks")
    publishing = HttpPublisher(hub.url, "looks")
    publishing.start()
    await publishing.until(3)
    await publishing.stop()
    await wait_shown(page, 3)
    await page.evaluate("""fetch("publish", {method: "POST", body: JSON.stringify({
        channel: "looks", event: "update",
        data: {text: "a longer event, to see how it wraps on a narrow screen", n: 42}})})""")
    await wait_shown(page, 4)
    phone = await page.evaluate("""() => ({
        scroll: document.documentElement.scrollWidth,
        data: document.querySelector("#events td.data").getBoundingClientRect().width,
        row: document.querySelector("#events tbody tr").getBoundingClientRect().height,
    })""")
    assert phone["scroll"] <= 390, phone  # no sideways scrolling
    assert phone["data"] > 300, phone  # the data gets the width of the screen
    assert phone["row"] < 120, phone
    print("screenshot:", await screenshot(page, tmp_path, "hubjs-390"))

    await page.set_viewport_size({"width": 1280, "height": 800})
    boxes = await page.evaluate("""() => Object.fromEntries(
        ["subscribe-section", "publish-section", "chat-section"].map((id) => {
            const r = document.getElementById(id).getBoundingClientRect();
            return [id, [r.left, r.top, r.right]];
        }))""")
    events, publish, chat = (
        boxes["subscribe-section"],
        boxes["publish-section"],
        boxes["chat-section"],
    )
    assert publish[0] > 1280 * 0.6, boxes  # the right third
    assert chat[0] == publish[0], boxes
    assert publish[1] == events[1], boxes  # beside the events, not below them
    print("screenshot:", await screenshot(page, tmp_path, "hubjs-1280"))
    assert errors.errors == []
