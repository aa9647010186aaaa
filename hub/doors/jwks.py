"""The keys of a JSON Web Key Set URL (``HUB_JWT_JWKS_URL``), kept fresh.

Fetched with httpx, never blocking the event loop: at start-up, every
``HUB_JWT_JWKS_REFRESH`` seconds (a supervised task), and when a token names a ``kid``
the hub does not hold, at most once per :data:`UNKNOWN_KID_INTERVAL` (so tokens with
made-up key ids cannot make the hub hammer the identity provider). A failed fetch
keeps the keys the hub has: while the endpoint is down, known keys keep working. A
key that a successful fetch no longer lists is dropped (rotated out, or revoked).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from hub.errors import ConfigError, KeysUnavailable, Unauthorized
from hub.supervise import Supervised

__all__ = ["UNKNOWN_KID_INTERVAL", "JWKSKeys", "check_jwks_url", "parse_jwks"]

logger = logging.getLogger("hub")

#: Seconds between two fetches made because a token named a key id the hub lacks.
UNKNOWN_KID_INTERVAL = 5.0
#: Seconds a JWKS fetch may take; a request waiting on one waits at most this long.
FETCH_TIMEOUT = 5.0
#: Seconds between retries while the JWKS endpoint fails (at most; see the refresh).
RETRY_INTERVAL = 30.0
#: Largest JWKS document read, in bytes.
MAX_JWKS_BYTES = 1 << 20


class JWKSError(Exception):
    """A JWKS fetch failed; ``answered``: the endpoint answered, with something unusable."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class JWKSKeys:
    """The keys of a JWKS URL, kept fresh. Open it (``async with``) before use."""

    def __init__(
        self,
        url: str,
        *,
        refresh: float = 300.0,
        unknown_kid_interval: float = UNKNOWN_KID_INTERVAL,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"HUB_JWT_JWKS_URL={url[:200]!r} is not an http(s) URL; give the identity "
                "provider's jwks_uri, such as https://auth.example.com/.well-known/jwks.json"
            )
        self.url = url
        #: The URL as messages and logs show it: without a user or password in it.
        self.shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        self.description = f"a key of the JWKS at {self.shown}"
        self.refresh = refresh
        self.unknown_kid_interval = unknown_kid_interval
        self.timeout = timeout
        #: Fetches that succeeded and failed (for tests and logs).
        self.fetches = 0
        self.failures = 0
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._loaded = False
        self._client: httpx.AsyncClient | None = None
        self._last_unknown = float("-inf")
        self._inflight: asyncio.Future[None] | None = None

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[JWKSKeys]:
        """Fetch the keys, keep them fresh while open. An endpoint that answers with
        something that is not a usable JWKS is a :class:`ConfigError`; one that does not
        answer is retried in the background (tokens get ``503`` until it does)."""
        async with AsyncExitStack() as stack:
            self._client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=self.timeout, follow_redirects=True)
            )
            try:
                await self._fetch()
            except JWKSError as exc:
                if exc.answered:
                    raise _config_error(exc) from None
                logger.warning("%s; retrying in the background", exc)
            await stack.enter_async_context(Supervised("hub JWKS refresh", self._refresh_forever))
            try:
                yield self
            finally:
                # A fetch for an unknown kid still running would outlive its client.
                if self._inflight is not None:
                    self._inflight.cancel()
        self._client = None

    def kids(self) -> list[str | None]:
        """The key ids held now."""
        return list(self._keys)

    async def resolve(self, token: str) -> tuple[Any, list[str]]:
        header = jwt.get_unverified_header(token)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("the token's kid header must be a string")
        key = self._pick(kid)
        if key is None and (kid is not None or not self._keys):
            await self._refresh_for_unknown()
            key = self._pick(kid)
        if key is not None:
            return key.key, [key.algorithm_name]
        if not self._loaded:
            raise KeysUnavailable(
                f"the hub could not load its keys from {self.shown} yet; retry shortly"
            )
        if kid is None:
            raise Unauthorized(
                f"the token has no kid header and the JWKS at {self.shown} holds "
                f"{len(self._keys)} keys; sign it with a kid that names one of them"
            )
        stale = " (the hub could not fetch the set just now)" if self.failures else ""
        raise Unauthorized(
            f"the token's kid {kid[:80]!r} is not among the keys of {self.shown}{stale}; sign "
            "it with a current key of that set"
        )

    def _pick(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    async def _refresh_for_unknown(self) -> None:
        # One fetch at a time, shared by every request waiting for it; a new one at most
        # every unknown_kid_interval seconds.
        if self._inflight is None:
            now = asyncio.get_running_loop().time()
            if now - self._last_unknown < self.unknown_kid_interval:
                return
            self._last_unknown = now
            self._inflight = asyncio.ensure_future(self._fetch_quietly())
            self._inflight.add_done_callback(self._fetched)
        await asyncio.shield(self._inflight)

    def _fetched(self, future: asyncio.Future[None]) -> None:
        self._inflight = None

    async def _fetch_quietly(self) -> None:
        try:
            await self._fetch()
        except JWKSError as exc:
            logger.warning("%s; keeping the %d keys the hub has", exc, len(self._keys))

    async def _refresh_forever(self) -> None:
        while True:
            wait = self.refresh if self.failures == 0 else min(self.refresh, RETRY_INTERVAL)
            await asyncio.sleep(wait)
            await self._fetch_quietly()

    async def _fetch(self) -> None:
        assert self._client is not None, "open the JWKS keys first"
        try:
            # One deadline for the whole fetch: httpx's timeout bounds each read only, and
            # requests with a new kid wait for this.
            self._keys = await asyncio.wait_for(self._load(self._client), self.timeout)
        except asyncio.TimeoutError:
            self.failures += 1
            raise JWKSError(
                f"the JWKS at {self.shown} took over {self.timeout:g} s to answer",
                answered=False,
            ) from None
        except JWKSError:
            self.failures += 1
            raise
        self.failures = 0
        self.fetches += 1
        self._loaded = True

    async def _load(self, client: httpx.AsyncClient) -> dict[str | None, jwt.PyJWK]:
        try:
            async with client.stream("GET", self.url) as response:
                if response.status_code != 200:
                    raise JWKSError(
                        f"the JWKS at {self.shown} answered HTTP {response.status_code}",
                        answered=True,
                    )
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JWKSError(
                            f"the JWKS at {self.shown} is larger than {MAX_JWKS_BYTES} bytes",
                            answered=True,
                        )
        except httpx.HTTPError as exc:
            raise JWKSError(
                f"the JWKS at {self.shown} could not be fetched ({exc or type(exc).__name__})",
                answered=False,
            ) from None
        return parse_jwks(body, self.shown)


def check_jwks_url(url: str | None, timeout: float = FETCH_TIMEOUT) -> None:
    """For ``hub serve``, before any event loop runs: raise :class:`ConfigError` when the
    endpoint answers with something that is not a usable JWKS. One that does not answer
    may be down for a while: the app's own fetches retry it.

    Called before the app's start-up, so that a wrong URL is one line and exit status 2
    (in the start-up it would come with uvicorn's traceback), and before logging is set
    up, or httpx would log the request too.
    """
    if not url:
        return
    shown = JWKSKeys(url).shown  # checks the URL's shape
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            response = client.get(url)
    except httpx.HTTPError:
        return
    try:
        if response.status_code != 200:
            raise JWKSError(
                f"the JWKS at {shown} answered HTTP {response.status_code}", answered=True
            )
        if len(response.content) > MAX_JWKS_BYTES:
            raise JWKSError(
                f"the JWKS at {shown} is larger than {MAX_JWKS_BYTES} bytes", answered=True
            )
        parse_jwks(response.content, shown)
    except JWKSError as exc:
        raise _config_error(exc) from None


def _config_error(exc: JWKSError) -> ConfigError:
    return ConfigError(
        f"HUB_JWT_JWKS_URL: {exc}; point it at the identity provider's jwks_uri (a JSON "
        "object with a 'keys' list of public keys)"
    )


def parse_jwks(body: bytes, url: str) -> dict[str | None, jwt.PyJWK]:
    """The usable public keys of a JWKS document, by ``kid``."""
    try:
        document = httpx.Response(200, content=body).json()
    except ValueError:
        raise JWKSError(f"the JWKS at {url} is not JSON", answered=True) from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JWKSError(f"the JWKS at {url} has no 'keys' list", answered=True)
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            # A shared secret published at a URL is no secret: never verify with it.
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            logger.warning("skipping key %r of the JWKS at %s: %s", entry.get("kid"), url, exc)
            continue
        keys[key.key_id] = key
    if not keys:
        raise JWKSError(f"the JWKS at {url} holds no usable signing key", answered=True)
    return keys
