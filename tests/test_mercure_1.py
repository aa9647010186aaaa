"""Mercure 1.0 beside 0.24 on one hub: match= and match_urlpattern= subscriptions,
at+jwt tokens with authorization_details on both doors, the 1.0 cookie, no token in
the URL, RFC 6750 challenges, Mercure-Last-Event-ID, HUB_MERCURE_PROTOCOLS, and URL
Pattern subscribers across nodes."""

from __future__ import annotations

import httpx
import jwt
import pytest

from hub import Settings
from hub.doors.grants import bearer_challenge
from support.hubs import Backends, StartHub
from support.mercure import (
    DETAIL,
    KEY,
    access_token,
    mercure1_stream,
    mercure_publish,
    mercure_stream,
    token,
    wide_subscriptions,
)

pytestmark = pytest.mark.anyio

#: The 1.0 conformance suite's publisher: publish and subscribe on every topic.
PUBLISHER = access_token(publish=["*"], subscribe=["*"])
BOOK = "https://example.net/books/1"


@pytest.fixture
def embedded() -> Backends:
    return Backends("embedded", None)


def _settings(backends: Backends, **changes: object) -> Settings:
    return backends.settings(jwt_key=KEY, anonymous=True, **changes)


async def _get(url: str, **headers: str) -> httpx.Response:
    async with (
        httpx.AsyncClient() as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        return response


async def test_match_and_match_urlpattern_select_like_the_conformance_suite(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(embedded), embedded.backend())
    braces = "https://example.net/{id}"
    async with (
        mercure1_stream(hub.url, ["raw"]) as raw,
        mercure1_stream(hub.url, ["foo", "second"]) as several,
        mercure1_stream(hub.url, [BOOK]) as uri,
        mercure1_stream(hub.url, urlpattern=["https://example.net/books/:id"]) as pattern,
        mercure1_stream(hub.url, urlpattern=["https://example.net/bar/:id"]) as other,
        mercure1_stream(hub.url, [braces]) as literal,
        mercure_stream(hub.url, ["https://example.net/books/{id}"]) as template,
    ):
        assert uri.response_headers is not None
        assert uri.response_headers["mercure-last-event-id"] == "earliest"
        for topic in ("raw", "second", BOOK, "https://example.net/books/2/x", braces):
            sent = await mercure_publish(hub.url, topic, topic, bearer=PUBLISHER, id=f"id-{topic}")
            assert sent.text == f"id-{topic}"
        await mercure_publish(hub.url, "raw", "secret", bearer=PUBLISHER, private="on")
        assert [e.data for e in await raw.wait_for(1)] == ["raw"]
        assert [e.data for e in await several.wait_for(1)] == ["second"]
        assert [(e.id, e.data) for e in await uri.wait_for(1)] == [(f"id-{BOOK}", BOOK)]
        # A URL Pattern's :id is one path segment; under match= braces are literal.
        assert [e.data for e in await pattern.wait_for(1)] == [BOOK]
        assert [e.data for e in await literal.wait_for(1)] == [braces]
        # A 0.24 subscriber on the same hub gets the same update.
        assert [e.data for e in await template.wait_for(1)] == [BOOK]
        await mercure_publish(hub.url, "raw", "last", bearer=PUBLISHER)
        assert [e.data for e in await raw.wait_for(2)] == ["raw", "last"]  # no private
        assert other.events == []
        assert (len(pattern.events), len(uri.events)) == (1, 1)


async def test_access_token_grants_publish_and_private_updates_by_match_and_pattern(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(embedded), embedded.backend())
    reader = access_token(subscribe=[], patterns=["https://example.net/books/:id"])
    async with (
        mercure1_stream(hub.url, [BOOK], bearer=reader) as granted,
        mercure1_stream(hub.url, [BOOK]) as anonymous,
        # A 1.0 token works on a 0.24 request too, and a 0.24 token on a 1.0 one.
        mercure_stream(hub.url, [BOOK], bearer=reader) as old_request,
        mercure1_stream(hub.url, [BOOK], bearer=token(subscribe=[BOOK])) as old_token,
    ):
        await mercure_publish(hub.url, BOOK, "secret", bearer=PUBLISHER, private="on")
        await mercure_publish(hub.url, BOOK, "public", bearer=PUBLISHER)
        for stream in (granted, old_request, old_token):
            assert [e.data for e in await stream.wait_for(2)] == ["secret", "public"]
        assert [e.data for e in await anonymous.wait_for(1)] == ["public"]
    narrow = access_token(publish=["https://example.net/books/2"])
    refused = await mercure_publish(hub.url, BOOK, "x", bearer=narrow, expect=403)
    assert refused.headers["www-authenticate"].startswith('Bearer realm="mercure"')
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    await mercure_publish(hub.url, "https://example.net/books/2", "x", bearer=narrow)
    # The native door reads the same grants.
    async with httpx.AsyncClient() as client:
        native = await client.post(
            f"{hub.url}/publish",
            json={"channel": "https://example.net/books/2", "data": "n"},
            headers={"Authorization": f"Bearer {narrow}"},
        )
        assert native.status_code == 201, native.text
        denied = await client.post(
            f"{hub.url}/publish",
            json={"channel": BOOK, "data": "n"},
            headers={"Authorization": f"Bearer {narrow}"},
        )
        assert denied.status_code == 403


#: (what is wrong, the token): each refused whole, as Mercure does.
MALFORMED = [
    ("no at+jwt type", access_token(publish=["*"], typ=None)),
    ("no exp", access_token(publish=["*"], expires_in=None)),
    (
        "unknown action",
        access_token(details=[{"type": DETAIL, "actions": ["read"], "topics": [{"match": "*"}]}]),
    ),
    (
        "bare string topic",
        access_token(details=[{"type": DETAIL, "actions": ["publish"], "topics": ["*"]}]),
    ),
    (
        "unknown match_type",
        access_token(
            details=[
                {
                    "type": DETAIL,
                    "actions": ["publish"],
                    "topics": [{"match": "*", "match_type": "regex"}],
                }
            ]
        ),
    ),
    ("relative URL pattern", access_token(patterns=["/books/:id"])),
    ("another key", access_token(publish=["*"], key="k" * 40)),
]


async def test_malformed_access_tokens_are_401_invalid_token(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(embedded), embedded.backend())
    for case, bad in MALFORMED:
        refused = await mercure_publish(hub.url, BOOK, "x", bearer=bad, expect=401)
        assert 'error="invalid_token"' in refused.headers["www-authenticate"], case


async def test_entries_of_other_types_grant_nothing_and_refuse_nothing(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(embedded), embedded.backend())
    foreign = {"type": "https://example.com/payment", "actions": ["pay"]}
    only_foreign = access_token(details=[foreign])
    await mercure_publish(hub.url, BOOK, "x", bearer=only_foreign, expect=403)
    mixed = access_token(
        details=[foreign, {"type": DETAIL, "actions": ["publish"], "topics": [{"match": "*"}]}]
    )
    await mercure_publish(hub.url, BOOK, "x", bearer=mixed)


async def test_tokens_travel_in_the_header_or_cookie_and_never_in_a_1_0_url(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(jwt_key=KEY), embedded.backend())
    reader = access_token(subscribe=["*"])
    base = f"{hub.url}/.well-known/mercure"
    missing = await _get(f"{base}?match=a")
    assert missing.status_code == 401
    metadata = f"{hub.url}/.well-known/oauth-protected-resource/.well-known/mercure"
    assert missing.headers["www-authenticate"] == (
        f'Bearer realm="mercure", resource_metadata="{metadata}"'
    )
    in_url = await _get(f"{base}?match=a&authorization={reader}")
    assert in_url.status_code == 400
    assert 'error="invalid_request"' in in_url.headers["www-authenticate"]
    expired = await _get(f"{base}?match=a", Authorization=f"Bearer {token(expires_in=-5)}")
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    async with mercure1_stream(hub.url, ["a"], cookie=reader) as by_cookie:
        assert by_cookie.status == 200
    # 0.24 requests keep the query parameter (for 0.24 tokens) and their own cookie.
    old_reader = token(subscribe=["*"])
    async with mercure_stream(hub.url, ["a"], query={"authorization": old_reader}) as old:
        assert old.status == 200
    # An at+jwt access token is 1.0's, whatever the request: never from a URL.
    for url in (f"{base}?topic=a", f"{hub.url}/events?channel=a"):
        leaked = await _get(f"{url}&authorization={reader}")
        assert leaked.status_code == 400, url
        assert 'error="invalid_request"' in leaked.headers["www-authenticate"]
    old_cookie = await _get(f"{base}?match=a", Cookie=f"mercureAuthorization={reader}")
    assert old_cookie.status_code == 401  # the 0.24 cookie is not read on a 1.0 request


#: 1.0 selector queries refused with 400.
BAD_QUERIES = [
    "match_regex=a",  # unknown name under the match prefix
    "match=a&topic=a",  # both protocols at once
    "match_urlpattern=/relative/:id",
    "match_urlpattern=https://x/:a((?=a)a)",  # look-ahead: backtracking only
    "match_urlpattern=" + "x" * 1100,
]


async def test_bad_1_0_selectors_are_400_invalid_request(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(embedded), embedded.backend())
    for query in BAD_QUERIES:
        response = await _get(f"{hub.url}/.well-known/mercure?{query}")
        assert response.status_code == 400, query
        assert 'error="invalid_request"' in response.headers.get("www-authenticate", ""), query


async def test_mercure_protocols_narrow_the_hub_to_one_version(
    embedded: Backends, start_hub: StartHub
) -> None:
    only_1 = await start_hub(_settings(embedded, mercure_protocols="1.0"), embedded.backend())
    only_0 = await start_hub(_settings(embedded, mercure_protocols="0.24"), embedded.backend())
    assert (await _get(f"{only_1.url}/.well-known/mercure?topic=a")).status_code == 400
    assert (await _get(f"{only_0.url}/.well-known/mercure?match=a")).status_code == 400
    assert (await _get(f"{only_1.url}/.well-known/mercure?match=a")).status_code == 200
    assert (await _get(f"{only_0.url}/.well-known/mercure?topic=a")).status_code == 200
    await mercure_publish(only_1.url, "a", "x", bearer=token(publish=["*"]), expect=401)
    await mercure_publish(only_0.url, "a", "x", bearer=PUBLISHER, expect=401)
    await mercure_publish(only_1.url, "a", "x", bearer=PUBLISHER)
    await mercure_publish(only_0.url, "a", "x", bearer=token(publish=["*"]))
    # The native API is the hub's own: its tokens and their placement do not change.
    old_token = token(publish=["*"], subscribe=["*"])
    events = await _get(f"{only_1.url}/events?channel=a&authorization={old_token}")
    assert events.status_code == 200
    async with httpx.AsyncClient() as client:
        native = await client.post(
            f"{only_1.url}/publish",
            json={"channel": "a", "data": "n"},
            headers={"Authorization": f"Bearer {old_token}"},
        )
    assert native.status_code == 201
    with pytest.raises(Exception, match="mercure_protocols"):
        Settings(mercure_protocols="2.0")


async def test_url_pattern_subscriber_takes_the_firehose_only_while_it_is_there(
    redis_backends: Backends, start_hub: StartHub
) -> None:
    backend = redis_backends.backend()
    settings = _settings(redis_backends)
    first = await start_hub(settings, backend)
    second = await start_hub(settings, backend)
    async with mercure1_stream(first.url, ["exact"]) as exact:
        await mercure_publish(second.url, "exact", "x", bearer=PUBLISHER)
        await exact.wait_for(1)
        assert await wide_subscriptions(redis_backends) == 0
        pattern = mercure1_stream(first.url, urlpattern=["https://example.net/books/:id"])
        async with pattern:
            assert await wide_subscriptions(redis_backends) == 1
            await mercure_publish(second.url, BOOK, "across", bearer=PUBLISHER)
            assert [e.data for e in await pattern.wait_for(1)] == ["across"]


@pytest.fixture
def redis_backends(redis_url: str) -> Backends:
    return Backends("redis", redis_url)


async def test_payload_of_either_token_shows_in_the_subscriptions_api(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(_settings(embedded, subscriptions=True), embedded.backend())
    path = "/.well-known/mercure/subscriptions"
    watcher = token(subscribe=[path + "{/topic}{/subscriber}"])
    old = _with_payload(token(subscribe=[]), {"user": "old"})
    new = access_token(subscribe=["a"], payload={"user": "new"})
    async with (
        mercure_stream(hub.url, ["a"], bearer=old),
        mercure1_stream(hub.url, ["b"], bearer=new),
    ):
        # Each protocol's view lists the subscriptions made in it (a 1.0 token reads 1.0's).
        seen: list[object] = []
        for _ in range(100):
            listed = await _get_json(hub.url + path, watcher)
            modern = await _get_json(hub.url + path, access_token(subscribe=["*"]))
            seen = [str(s.get("payload")) for s in listed["subscriptions"]]
            seen += [str(s.get("payload")) for s in modern["subscriptions"]]
            if len(seen) == 2:
                break
        assert seen == ["{'user': 'old'}", "{'user': 'new'}"]


def _with_payload(encoded: str, payload: object) -> str:
    claims = jwt.decode(encoded, KEY, algorithms=["HS256"])
    claims["mercure"]["payload"] = payload
    return jwt.encode(claims, KEY, algorithm="HS256")


async def _get_json(url: str, bearer: str) -> dict[str, list[dict[str, object]]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(url, headers={"Authorization": f"Bearer {bearer}"})
    body: dict[str, list[dict[str, object]]] = response.json()
    return body


def test_a_challenge_quotes_no_token() -> None:
    leaked = access_token(publish=["*"])
    challenge = bearer_challenge("invalid_token", f"cannot use {leaked} here")
    assert leaked.split(".")[2] not in challenge
    assert challenge.startswith('Bearer realm="mercure", error="invalid_token"')
