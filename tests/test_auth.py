"""The authorization matrix (Mercure door and native API), the Mercure 400/403 cases,
asymmetric keys, and the topic-selector matcher."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub import ConfigError, Settings
from hub.doors.topics import Selectors, compile_template, matches
from support.hubs import Backends, RunningHub, StartHub
from support.mercure import KEY, mercure_publish, mercure_stream, token
from support.sse import SSEStream

pytestmark = pytest.mark.anyio

TOPIC = "https://example.com/books/1"


@pytest.fixture
def embedded() -> Backends:
    return Backends("embedded", None)


@pytest.fixture
async def locked(embedded: Backends, start_hub: StartHub) -> RunningHub:
    """A hub with a key and no anonymous subscribers."""
    return await start_hub(embedded.settings(jwt_key=KEY), embedded.backend())


# -- publishing: no token, wrong key, expired, wrong claims, cookie without origin -------


async def test_publish_without_token_is_401(locked: RunningHub) -> None:
    response = await mercure_publish(locked.url, TOPIC, "x", expect=401)
    assert "needs a JWT" in response.json()["message"]


async def test_publish_with_token_signed_by_another_key_is_401(locked: RunningHub) -> None:
    forged = token(publish=["*"], key="not-the-hub-key-but-long-enough-to-sign")
    await mercure_publish(locked.url, TOPIC, "x", bearer=forged, expect=401)


async def test_publish_with_expired_token_is_401(locked: RunningHub) -> None:
    expired = token(publish=["*"], expires_in=-10)
    response = await mercure_publish(locked.url, TOPIC, "x", bearer=expired, expect=401)
    assert "expired" in response.json()["message"]


async def test_publish_with_malformed_authorization_header_is_401(locked: RunningHub) -> None:
    await mercure_publish(
        locked.url, TOPIC, "x", headers={"Authorization": "Basic abc"}, expect=401
    )


async def test_publish_outside_the_publish_claims_is_403(locked: RunningHub) -> None:
    narrow = token(publish=["https://example.com/users/{id}"])
    await mercure_publish(locked.url, TOPIC, "x", bearer=narrow, expect=403)
    # Every topic of the update must be allowed, alternates included.
    await mercure_publish(
        locked.url, ["https://example.com/users/1", TOPIC], "x", bearer=narrow, expect=403
    )
    await mercure_publish(locked.url, "https://example.com/users/1", "x", bearer=narrow)


async def test_publish_with_token_lacking_a_publish_claim_is_403(locked: RunningHub) -> None:
    subscriber_only = token(subscribe=["*"])
    await mercure_publish(locked.url, TOPIC, "x", bearer=subscriber_only, expect=403)


async def test_cookie_publish_needs_an_allowed_origin(locked: RunningHub) -> None:
    cookie = {"mercureAuthorization": token(publish=["*"])}
    no_origin = await mercure_publish(locked.url, TOPIC, "x", cookies=cookie, expect=401)
    assert "Origin or Referer" in no_origin.json()["message"]
    await mercure_publish(
        locked.url,
        TOPIC,
        "x",
        cookies=cookie,
        headers={"Origin": "https://evil.example"},
        expect=401,
    )
    # The hub's own page may publish with the cookie.
    await mercure_publish(locked.url, TOPIC, "x", cookies=cookie, headers={"Origin": locked.url})
    await mercure_publish(
        locked.url, TOPIC, "x", cookies=cookie, headers={"Referer": f"{locked.url}/page"}
    )


async def test_cookie_publish_from_a_configured_cors_origin_is_accepted(
    embedded: Backends, start_hub: StartHub
) -> None:
    settings = embedded.settings(jwt_key=KEY, cors_origins="https://app.example")
    hub = await start_hub(settings, embedded.backend())
    cookie = {"mercureAuthorization": token(publish=["*"])}
    await mercure_publish(
        hub.url, TOPIC, "x", cookies=cookie, headers={"Origin": "https://app.example"}
    )


async def test_native_stream_answers_a_configured_cors_origin(
    embedded: Backends, start_hub: StartHub
) -> None:
    settings = embedded.settings(cors_origins="https://app.example", anonymous=True)
    hub = await start_hub(settings, embedded.backend())
    async with (
        httpx.AsyncClient(timeout=5) as client,
        client.stream(
            "GET", f"{hub.url}/events?channel=c", headers={"Origin": "https://app.example"}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        async for line in response.aiter_lines():
            assert line == ": connected"
            break


# -- subscribing ----------------------------------------------------------------------


async def test_subscribe_without_token_is_401_unless_anonymous(locked: RunningHub) -> None:
    async with mercure_stream(locked.url, [TOPIC]) as stream:
        assert stream.status == 401
    async with mercure_stream(locked.url, [TOPIC], bearer=token(subscribe=[])) as stream:
        assert stream.status == 200


async def test_subscribe_with_bad_tokens_is_401_even_when_anonymous_is_allowed(
    embedded: Backends, start_hub: StartHub
) -> None:
    hub = await start_hub(embedded.settings(jwt_key=KEY, anonymous=True), embedded.backend())
    for bad in (token(subscribe=["*"], expires_in=-10), token(subscribe=["*"], key="x" * 40)):
        async with mercure_stream(hub.url, [TOPIC], bearer=bad) as stream:
            assert stream.status == 401
    async with mercure_stream(hub.url, [TOPIC]) as stream:
        assert stream.status == 200


async def test_subscriber_token_in_query_parameter_and_cookie(locked: RunningHub) -> None:
    good = token(subscribe=["*"])
    async with mercure_stream(locked.url, [TOPIC], query={"authorization": good}) as stream:
        assert stream.status == 200
    cookie_stream = mercure_stream(locked.url, [TOPIC])
    cookie_stream.headers["Cookie"] = f"mercureAuthorization={good}"
    async with cookie_stream:
        assert cookie_stream.status == 200


async def test_separate_publisher_and_subscriber_keys(
    embedded: Backends, start_hub: StartHub
) -> None:
    pub_key, sub_key = "p" * 40, "s" * 40
    settings = embedded.settings(publisher_jwt_key=pub_key, subscriber_jwt_key=sub_key)
    hub = await start_hub(settings, embedded.backend())
    await mercure_publish(hub.url, TOPIC, "x", bearer=token(publish=["*"], key=pub_key))
    await mercure_publish(hub.url, TOPIC, "x", bearer=token(publish=["*"], key=sub_key), expect=401)
    async with mercure_stream(hub.url, [TOPIC], bearer=token(subscribe=[], key=sub_key)) as s:
        assert s.status == 200


# -- the native API under the same authorization --------------------------------------


async def test_native_publish_needs_a_token_with_matching_claims(locked: RunningHub) -> None:
    async with httpx.AsyncClient() as client:
        url = f"{locked.url}/publish"
        body = {"channel": "news", "data": "x"}
        assert (await client.post(url, json=body)).status_code == 401
        wrong = {"Authorization": f"Bearer {token(publish=['sports'])}"}
        assert (await client.post(url, json=body, headers=wrong)).status_code == 403
        right = {"Authorization": f"Bearer {token(publish=['news'])}"}
        assert (await client.post(url, json=body, headers=right)).status_code == 201


async def test_native_events_needs_a_token_unless_anonymous(locked: RunningHub) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{locked.url}/events?channel=news")
        assert response.status_code == 401
        expired = {"Authorization": f"Bearer {token(subscribe=['news'], expires_in=-5)}"}
        response = await client.get(f"{locked.url}/events?channel=news", headers=expired)
        assert response.status_code == 401


async def test_native_stream_ends_when_its_token_expires(locked: RunningHub) -> None:
    stream = SSEStream(locked.url, ["news"])
    stream.headers["Authorization"] = f"Bearer {token(subscribe=[], expires_in=1.5)}"
    async with stream:
        assert stream.status == 200
        await stream.wait_ended(timeout=5)
    for _ in range(50):  # the hub counts it once its side of the stream has wound down
        if locked.broker.stats.closed["expired"]:
            break
        await asyncio.sleep(0.02)
    assert locked.broker.stats.closed == {**locked.broker.stats.closed, "expired": 1, "slow": 0}


async def test_no_key_is_development_mode_anyone_publishes(
    embedded: Backends, start_hub: StartHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await start_hub(embedded.settings(), embedded.backend())
    assert "DEVELOPMENT MODE" in caplog.text
    await mercure_publish(hub.url, TOPIC, "x")
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{hub.url}/publish", json={"channel": "a", "data": "x"})
        assert response.status_code == 201


# -- the spec's 400/403 cases ---------------------------------------------------------


async def test_publish_bad_fields_are_400_and_reserved_topics_403(locked: RunningHub) -> None:
    publisher = token(publish=["*"])
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{locked.url}/.well-known/mercure",
            content="data=x",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Authorization": f"Bearer {publisher}",
            },
        )
        assert response.status_code == 400
    await mercure_publish(locked.url, TOPIC, "x", bearer=publisher, retry="soon", expect=400)
    await mercure_publish(locked.url, TOPIC, "x", bearer=publisher, id="a\nb", expect=400)
    await mercure_publish(locked.url, TOPIC, "x", bearer=publisher, type="a\rb", expect=400)
    await mercure_publish(
        locked.url,
        "https://hub.example/.well-known/mercure/subscriptions",
        "x",
        bearer=publisher,
        expect=403,
    )


async def test_subscribe_without_topic_or_with_malformed_template_is_400(
    locked: RunningHub,
) -> None:
    bearer = token(subscribe=["*"])
    async with mercure_stream(locked.url, [], bearer=bearer) as stream:
        assert stream.status == 400
    async with mercure_stream(locked.url, ["/books/{id"], bearer=bearer) as stream:
        assert stream.status == 400


# -- asymmetric keys ------------------------------------------------------------------


def _pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[bytes, str]:
    signing = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return signing, public.decode()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_asymmetric_tokens_verify_with_the_public_key(
    algorithm: str, embedded: Backends, start_hub: StartHub
) -> None:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "RS256":
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private_key = ec.generate_private_key(ec.SECP256R1())
    signing, public = _pem(private_key)
    # As it would arrive through an environment variable: newlines written as \n.
    settings = embedded.settings(jwt_key=public.replace("\n", "\\n"), jwt_algorithm=algorithm)
    hub = await start_hub(settings, embedded.backend())
    good = jwt.encode({"mercure": {"publish": ["*"]}}, signing, algorithm=algorithm)
    await mercure_publish(hub.url, TOPIC, "x", bearer=good)
    # Algorithm confusion: an HS256 token "signed" with the public key is refused.
    await mercure_publish(hub.url, TOPIC, "x", bearer=_hs256_with(public), expect=401)


def _hs256_with(secret: str) -> str:
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"mercure": {"publish": ["*"]}}).encode())
    signature = hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest()
    return (head + b"." + body + b"." + b64(signature)).decode()


def test_unusable_public_key_is_a_config_error_that_says_what_to_give() -> None:
    from hub.doors.auth import Auth

    with pytest.raises(ConfigError, match="PEM"):
        Auth(Settings(jwt_key="not a pem", jwt_algorithm="RS256"))


def test_boolean_settings_read_from_the_environment() -> None:
    assert Settings.from_env({"HUB_ANONYMOUS": "1"}).anonymous is True
    assert Settings.from_env({"HUB_ANONYMOUS": "0"}).anonymous is False
    with pytest.raises(ConfigError, match="use 1 or 0"):
        Settings.from_env({"HUB_ANONYMOUS": "maybe"})


# -- topic selectors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "topic", "expected"),
    [
        ("https://example.com/books/{id}", "https://example.com/books/1", True),
        ("https://example.com/books/{id}", "https://example.com/books/1/reviews", False),
        ("https://example.com/books/{id}", "https://example.com/users/1", False),
        ("https://example.com/{+path}", "https://example.com/a/b/c", True),
        ("/users/{user}/books/{id}", "/users/kevin/books/12", True),
        ("/search{?q,lang}", "/search?q=cat&lang=en", True),
        ("/search{?q,lang}", "/search?x=1", False),
        ("/files{/path*}", "/files/a/b/c", True),
        ("/doc{#section}", "/doc#intro", True),
        ("host{.domain*}", "host.example.com", True),
        ("/map{;x,y}", "/map;x=1;y=2", True),
        ("/id/{id}", "/id/caf%C3%A9", True),
        ("/id/{id}", "/id/a b", False),
        ("/a.b/{x}", "/aXb/1", False),
    ],
)
def test_uri_template_matching(template: str, topic: str, expected: bool) -> None:
    assert matches(topic, template) is expected


def test_star_exact_and_malformed_selectors() -> None:
    assert matches("anything", "*")
    assert matches("/exact", "/exact")
    assert not matches("/exact/no", "/exact")
    assert not matches("/x", "/{unclosed")
    selectors = Selectors(["/a", "/b/{id}"])
    assert selectors.match("/a")
    assert selectors.match("/b/2")
    assert not selectors.match("/c")
    assert selectors.patterns
    assert not Selectors(["/a"]).patterns
    with pytest.raises(Exception, match="never closed"):
        compile_template("/books/{id")
