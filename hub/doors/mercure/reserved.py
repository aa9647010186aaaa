"""Mercure 1.0's reserved namespace (draft-dunglas-mercure-08, "Publication"): a topic
whose URL, resolved against the hub's, has a path at or under the hub's own path
(``/.well-known/mercure``) is the hub's, whatever its scheme or host, and so is the
topic ``*``. The path is compared after its dot segments are removed and its
percent-encoded unreserved characters decoded, so that ``/.well-known/%6Dercure/...``
and ``/.well-known/x/../mercure/...`` name the same place. A topic that is no URL
reference (``urn:...``) names no hub path."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

from hub.doors.mercure.metadata import HUB_PATH
from hub.errors import BadRequest

__all__ = ["addresses_hub", "refuse_reserved_1"]

#: The schemes the URL standard calls special: their paths take ``\\`` as ``/``.
_SPECIAL = frozenset({"http", "https", "ws", "wss", "ftp", "file"})
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decoded(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0)


def _without_dot_segments(path: str) -> str:
    kept: list[str] = []
    segments = path.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == ".":
            if last:
                kept.append("")
        elif segment == "..":
            if len(kept) > 1:
                kept.pop()
            if last:
                kept.append("")
        else:
            kept.append(segment)
    return "/".join(kept)


def addresses_hub(topic: str, hub_url: str) -> bool:
    """Is ``topic``, resolved against ``hub_url``, at or under the hub's path?"""
    try:
        scheme = urlsplit(topic).scheme.lower()
        if not scheme or scheme in _SPECIAL:  # relative ones resolve against an http(s) URL
            topic = topic.replace("\\", "/")
        path = urlsplit(urljoin(hub_url, topic)).path
    except ValueError:
        return False  # no URL reference: it cannot name a hub path
    if not path.startswith("/"):
        return False
    path = _without_dot_segments(_ESCAPE.sub(_decoded, path))
    return path == HUB_PATH or path.startswith(HUB_PATH + "/")


def refuse_reserved_1(topics: list[str], hub_url: str) -> None:
    """Raise :class:`BadRequest` (1.0 answers ``400``) for a topic of the hub's."""
    for topic in topics:
        if topic == "*":
            raise BadRequest(
                "the topic '*' is reserved: it is the wildcard of subscriptions and grants; "
                "publish to a topic of its own"
            )
        if addresses_hub(topic, hub_url):
            raise BadRequest(
                f"{topic[:60]!r} is in the hub's reserved namespace ({HUB_PATH}, resolved "
                "against the hub's URL): it holds the hub's own subscription events; "
                "publish to another topic"
            )
