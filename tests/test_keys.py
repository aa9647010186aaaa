"""Keys that rotate (HUB_JWT_JWKS_URL, against a local JWKS server) and the aud/iss
checks (HUB_JWT_AUDIENCE, HUB_JWT_ISSUER), on both doors."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from redis.crc import key_slot

from hub import ConfigError, Settings, create_app
from hub.cli import main
from hub.doors.jwks import JWKSKeys
from hub.errors import BadRequest, KeysUnavailable
from hub.store.calls import ROUTES_AT_MOST, Calls
from hub.store.keys import partition_of
from support.hubs import Backends, RunningHub, StartHub
from support.jwks import JWKSServer, SigningKey
from support.mercure import KEY
from support.net import free_port

pytestmark = pytest.mark.anyio

TOPIC = "https://example.com/books/1"
PUBLISH = {"mercure": {"publish": ["*"], "subscribe": ["*"]}}


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("RS256")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("ES256")


@pytest.fixture
def jwks(rsa_key: SigningKey, ec_key: SigningKey) -> Iterator[JWKSServer]:
    server = JWKSServer(rsa_key, ec_key)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def keyed(jwks: JWKSServer, start_hub: StartHub) -> RunningHub:
    embedded = Backends("embedded", None)
    return await start_hub(embedded.settings(jwt_jwks_url=jwks.url), embedded.backend())


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """One client for every request of a test (a new one costs an SSL context)."""
    async with httpx.AsyncClient() as made:
        yield made


async def native_publish(
    client: httpx.AsyncClient, hub: RunningHub, token: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.post(
        f"{hub.url}/publish", json={"channel": "a", "data": "x"}, headers=headers
    )


async def mercure_publish(
    client: httpx.AsyncClient, hub: RunningHub, token: str, expect: int = 200
) -> None:
    response = await client.post(
        f"{hub.url}/.well-known/mercure",
        data={"topic": TOPIC, "data": "x"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == expect, response.text


# -- JWKS -------------------------------------------------------------------------------


async def test_tokens_signed_by_any_key_of_the_set_pass_on_both_doors(
    client: httpx.AsyncClient, keyed: RunningHub, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    for key in (rsa_key, ec_key):
        assert (await native_publish(client, keyed, key.sign(PUBLISH))).status_code == 201
        await mercure_publish(client, keyed, key.sign(PUBLISH))
        headers = {"Authorization": f"Bearer {key.sign(PUBLISH)}"}
        async with client.stream(
            "GET", f"{keyed.url}/.well-known/mercure", params={"topic": "*"}, headers=headers
        ) as stream:
            assert stream.status_code == 200
    # A stranger's key with a kid of the set: the signature does not verify.
    forged = SigningKey("RS256").sign(PUBLISH, kid=rsa_key.kid)
    response = await native_publish(client, keyed, forged)
    assert response.status_code == 401
    assert jwks_url_in(response)
    # alg confusion: the set's RSA key must not be taken as an HMAC secret.
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # PyJWT refuses to sign that way itself, so the token is put together by hand.
    signed = b".".join(
        b64(json.dumps(part).encode())
        for part in ({"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}, PUBLISH)
    )
    confused = (signed + b"." + b64(hmac.digest(public_pem, signed, "sha256"))).decode()
    assert (await native_publish(client, keyed, confused)).status_code == 401


def b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def jwks_url_in(response: httpx.Response) -> bool:
    return "JWKS" in response.json()["message"]


async def test_a_rotated_key_is_fetched_on_its_first_token_and_the_old_one_dropped(
    client: httpx.AsyncClient, keyed: RunningHub, jwks: JWKSServer, rsa_key: SigningKey
) -> None:
    old_token = rsa_key.sign(PUBLISH)
    assert (await native_publish(client, keyed, old_token)).status_code == 201
    before = jwks.requests
    new_key = SigningKey("ES256")
    jwks.rotate(new_key)
    # The first token with the new kid makes the hub fetch the set again, once.
    tokens = [new_key.sign(PUBLISH) for _ in range(10)]
    answers = await asyncio.gather(*(native_publish(client, keyed, t) for t in tokens))
    assert [a.status_code for a in answers] == [201] * 10
    assert jwks.requests == before + 1
    # The fetched set no longer holds the old key: its tokens are refused now.
    response = await native_publish(client, keyed, old_token)
    assert response.status_code == 401
    assert "kid" in response.json()["message"]


async def test_unknown_kids_do_not_make_the_hub_hammer_the_endpoint(
    client: httpx.AsyncClient, keyed: RunningHub, jwks: JWKSServer, rsa_key: SigningKey
) -> None:
    before = jwks.requests
    made_up = [rsa_key.sign(PUBLISH, kid=f"made-up-{n}") for n in range(30)]
    answers = await asyncio.gather(*(native_publish(client, keyed, t) for t in made_up))
    assert {a.status_code for a in answers} == {401}
    assert "is not among the keys" in answers[0].json()["message"]
    # One fetch for all of them (they arrive together); the next ones are within the
    # rate limit and fetch nothing.
    assert jwks.requests == before + 1
    assert (
        await native_publish(client, keyed, rsa_key.sign(PUBLISH, kid="later"))
    ).status_code == 401
    assert jwks.requests == before + 1


async def test_known_keys_keep_working_while_the_endpoint_is_down(
    client: httpx.AsyncClient, keyed: RunningHub, jwks: JWKSServer, rsa_key: SigningKey
) -> None:
    jwks.status = 503
    new_key = SigningKey("RS256")
    jwks.rotate(new_key)
    # An unknown kid triggers a fetch that fails: refused, and nothing is forgotten.
    response = await native_publish(client, keyed, new_key.sign(PUBLISH))
    assert response.status_code == 401
    assert "could not fetch the set just now" in response.json()["message"]
    assert jwks.requests >= 2
    assert (await native_publish(client, keyed, rsa_key.sign(PUBLISH))).status_code == 201
    await mercure_publish(client, keyed, rsa_key.sign(PUBLISH))
    jwks.close()  # now not even listening
    assert (await native_publish(client, keyed, rsa_key.sign(PUBLISH))).status_code == 201


async def test_the_periodic_refresh_picks_up_a_rotation_by_itself(
    jwks: JWKSServer, rsa_key: SigningKey
) -> None:
    keys = JWKSKeys(jwks.url, refresh=0.05, unknown_kid_interval=3600)
    async with keys.opened():
        assert set(keys.kids()) == {k.kid for k in jwks.keys}
        new_key = SigningKey("ES256")
        jwks.rotate(new_key, keep=1)
        await until(lambda: new_key.kid in keys.kids())
        # Found without a fetch for an unknown kid (that one is an hour away).
        _, algorithms = await keys.resolve(new_key.sign(PUBLISH))
        assert algorithms == ["ES256"]
        assert rsa_key.kid not in keys.kids()


async def test_a_hub_started_while_the_endpoint_is_down_answers_503_then_recovers(
    client: httpx.AsyncClient, start_hub: StartHub, rsa_key: SigningKey
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/jwks.json"
    embedded = Backends("embedded", None)
    settings = embedded.settings(jwt_jwks_url=url, jwt_jwks_refresh=0.2)
    hub = await start_hub(settings, embedded.backend())
    response = await native_publish(client, hub, rsa_key.sign(PUBLISH))
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "could not load its keys" in response.json()["message"]
    # The endpoint comes up (on that port): the background retry fetches the keys.
    server = JWKSServer(rsa_key, port=port)
    try:
        await until_status(client, hub, rsa_key.sign(PUBLISH), 201)
    finally:
        server.close()


async def until_status(client: httpx.AsyncClient, hub: RunningHub, token: str, status: int) -> None:
    deadline = time.monotonic() + 15
    while (await native_publish(client, hub, token)).status_code != status:
        assert time.monotonic() < deadline, f"never answered {status}"
        await asyncio.sleep(0.2)


async def until(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition never met"
        await asyncio.sleep(0.02)


async def test_an_endpoint_that_answers_no_jwks_is_a_configuration_error(
    jwks: JWKSServer,
) -> None:
    for status, body, says in [
        (404, b"not here", "HTTP 404"),
        (200, b"<html>", "not JSON"),
        (200, b'{"keys": []}', "no usable signing key"),
        (200, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable signing key"),
    ]:
        jwks.status, jwks.body = status, body
        with pytest.raises(ConfigError, match=says) as caught:
            async with JWKSKeys(jwks.url).opened():
                pass
        assert "jwks_uri" in str(caught.value)


def test_bad_jwks_settings_are_one_line_configuration_errors(
    capsys: pytest.CaptureFixture[str], jwks: JWKSServer
) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        create_app(Settings(jwt_jwks_url="ftp://example.com/keys"))
    with pytest.raises(ConfigError, match="give one"):
        create_app(Settings(jwt_jwks_url="https://example.com/jwks.json", jwt_key=KEY))
    # A role's own key beside the set is checked like any key.
    pem = "-----BEGIN PUBLIC KEY-----\nnot really\n-----END PUBLIC KEY-----"
    with pytest.raises(ConfigError, match="PEM key, but HUB_JWT_ALGORITHM is HS256"):
        create_app(Settings(jwt_jwks_url="https://example.com/jwks.json", publisher_jwt_key=pem))
    assert main(["serve", "--jwt-jwks-url", "example.com/jwks.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "HUB_JWT_JWKS_URL" in err
    # An endpoint that answers, but not with keys: hub serve says so before it starts,
    # without the password the URL holds.
    jwks.status = 404
    port = str(free_port())
    url = jwks.url.replace("http://", "http://user:s3cret@")
    assert main(["serve", "--port", port, "--jwt-jwks-url", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "answered HTTP 404" in err
    assert "s3cret" not in err


async def test_a_stalled_endpoint_costs_a_request_one_timeout_then_503(
    jwks: JWKSServer, rsa_key: SigningKey
) -> None:
    jwks.delay = 2.0
    keys = JWKSKeys(jwks.url, timeout=0.2)
    async with keys.opened():  # not a configuration error: it may come back
        with pytest.raises(KeysUnavailable, match="could not load its keys"):
            await keys.resolve(rsa_key.sign(PUBLISH))


# -- audience and issuer ----------------------------------------------------------------


def hs(**claims: Any) -> str:
    return jwt.encode({**PUBLISH, "exp": int(time.time()) + 60, **claims}, KEY, "HS256")


async def test_without_audience_or_issuer_settings_tokens_carrying_them_pass(
    client: httpx.AsyncClient,
    start_hub: StartHub,
) -> None:
    embedded = Backends("embedded", None)
    hub = await start_hub(embedded.settings(jwt_key=KEY), embedded.backend())
    # Mercure 1.0 tokens carry aud and iss; PyJWT would refuse the aud unless told.
    token = hs(aud=["https://hub.example.com"], iss="https://auth.example.com")
    assert (await native_publish(client, hub, token)).status_code == 201
    await mercure_publish(client, hub, token)


async def test_audience_and_issuer_are_checked_when_set(
    client: httpx.AsyncClient, start_hub: StartHub
) -> None:
    embedded = Backends("embedded", None)
    settings = embedded.settings(
        jwt_key=KEY, jwt_audience="hub-a, hub-b", jwt_issuer="https://auth.example.com"
    )
    hub = await start_hub(settings, embedded.backend())
    iss = "https://auth.example.com"
    for token, says in [
        (hs(iss=iss), "no aud claim, which HUB_JWT_AUDIENCE"),
        (hs(aud="hub-c", iss=iss), "HUB_JWT_AUDIENCE"),
        (hs(aud="hub-a"), "no iss claim, which HUB_JWT_ISSUER"),
        (hs(aud="hub-a", iss="https://evil.example.com"), "HUB_JWT_ISSUER"),
    ]:
        response = await native_publish(client, hub, token)
        assert response.status_code == 401, token
        assert says in response.json()["message"]
        await mercure_publish(client, hub, token, expect=401)
    for aud in ("hub-a", "hub-b", ["other", "hub-b"]):
        token = hs(aud=aud, iss=iss)
        assert (await native_publish(client, hub, token)).status_code == 201
        await mercure_publish(client, hub, token)


async def test_subscribers_get_the_same_audience_checks(
    client: httpx.AsyncClient, start_hub: StartHub
) -> None:
    embedded = Backends("embedded", None)
    hub = await start_hub(embedded.settings(jwt_key=KEY, jwt_audience="hub"), embedded.backend())
    wrong = await client.get(
        f"{hub.url}/.well-known/mercure",
        params={"topic": TOPIC, "authorization": hs(aud="other")},
    )
    assert wrong.status_code == 401
    async with client.stream(
        "GET", f"{hub.url}/events", params={"channel": "a", "authorization": hs(aud="hub")}
    ) as right:
        assert right.status_code == 200


def test_a_channels_partition_stays_its_slot_over_256_past_what_is_remembered() -> None:
    names = [f"room-{i}" for i in range(40_000)] + ["{tag}a", "{tag}b", "é"]
    for _ in range(2):  # the second pass reads what the first remembered
        for name in names:
            assert partition_of(name) == key_slot(name.encode()) >> 8
    assert partition_of("{tag}a") == partition_of("{tag}b")


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
def test_a_publish_call_is_the_same_whether_its_channel_was_remembered_or_not(
    cluster: bool,
) -> None:
    # A publisher remembers what it built for each channel, up to a bound; a call built
    # from what it remembers is the one it builds without (the general path, which a
    # channel named twice takes), and a bad name is refused every time.
    settings = Settings()
    remembering = Calls(settings, 1000, cluster=cluster)
    general = Calls(settings, 1000, cluster=cluster)  # the same publishes, the other way
    names = [f"room-{i}" for i in range(ROUTES_AT_MOST + 100)]
    for _ in range(2):
        for name in names:
            [call] = remembering.event(name, "x", "typed")
            [fresh] = general.event([name, name], "x", "typed")
            assert (call.keys, call.args, call.partition, call.suffix) == (
                fresh.keys,
                fresh.args,
                fresh.partition,
                fresh.suffix,
            )
        for _ in range(2):
            with pytest.raises(BadRequest, match="whitespace"):
                remembering.event("a b", "x", None)
