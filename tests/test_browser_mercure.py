"""A real browser on the hub's own page: EventSource subscriptions, form publishes with
a bearer token (and with the cookie), and the public, private, multi-topic and
URI-template cases as the Mercure spec has them. Playwright drives Debian's chromium
(/usr/bin/chromium); nothing is downloaded."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.async_api import Browser, Page

from support.hubs import Backends, RunningHub, StartHub
from support.mercure import KEY, access_token, token

pytestmark = pytest.mark.anyio


_SCRIPT = """
window.got = {};
window.sources = {};
window.subscribe = (name, query) => new Promise((resolve, reject) => {
  got[name] = [];
  const source = sources[name] = new EventSource('/.well-known/mercure?' + query);
  const keep = (e) => got[name].push({id: e.lastEventId, type: e.type, data: e.data});
  source.onmessage = keep;
  source.addEventListener('book.updated', keep);
  source.onopen = () => resolve(true);
  source.onerror = () => reject(new Error('EventSource failed for ' + name));
});
window.publish = async (fields, bearer) => {
  const body = new URLSearchParams();
  for (const [k, v] of fields) body.append(k, v);
  const headers = bearer ? {Authorization: 'Bearer ' + bearer} : {};
  const response = await fetch('/.well-known/mercure', {method: 'POST', headers, body});
  return [response.status, await response.text()];
};
"""


@pytest.fixture
async def hub(start_hub: StartHub) -> RunningHub:
    backends = Backends("embedded", None)
    # As the issue asks: anonymous subscribers plus a key, so a page on the hub's own
    # origin subscribes without a token and publishes with a bearer token.
    return await start_hub(backends.settings(jwt_key=KEY, anonymous=True), backends.backend())


async def _page(browser: Browser, hub: RunningHub) -> Page:
    page = await browser.new_page()
    await page.goto(hub.url + "/")
    await page.add_script_tag(content=_SCRIPT)
    return page


async def _events(page: Page, name: str, count: int) -> list[dict[str, Any]]:
    await page.wait_for_function(f"got[{name!r}].length >= {count}", timeout=10_000)
    events: list[dict[str, Any]] = await page.evaluate(f"got[{name!r}]")
    return events


def _query(*topics: str, **extra: str) -> str:
    return urlencode([("topic", t) for t in topics] + list(extra.items()))


async def test_browser_sees_public_private_multi_topic_and_template_cases(
    browser: Browser, hub: RunningHub
) -> None:
    page = await _page(browser, hub)
    book = "https://example.com/books/1"
    reader = token(subscribe=["https://example.com/books/{id}"])
    await page.evaluate(f"subscribe('exact', {_query(book)!r})")
    await page.evaluate(f"subscribe('template', {_query('https://example.com/books/{id}')!r})")
    await page.evaluate(f"subscribe('alternate', {_query('https://example.com/alt')!r})")
    await page.evaluate(f"subscribe('owner', {_query(book, authorization=reader)!r})")
    publisher = token(publish=["*"])

    status, public_id = await page.evaluate(
        "([t, b]) => publish([['topic', t], ['data', 'public'], ['id', 'urn:b:1'],"
        " ['type', 'book.updated']], b)",
        [book, publisher],
    )
    assert (status, public_id) == (200, "urn:b:1")
    status, _ = await page.evaluate(
        "([t, b]) => publish([['topic', t], ['data', 'secret'], ['private', 'on']], b)",
        [book, publisher],
    )
    assert status == 200
    status, multi_id = await page.evaluate(
        "([t, b]) => publish([['topic', t], ['topic', 'https://example.com/alt'],"
        " ['data', 'multi']], b)",
        [book, publisher],
    )
    assert status == 200
    await page.evaluate(
        "(b) => publish([['topic', 'https://example.com/users/1'], ['data', 'user']], b)",
        publisher,
    )

    owner = await _events(page, "owner", 3)
    assert [e["data"] for e in owner] == ["public", "secret", "multi"]
    exact = await _events(page, "exact", 2)
    assert [(e["id"], e["type"], e["data"]) for e in exact] == [
        ("urn:b:1", "book.updated", "public"),
        (multi_id, "message", "multi"),
    ]
    template = await _events(page, "template", 2)
    assert [e["data"] for e in template] == ["public", "multi"]
    alternate = await _events(page, "alternate", 1)
    assert [e["data"] for e in alternate] == ["multi"]
    # Nothing more arrives: no private update for anonymous, no user topic for books.
    await page.wait_for_timeout(300)
    counts = await page.evaluate(
        "Object.fromEntries(Object.entries(got).map(([k, v]) => [k, v.length]))"
    )
    assert counts == {"exact": 2, "template": 2, "alternate": 1, "owner": 3}


async def test_browser_publish_needs_a_valid_token(browser: Browser, hub: RunningHub) -> None:
    page = await _page(browser, hub)
    status, _ = await page.evaluate("publish([['topic', 'a'], ['data', 'x']], null)")
    assert status == 401
    status, _ = await page.evaluate(
        "(b) => publish([['topic', 'a'], ['data', 'x']], b)", token(publish=["other"])
    )
    assert status == 403


async def test_browser_resumes_from_a_publisher_chosen_id(
    browser: Browser, hub: RunningHub
) -> None:
    page = await _page(browser, hub)
    publisher = token(publish=["*"])
    for i in range(3):
        await page.evaluate(
            "([i, b]) => publish([['topic', 'r'], ['data', 'm' + i], ['id', 'id-' + i]], b)",
            [i, publisher],
        )
    await page.evaluate(f"subscribe('resumed', {_query('r', lastEventID='id-0')!r})")
    resumed = await _events(page, "resumed", 2)
    assert [(e["id"], e["data"]) for e in resumed] == [("id-1", "m1"), ("id-2", "m2")]


async def test_browser_publishes_with_the_cookie_from_the_hubs_own_origin(
    browser: Browser, hub: RunningHub
) -> None:
    context = await browser.new_context()
    await context.add_cookies(
        [{"name": "mercureAuthorization", "value": token(publish=["*"]), "url": hub.url}]
    )
    page = await context.new_page()
    await page.goto(hub.url + "/")
    await page.add_script_tag(content=_SCRIPT)
    await page.evaluate(f"subscribe('c', {_query('cookie-topic')!r})")
    status, _ = await page.evaluate("publish([['topic', 'cookie-topic'], ['data', 'hi']], null)")
    assert status == 200
    assert [e["data"] for e in await _events(page, "c", 1)] == ["hi"]
    await context.close()


#: The Mercure 1.0 conformance suite's cases: (name, update topic, selectors as
#: (parameter, value), private, must be received).
CASES_1_0 = [
    ("raw", "raw-topic", [("match", "raw-topic")], False, True),
    ("several", "second", [("match", "foo"), ("match", "second")], False, True),
    ("uri", "https://example.net/foo/u1", [("match", "https://example.net/foo/u1")], False, True),
    (
        "pattern",
        "https://example.net/foo/p1",
        [("match_urlpattern", "https://example.net/foo/:random")],
        False,
        True,
    ),
    ("not-raw", "will-not-match", [("match", "another-name")], False, False),
    (
        "not-uri",
        "https://example.net/foo/nope",
        [("match", "https://example.net/foo/another-name")],
        False,
        False,
    ),
    (
        "not-pattern",
        "https://example.net/foo/nope2",
        [("match_urlpattern", "https://example.net/bar/:var")],
        False,
        False,
    ),
    ("private-raw", "secret-topic", [("match", "secret-topic")], True, False),
    (
        "private-uri",
        "https://example.net/foo/s1",
        [("match", "https://example.net/foo/s1")],
        True,
        False,
    ),
    (
        "private-pattern",
        "https://example.net/foo/s2",
        [("match_urlpattern", "https://example.net/foo/:random")],
        True,
        False,
    ),
]


async def test_browser_runs_the_mercure_1_0_conformance_cases(
    browser: Browser, hub: RunningHub
) -> None:
    page = await _page(browser, hub)
    # As the 1.0 suite publishes: an HS256 at+jwt access token with aud and iss, its
    # grants in authorization_details.
    publisher = access_token(publish=["*"], subscribe=["*"])
    # Five streams at a time: a browser opens at most six connections to one origin.
    for batch in (CASES_1_0[:5], CASES_1_0[5:]):
        for name, _, selectors, _, _ in batch:
            await page.evaluate(f"subscribe({name!r}, {urlencode(selectors)!r})")
        for name, topic, _, private, _ in batch:
            fields = [["topic", topic], ["id", f"id-{name}"], ["data", f"data for\n\n  {name}"]]
            if private:
                fields.append(["private", "on"])
            status, body = await page.evaluate("([f, b]) => publish(f, b)", [fields, publisher])
            assert (status, body) == (200, f"id-{name}")
        for name, _, _, _, received in batch:
            if received:
                await page.wait_for_function(
                    f"got[{name!r}].some((e) => e.id === 'id-{name}')", timeout=10_000
                )
                events = await page.evaluate(f"got[{name!r}]")
                [mine] = [e for e in events if e["id"] == f"id-{name}"]
                assert mine["data"] == f"data for\n\n  {name}"
        await page.wait_for_timeout(300)
        got = await page.evaluate(
            "Object.fromEntries(Object.entries(got).map(([k, v]) => [k, v.map((e) => e.id)]))"
        )
        for name, _, _, _, received in batch:
            assert (f"id-{name}" in got[name]) is received, name
            await page.evaluate(f"sources[{name!r}].close()")
    # The public /foo/ updates of the second batch reach the pattern stream there.
    assert got["private-pattern"] == ["id-not-uri", "id-not-pattern"]
