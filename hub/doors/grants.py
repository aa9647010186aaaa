"""What a verified token grants: Mercure 0.24's ``mercure`` claim, Mercure 1.0's
``authorization_details`` (RFC 9396 entries in an RFC 9068 access token), or both.

0.24: ``{"mercure": {"publish": [...], "subscribe": [...], "payload": ...}}``, whose
selectors are ``*``, exact topics and URI templates.

1.0: a token whose header says ``typ: at+jwt``, with an ``exp``, whose
``authorization_details`` holds entries such as ``{"type":
"https://mercure.rocks/authorization-detail", "actions": ["subscribe"], "topics":
[{"match": "https://example.com/books/:id", "match_type": "urlpattern"}], "payload":
...}``. ``match_type`` is ``exact`` (the default; ``*`` matches every topic) or
``urlpattern``. Entries of other types are another service's business and ignored; a
malformed Mercure entry refuses the whole token (``invalid_token``), as Mercure does.

Which of the two is read follows ``HUB_MERCURE_PROTOCOLS``; with both on, a token may
carry both and gets the union.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import jwt

from hub.doors.topics import Selectors
from hub.errors import BadRequest, Unauthorized
from hub.logs import redact_secrets

__all__ = ["DETAIL_TYPE", "Grants", "bearer_challenge", "is_access_token", "read_grants"]

#: The ``type`` of a Mercure entry in ``authorization_details``.
DETAIL_TYPE = "https://mercure.rocks/authorization-detail"
_ACTIONS = frozenset({"publish", "subscribe"})
_MATCH_TYPES = frozenset({"exact", "urlpattern"})
#: RFC 9068 section 2.1: ``at+jwt``, or the same media type spelled in full.
_ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
#: Most Mercure entries, and topics per entry, one token may hold.
_MAX_ENTRIES = 100
_MAX_TOPICS = 1000


@dataclass(frozen=True)
class Grants:
    """The selectors a token grants, and its subscriber payload."""

    publish: Selectors | None
    subscribe: Selectors | None
    #: ``mercure.payload`` (0.24) or the ``payload`` of a subscribe entry (1.0): shown
    #: in the subscriptions API and subscription events.
    payload: Any = None


def bearer_challenge(error: str | None, description: str = "") -> str:
    """An RFC 6750 ``WWW-Authenticate`` value: bare ``Bearer`` when no token was sent
    (``error`` None), else with the error code and a description cut to the characters
    the RFC allows in it, and without any token it quotes (:func:`hub.logs.redact_secrets`)."""
    if error is None:
        return 'Bearer realm="mercure"'
    safe = "".join(
        c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "'" for c in redact_secrets(description)
    )
    text = f'Bearer realm="mercure", error="{error}"'
    return text + (f', error_description="{safe[:200]}"' if safe else "")


def is_access_token(token: str) -> bool:
    """Does ``token``'s (unverified) header say ``typ: at+jwt``? Cheap: one base64 and
    JSON decode of the header, no signature check."""
    try:
        typ = jwt.get_unverified_header(token).get("typ")
    except jwt.InvalidTokenError:
        return False
    return isinstance(typ, str) and typ.lower() in _ACCESS_TOKEN_TYPES


def _refused(message: str) -> Unauthorized:
    return Unauthorized(message, challenge=bearer_challenge("invalid_token", message))


def read_grants(
    header: dict[str, Any], payload: dict[str, Any], protocols: Collection[str]
) -> Grants:
    """The grants of a verified token (its JOSE ``header`` and ``payload``); raise
    :class:`Unauthorized` (``invalid_token``) for a 1.0 token that is malformed, or a
    token this hub's protocols cannot read."""
    details = payload.get("authorization_details")
    legacy = payload.get("mercure", payload.get("https://mercure.rocks/"))
    if details is not None and "1.0" not in protocols:
        raise _refused(
            "this hub serves Mercure 0.24 only (HUB_MERCURE_PROTOCOLS): put the grants "
            "in a mercure claim, not in authorization_details"
        )
    if legacy is not None and details is None and "0.24" not in protocols:
        raise _refused(
            "this hub serves Mercure 1.0 only (HUB_MERCURE_PROTOCOLS): the mercure claim "
            "is 0.24's; issue an at+jwt access token with authorization_details"
        )
    exact: dict[str, list[str]] = {"publish": [], "subscribe": []}
    patterns: dict[str, list[str]] = {"publish": [], "subscribe": []}
    old: dict[str, list[str] | None] = {"publish": None, "subscribe": None}
    found_payload: Any = None
    if details is not None:
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise _refused(
                "a token with authorization_details must be an RFC 9068 access token: "
                "header typ at+jwt"
            )
        if payload.get("exp") is None:
            raise _refused("an access token must have an exp claim")
        entries = _mercure_entries(details)
        for actions, topics, entry_payload in entries:
            for action in actions:
                for match, match_type in topics:
                    (patterns if match_type == "urlpattern" else exact)[action].append(match)
            if "subscribe" in actions and entry_payload is not None and found_payload is None:
                found_payload = entry_payload
    if isinstance(legacy, dict) and "0.24" in protocols:
        for action in ("publish", "subscribe"):
            value = legacy.get(action)
            if isinstance(value, list):
                old[action] = [v for v in value if isinstance(v, str)]
        if found_payload is None:
            found_payload = legacy.get("payload")

    def selectors(action: str) -> Selectors | None:
        listed = old[action]
        if listed is None and not exact[action] and not patterns[action]:
            return None
        return Selectors(listed or (), matches=exact[action], urlpatterns=patterns[action])

    return Grants(selectors("publish"), selectors("subscribe"), found_payload)


def _mercure_entries(details: Any) -> list[tuple[list[str], list[tuple[str, str]], Any]]:
    if not isinstance(details, list):
        raise _refused("authorization_details must be an array of objects")
    entries: list[tuple[list[str], list[tuple[str, str]], Any]] = []
    for entry in details:
        if not isinstance(entry, dict) or entry.get("type") != DETAIL_TYPE:
            continue  # another resource's entry (RFC 9396): not ours to judge
        if len(entries) >= _MAX_ENTRIES:
            raise _refused(f"more than {_MAX_ENTRIES} Mercure authorization_details entries")
        actions = entry.get("actions")
        if (
            not isinstance(actions, list)
            or not actions
            or not all(isinstance(a, str) and a in _ACTIONS for a in actions)
        ):
            raise _refused(
                "a Mercure authorization_details entry needs actions: a non-empty array "
                "of publish and subscribe"
            )
        raw_topics = entry.get("topics")
        if not isinstance(raw_topics, list) or not raw_topics or len(raw_topics) > _MAX_TOPICS:
            raise _refused(
                "a Mercure authorization_details entry needs topics: a non-empty array "
                f"(at most {_MAX_TOPICS}) of {{match, match_type}} objects"
            )
        topics = [_topic(t) for t in raw_topics]
        entries.append((list(dict.fromkeys(actions)), topics, entry.get("payload")))
    return entries


def _topic(topic: Any) -> tuple[str, str]:
    if not isinstance(topic, dict) or not isinstance(topic.get("match"), str):
        raise _refused(
            'each topic of a Mercure authorization_details entry is an object {"match": ...}'
        )
    match_type = topic.get("match_type", "exact")
    if match_type not in _MATCH_TYPES:
        raise _refused(f"match_type {str(match_type)[:40]!r} is not exact or urlpattern")
    if match_type == "urlpattern":
        try:
            Selectors(urlpatterns=[topic["match"]], strict=True)
        except BadRequest as exc:
            raise _refused(f"in authorization_details: {exc}") from None
    return topic["match"], match_type
