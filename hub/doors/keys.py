"""Which key checks a token's signature, and the checks of its ``aud`` and ``iss``.

A role (publisher, subscriber) verifies with a :class:`StaticKey` (``HUB_JWT_KEY``
and friends: an HMAC secret or a PEM public key) or with the keys of a JSON Web Key
Set (:class:`hub.doors.jwks.JWKSKeys`, ``HUB_JWT_JWKS_URL``): an identity provider's
``jwks_uri``. :func:`key_sources` picks one per role. :class:`Verification` decodes a
token with its role's key and the hub's audience and issuer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import jwt

from hub.config import Settings
from hub.doors.jwks import JWKSKeys
from hub.errors import ConfigError, Unauthorized

__all__ = ["KeySource", "StaticKey", "Verification", "key_sources", "opened"]

_ASYMMETRIC = ("RS", "ES", "PS", "Ed")


class KeySource(Protocol):
    """Gives the key (and the algorithms allowed with it) that should have signed a token."""

    #: What signs valid tokens, for messages ("the hub's publisher key using HS256").
    description: str

    async def resolve(self, token: str) -> tuple[Any, list[str]]: ...


class StaticKey:
    """One configured key: an HMAC secret, or a PEM public key for RS256/ES256/..."""

    def __init__(self, role: str, key: str, algorithm: str) -> None:
        self.algorithm = algorithm
        self.description = f"the hub's {role} key using {algorithm}"
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

    async def resolve(self, token: str) -> tuple[Any, list[str]]:
        return self.key, [self.algorithm]


class Verification:
    """Decodes tokens of one role: its key source, plus ``aud`` and ``iss`` checks."""

    def __init__(self, source: KeySource, settings: Settings) -> None:
        self.source = source
        self.description = source.description
        audience = (settings.jwt_audience or "").replace(",", " ").split()
        self.audience: list[str] | None = audience or None
        self.issuer = settings.jwt_issuer or None

    async def decode_complete(self, token: str) -> dict[str, Any]:
        """The verified token, as :func:`jwt.decode_complete` gives it (``header``,
        ``payload``). PyJWT's errors go to the caller, except those of the audience and
        issuer checks, which get messages that name the setting."""
        key, algorithms = await self.source.resolve(token)
        try:
            decoded: dict[str, Any] = jwt.decode_complete(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                # Without HUB_JWT_AUDIENCE a token's aud is not checked: Mercure 1.0
                # tokens carry one, and PyJWT would refuse them all.
                options={"verify_aud": self.audience is not None},
            )
        except jwt.InvalidAudienceError:
            raise Unauthorized(
                f"the token's aud does not name this hub; it must include one of "
                f"{self.audience} (HUB_JWT_AUDIENCE)"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(
                f"the token's iss is not {self.issuer!r} (HUB_JWT_ISSUER); get a token "
                "from that issuer"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            setting = {"aud": "HUB_JWT_AUDIENCE", "iss": "HUB_JWT_ISSUER"}.get(exc.claim)
            if setting is None:
                raise
            raise Unauthorized(
                f"the token has no {exc.claim} claim, which {setting} requires"
            ) from None
        return decoded


def key_sources(settings: Settings) -> tuple[KeySource | None, KeySource | None]:
    """The publishers' and the subscribers' key sources (``None``: no key, development
    mode). A role's own key wins, then the JWKS URL, then ``HUB_JWT_KEY``."""
    if settings.jwt_jwks_url and settings.jwt_key:
        raise ConfigError(
            "HUB_JWT_JWKS_URL and HUB_JWT_KEY are both set; give one (a role's own key, "
            "HUB_PUBLISHER_JWT_KEY or HUB_SUBSCRIBER_JWT_KEY, may go with the JWKS URL)"
        )
    shared: KeySource | None = None
    if settings.jwt_jwks_url:
        shared = JWKSKeys(settings.jwt_jwks_url, refresh=settings.jwt_jwks_refresh)

    def one(role: str, own: str | None) -> KeySource | None:
        if own:
            return StaticKey(role, own, settings.jwt_algorithm)
        if shared is not None:
            return shared
        if settings.jwt_key:
            return StaticKey(role, settings.jwt_key, settings.jwt_algorithm)
        return None

    return (
        one("publisher", settings.publisher_jwt_key),
        one("subscriber", settings.subscriber_jwt_key),
    )


@asynccontextmanager
async def opened(*sources: KeySource | None) -> AsyncIterator[None]:
    """Keep the JWKS sources among ``sources`` open (each once)."""
    async with AsyncExitStack() as stack:
        seen: set[int] = set()
        for source in sources:
            if isinstance(source, JWKSKeys) and id(source) not in seen:
                seen.add(id(source))
                await stack.enter_async_context(source.opened())
        yield
