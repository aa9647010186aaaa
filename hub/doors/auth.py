"""JWT authorization, as Mercure does it, for both the Mercure door and the native API.

A token is a JWS verified with PyJWT: HS256 by default (the key is a shared secret),
or RS256/ES256/... with a PEM public key. It comes from ``Authorization: Bearer``, the
``authorization`` query parameter (Mercure 0.24 only: 1.0 keeps tokens out of URLs),
or a cookie (``__Secure-mercure_access_token`` for 1.0, ``mercureAuthorization`` for
0.24), in that order. What it grants (:mod:`hub.doors.grants`) is read from its
``mercure`` claim (0.24) or its ``authorization_details`` (1.0): topic selectors
(:mod:`hub.doors.topics`) to publish to and to receive private updates of. A publisher
may publish to a topic its ``publish`` selectors match (every topic of an update must
be matched); a private update reaches a subscriber only if one of its topics matches
the subscriber's ``subscribe`` selectors. Refusals carry an RFC 6750
``WWW-Authenticate`` challenge. ``exp`` is honoured: an expired token is refused, and a
stream opened with a token ends when it expires.

Without any key configured the hub is in development mode: everyone may publish and
Mercure subscribers get every update. That is logged loudly at startup.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from starlette.requests import Request

from hub.config import Settings
from hub.doors.grants import bearer_challenge, is_access_token, read_grants
from hub.doors.keys import Verification, key_sources, opened
from hub.doors.topics import Selectors
from hub.errors import BadRequest, ConfigError, Forbidden, Unauthorized

__all__ = ["COOKIE", "COOKIE_1", "Auth", "Claims", "cors_origins", "expires_in"]

logger = logging.getLogger("hub")

#: The cookie a browser sends its token in (Mercure 0.24's name)...
COOKIE = "mercureAuthorization"
#: ...and Mercure 1.0's (the ``__Secure-`` prefix: browsers keep it to HTTPS).
COOKIE_1 = "__Secure-mercure_access_token"

#: The last second of the year 9999: a later ``exp`` is out of range, not "never".
_LATEST = 253402300799
_OUT_OF_RANGE = (
    "the token's exp, nbf or iat is out of range; use seconds since the epoch, "
    "before the year 10000"
)


@dataclass(frozen=True)
class Claims:
    """What a verified token (or development mode) allows."""

    #: Topics this client may publish to; ``None``: the token has no publish claim.
    publish: Selectors | None
    #: Private topics this client may receive; ``None``: public updates only.
    subscribe: Selectors | None
    #: The token's ``exp`` (seconds since the epoch), or ``None``.
    expires: float | None = None
    #: The subscriber payload the token carries (``mercure.payload`` or its 1.0 twin).
    payload: Any = None
    #: The token's ``sub``, or ``None``: what ``HUB_PUBLISH_RATE`` counts by, and kept
    #: with what it publishes natively, so that a worker can count questions per subject.
    subject: str | None = None

    def can_receive(self, topics: list[str]) -> bool:
        return self.subscribe is not None and self.subscribe.match_any(topics)


#: Mercure's protocol versions, all of which the native API's tokens may use.
PROTOCOLS = frozenset({"1.0", "0.24"})

#: Development mode: no key, so nothing to check.
EVERYTHING = Claims(Selectors(["*"]), Selectors(["*"]))


class _Verifier:
    def __init__(self, role: str, verification: Verification) -> None:
        self.role = role
        self.verification = verification

    async def verify(self, token: str, protocols: frozenset[str] = PROTOCOLS) -> Claims:
        """The claims of ``token``, its grants read as ``protocols`` allow."""
        try:
            # Its key (hub.doors.keys), and aud/iss as HUB_JWT_AUDIENCE/ISSUER say: Mercure
            # 1.0 tokens carry aud and iss, accepted when those are unset.
            decoded = await self.verification.decode_complete(token)
        except Unauthorized as exc:  # an unknown kid, aud or iss: an invalid token
            raise _invalid(str(exc)) from None
        except jwt.ExpiredSignatureError:
            raise _invalid("the token has expired; get a fresh one") from None
        except jwt.InvalidTokenError as exc:
            raise _invalid(
                f"the token was refused ({exc}); it must be a JWS signed with "
                f"{self.verification.description}"
            ) from None
        except (OverflowError, ValueError, TypeError):
            # PyJWT's own claim checks on values JSON allows but a clock cannot hold
            # (exp: 1e400 is infinity): a bad token, not a server error.
            raise _invalid(_OUT_OF_RANGE) from None
        payload = decoded["payload"]
        exp = payload.get("exp")
        expires = float(exp) if isinstance(exp, (int, float)) else None
        if expires is not None and not 0 <= expires <= _LATEST:
            raise _invalid(_OUT_OF_RANGE)
        grants = read_grants(decoded["header"], payload, protocols)
        sub = payload.get("sub")
        return Claims(
            grants.publish,
            grants.subscribe,
            expires,
            grants.payload,
            sub if isinstance(sub, str) and sub else None,
        )


def _invalid(message: str) -> Unauthorized:
    return Unauthorized(message, challenge=bearer_challenge("invalid_token", message))


def _missing(message: str) -> Unauthorized:
    return Unauthorized(message, challenge=bearer_challenge(None))


class Auth:
    """The hub's authorization settings, and the checks of one request."""

    def __init__(self, settings: Settings) -> None:
        self._sources = key_sources(settings)
        pub, sub = (None if s is None else Verification(s, settings) for s in self._sources)
        self.publisher_verifier = _Verifier("publisher", pub) if pub else None
        self.subscriber_verifier = _Verifier("subscriber", sub) if sub else None
        #: The Mercure protocol versions the Mercure door serves (``HUB_MERCURE_PROTOCOLS``);
        #: the native API takes tokens of either form whatever it says.
        self.protocols = settings.protocols()
        self.anonymous = settings.anonymous
        self.cors_origins = cors_origins(settings)

    def opened(self) -> AbstractAsyncContextManager[None]:
        """Keeps JWKS keys fetched and fresh while the app runs."""
        return opened(*self._sources)

    def log_mode(self) -> None:
        if self.publisher_verifier is None:
            logger.warning(
                "DEVELOPMENT MODE: no HUB_JWT_KEY / HUB_PUBLISHER_JWT_KEY, so ANYONE can "
                "publish; set a key before exposing this hub"
            )
        if self.subscriber_verifier is None:
            logger.warning(
                "DEVELOPMENT MODE: no HUB_JWT_KEY / HUB_SUBSCRIBER_JWT_KEY, so Mercure "
                "subscribers receive every update, private ones included"
            )
        if self.cors_origins == ["*"]:
            logger.warning(
                "HUB_CORS_ORIGINS=*: any site may read public streams without "
                "credentials; no other origin may use cookies or browser credentials "
                "(list origins by name for that)"
            )

    async def publisher(self, request: Request, *, mercure: bool = False) -> Claims:
        """The claims of a publish request; raise :class:`Unauthorized` without a valid
        token (publishing always needs one once a key is set). ``mercure``: a request to
        the Mercure door, held to ``HUB_MERCURE_PROTOCOLS``."""
        protocols = self.protocols if mercure else PROTOCOLS
        if self.publisher_verifier is None:
            return EVERYTHING
        token = self._token(request, csrf_check=True, modern=False, protocols=protocols)
        if token is None:
            raise _missing(
                "publishing needs a JWT: send 'Authorization: Bearer <token>' (or the "
                f"{_cookie_names(protocols)} cookie from an allowed origin)"
            )
        return await self.publisher_verifier.verify(token, protocols)

    async def subscriber(
        self, request: Request, *, mercure: bool = False, modern: bool = False
    ) -> Claims | None:
        """The claims of a subscribe request; ``None`` for an anonymous subscriber
        (public updates only), where anonymous subscribers are allowed. ``mercure``: a
        request to the Mercure door; ``modern``: a Mercure 1.0 one, which may not carry
        its token in the URL."""
        protocols = self.protocols if mercure else PROTOCOLS
        if modern and request.query_params.get("authorization"):
            # Checked with or without a key: a client sending its token in the URL must
            # learn it (RFC 9700) before it ships to production.
            message = (
                "Mercure 1.0 requests (match=, match_urlpattern=) may not carry a token "
                "in the URL, where logs and Referer headers leak it (RFC 9700): send it "
                f"in the Authorization header or the {COOKIE_1} cookie"
            )
            raise BadRequest(message, challenge=bearer_challenge("invalid_request", message))
        if self.subscriber_verifier is None:
            return EVERYTHING
        token = self._token(request, csrf_check=False, modern=modern, protocols=protocols)
        if token is None:
            if self.anonymous:
                return None
            raise _missing(
                "subscribing needs a JWT: send 'Authorization: Bearer <token>' or the "
                f"{_cookie_names(protocols)} cookie (or run the hub with HUB_ANONYMOUS=1 to "
                "serve public updates without one)"
            )
        return await self.subscriber_verifier.verify(token, protocols)

    @staticmethod
    def check_publish(claims: Claims, topics: list[str]) -> None:
        """Raise :class:`Forbidden` unless the claims allow publishing to every topic."""
        if claims.publish is None:
            message = "the token grants no publish (mercure.publish or authorization_details)"
            raise Forbidden(message, challenge=_scope(message))
        refused = [t for t in topics if not claims.publish.match(t)]
        if refused:
            message = (
                f"the token's publish selectors do not match {refused[:5]}; "
                "publish to topics the token allows, or issue a token that allows these"
            )
            raise Forbidden(message, challenge=_scope(message))

    def _token(
        self, request: Request, *, csrf_check: bool, modern: bool, protocols: frozenset[str]
    ) -> str | None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                # Another scheme is no bearer token at all: 401 with a bare challenge.
                raise _missing("the Authorization header must be 'Bearer <token>'")
            return token.strip()
        query = request.query_params.get("authorization")
        if query:
            if "0.24" not in protocols:
                message = (
                    "this hub serves Mercure 1.0 only (HUB_MERCURE_PROTOCOLS), which takes "
                    "no token in the URL: send it in the Authorization header or the "
                    f"{COOKIE_1} cookie"
                )
                raise BadRequest(message, challenge=bearer_challenge("invalid_request", message))
            if is_access_token(query):
                # An RFC 9068 access token is Mercure 1.0's, which never travels in a URL.
                message = (
                    "an at+jwt access token may not be sent in the URL, where logs and "
                    "Referer headers leak it (RFC 9700): send it in the Authorization "
                    f"header or the {COOKIE_1} cookie"
                )
                raise BadRequest(message, challenge=bearer_challenge("invalid_request", message))
            return query
        for name in _cookies(protocols):
            if modern and name == COOKIE:
                continue
            cookie = request.cookies.get(name)
            if cookie:
                if csrf_check:
                    self._check_origin(request, name)
                return cookie
        return None

    def _check_origin(self, request: Request, cookie: str) -> None:
        # A cookie goes along with any cross-site form post: without this check another
        # site could publish in the name of whoever visits it.
        origin = request.headers.get("origin")
        if not origin:
            referer = request.headers.get("referer")
            if not referer:
                raise _invalid(
                    f"a publish authorized by the {cookie} cookie needs an Origin or Referer header"
                )
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        origin = origin.rstrip("/")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        # "*" is not a name: it never admits a cookie from a foreign origin.
        if origin == own or origin in self.cors_origins:
            return
        raise _invalid(
            f"origin {origin!r} may not publish with the {cookie} cookie; add it to "
            "HUB_CORS_ORIGINS, or send the token in the Authorization header"
        )


def _cookies(protocols: frozenset[str]) -> list[str]:
    return [name for name, version in ((COOKIE_1, "1.0"), (COOKIE, "0.24")) if version in protocols]


def _cookie_names(protocols: frozenset[str]) -> str:
    return " or ".join(_cookies(protocols))


def _scope(message: str) -> str:
    return bearer_challenge("insufficient_scope", message)


def cors_origins(settings: Settings) -> list[str]:
    """The origins of ``HUB_CORS_ORIGINS``: ``["*"]`` alone, or names.

    ``*`` allows credential-less reads from anywhere; named origins also get
    credentials. Both at once would need two policies for one response, so it is
    refused.
    """
    origins = [o.rstrip("/") for o in settings.cors_origins.replace(",", " ").split()]
    if "*" in origins and len(origins) > 1:
        raise ConfigError(
            "HUB_CORS_ORIGINS mixes '*' with named origins; give '*' alone (any site "
            "may read public streams, without credentials) or only names (those "
            "origins may also send cookies and credentials)"
        )
    return origins


def expires_in(claims: Claims | None) -> float | None:
    """Seconds until the token behind ``claims`` expires (``None``: never)."""
    if claims is None or claims.expires is None:
        return None
    return max(0.0, claims.expires - time.time())
