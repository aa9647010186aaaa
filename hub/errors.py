"""The hub's exceptions: one base class, each message says how to fix the problem."""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "HubError",
    "KeysUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "TooManyConnections",
    "Unauthorized",
]


class HubError(Exception):
    """Base class of every error the hub raises on purpose."""

    #: HTTP status the HTTP API answers with when this error reaches it.
    status_code = 500
    #: Short machine-readable name, sent as ``error`` in JSON error bodies.
    code = "internal"

    def __init__(self, *args: object, challenge: str | None = None) -> None:
        super().__init__(*args)
        #: An RFC 6750 ``WWW-Authenticate`` challenge answered with this error, if any.
        self.challenge = challenge


class ConfigError(HubError):
    """A setting is missing or has an impossible value."""

    code = "config"


class BadRequest(HubError):
    """The request cannot be served as it is; the message says what to change."""

    status_code = 400
    code = "bad_request"


class NotFound(HubError):
    """The thing asked for does not exist here (or that part of the API is off)."""

    status_code = 404
    code = "not_found"


class Conflict(HubError):
    """The request clashes with what the hub holds: a Mercure update ``id`` that another
    update already has, or one shaped like a hub id."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(BadRequest):
    """The request body is larger than ``HUB_MAX_PAYLOAD`` allows."""

    status_code = 413
    code = "payload_too_large"


class BackendUnavailable(HubError):
    """Redis did not answer; nothing was published or read."""

    status_code = 503
    code = "backend_unavailable"


class TooManyConnections(HubError):
    """This node already has ``HUB_MAX_CONNECTIONS`` open streams; answered with
    ``Retry-After``, so the client comes back later or to another node."""

    status_code = 503
    code = "too_many_connections"


class KeysUnavailable(HubError):
    """The hub has not loaded its keys from ``HUB_JWT_JWKS_URL`` yet (the endpoint has
    not answered since start-up); answered with ``Retry-After``."""

    status_code = 503
    code = "keys_unavailable"


class RateLimited(HubError):
    """Beyond ``HUB_PUBLISH_RATE``: answered ``429`` with ``Retry-After``."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        #: Seconds until the next publish is allowed.
        self.retry_after = retry_after


class Unauthorized(HubError):
    """No usable token: missing where one is required, malformed, badly signed or
    expired. The message says which."""

    status_code = 401
    code = "unauthorized"


class Forbidden(HubError):
    """A valid token whose claims do not allow the request."""

    status_code = 403
    code = "forbidden"
