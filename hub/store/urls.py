"""Redis URLs: the schemes the hub accepts, checked in one place before anything connects.

A URL the hub cannot use is a :class:`~hub.errors.ConfigError` at start-up, with one
line that says what is wrong and what to write instead, rather than a redis-py
traceback on the first connection. ``redis+sentinel://`` URLs are parsed in
:mod:`hub.store.backend`; cluster URLs by the cluster backend.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from redis.asyncio.connection import parse_url

from hub.errors import ConfigError

__all__ = [
    "CLUSTER_SCHEMES",
    "PLAIN_SCHEMES",
    "SCHEMES",
    "check_plain_url",
    "check_url",
    "host_port",
    "redact",
]

#: One server (or a Unix socket), as redis-py reads them.
PLAIN_SCHEMES = ("redis", "rediss", "unix")
#: A Redis Cluster, named by one or more of its nodes.
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Every scheme the hub accepts.
SCHEMES = (*PLAIN_SCHEMES, "redis+sentinel", *CLUSTER_SCHEMES)

_PASSWORD_OPTION = re.compile(r"(?i)([?&](?:sentinel_)?password=)[^&]*")
#: How messages name the setting: every command that takes a URL has both.
_WHAT = "Redis URL (HUB_REDIS_URL, --redis-url)"
_EXAMPLES = (
    "redis://[:password@]host:6379/0, rediss://... (TLS), unix:///path/to/redis.sock, "
    "redis+sentinel://host:26379/service, or redis+cluster://host:7000"
)


def redact(url: str) -> str:
    """``url`` without its user and password (also ``password=`` and
    ``sentinel_password=`` options), for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return _PASSWORD_OPTION.sub(r"\1[redacted]", f"{scheme}://{rest.rsplit('@', 1)[-1]}")


def check_url(url: str) -> str:
    """The scheme of ``url``; :class:`ConfigError` if the hub cannot use the URL.

    Plain URLs are read here as redis-py will read them (port, options), plus what
    redis-py lets pass silently: a database that is not a number (``/x`` was db 0).
    """
    scheme, sep, _rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        given = f"scheme {scheme!r}" if sep else "no scheme"
        raise ConfigError(f"{_WHAT} {redact(url)!r} has {given}; use one of: {_EXAMPLES}")
    if scheme not in PLAIN_SCHEMES:
        return scheme
    try:
        parse_url(url)
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks it
    except ValueError as exc:
        raise ConfigError(
            f"{_WHAT} {redact(url)!r}: {str(exc).rstrip('.')}; e.g. {_EXAMPLES}"
        ) from None
    db = parts.path.strip("/") if scheme != "unix" else ""
    if db and not db.isdigit():
        raise ConfigError(
            f"{_WHAT} {redact(url)!r}: the database {db!r} after the host must be a "
            "number (redis://host:6379/0)"
        )
    return scheme


def check_plain_url(url: str) -> None:
    """:func:`check_url`, for clients that connect to one server (``Redis.from_url``)."""
    scheme = check_url(url)
    if scheme not in PLAIN_SCHEMES:
        raise ConfigError(
            f"{_WHAT} {redact(url)!r}: a publisher outside the hub takes a redis://, "
            f"rediss://, unix:// or redis+cluster:// URL, not {scheme}://; point it at "
            "the Redis server itself, or publish over HTTP to a hub"
        )


def host_port(part: str, url: str, default: int) -> tuple[str, int]:
    """One ``host[:port]`` (or ``[v6]:port``) of a URL that lists several servers, as
    sentinel and cluster URLs do."""
    if part.startswith("["):
        host, _, port = part[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = part.partition(":")
    if not host or not (port or str(default)).isdigit():
        raise ConfigError(f"{redact(url)}: {part!r} is not host:port")
    return host, int(port or default)
