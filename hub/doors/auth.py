"""JWT authorization, as Mercure does it, for both the Mercure door and the native API.

A token is a JWS verified with PyJWT: HS256 by default (the key is a shared secret),
or RS256/ES256/... with a PEM public key. It comes from ``Authorization: Bearer``, the
``authorization`` query parameter, or the ``mercureAuthorization`` cookie, in that
order. Its ``mercure`` claim holds ``publish`` and ``subscribe``: lists of topic
selectors (:mod:`hub.doors.topics`). A publisher may publish to a topic its ``publish``
selectors match (every topic of an update must be matched); a private update reaches
a subscriber only if one of its topics matches the subscriber's ``subscribe``
selectors. ``exp`` is honoured: an expired token is refused, and a stream opened with
a token ends when it expires.

Without any key configured the hub is in development mode: everyone may publish and
Mercure subscribers get every update. That is logged loudly at startup.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from starlette.requests import Request

from hub.config import Settings
from hub.doors.topics import Selectors
from hub.errors import ConfigError, Forbidden, Unauthorized

__all__ = ["COOKIE", "Auth", "Claims", "cors_origins", "expires_in"]

logger = logging.getLogger("hub")

#: The cookie a browser sends its token in (Mercure's name).
COOKIE = "mercureAuthorization"

_ASYMMETRIC = ("RS", "ES", "PS", "Ed")
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

    def can_receive(self, topics: list[str]) -> bool:
        return self.subscribe is not None and self.subscribe.match_any(topics)


#: Development mode: no key, so nothing to check.
EVERYTHING = Claims(Selectors(["*"]), Selectors(["*"]))


class _Verifier:
    def __init__(self, role: str, key: str, algorithm: str) -> None:
        self.role = role
        self.algorithm = algorithm
        self.key: Any = key
        if algorithm.startswith(_ASYMMETRIC):
            # Keys often travel in env vars with their newlines written as \n.
            pem = key.replace("\\n", "\n").strip()
            try:
                self.key = jwt.algorithms.get_default_algorithms()[algorithm].prepare_key(pem)
            except (KeyError, ValueError, TypeError, jwt.InvalidKeyError) as exc:
                raise ConfigError(
                    f"the {role} JWT key is not a usable {algorithm} public key ({exc}); "
                    "give the PEM text (-----BEGIN PUBLIC KEY-----...) in HUB_JWT_KEY or "
                    f"HUB_{role.upper()}_JWT_KEY"
                ) from None
        elif algorithm not in jwt.algorithms.get_default_algorithms():
            raise ConfigError(
                f"HUB_JWT_ALGORITHM={algorithm!r} is not supported; use HS256, RS256 or ES256"
            )
        elif "-----BEGIN" in key:
            # PyJWT would refuse every token signed with it, one 401 at a time.
            raise ConfigError(
                f"the {role} JWT key is a PEM key, but HUB_JWT_ALGORITHM is {algorithm} "
                "(a shared secret); set HUB_JWT_ALGORITHM to the key's algorithm (RS256, "
                "ES256, ...)"
            )

    def verify(self, token: str) -> Claims:
        try:
            payload = jwt.decode(token, self.key, algorithms=[self.algorithm])
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired; get a fresh one") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(
                f"the token was refused ({exc}); it must be a JWS signed with the hub's "
                f"{self.role} key using {self.algorithm}"
            ) from None
        except (OverflowError, ValueError, TypeError):
            # PyJWT's own claim checks on values JSON allows but a clock cannot hold
            # (exp: 1e400 is infinity): a bad token, not a server error.
            raise Unauthorized(_OUT_OF_RANGE) from None
        mercure = payload.get("mercure", payload.get("https://mercure.rocks/"))
        if not isinstance(mercure, dict):
            mercure = {}
        exp = payload.get("exp")
        expires = float(exp) if isinstance(exp, (int, float)) else None
        if expires is not None and not 0 <= expires <= _LATEST:
            raise Unauthorized(_OUT_OF_RANGE)
        return Claims(
            _selectors(mercure.get("publish")),
            _selectors(mercure.get("subscribe")),
            expires,
        )


def _selectors(value: Any) -> Selectors | None:
    if not isinstance(value, list):
        return None
    return Selectors(v for v in value if isinstance(v, str))


class Auth:
    """The hub's authorization settings, and the checks of one request."""

    def __init__(self, settings: Settings) -> None:
        pub_key = settings.publisher_jwt_key or settings.jwt_key
        sub_key = settings.subscriber_jwt_key or settings.jwt_key
        algorithm = settings.jwt_algorithm
        self.publisher_verifier = _Verifier("publisher", pub_key, algorithm) if pub_key else None
        self.subscriber_verifier = _Verifier("subscriber", sub_key, algorithm) if sub_key else None
        self.anonymous = settings.anonymous
        self.cors_origins = cors_origins(settings)

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

    def publisher(self, request: Request) -> Claims:
        """The claims of a publish request; raise :class:`Unauthorized` without a valid
        token (publishing always needs one once a key is set)."""
        if self.publisher_verifier is None:
            return EVERYTHING
        token = self._token(request, csrf_check=True)
        if token is None:
            raise Unauthorized(
                "publishing needs a JWT: send 'Authorization: Bearer <token>' (or the "
                f"{COOKIE} cookie from an allowed origin)"
            )
        return self.publisher_verifier.verify(token)

    def subscriber(self, request: Request) -> Claims | None:
        """The claims of a subscribe request; ``None`` for an anonymous subscriber
        (public updates only), where anonymous subscribers are allowed."""
        if self.subscriber_verifier is None:
            return EVERYTHING
        token = self._token(request, csrf_check=False)
        if token is None:
            if self.anonymous:
                return None
            raise Unauthorized(
                "subscribing needs a JWT: send 'Authorization: Bearer <token>', the "
                f"authorization query parameter or the {COOKIE} cookie (or run the hub "
                "with HUB_ANONYMOUS=1 to serve public updates without one)"
            )
        return self.subscriber_verifier.verify(token)

    @staticmethod
    def check_publish(claims: Claims, topics: list[str]) -> None:
        """Raise :class:`Forbidden` unless the claims allow publishing to every topic."""
        if claims.publish is None:
            raise Forbidden("the token has no mercure.publish claim: it may not publish")
        refused = [t for t in topics if not claims.publish.match(t)]
        if refused:
            raise Forbidden(
                f"the token's mercure.publish selectors do not match {refused[:5]}; "
                "publish to topics the token allows, or issue a token that allows these"
            )

    def _token(self, request: Request, *, csrf_check: bool) -> str | None:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("the Authorization header must be 'Bearer <token>'")
            return token.strip()
        query = request.query_params.get("authorization")
        if query:
            return query
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        if csrf_check:
            self._check_origin(request)
        return cookie

    def _check_origin(self, request: Request) -> None:
        # A cookie goes along with any cross-site form post: without this check another
        # site could publish in the name of whoever visits it.
        origin = request.headers.get("origin")
        if not origin:
            referer = request.headers.get("referer")
            if not referer:
                raise Unauthorized(
                    f"a publish authorized by the {COOKIE} cookie needs an Origin or Referer header"
                )
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        origin = origin.rstrip("/")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        # "*" is not a name: it never admits a cookie from a foreign origin.
        if origin == own or origin in self.cors_origins:
            return
        raise Unauthorized(
            f"origin {origin!r} may not publish with the {COOKIE} cookie; add it to "
            "HUB_CORS_ORIGINS, or send the token in the Authorization header"
        )


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
