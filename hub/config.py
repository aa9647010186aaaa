"""One settings object for the hub: keyword arguments, ``HUB_*`` variables, CLI flags."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from hub.errors import ConfigError

__all__ = ["Settings", "field_docs"]


@dataclass(frozen=True)
class Settings:
    """Everything a hub node or a publisher needs to know.

    Every field can be set as a keyword argument, or from the environment as
    ``HUB_<FIELD>`` (``HUB_REDIS_URL``, ``HUB_HISTORY_SIZE``, ...) through
    :meth:`from_env`. Keyword arguments win over the environment.
    """

    #: Interface to listen on (0.0.0.0 for every interface).
    host: str = "127.0.0.1"
    #: TCP port to listen on.
    port: int = 8000
    #: ``redis://[:password@]host:port/db``, ``unix://``, or ``redis+sentinel://``; unset
    #: runs on the embedded in-memory backend (one process only).
    redis_url: str | None = None
    #: Prefix of every Redis key and pub/sub channel the hub uses (no braces: the hub
    #: gives its keys hash tags of its own, hub/store/keys.py).
    key_prefix: str = "hub:"
    #: Events kept per channel for resuming clients (at least this many: history is
    #: trimmed back to it every tenth of it, so it may hold up to 10% more).
    history_size: int = 1000
    #: Seconds an event is kept for resuming clients; 0 keeps it until ``history_size`` pushes
    #: it out.
    history_ttl: float = 0.0
    #: Seconds between heartbeat comments on an idle stream (keeps proxies from closing it).
    heartbeat: float = 15.0
    #: Reconnect delay, in milliseconds, that streams suggest to the browser.
    retry_ms: int = 3000
    #: Channels one ``/events`` connection may subscribe to.
    max_channels: int = 100
    #: Bytes of events queued for one client before it is cut off as too slow.
    client_buffer: int = 1 << 20
    #: Seconds one write to a client may take before the client is cut off as stuck.
    send_timeout: float = 30.0
    #: Largest ``/publish`` request body, in bytes.
    max_payload: int = 1 << 20
    #: Events one batch publish (a JSON array or NDJSON body, ``publish_many``) may hold.
    max_batch: int = 1000
    #: Largest batch publish request body, in bytes.
    max_batch_bytes: int = 8 << 20
    #: Largest request line plus headers, in bytes; a larger request is answered ``431``
    #: (a long ``Last-Event-ID``, cookie or URL counts against it).
    max_header_bytes: int = 16 * 1024
    #: Redis connections for commands (publish, history reads) per process.
    redis_pool_size: int = 10
    #: Seconds between checks that this node has not missed the newest event of a channel.
    position_check: float = 10.0
    #: Open ``/events`` streams one process accepts; beyond it a new one gets ``503``.
    max_connections: int = 10000
    #: Open connections one client address may hold on one process; beyond it a new
    #: request gets ``503``. 0: no limit. Only for a hub that clients reach directly:
    #: behind a balancer or proxy every client has the proxy's address.
    max_connections_per_ip: int = 0
    #: Seconds a client has to send a request's line and headers, from the moment it
    #: connects (or starts its next request); a connection that takes longer is closed.
    header_timeout: float = 10.0
    #: Seconds a client has to send a request's body once its headers are in; a body
    #: that takes longer is answered ``408`` and the connection closed.
    body_timeout: float = 30.0
    #: Processes ``hub serve`` runs on the one port (SO_REUSEPORT), each with its own Redis
    #: connections; 1 runs the hub in the serving process itself.
    workers: int = 1
    #: ``debug``, ``info``, ``warning`` or ``error``.
    log_level: str = "info"
    #: ``text`` (readable) or ``json`` (one object per line, for log pipelines).
    log_format: str = "text"
    #: JWT verification key for publishers and subscribers: the HMAC secret, or a PEM
    #: public key for RS256/ES256. No key at all runs the hub in development mode:
    #: anyone may publish, and Mercure subscribers get every update.
    jwt_key: str | None = None
    #: Overrides ``jwt_key`` for publishers.
    publisher_jwt_key: str | None = None
    #: Overrides ``jwt_key`` for subscribers.
    subscriber_jwt_key: str | None = None
    #: ``HS256`` (default), ``HS384``, ``HS512``, ``RS256``, ``RS512``, ``ES256``, ...
    jwt_algorithm: str = "HS256"
    #: URL of a JSON Web Key Set (an identity provider's ``jwks_uri``) whose public keys
    #: verify tokens, by their ``kid``, instead of ``jwt_key``. Fetched at start-up, every
    #: ``jwt_jwks_refresh`` seconds, and when a token names a key id the hub does not hold
    #: (at most once every 5 s); while it is down, the keys already fetched keep working.
    jwt_jwks_url: str | None = None
    #: Seconds between refreshes of the ``jwt_jwks_url`` keys.
    jwt_jwks_refresh: float = 300.0
    #: Tokens must carry this ``aud`` (space- or comma-separated: one of these). Unset: a
    #: token's ``aud`` is not checked.
    jwt_audience: str | None = None
    #: Tokens must carry this ``iss``. Unset: a token's ``iss`` is not checked.
    jwt_issuer: str | None = None
    #: Publishes allowed per token subject (``sub``; the client's address for a publisher
    #: without one), across every node: ``N/s``, ``N/min`` or ``N/h``. A burst of N, then
    #: N per period; beyond that ``429`` with ``Retry-After``. Empty: no limit.
    publish_rate: str = ""
    #: 1: subscribers without a token get public updates; 0: a token is required.
    anonymous: bool = False
    #: Origins allowed to call the hub from browsers (CORS) and to publish with the
    #: ``mercureAuthorization`` cookie: space- or comma-separated, or ``*``.
    cors_origins: str = ""
    #: 1: Mercure's subscriptions API and subscription events (a private publish per
    #: topic each time a Mercure subscriber comes or goes).
    subscriptions: bool = False
    #: Mercure protocol versions served, comma-separated: ``1.0`` (``match=``,
    #: ``match_urlpattern=``, ``authorization_details`` tokens, the
    #: ``__Secure-mercure_access_token`` cookie) and ``0.24`` (``topic=``, the
    #: ``mercure`` claim, the ``mercureAuthorization`` cookie and ``authorization``
    #: query parameter). Name one to narrow the Mercure door to it (the native API
    #: takes tokens of both forms whatever this says).
    mercure_protocols: str = "1.0,0.24"

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (0 < self.port < 65536, "port must be between 1 and 65535"),
            (self.history_size >= 1, "history_size must be at least 1"),
            (self.history_ttl >= 0, "history_ttl must be 0 (no age limit) or positive seconds"),
            (self.heartbeat > 0, "heartbeat must be a positive number of seconds"),
            (self.retry_ms >= 0, "retry_ms must be 0 or more"),
            (self.max_channels >= 1, "max_channels must be at least 1"),
            (self.client_buffer >= 1024, "client_buffer must be at least 1024 bytes"),
            (self.send_timeout > 0, "send_timeout must be a positive number of seconds"),
            (self.max_payload >= 1, "max_payload must be at least 1 byte"),
            (self.max_batch >= 1, "max_batch must be at least 1"),
            (self.max_batch_bytes >= 1024, "max_batch_bytes must be at least 1024"),
            (self.max_header_bytes >= 1024, "max_header_bytes must be at least 1024"),
            (self.redis_pool_size >= 1, "redis_pool_size must be at least 1"),
            (self.position_check > 0, "position_check must be a positive number of seconds"),
            (self.max_connections >= 1, "max_connections must be at least 1"),
            (self.max_connections_per_ip >= 0, "max_connections_per_ip must be 0 (off) or more"),
            (self.header_timeout > 0, "header_timeout must be a positive number of seconds"),
            (self.body_timeout > 0, "body_timeout must be a positive number of seconds"),
            (self.workers >= 1, "workers must be at least 1"),
            (bool(self.key_prefix), "key_prefix must not be empty"),
            (
                "{" not in self.key_prefix and "}" not in self.key_prefix,
                "key_prefix must not contain braces: the hub gives its keys hash tags of its "
                "own, and one in the prefix would put them all in one cluster slot (use hub:)",
            ),
            (self.log_format in ("text", "json"), "log_format must be text or json"),
            (self.jwt_jwks_refresh > 0, "jwt_jwks_refresh must be a positive number of seconds"),
            (
                bool(self.protocols()) and self.protocols() <= {"1.0", "0.24"},
                "mercure_protocols must name 1.0, 0.24 or both (comma-separated)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.publish_limit()  # raises for a malformed publish_rate

    def publish_limit(self) -> tuple[int, float] | None:
        """``publish_rate`` as (publishes, per seconds); ``None``: no limit."""
        text = self.publish_rate.strip()
        if not text:
            return None
        count, _, unit = text.partition("/")
        seconds = _PERIODS.get(unit.strip().lower() or "s")
        if not count.strip().isdigit() or int(count) < 1 or seconds is None:
            raise ConfigError(
                f"HUB_PUBLISH_RATE={self.publish_rate[:60]!r}: write N/s, N/min or N/h "
                "(such as 10/s or 600/min) with N at least 1, or leave it empty for no limit"
            )
        return int(count), seconds

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``HUB_*`` variables, then apply ``overrides`` (``None`` skipped)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(f"HUB_{field.name.upper()}")
            if raw is not None and raw != "":
                values[field.name] = _convert(field, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def protocols(self) -> frozenset[str]:
        """The Mercure protocol versions of ``mercure_protocols``."""
        return frozenset(p for p in self.mercure_protocols.replace(",", " ").split())

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def _convert(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    name = f"HUB_{field.name.upper()}"
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}={raw!r}: use 1 or 0")
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    return raw


def field_docs() -> dict[str, str]:
    """Each setting's ``#:`` comment above, as plain text (for ``hub serve --help``).

    Read from this module's source, the way documentation tools read ``#:`` comments,
    so the explanation of a setting is written once; empty if the source is missing.
    """
    try:
        source = inspect.getsource(Settings)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    comment: list[str] = []
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("#:"):
            comment.append(text[2:].strip())
            continue
        match = re.match(r"(\w+): [^=]+=", text)
        if match and comment:
            docs[match.group(1)] = " ".join(comment).replace("``", "")
        comment = []
    return docs
