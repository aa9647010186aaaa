"""Tokens stay out of logs: a real hub process, its real log output, both doors, both
log formats. A token in the query string is the only way an EventSource can send one."""

from __future__ import annotations

import signal
from urllib.parse import quote

import httpx
import pytest

from hub.logs import redact_secrets
from hub.store.backend import redact
from support.mercure import KEY, token
from support.processes import HubProcesses

pytestmark = pytest.mark.anyio

BAD = "SECRETTOKEN123"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_tokens_in_urls_are_redacted_in_access_and_error_logs(
    hubs: HubProcesses, log_format: str
) -> None:
    good = token(subscribe=["*"])
    hub = await hubs.start(
        env={"HUB_JWT_KEY": KEY, "HUB_LOG_LEVEL": "info", "HUB_LOG_FORMAT": log_format}
    )
    expected = {
        f"/events?channel=a&authorization={good}": 200,
        f"/events?channel=a&authorization={BAD}": 401,
        f"/.well-known/mercure?topic=a&authorization={good}": 200,
        f"/.well-known/mercure?topic=a&authorization={BAD}": 401,
        f"/events?channel=a&access_token={BAD}": 401,
    }
    async with httpx.AsyncClient(base_url=hub.url) as client:
        for path, status in expected.items():
            async with client.stream("GET", path) as response:
                assert response.status_code == status, path
        refused = await client.post(
            "/publish",
            json={"channel": "a", "data": "x"},
            headers={"Authorization": f"Bearer {BAD}"},
        )
        assert refused.status_code == 401
        # An error message that quotes what the client sent quotes no token.
        echoed = await client.get(f"/events?channel={quote(f'a authorization={BAD}')}")
        assert echoed.status_code == 400
        assert BAD not in echoed.text
        assert "authorization=[redacted]" in echoed.json()["message"]
    assert await hub.signal(signal.SIGTERM) == 0
    logs = await hub.stderr() + await hub.stdout()
    assert BAD not in logs
    assert good not in logs
    assert good.split(".")[2] not in logs  # not even the signature
    for door in ("/events?channel=a", "/.well-known/mercure?topic=a"):
        assert f"{door}&authorization=[redacted]" in logs, logs
    assert "/events?channel=a&access_token=[redacted]" in logs


def test_redaction_keeps_the_rest_of_a_line() -> None:
    line = 'GET /events?authorization=abc&channel=a HTTP/1.1" 200'
    assert redact_secrets(line) == 'GET /events?authorization=[redacted]&channel=a HTTP/1.1" 200'
    # Instructions that show where a token goes are not tokens.
    help_text = "send 'Authorization: Bearer <token>' or the authorization query parameter"
    assert redact_secrets(help_text) == help_text
    assert redact_secrets("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"


def test_redis_urls_in_logs_lose_every_password() -> None:
    url = "redis+sentinel://app:pw1@h:26379/main?sentinel_password=pw2&sentinel_username=s"
    assert redact(url) == (
        "redis+sentinel://h:26379/main?sentinel_password=[redacted]&sentinel_username=s"
    )
    assert redact("redis://h:6379/0?password=pw3") == "redis://h:6379/0?password=[redacted]"
    assert redact_secrets("at redis://h/0?password=pw4&db=1") == (
        "at redis://h/0?password=[redacted]&db=1"
    )
